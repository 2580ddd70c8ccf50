"""The three stages of finetune.py and evaluate.py end to end (quick mode): a tiny GPT on the synthetic corpus."""

import math
import os
import re
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir

from gpt.core.checkpoint import load_model, read_checkpoint
from gpt.core.errors import UserError
from gpt.posttrain import finetuning
from gpt.posttrain.evaluation import evaluate, pick_checkpoints
from gpt.posttrain.finetuning import encode_documents, finetune, load_qa, pick_inputs, read_inputs, sample_ranked
from gpt.posttrain.qa import hints
from gpt.posttrain.qa_data import hinted_answers
from gpt.posttrain.rlhf import answer_logprobs, answer_loss, pairwise_accuracy
from gpt.pretrain.data import CharDataModule
from gpt.pretrain.lightning_module import GPTModule

from .conftest import ROOT, make_corpus, run_script

MODEL = {"arch": "gpt", "block_size": 32, "n_layer": 2, "n_head": 2, "n_embd": 32, "dropout": 0.0, "bias": False}
OPTIM = {"lr": 1e-2, "weight_decay": 0.1, "betas": [0.9, 0.99], "warmup_steps": 5, "decay_steps": 60, "min_lr": 1e-3}
QA = ["qa.max_question_chars=8", "qa.max_answer_chars=12"]
TRAINER = ["trainer.accelerator=cpu", "++trainer.enable_progress_bar=false", "++trainer.enable_model_summary=false"]
STAGES = {
    "sft": ["trainer.max_steps=40", "trainer.val_check_interval=20", "stage.batch_size=16"],
    "reward": [
        "stage.questions=40",
        "stage.eval_questions=20",
        "stage.samples_per_question=3",
        "trainer.max_steps=10",
        "trainer.val_check_interval=10",
    ],
    "ppo": ["stage.updates=3", "stage.questions_per_update=8", "stage.epochs=1", "stage.minibatch_size=4"],
    "dpo": [
        "stage.questions=40",
        "stage.eval_questions=20",
        "stage.samples_per_question=3",
        "stage.batch_size=4",
        "stage.beta=0.5",
        "optim.lr=3e-4",
        "trainer.max_steps=20",
        "trainer.val_check_interval=20",
    ],
    "grpo": [
        "stage.updates=3",
        "stage.questions_per_update=4",
        "stage.samples_per_question=3",
        "stage.epochs=1",
        "stage.minibatch_size=6",
    ],
}


def config(name, *overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(name, overrides=[*QA, *(TRAINER if name == "finetune" else []), *overrides])


@pytest.fixture(scope="module")
def qa_corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("qa") / "corpus.txt"
    # Each speech opens with a sentence of two words, short enough to be an answer (qa.max_answer_chars=12).
    corpus = re.sub(r"(:\n\S+ \S+) ", r"\1. ", make_corpus(1000))
    path.write_text("QUEEN:\nwhat light.\n\n" + corpus, encoding="utf-8")  # "Q" joins the vocabulary
    return path


def pretrain(corpus, model: dict, path):
    """A tiny GPT pre-trained for 60 steps, saved at ``path``: it has seen the corpus's words, not the Q/A format."""
    datamodule = CharDataModule(path=str(corpus), block_size=32, batch_size=16, eval_chunks=16)
    datamodule.prepare_data()
    datamodule.setup()
    torch.manual_seed(0)  # the weights and batches, whichever tests ran before
    module = GPTModule(model, OPTIM, datamodule.tokenizer.chars)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=60,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=datamodule)
    trainer.save_checkpoint(path, weights_only=True)
    return path


@pytest.fixture(scope="module")
def pretrained(qa_corpus, tmp_path_factory):
    return pretrain(qa_corpus, MODEL, tmp_path_factory.mktemp("pretrained") / "pretrained.ckpt")


