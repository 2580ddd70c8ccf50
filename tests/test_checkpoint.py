"""The checkpoint contract: every module records its kind, old files get it inferred, and every loader refuses
every kind it does not accept with one line that says what the file is and what writes the right kind."""

import dataclasses

import pytest
import torch

from gpt.core.checkpoint import KINDS, LANGUAGE_MODELS, load_model, read_checkpoint
from gpt.core.errors import UserError
from gpt.core.model import GPT, GPTConfig, RewardModel, build_model, full_config
from gpt.core.tokenizer import CharTokenizer
from gpt.posttrain.qa import Rater
from gpt.posttrain.stages import DPOModule, GRPOModule, PPOModule, RewardModule, SFTModule
from gpt.pretrain.lightning_module import GPTModule

VOCAB = sorted(set("QA: \nabcdefghij.!?"))
MODEL = {"arch": "gpt", "block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 16, "dropout": 0.0, "bias": False}
OPTIM = {"lr": 1e-3, "weight_decay": 0.0, "betas": [0.9, 0.99], "warmup_steps": 0, "decay_steps": 10, "min_lr": 1e-3}
PPO = {"seed": 0}


def stage_module(kind: str, model=MODEL, vocab=VOCAB):
    """The module that writes checkpoints of ``kind``, with the run config its job would give it."""
    config = {"model": model} if kind == "pretrained" else {"stage": {"name": kind}, "model": model}
    if kind == "pretrained":
        return GPTModule(model, OPTIM, vocab, run_config=config)
    if kind == "sft":
        return SFTModule(model, OPTIM, vocab, run_config=config)
    if kind == "reward":
        return RewardModule(model, OPTIM, vocab, run_config=config)
    if kind == "dpo":
        return DPOModule(model, OPTIM, vocab, beta=0.1, temperature=1.0, run_config=config)
    if kind == "grpo":
        init = build_model(vocab_size=len(vocab), **model).state_dict()
        return GRPOModule(model, OPTIM, vocab, PPO, None, Rater({"a"}), init, run_config=config)
    reward_model = RewardModel(build_model(vocab_size=len(vocab), **model))
    init = build_model(vocab_size=len(vocab), **model).state_dict()
    return PPOModule(model, OPTIM, vocab, PPO, reward_model, Rater({"a"}), init, run_config=config)


def write_checkpoint(module, path):
    """What ``trainer.save_checkpoint(path, weights_only=True)`` writes for ``module``: its weights and
    hyperparameters, and whatever its ``on_save_checkpoint`` adds."""
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), "global_step": 0}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kinds")
    return {kind: write_checkpoint(stage_module(kind), folder / f"{kind}.ckpt") for kind in KINDS}


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_module_records_its_kind(checkpoints, kind):
    assert torch.load(checkpoints[kind], weights_only=True)["kind"] == kind
    checkpoint = read_checkpoint(checkpoints[kind])
    assert checkpoint.kind == kind and checkpoint.kind_recorded
    assert checkpoint.vocab == VOCAB and checkpoint.model_config == full_config(**MODEL)
    assert torch.load(checkpoints[kind], weights_only=True)["rng"]["torch"].dtype == torch.uint8  # RNG kept too


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_checkpoint_written_before_kinds_were_recorded_gets_its_kind_inferred(checkpoints, kind, tmp_path):
    old = torch.load(checkpoints[kind], weights_only=True)
    del old["kind"]
    torch.save(old, tmp_path / "old.ckpt")
    checkpoint = read_checkpoint(tmp_path / "old.ckpt")
    assert checkpoint.kind == kind and not checkpoint.kind_recorded
    model, _ = load_model(checkpoint, kinds=[kind])
    assert isinstance(model, RewardModel if kind == "reward" else GPT)


def test_a_checkpoint_states_every_model_setting_and_one_that_left_some_out_still_loads(checkpoints, tmp_path):
    raw = torch.load(checkpoints["sft"], weights_only=True)
    settings = [field.name for field in dataclasses.fields(GPTConfig) if field.name != "vocab_size"]
    assert list(raw["hyper_parameters"]["model"]) == ["arch", *settings]  # the defaults written out, MODEL's first
    raw["hyper_parameters"]["model"] = MODEL  # as written before: the switches MODEL leaves out are missing
    torch.save(raw, tmp_path / "old.ckpt")
    model, _ = load_model(tmp_path / "old.ckpt")
    assert model.config == GPTConfig(len(VOCAB), **{k: v for k, v in MODEL.items() if k != "arch"})


def test_the_loader_builds_each_kind_in_eval_mode_and_freezes_the_reward_model(checkpoints):
    for kind in LANGUAGE_MODELS:
        model, tokenizer = load_model(checkpoints[kind], kinds=LANGUAGE_MODELS)
        assert isinstance(model, GPT) and not model.training and tokenizer.chars == VOCAB
    reward_model, tokenizer = load_model(checkpoints["reward"], kinds=["reward"])
    assert isinstance(reward_model, RewardModel) and not reward_model.training
    assert not any(p.requires_grad for p in reward_model.parameters())
    idx = torch.tensor([CharTokenizer(VOCAB).encode("Q: ab\nA: c\n")])
    assert reward_model.score(idx, torch.tensor([idx.size(1)])).shape == (1,)


# Every loader of the project: the kinds it accepts, as its job names them.
LOADERS = {
    "sample.py": LANGUAGE_MODELS,
    "train.py ckpt_path=": ("pretrained",),
    "finetune.py stage=sft init_from=": ("pretrained", "sft"),
    "finetune.py stage=reward init_from=": ("sft",),
    "finetune.py stage=ppo init_from=": ("sft",),
    "finetune.py stage=ppo reward_model=": ("reward",),
    "finetune.py stage=dpo init_from=": ("sft",),
    "finetune.py stage=grpo init_from=": ("sft",),
    "finetune.py stage=grpo reward_model=": ("reward",),
    "evaluate.py pretrained=": ("pretrained",),
    "evaluate.py sft=": ("sft",),
    "evaluate.py ppo=": ("ppo",),
    "evaluate.py dpo=": ("dpo",),
    "evaluate.py grpo=": ("grpo",),
    "evaluate.py reward_model=": ("reward",),
}
WRONG = [(job, kind) for job, kinds in LOADERS.items() for kind in KINDS if kind not in kinds]


@pytest.mark.parametrize("job, kind", WRONG)
def test_every_loader_refuses_every_wrong_kind_in_one_line(checkpoints, job, kind):
    what, maker = KINDS[kind]
    with pytest.raises(UserError) as err:
        load_model(checkpoints[kind], kinds=LOADERS[job], job=job)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{checkpoints[kind]} is {what} checkpoint ({maker}); {job} needs ")
    for wanted in LOADERS[job]:  # and it names what writes the kind wanted
        assert KINDS[wanted][1].split()[-1] in message


def test_the_language_model_loaders_message_names_all_three_sources(checkpoints):
    with pytest.raises(UserError) as err:
        load_model(checkpoints["reward"], kinds=LANGUAGE_MODELS, job="sample.py")
    assert str(err.value) == (
        f"{checkpoints['reward']} is a reward model checkpoint (finetune.py stage=reward); sample.py needs a "
        "language model: a checkpoint of train.py, finetune.py stage=sft, stage=ppo, stage=dpo or stage=grpo"
    )
