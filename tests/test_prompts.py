"""Prompts as people type them: whatever follows prompt= on the command line is the prompt, verbatim."""

import pytest
from omegaconf import OmegaConf

from gpt.core.cli import put_verbatim, take_verbatim

from .conftest import TINY_RUN, make_corpus, run_script, train

PROMPTS = [
    "To be, or not to be: that is the question.",
    "ROMEO: What's that?",
    "O Romeo, Romeo! wherefore art thou Romeo?",
    'He said "a=b", then ${nothing} and \\${x}.',
    "Ωμέγα, naïve café!",
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny model trained a few steps on a corpus that holds every character of PROMPTS (unicode too)."""
    root = tmp_path_factory.mktemp("prompts")
    corpus = root / "corpus.txt"
    corpus.write_text(make_corpus(200) + "".join(PROMPTS) + "\n", encoding="utf-8")
    steps = ["trainer.max_steps=2", "trainer.val_check_interval=2", "optim.warmup_steps=0"]
    train(root / "run", corpus, *TINY_RUN, *steps)
    return root / "run" / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize("prompt", PROMPTS)
def test_a_prompt_typed_on_the_command_line_is_continued_verbatim(checkpoint, prompt, tmp_path):
    result = run_script(
        "sample.py", f"ckpt={checkpoint}", f"prompt={prompt}", "max_new_tokens=10", "device=cpu", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(prompt) and len(result.stdout) == len(prompt) + 10 + 1  # + the final newline


@pytest.mark.parametrize(
    "args, message",
    [
        (["prompt=ROMEO: ∑"], "error: characters not in the vocabulary: '∑'"),
        (["max_new_tokens=-5"], "error: max_new_tokens=-5 must be >= 1"),
        (["num_samples=0"], "error: num_samples=0 must be >= 1"),
    ],
)
def test_bad_sampling_input_gets_one_line(checkpoint, args, message, tmp_path):
    result = run_script("sample.py", f"ckpt={checkpoint}", "device=cpu", *args, cwd=tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().startswith(message) and len(result.stderr.strip().splitlines()) == 1


def test_verbatim_values_leave_the_command_line_and_read_back_unchanged():
    argv = ["sample.py", "ckpt=a.ckpt", "prompt=x, y: ${z} \\${w}", "seed=3"]
    values = take_verbatim(["prompt"], argv)
    assert argv == ["sample.py", "ckpt=a.ckpt", "seed=3"]
    cfg = OmegaConf.create({"prompt": None})
    put_verbatim(cfg, values)
    assert cfg.prompt == "x, y: ${z} \\${w}"
