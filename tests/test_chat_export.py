"""chat.py (a fine-tuned model answers one question per line) and export.py (a model to share, loaded without code)."""

import subprocess
import sys

import pytest
import torch

from .conftest import ROOT, TINY_RUN, make_corpus, run_script, train


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A tiny pre-trained checkpoint on a corpus of speeches and Q/A documents, and a copy recorded as SFT."""
    root = tmp_path_factory.mktemp("chat")
    corpus = root / "corpus.txt"
    corpus.write_text(make_corpus(300) + "Q: what light?\nA: my lord.\n\n" * 50, encoding="utf-8")
    steps = ["trainer.max_steps=4", "trainer.val_check_interval=4", "optim.warmup_steps=0"]
    train(root / "run", corpus, *TINY_RUN, *steps)
    pretrained = root / "run" / "checkpoints" / "last.ckpt"
    sft = torch.load(pretrained, weights_only=True)
    sft["kind"] = "sft"  # what finetune.py stage=sft records; the weights do not matter here
    torch.save(sft, root / "sft.ckpt")
    return {"pretrained": pretrained, "sft": root / "sft.ckpt", "root": root}


def chat(tmp_path, *args, questions=""):
    """chat.py with ``questions`` piped to its standard input."""
    return subprocess.run(
        [sys.executable, str(ROOT / "chat.py"), "device=cpu", "max_new_tokens=30", *args], input=questions,
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip


def test_chat_answers_each_piped_question_on_a_line_of_its_own(checkpoints, tmp_path):
    result = chat(tmp_path, f"ckpt={checkpoints['sft']}", questions="what light?\nto be, or not to be?\n")
    assert result.returncode == 0, result.stderr
    answers = result.stdout.split("\n")
    assert len(answers) == 3 and answers[2] == ""  # two answers, each ended by a newline
    assert all(len(answer) <= 30 for answer in answers)
    assert list(tmp_path.iterdir()) == []  # chatting writes nothing


def test_chat_refuses_a_model_that_was_not_fine_tuned_in_one_line(checkpoints, tmp_path):
    result = chat(tmp_path, f"ckpt={checkpoints['pretrained']}", questions="what light?\n")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().endswith(
        "is a pre-trained checkpoint (train.py); chat.py needs a PPO checkpoint (finetune.py stage=ppo) or a GRPO "
        "checkpoint (finetune.py stage=grpo) or a DPO checkpoint (finetune.py stage=dpo) or an SFT checkpoint "
        "(finetune.py stage=sft)"
    )
    assert len(result.stderr.strip().splitlines()) == 1


def test_an_exported_folder_samples_and_chats_like_its_checkpoint(checkpoints, tmp_path):
    folder = tmp_path / "shared"
    result = run_script("export.py", f"ckpt={checkpoints['pretrained']}", f"out={folder}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    texts = []
    for ckpt in (checkpoints["pretrained"], folder):
        sampled = run_script("sample.py", f"ckpt={ckpt}", "max_new_tokens=80", "seed=3", "device=cpu", cwd=tmp_path)
        assert sampled.returncode == 0, sampled.stderr
        texts.append(sampled.stdout)
    assert texts[0] == texts[1] and len(texts[0]) == 1 + 80 + 1
    # Exporting again into the same folder would overwrite the model: refused, and nothing is touched.
    before = (folder / "model.safetensors").read_bytes()
    again = run_script("export.py", f"ckpt={checkpoints['sft']}", f"out={folder}", cwd=tmp_path)
    assert again.returncode == 1 and "already holds an exported model" in again.stderr
    assert (folder / "model.safetensors").read_bytes() == before
    # An exported SFT model keeps its kind: chat.py takes it, as it takes the checkpoint.
    sft_folder = tmp_path / "sft"
    assert run_script("export.py", f"ckpt={checkpoints['sft']}", f"out={sft_folder}", cwd=tmp_path).returncode == 0
    answers = [chat(tmp_path, f"ckpt={ckpt}", "seed=5", questions="what light?\n").stdout for ckpt in
               (checkpoints["sft"], sft_folder)]  # fmt: skip
    assert answers[0] == answers[1] and answers[0].endswith("\n")
