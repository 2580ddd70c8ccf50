"""Several nodes, emulated on CI's one CPU machine: two torchrun "nodes" on localhost, and scripts/slurm.sh under
a stub `srun` that starts the job's tasks as SLURM would. Each must train exactly like one process on the same
batch and write one run folder, as docs/scaling.md says.

Everything runs in subprocesses with a deadline: a rank that never joins the process group would otherwise hang
the test run, so on a timeout or a failure every process they started is killed.
"""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from .conftest import ROOT, TINY_RUN, train, val_curve, val_losses

# No dropout (ranks draw different masks); accumulate_grad_batches=1 so that val_check_interval counts optimizer steps.
RUN = [
    *TINY_RUN,
    "model.dropout=0.0",
    "logger=csv",
    "trainer.max_steps=10",
    "trainer.val_check_interval=5",
    "trainer.accumulate_grad_batches=1",
    "optim.decay_steps=20",
]
TOLERANCE = 1e-5  # as in tests/test_scaling.py: two half-batch gradients all-reduced differ in the last bits
TIMEOUT = 180  # seconds for a whole distributed run; a normal one takes ~20 s on two cores
SPLIT = "batch: 8 chunks of 16 tokens per optimizer step = 2 device(s) x 1 micro-batch(es) x 4 chunks"


def clean_env() -> dict[str, str]:
    """The environment of run_script: no W&B credentials, and none of a real cluster's or launcher's variables."""
    launcher = ("WANDB_", "SLURM_", "TORCHELASTIC_")
    names = {"MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "GROUP_RANK", "NODE_RANK"}
    return {k: v for k, v in os.environ.items() if not k.startswith(launcher) and k not in names}


def free_port(candidates=(0,)) -> int:
    """The first of these ports that nobody listens on now (0: let the OS pick one)."""
    for port in candidates:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError(f"no free port among {candidates}")


def start(command: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start a process in a session of its own (so its children can be killed with it), output to a file (two
    processes writing to pipes that nobody reads while waiting for the other could block each other)."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def descendants(pid: int) -> list[int]:
    """Every process below pid, read from Linux's /proc: torchrun starts its workers in sessions of their own,
    out of reach of a signal to its process group."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])  # the field after the state
        except (OSError, IndexError, ValueError):
            continue  # a process that ended meanwhile
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill(process: subprocess.Popen) -> None:
    """Kill a process started by start(), its process group and whatever it started in other sessions."""
    if process.poll() is None:
        below = descendants(process.pid)  # before the kill, which would leave them orphans of another parent
        for pid in [-process.pid, *below]:  # -pid: the process group
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    process.wait()


@pytest.fixture
def launched():
    """The processes a test starts: killed at its end, whatever happened (a hang must not outlive the test)."""
    processes: list[subprocess.Popen] = []
    yield processes
    for process in processes:
        kill(process)


def wait_all(processes: list[subprocess.Popen], logs: list[Path], timeout: int = TIMEOUT) -> list[str]:
    """Wait for every process to succeed within one deadline; else kill them all and fail with their output."""
    deadline = time.monotonic() + timeout
    try:
        for process in processes:
            process.wait(timeout=max(deadline - time.monotonic(), 0))
        failed = any(p.returncode != 0 for p in processes)
        problem = f"exit codes {[p.returncode for p in processes]}"
    except subprocess.TimeoutExpired:
        failed, problem = True, f"still running after {timeout} s"
    finally:
        for process in processes:  # also on an interrupt
            kill(process)
    outputs = [log.read_text(errors="replace") for log in logs]
    if failed:
        pytest.fail(f"{problem}\n" + "\n".join(f"--- {log.name}:\n{out[-3000:]}" for log, out in zip(logs, outputs)))
    return outputs


def assert_one_run_folder_like(run_dir: Path, reference: Path) -> None:
    """One set of checkpoints, metrics and samples, written by rank 0 only, with the reference run's val losses."""
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} == {"best.ckpt", "last.ckpt"}
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 10
    distributed, one = val_curve(run_dir), val_losses(reference)
    assert [step for step, _ in distributed] == [5, 10]  # once each
    for step, loss in distributed:
        assert loss == pytest.approx(one[step], abs=TOLERANCE), f"val/loss at step {step}"
    assert (run_dir / "samples.txt").read_text().count("--- step") == 2
    assert (run_dir / "train.log").read_text().count(SPLIT) == 1  # from rank 0 only


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, corpus_path):
    """10 steps of batch 8 on one process: what every emulated cluster below must reproduce."""
    run_dir = tmp_path_factory.mktemp("one_process")
    train(run_dir, corpus_path, *RUN, timeout=TIMEOUT)
    return run_dir