@pytest.fixture(scope="module")
def pipeline(qa_corpus, pretrained, tmp_path_factory):
    """SFT, reward model and PPO in turn, each from the previous stage's checkpoint."""
    data = f"data.path={qa_corpus}"

    def run(stage, *args):
        output_dir = f"output_dir={tmp_path_factory.mktemp(stage)}"
        return finetune(config("finetune", f"stage={stage}", data, output_dir, *STAGES[stage], *args))

    sft = run("sft", f"init_from={pretrained}")
    reward = run("reward", f"init_from={sft}")
    ppo = run("ppo", f"init_from={sft}", f"reward_model={reward}")
    dpo = run("dpo", f"init_from={sft}")
    grpo = run("grpo", f"init_from={sft}")  # rewarded by the rater
    grpo_rm = run("grpo", f"init_from={sft}", f"reward_model={reward}", "stage.reward=reward_model")
    return {
        **{"pretrained": pretrained, "sft": sft, "reward_model": reward, "ppo": ppo},
        **{"dpo": dpo, "grpo": grpo, "grpo_rm": grpo_rm, "data": data},
    }


def test_sft_lowers_the_held_out_answer_loss_and_writes_a_language_model(pipeline):
    qa = load_qa(config("finetune", pipeline["data"]))
    losses = {}
    for stage in ("pretrained", "sft"):
        model, tokenizer = load_model(pipeline[stage])
        x, y, mask = encode_documents(qa.heldout, tokenizer)
        with torch.no_grad():
            losses[stage] = answer_loss(model(x)[0], y, mask).item()
    assert losses["sft"] < losses["pretrained"] - 0.2, losses  # answers are short sentences: about 0.27 lower


def test_every_stage_fine_tunes_a_model_with_the_default_models_switches(qa_corpus, tmp_path):
    """The pipeline above fine-tunes the lecture's GPT; users fine-tune the default, whose RoPE keeps an angles table
    that a stage's validation before training first made under inference mode (SFT then failed its first step)."""
    switches = dict(pos="rope", norm="rmsnorm", qk_norm=True, activation="relu2", zero_init_proj=True, init="pytorch")
    pretrained = pretrain(qa_corpus, {**MODEL, **switches}, tmp_path / "pretrained.ckpt")

    def run(stage, *args):
        where = [f"data.path={qa_corpus}", f"output_dir={tmp_path / stage}"]
        path = finetune(config("finetune", f"stage={stage}", *where, *STAGES[stage], *args))
        checkpoint = read_checkpoint(path)
        assert checkpoint.kind == stage and checkpoint.model_config["pos"] == "rope"
        return path

    sft = run("sft", f"init_from={pretrained}")
    reward = run("reward", f"init_from={sft}")
    run("ppo", f"init_from={sft}", f"reward_model={reward}")
    run("dpo", f"init_from={sft}")
    run("grpo", f"init_from={sft}")


def test_sft_with_hinted_answers_trains_on_the_pairs_and_its_models_answers_that_pick_up_their_question(
    pipeline, tmp_path, monkeypatch
):
    found, documents = [], []

    def spy(*args, **kwargs):
        found.extend(hinted_answers(*args, **kwargs))
        return found

    def encode(pairs, tokenizer):
        documents.append(pairs)
        return encode_documents(pairs, tokenizer)

    monkeypatch.setattr(finetuning, "hinted_answers", spy)
    monkeypatch.setattr(finetuning, "encode_documents", encode)
    hinted = ["stage.hinted_samples=2", "stage.hint_min_form=0", "trainer.max_steps=5", "trainer.val_check_interval=5"]
    cfg = config("finetune", "stage=sft", pipeline["data"], f"init_from={pipeline['sft']}", *hinted)
    cfg.output_dir = str(tmp_path)
    finetune(cfg)
    qa = load_qa(cfg)
    assert found and all(qa.rater.rate(p.question, p.answer).picks_up > 0 for p in found)
    assert all(p.answer.startswith(hints(p.question)[-1]) for p in found)
    assert documents[0] == qa.train + found  # the training documents: the play's pairs, then the hinted answers
    questions = iter(qa.questions)
    assert all(p.question in questions for p in found)  # at most one answer to each question, in their order