@pytest.mark.slow
def test_two_torchrun_nodes_train_like_one_process_into_one_run_folder(one_process, tmp_path, corpus_path, launched):
    """docs/scaling.md's torchrun command on 2 "nodes" of 1 process each, both on localhost, started side by side."""
    port = free_port()
    logs = [tmp_path / f"node{rank}.log" for rank in (0, 1)]
    for node_rank, log in enumerate(logs):
        torchrun = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
            f"--node-rank={node_rank}", "--master-addr=127.0.0.1", f"--master-port={port}",
        ]  # fmt: skip
        script = [str(ROOT / "train.py"), f"data.path={corpus_path}", *RUN]  # RUN has trainer.accelerator=cpu
        cluster = ["trainer.num_nodes=2", "trainer.devices=1", "hydra.run.dir=outputs/two-nodes"]
        launched.append(start([*torchrun, *script, *cluster], tmp_path, clean_env(), log))
    node0, node1 = wait_all(launched, logs)

    assert SPLIT in node0  # Lightning counted 2 nodes x 1 device
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in node1  # node 1 joined as the second rank
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node0.log", "node1.log", "outputs"]
    assert [p.name for p in (tmp_path / "outputs").iterdir()] == ["two-nodes"]  # one folder for both nodes
    assert_one_run_folder_like(tmp_path / "outputs" / "two-nodes", one_process)


# srun, emulated on one node: it starts $SLURM_NTASKS copies of its command, each with the variables that tell a
# task its place (the job-wide ones, SLURM_NTASKS, SLURM_JOB_ID..., come from sbatch: here, from the test).
STUB_SRUN = """#!/bin/sh
pids=""
task=0
while [ "$task" -lt "$SLURM_NTASKS" ]; do
    SLURM_PROCID=$task SLURM_LOCALID=$task SLURM_NODEID=0 "$@" &
    pids="$pids $!"
    task=$((task + 1))
done
status=0
for pid in $pids; do
    wait "$pid" || status=$?
done
exit $status
"""


@pytest.mark.slow
def test_slurm_script_trains_its_tasks_like_one_process_into_the_jobs_folder(
    one_process, tmp_path, corpus_path, launched
):
    """scripts/slurm.sh as sbatch runs it (2 tasks on 1 node here): its own num_nodes, devices and run folder."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(STUB_SRUN)
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')  # the script calls `python`
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    # The script is submitted from the project folder and writes outputs/ there: give it a project folder in
    # tmp_path whose code is this one's.
    project = tmp_path / "project"
    project.mkdir()
    for name in ("train.py", "conf", "gpt", "scripts"):
        (project / name).symlink_to(ROOT / name)
    # Lightning takes the port from the job id's last 4 digits + 15000 when MASTER_PORT is unset, as in the script.
    job_id = f"7{free_port(range(15000, 25000)) - 15000:04d}"
    sbatch = {  # what sbatch --nodes=1 --ntasks-per-node=2 --job-name=char-gpt sets for the batch script
        "SLURM_JOB_ID": job_id,
        "SLURM_JOB_NAME": "char-gpt",  # "bash" or "interactive" would make Lightning ignore SLURM
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_NNODES": "1",
        "SLURM_NTASKS": "2",
        "SLURM_NTASKS_PER_NODE": "2",
        "SLURM_NODELIST": "127.0.0.1",
        "SLURM_SUBMIT_DIR": str(project),
    }
    env = {**clean_env(), **sbatch, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    log = tmp_path / f"slurm-{job_id}.out"
    script = ["bash", "scripts/slurm.sh", f"data.path={corpus_path}", *RUN]  # RUN has trainer.accelerator=cpu
    launched.append(start(script, project, env, log))
    (console,) = wait_all(launched, [log])

    assert SPLIT in console  # Lightning counted SLURM_JOB_NUM_NODES x SLURM_NTASKS_PER_NODE devices
    assert console.count("SLURM auto-requeueing enabled") == 2  # each task runs in Lightning's SLURM environment
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in console
    assert sorted(p.name for p in project.iterdir()) == ["conf", "gpt", "outputs", "scripts", "train.py"]
    assert [p.name for p in (project / "outputs").iterdir()] == [f"slurm-{job_id}"]
    assert_one_run_folder_like(project / "outputs" / f"slurm-{job_id}", one_process)