def test_reward_model_is_normalised_and_ppo_writes_a_policy_that_samples(pipeline):
    reward_model, _ = load_model(pipeline["reward_model"], kinds=("reward",))
    assert not reward_model.training and reward_model.std > 0 and reward_model.mean != 0
    policy, _ = load_model(pipeline["ppo"])  # what sample.py does
    sft, _ = load_model(pipeline["sft"])
    assert any(not torch.equal(w, sft.state_dict()[k]) for k, w in policy.state_dict().items())
    history = read_checkpoint(pipeline["ppo"]).raw["ppo_history"]
    assert [h["update"] for h in history] == [1, 2, 3] and history[0]["kl"] == 0.0
    samples = (Path(pipeline["ppo"]).parents[1] / "ppo_samples.md").read_text()
    assert samples.count("| prompt | answer | reward | rater |") == 3 and "## update 3" in samples


def test_dpo_moves_the_policy_towards_the_raters_choices_without_a_reward_model(pipeline):
    validation = read_checkpoint(pipeline["dpo"]).raw["dpo_validation"]
    loss_before, loss_after = validation["before"]["val/loss"], validation["after"]["val/loss"]
    assert loss_before == pytest.approx(math.log(2), abs=1e-6)  # the policy is the reference: every margin 0
    assert loss_after < loss_before
    # Apart from DPO's own loss: on the pairs it trained on (the same samples again), the DPO model raises its
    # log-probability over SFT's more for the answer the rater prefers, in most ranked pairs.
    cfg = config("finetune", "stage=dpo", pipeline["data"], f"init_from={pipeline['sft']}", *STAGES["dpo"])
    start, qa = read_inputs(cfg), load_qa(cfg)
    _, rated = next(sample_ranked(cfg, start, qa))  # the training questions' answers
    policy, _ = load_model(pipeline["dpo"])  # a language model, as sample.py loads it
    with torch.no_grad():
        logprobs = [
            answer_logprobs(m(rated.idx)[0], rated.idx, rated.prompt_lengths, rated.ends)
            for m in (policy, start.policy)
        ]
    ratings = torch.tensor(rated.scores).view(-1, cfg.stage.samples_per_question)
    accuracy = pairwise_accuracy((logprobs[0] - logprobs[1]).view(ratings.shape), ratings)
    assert accuracy > 0.7, accuracy


@pytest.mark.parametrize("key, rewarded_by_the_reward_model", [("grpo", False), ("grpo_rm", True)])
def test_grpo_writes_a_policy_rewarded_by_the_rater_or_the_reward_model(pipeline, key, rewarded_by_the_reward_model):
    policy, _ = load_model(pipeline[key])  # what sample.py does
    sft, _ = load_model(pipeline["sft"])
    assert any(not torch.equal(w, sft.state_dict()[k]) for k, w in policy.state_dict().items())
    history = read_checkpoint(pipeline[key]).raw["grpo_history"]
    assert [h["update"] for h in history] == [1, 2, 3] and history[0]["kl"] == 0.0
    assert ("rm_score" in history[0]) is rewarded_by_the_reward_model
    if not rewarded_by_the_reward_model:  # the rater's total; -1 (missing_stop_reward) for an answer never stopped
        figures = history[0]
        assert figures["reward"] == pytest.approx(figures["rater_score"] - (1 - figures["stop_rate"]), abs=1e-6)
    samples = (Path(pipeline[key]).parents[1] / "grpo_samples.md").read_text()
    assert samples.count("| prompt | answer | reward | rater |") == 3


def test_evaluation_writes_a_table_and_a_plot(pipeline, tmp_path):
    paths = [f"{key}={pipeline[key]}" for key in ("pretrained", "sft", "ppo", "dpo", "grpo", "reward_model")]
    table = evaluate(config("evaluate", pipeline["data"], *paths, f"output_dir={tmp_path}", "questions=20"))
    header, _, *rows = table.splitlines()
    assert header == "| on held-out questions | real replies | pre-trained | SFT | PPO | DPO | GRPO |"
    figures = {row.split(" | ")[0].strip("| "): [c.strip(" |") for c in row.split(" | ")[1:]] for row in rows}
    kl = figures["KL to SFT (nats/answer)"]
    assert kl[0] == "n/a" and kl[2] == "0.00"  # the real replies have none; the SFT model against itself
    wins = figures["win rate against SFT (rater, ties half)"]
    assert wins[2] == "0.500" and all(0 <= float(w) <= 1 for w in wins)  # SFT against itself: every question a tie
    times = figures["stage wall time (s)"]
    assert times[:2] == ["n/a", "n/a"] and all(float(t) > 0 for t in times[2:])  # train.py records none
    assert figures["stop rate"][0] == "1.000" and figures["sentence end"][0] == "1.000"  # the play's replies
    assert {"rater score", "reward-model score", "distinct answers", "shares a content word with its question"} <= (
        figures.keys()
    )
    assert (tmp_path / "eval.png").stat().st_size > 10_000
    assert "| question | held-out answer | pre-trained | SFT | PPO | DPO | GRPO |" in (tmp_path / "eval.md").read_text()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["stage=ppo", "init_from={sft}"], "stage=ppo reward_model= not given and no run under outputs/"),
        (["stage=sft", "init_from={reward_model}"], "is a reward model"),
        (
            ["stage=reward", "init_from={pretrained}"],
            "is a pre-trained checkpoint (train.py); finetune.py stage=reward init_from= needs an SFT checkpoint "
            "(finetune.py stage=sft)",
        ),
        (
            ["stage=ppo", "init_from={sft}", "reward_model={sft}"],
            "is an SFT checkpoint (finetune.py stage=sft); finetune.py stage=ppo reward_model= needs a reward model "
            "checkpoint (finetune.py stage=reward)",
        ),
        (
            ["stage=ppo", "init_from={reward_model}", "reward_model={reward_model}"],
            "is a reward model checkpoint (finetune.py stage=reward); finetune.py stage=ppo init_from= needs an SFT",
        ),
        (["stage=sft", "init_from={pretrained}", "qa.max_answer_chars=30"], "more than the model's context 32"),
        (["stage=reward", "init_from={sft}", "stage.samples_per_question=1"], "samples_per_question must be >= 2"),
        (
            ["stage=grpo", "init_from={grpo}"],
            "is a GRPO checkpoint (finetune.py stage=grpo); finetune.py stage=grpo init_from= needs an SFT checkpoint",
        ),
        (
            ["stage=grpo", "init_from={sft}", "stage.reward=reward_model", "reward_model={dpo}"],
            "is a DPO checkpoint (finetune.py stage=dpo); finetune.py stage=grpo reward_model= needs a reward model",
        ),
        (
            ["stage=grpo", "init_from={sft}", "reward_model={reward_model}"],
            "is read only by stage=ppo and by stage=grpo with stage.reward=reward_model: leave it out",
        ),
        (["stage=grpo", "init_from={sft}", "stage.reward=reward_model"], "stage=grpo reward_model= not given"),
        (
            ["stage=dpo", "init_from={dpo}"],
            "is a DPO checkpoint (finetune.py stage=dpo); finetune.py stage=dpo init_from= needs an SFT checkpoint",
        ),
        (
            ["stage=ppo", "init_from={sft}", "reward_model={dpo}"],
            "is a DPO checkpoint (finetune.py stage=dpo); finetune.py stage=ppo reward_model= needs a reward model",
        ),
        (["stage=sft", "init_from=missing.ckpt"], "checkpoint missing.ckpt not found"),
        (["stage=sft", "init_from={pretrained}", "trainer.accelerator=cpu", "trainer.devices=2"], "runs on one device"),
    ],
)
def test_bad_input_gets_a_one_line_error(pipeline, tmp_path, overrides, message, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no outputs/ here: nothing to hand on by name
    overrides = [o.format(**pipeline) for o in overrides]
    with pytest.raises(UserError, match=re.escape(message)) as err:
        finetune(config("finetune", pipeline["data"], f"output_dir={tmp_path}", *overrides))
    assert "\n" not in str(err.value) or str(err.value).startswith("invalid config:")  # one line, or a list


# Each value, before, started the stage: it failed in torch or Lightning later (optim.betas, trainer counts) or
# trained silently wrong (a negative clip or max_grad_norm flips PPO's update, a gamma above 1 grows the returns).
@pytest.mark.parametrize(
    "overrides, problem",
    [
        (["stage=ppo", "stage.clip=-0.2"], "stage.clip=-0.2 must be > 0"),
        (["stage=ppo", "stage.value_clip=0"], "stage.value_clip=0 must be > 0"),
        (["stage=ppo", "stage.kl_coef=-0.05"], "stage.kl_coef=-0.05 must be >= 0"),
        (["stage=ppo", "stage.value_coef=-1"], "stage.value_coef=-1 must be >= 0"),
        (["stage=ppo", "stage.gamma=1.5"], "stage.gamma=1.5 must be in [0, 1]"),
        (["stage=ppo", "stage.lam=-0.1"], "stage.lam=-0.1 must be in [0, 1]"),
        (["stage=ppo", "stage.max_grad_norm=0"], "stage.max_grad_norm=0 must be > 0"),
        (["stage=ppo", "stage.examples_per_update=-1"], "stage.examples_per_update=-1 must be >= 0"),
        (["stage=dpo", "stage.beta=0"], "stage.beta=0 must be > 0"),
        (["stage=sft", "stage.hinted_samples=-1"], "stage.hinted_samples=-1 must be a whole number >= 0 (0: none)"),
        (["stage=sft", "stage.hinted_samples=1.5"], "stage.hinted_samples=1.5 must be a whole number >= 0"),
        (["stage=sft", "stage.hint_min_form=1.5"], "stage.hint_min_form=1.5 must be in [0, 1]"),
        (["stage=grpo", "stage.reward=judge"], "stage.reward=judge is not one of ['rater', 'reward_model']"),
        (["stage=grpo", "stage.kl_coef=-1"], "stage.kl_coef=-1 must be >= 0"),
        (["stage=grpo", "stage.samples_per_question=1"], "stage.samples_per_question must be >= 2"),
        (["stage=dpo", "qa.topic_weight=2"], "qa.topic_weight=2 must be in [0, 1]"),
        (["stage=sft", "optim.betas=[0.9,1.0]"], "optim.betas=[0.9, 1.0] must be two numbers in [0, 1)"),
        (["stage=reward", "trainer.log_every_n_steps=0"], "trainer.log_every_n_steps=0 must be a whole number >= 1"),
    ],
)
def test_stage_settings_that_would_fail_later_are_refused_before_anything_is_read(overrides, problem):
    with pytest.raises(UserError) as err:
        finetune(config("finetune", "output_dir=unused", "init_from=not_read.ckpt", *overrides))
    assert problem in str(err.value)


@pytest.mark.parametrize(
    "override, problem",
    [("questions=0", "questions=0 must be >= 1 (or null: all the held-out questions)"),
     ("examples=-1", "examples=-1 must be >= 0")],
)  # fmt: skip
def test_evaluation_counts_that_cannot_work_are_refused_in_one_line(override, problem):
    with pytest.raises(UserError, match=re.escape(problem)):
        evaluate(config("evaluate", "output_dir=unused", "sft=not_read.ckpt", "reward_model=not_read.ckpt", override))


def test_every_stage_records_its_kind_in_its_checkpoint(pipeline):
    kinds = {"pretrained": "pretrained", "sft": "sft", "reward_model": "reward", "ppo": "ppo", "dpo": "dpo"}
    kinds |= {"grpo": "grpo", "grpo_rm": "grpo"}
    for key, kind in kinds.items():
        assert torch.load(pipeline[key], weights_only=True)["kind"] == kind
        assert read_checkpoint(pipeline[key]).kind == kind


@pytest.mark.parametrize(
    "key, given, message",
    [
        ("sft", "ppo", "is a PPO checkpoint (finetune.py stage=ppo); evaluate.py sft= needs an SFT checkpoint"),
        ("reward_model", "sft", "is an SFT checkpoint (finetune.py stage=sft); evaluate.py reward_model= needs a"),
        ("ppo", "reward_model", "is a reward model checkpoint (finetune.py stage=reward); evaluate.py ppo= needs a "),
        ("dpo", "grpo", "is a GRPO checkpoint (finetune.py stage=grpo); evaluate.py dpo= needs a DPO checkpoint"),
        ("grpo", "dpo", "is a DPO checkpoint (finetune.py stage=dpo); evaluate.py grpo= needs a GRPO checkpoint"),
        ("reward_model", "dpo", "is a DPO checkpoint (finetune.py stage=dpo); evaluate.py reward_model= needs a"),
    ],
)
def test_evaluation_refuses_a_checkpoint_of_the_wrong_kind_in_one_line(pipeline, tmp_path, key, given, message):
    paths = {k: pipeline[k] for k in ("sft", "reward_model", "ppo", "dpo", "grpo")}
    paths[key] = pipeline[given]
    with pytest.raises(UserError, match=re.escape(f"{pipeline[given]} {message}")) as err:
        evaluate(
            config("evaluate", pipeline["data"], *(f"{k}={v}" for k, v in paths.items()), f"output_dir={tmp_path}")
        )
    assert "\n" not in str(err.value)


def test_the_command_line_reports_bad_input_in_one_line(tmp_path):
    result = run_script("finetune.py", "stage=ppo", "init_from=sft.ckpt", "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: finetune.py stage=ppo reward_model= not given and no run under outputs/ or multirun/ has one: "
        "run finetune.py stage=reward first"
    )


def test_each_stage_takes_the_latest_checkpoint_of_the_kind_it_needs_by_name(pipeline, tmp_path, monkeypatch):
    """A project's outputs/ holding a run of each stage: finetune.py and evaluate.py need no paths."""
    files = [("pretrained", "best.ckpt"), ("sft", "sft.ckpt"), ("reward_model", "reward.ckpt"), ("ppo", "ppo.ckpt")]
    for age, (key, name) in enumerate(files):
        folder = tmp_path / "outputs" / f"run{age}" / "checkpoints"
        folder.mkdir(parents=True)
        shutil.copy(pipeline[key], folder / name)
        os.utime(folder / name, (1e9 + age, 1e9 + age))  # each stage's run newer than the one before
    monkeypatch.chdir(tmp_path)
    expected = {
        "sft": {"init_from": "run0"},
        "sft stage.hinted_samples=2": {"init_from": "run1"},  # a second round: from the SFT model
        "reward": {"init_from": "run1"},
        "ppo": {"init_from": "run1", "reward_model": "run2"},
        "dpo": {"init_from": "run1"},
        "grpo": {"init_from": "run1"},
    }
    for stage, picked in expected.items():
        cfg = config("finetune", *f"stage={stage}".split(), pipeline["data"])
        pick_inputs(cfg)
        assert {key: Path(cfg[key]).parts[1] for key in picked} == picked
    cfg = config("finetune", "stage=grpo", "stage.reward=reward_model", pipeline["data"])
    pick_inputs(cfg)
    assert (Path(cfg.init_from).parts[1], Path(cfg.reward_model).parts[1]) == ("run1", "run2")
    cfg = config("finetune", "stage=grpo", pipeline["data"])  # rewarded by the rater: no reward model read
    pick_inputs(cfg)
    assert cfg.reward_model is None
    cfg = config("evaluate", pipeline["data"])
    pick_checkpoints(cfg)
    picked = [Path(cfg[key]).parts[1] for key in ("pretrained", "sft", "reward_model", "ppo")]
    assert picked == ["run0", "run1", "run2", "run3"]
    assert cfg.dpo is None and cfg.grpo is None  # none under outputs/: those columns are left out
    assert cfg.overoptimised is None
