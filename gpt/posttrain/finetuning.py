"""The jobs behind finetune.py: SFT, reward model, PPO, DPO and GRPO, each from the checkpoint of the stage before."""

import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from gpt.core.checkpoint import Checkpoint, load_model, read_checkpoint
from gpt.core.errors import UserError, invalid_config
from gpt.core.loggers import instantiate_loggers
from gpt.core.model import GPT, RewardModel
from gpt.core.module import optim_problems
from gpt.core.progress import StepProgressBar
from gpt.core.runs import latest_or_refuse
from gpt.core.tokenizer import CharTokenizer
from gpt.core.trainer import instantiate_trainer, trainer_problems
from gpt.posttrain.qa import prompt_length
from gpt.posttrain.qa_data import QAData, encode_documents, hinted_answers, load_policy, load_qa, sample_rated
from gpt.posttrain.rlhf import answer_logprobs, join, pairwise_accuracy
from gpt.posttrain.stages import DPOModule, GRPOModule, PPOModule, RewardModule, RolloutModule, SFTModule

log = logging.getLogger(__name__)


def ranked_groups(ratings: list[float], group_size: int, *answers: torch.Tensor) -> TensorDataset:
    """Per-answer tensors (``answers``: sequences, lengths, ...; ``group_size`` consecutive rows to a question)
    as one row per question, the rater's scores last; a question whose answers all got one rating is dropped."""
    ratings = torch.tensor(ratings, dtype=torch.float64, device=answers[0].device).view(-1, group_size)
    ranked = (ratings != ratings[:, :1]).any(1)
    if not ranked.any():
        raise UserError("every sampled answer got the same rating: no pairs to learn from; sample more questions")
    grouped = [tensor.view(-1, group_size, *tensor.shape[1:])[ranked] for tensor in answers]
    return TensorDataset(*grouped, ratings[ranked])


def count_pairs(groups: TensorDataset) -> int:
    """How many pairs of answers to one question the rater ranks (ties dropped)."""
    ratings = groups.tensors[-1]
    return int((ratings[:, :, None] > ratings[:, None, :]).sum())


COUNTS = ("batch_size", "questions", "eval_questions", "updates", "questions_per_update", "epochs", "minibatch_size")
# PPO's and DPO's coefficients: what each must be (out of range, they train silently wrong: a negative clip or
# max_grad_norm flips the update, a gamma above 1 grows the returns without bound)
PPO_SETTINGS = {
    "kl_coef": (lambda v: v >= 0, ">= 0"),
    "beta": (lambda v: v > 0, "> 0"),
    "clip": (lambda v: v > 0, "> 0"),
    "value_clip": (lambda v: v > 0, "> 0"),
    "value_coef": (lambda v: v >= 0, ">= 0"),
    "gamma": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "lam": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "max_grad_norm": (lambda v: v > 0, "> 0"),
    "examples_per_update": (lambda v: v >= 0, ">= 0"),
}


# The checkpoints each stage reads, and the kinds each accepts: more SFT may start from an SFT model.
INPUTS = {
    "sft": {"init_from": ("pretrained", "sft")},
    "reward": {"init_from": ("sft",)},
    "ppo": {"init_from": ("sft",), "reward_model": ("reward",)},
    "dpo": {"init_from": ("sft",)},
    "grpo": {"init_from": ("sft",), "reward_model": ("reward",)},  # reward_model: with stage.reward=reward_model
}
REWARDS = ("rater", "reward_model")  # what GRPO's stage.reward may be


def inputs(cfg: DictConfig) -> dict[str, tuple[str, ...]]:
    """The checkpoints this run reads (config key: the kinds it accepts)."""
    needed = dict(INPUTS[cfg.stage.name])
    if cfg.stage.get("reward") == "rater":
        del needed["reward_model"]  # GRPO rewarded by the rater itself
    return needed


@dataclass(frozen=True, eq=False)
class Start:
    """What a stage starts from, each checkpoint read once: the init_from checkpoint, its GPT and tokenizer,
    and (stage=ppo, and stage=grpo rewarded by it) the reward model."""

    init: Checkpoint
    policy: GPT
    tokenizer: CharTokenizer
    reward_model: RewardModel | None = None


def check_config(cfg: DictConfig) -> None:
    """Raise one UserError listing every setting that cannot work, before any checkpoint is read."""
    problems = []

    def require(ok, message):
        if not ok:
            problems.append(message)

    stage = cfg.stage
    require(stage.name in STAGES, f"stage={stage.name} is not one of {sorted(STAGES)}")
    require(0 < cfg.data.train_fraction < 1, f"data.train_fraction={cfg.data.train_fraction} must be in (0, 1)")
    require(cfg.qa.max_question_chars >= 1 and cfg.qa.max_answer_chars >= 1, "qa.max_*_chars must be >= 1")
    require(0 <= cfg.qa.topic_weight <= 1, f"qa.topic_weight={cfg.qa.topic_weight} must be in [0, 1]")
    for key in COUNTS:
        if key in stage:
            require(stage[key] >= 1, f"stage.{key}={stage[key]} must be >= 1")
    if "samples_per_question" in stage:
        require(stage.samples_per_question >= 2, "stage.samples_per_question must be >= 2 to rank or compare answers")
    if "hinted_samples" in stage:
        n = stage.hinted_samples
        require(isinstance(n, int) and n >= 0, f"stage.hinted_samples={n} must be a whole number >= 0 (0: none)")
    if "hint_min_form" in stage:
        require(0 <= stage.hint_min_form <= 1, f"stage.hint_min_form={stage.hint_min_form} must be in [0, 1]")
    if "temperature" in stage:
        require(stage.temperature > 0, f"stage.temperature={stage.temperature} must be > 0")
    for key, (ok, allowed) in PPO_SETTINGS.items():
        if key in stage:
            require(ok(stage[key]), f"stage.{key}={stage[key]} must be {allowed}")
    if "reward" in stage:
        require(stage.reward in REWARDS, f"stage.reward={stage.reward} is not one of {list(REWARDS)}")
    if stage.name in STAGES and stage.get("reward") in (None, *REWARDS):
        require(
            cfg.reward_model is None or "reward_model" in inputs(cfg),
            f"reward_model={cfg.reward_model} is read only by stage=ppo and by stage=grpo with "
            "stage.reward=reward_model: leave it out",
        )
    problems += optim_problems(cfg.optim) + trainer_problems(cfg.trainer)
    if problems:
        raise invalid_config(problems)


def check_context(cfg: DictConfig, block_size: int) -> None:
    """Refuse Q/A lengths that do not fit the context of the model the stage starts from."""
    longest = prompt_length(cfg.qa.max_question_chars) + cfg.qa.max_answer_chars + 1
    if longest > block_size:
        raise UserError(
            f"a prompt of qa.max_question_chars={cfg.qa.max_question_chars}, an answer of qa.max_answer_chars="
            f"{cfg.qa.max_answer_chars} and the stop make {longest} characters, more than the model's context "
            f"{block_size}: shorten them"
        )


def read_inputs(cfg: DictConfig) -> Start:
    """Read each checkpoint the stage needs once, refusing a wrong kind before anything else is loaded."""
    name = cfg.stage.name
    checkpoints = {
        key: read_checkpoint(cfg[key]).require(kinds, f"finetune.py stage={name} {key}=")
        for key, kinds in inputs(cfg).items()
    }
    init = checkpoints["init_from"]
    policy, tokenizer = load_policy(init, INPUTS[name]["init_from"], f"finetune.py stage={name} init_from=")
    reward_model = None
    if "reward_model" in checkpoints:
        reward = checkpoints["reward_model"]
        if reward.vocab != init.vocab:
            raise UserError(f"{reward.path} was trained on another vocabulary than {init.path}")
        reward_model, _ = load_model(reward, kinds=("reward",), job=f"finetune.py stage={name} reward_model=")
    return Start(init, policy, tokenizer, reward_model)


def pick_inputs(cfg: DictConfig) -> None:
    """Fill each checkpoint the stage needs and was not given with the latest of its kind, and say which.

    stage=sft starts from the best checkpoint of the latest pre-training run (with stage.hinted_samples, from the
    latest SFT model, which writes the hinted answers); stage=reward and stage=ppo from the latest SFT model;
    PPO's reward model is the latest one.
    """
    for key, kinds in inputs(cfg).items():
        if cfg[key] is None:
            default = kinds
            if key == "init_from" and cfg.stage.name == "sft":  # hinted answers need a model that answers
                default = ("sft",) if cfg.stage.get("hinted_samples") else ("pretrained",)
            cfg[key] = str(latest_or_refuse(default, f"finetune.py stage={cfg.stage.name} {key}="))
            log.info(f"{key}={cfg[key]} (the latest {' or '.join(default)} checkpoint)")


def finetune(cfg: DictConfig) -> str:
    """Run the stage ``cfg.stage.name``; returns the path of the checkpoint it wrote."""
    started = time.perf_counter()
    check_config(cfg)
    pick_inputs(cfg)
    start = read_inputs(cfg)
    check_context(cfg, start.policy.block_size)
    qa = load_qa(cfg)
    config = OmegaConf.to_container(cfg, resolve=True)

    loggers = instantiate_loggers(cfg.logger)  # checks the W&B login before anything trains
    # The console train.py shows: progress by step, no "Epoch".
    shown = cfg.trainer.get("enable_progress_bar", True)
    bar = [StepProgressBar(refresh_rate=cfg.trainer.log_every_n_steps)] if shown else []
    trainer = instantiate_trainer(cfg.trainer, logger=loggers or False, enable_checkpointing=False, callbacks=bar)
    if trainer.world_size > 1:
        # Each stage would do the same work on every device: the same batches, the same sampled answers.
        raise UserError(
            f"finetune.py runs on one device, this trainer has {trainer.world_size}: the post-training models are "
            "as small as the pre-trained one and train in minutes; set trainer.devices=1 trainer.num_nodes=1"
        )
    for logger in loggers:
        logger.log_hyperparams(config)
    module = STAGES[cfg.stage.name](cfg, config, start, qa, trainer)
    module.wall_time_s = time.perf_counter() - started  # recorded in the checkpoint: evaluate.py reports it
    path = Path(cfg.output_dir) / "checkpoints" / f"{cfg.stage.name}.ckpt"
    trainer.save_checkpoint(path, weights_only=True)
    log.info(f"{module.__class__.__name__} checkpoint {path}")
    return str(path)


def run_sft(cfg, config, start: Start, qa: QAData, trainer) -> SFTModule:
    tokenizer = start.tokenizer
    module = SFTModule(start.init.model_config, config["optim"], tokenizer.chars, run_config=config, seed=cfg.seed)
    module.model.load_state_dict(start.policy.state_dict())
    pairs = qa.train
    if cfg.stage.hinted_samples:
        stage = cfg.stage
        found = hinted_answers(
            start.policy,
            tokenizer,
            qa.questions,
            qa.rater,
            stage.hinted_samples,
            stage.hint_min_form,
            cfg.qa.max_answer_chars,
            seed=cfg.seed,
        )
        log.info(
            f"{len(found)} of {len(qa.questions)} training questions get an answer of the starting model that picks "
            f"them up ({stage.hinted_samples} answers each started with its last content word; form >= "
            f"{stage.hint_min_form}): added to the {len(pairs)} documents"
        )
        pairs = pairs + found
    train = TensorDataset(*encode_documents(pairs, tokenizer))
    heldout = TensorDataset(*encode_documents(qa.heldout, tokenizer))
    train_loader = DataLoader(train, batch_size=cfg.stage.batch_size, shuffle=True, drop_last=True)
    heldout_loader = DataLoader(heldout, batch_size=len(heldout))
    (before,) = trainer.validate(module, heldout_loader, verbose=False)
    trainer.fit(module, train_loader, heldout_loader)
    (after,) = trainer.validate(module, heldout_loader, verbose=False)
    log.info(
        f"held-out answer loss ({len(heldout)} pairs): {before['val/answer_loss']:.4f} before SFT, "
        f"{after['val/answer_loss']:.4f} after"
    )
    return module


@dataclass(frozen=True)
class RatedAnswers:
    """K answers of the SFT model to each of some questions (rows i*K .. i*K+K-1), as the models score them:
    the sequences prompt + answer, where each answer starts and ends in them, and the rater's totals."""

    idx: torch.Tensor
    prompt_lengths: torch.Tensor
    ends: torch.Tensor
    scores: list[float]


def sample_ranked(cfg, start: Start, qa: QAData):
    """The rated SFT answers the reward model and DPO learn from, training questions first, then held-out ones:
    ``stage.samples_per_question`` answers to each of ``stage.questions`` (``stage.eval_questions``)."""
    stage, rng = cfg.stage, random.Random(cfg.seed)
    for name, pairs, n in (("train", qa.train, stage.questions), ("held-out", qa.heldout, stage.eval_questions)):
        questions = rng.sample(pairs, min(n, len(pairs)))
        prompts, answers, _, ratings = sample_rated(
            start.policy, start.tokenizer, questions, qa.rater, stage.samples_per_question, stage.temperature, cfg.seed
        )
        idx, prompt_lengths = join(prompts, answers)
        rated = RatedAnswers(idx, prompt_lengths, prompt_lengths + answers.lengths, [r.total for r in ratings])
        log.info(
            f"{name}: {len(questions)} questions x {stage.samples_per_question} SFT answers "
            f"(mean rater score {sum(rated.scores) / len(rated.scores):.3f})"
        )
        yield name, rated


def log_groups(name: str, groups: TensorDataset) -> None:
    log.info(f"{name}: {count_pairs(groups)} ranked pairs; {len(groups)} questions rank at least one pair")


def run_reward(cfg, config, start: Start, qa: QAData, trainer) -> RewardModule:
    stage, policy, tokenizer = cfg.stage, start.policy, start.tokenizer
    datasets = []
    for name, rated in sample_ranked(cfg, start, qa):
        groups = ranked_groups(rated.scores, stage.samples_per_question, rated.idx, rated.ends)
        log_groups(name, groups)
        datasets.append((groups, rated.idx, rated.ends))
    (train, train_answers, train_ends), (heldout, _, _) = datasets

    module = RewardModule(start.init.model_config, config["optim"], tokenizer.chars, run_config=config, seed=cfg.seed)
    module.model.backbone.load_state_dict(policy.state_dict())
    train_loader = DataLoader(train, batch_size=stage.batch_size, shuffle=True, drop_last=True)
    heldout_loader = DataLoader(heldout, batch_size=len(heldout))
    trainer.fit(module, train_loader, heldout_loader)
    module.normalise(train_answers, train_ends)
    with torch.no_grad():
        module.eval()
        sequences, ends, ratings = heldout.tensors
        accuracy = pairwise_accuracy(module.scores(sequences, ends), ratings)
    log.info(f"held-out pairwise accuracy {accuracy:.3f} ({count_pairs(heldout)} pairs)")
    return module


def run_rollouts(module_class: type[RolloutModule], summary: str):
    """The job of a stage that learns from its own sampled answers (PPO, GRPO): ``updates`` batches of
    ``questions_per_update`` training questions drawn with the run's seed, one update each; ``summary`` formats the
    first and the last update's figures for the log."""

    def run(cfg, config, start: Start, qa: QAData, trainer) -> RolloutModule:
        stage, tokenizer = cfg.stage, start.tokenizer
        rng = random.Random(cfg.seed)
        questions = rng.choices(qa.train, k=stage.updates * stage.questions_per_update)
        prompts = [tokenizer.encode(pair.prompt) for pair in questions]
        loader = DataLoader(prompts, batch_size=stage.questions_per_update, collate_fn=list)
        settings = {**config["stage"], "seed": cfg.seed}
        module = module_class(
            start.init.model_config,
            config["optim"],
            tokenizer.chars,
            settings,
            start.reward_model,
            qa.rater,
            start.policy.state_dict(),
            run_config=config,
        )
        trainer.fit(module, loader)
        for figures in (module.history[0], module.history[-1]):
            log.info(summary.format(**figures))
        return module

    return run


REFERENCE_CHUNK = 1024  # answers scored at once by the reference model


@torch.no_grad()
def reference_logprobs(reference: GPT, rated: RatedAnswers, temperature: float) -> torch.Tensor:
    """Each answer's log-probability under the frozen reference (the SFT model), computed once before DPO."""
    reference.eval()
    chunks = zip(*(t.split(REFERENCE_CHUNK) for t in (rated.idx, rated.prompt_lengths, rated.ends)))
    return torch.cat([answer_logprobs(reference(idx)[0], idx, p, e, temperature) for idx, p, e in chunks])


def run_dpo(cfg, config, start: Start, qa: QAData, trainer) -> DPOModule:
    stage, tokenizer = cfg.stage, start.tokenizer
    datasets = []
    for name, rated in sample_ranked(cfg, start, qa):
        reference = reference_logprobs(start.policy, rated, stage.temperature)
        groups = ranked_groups(
            rated.scores, stage.samples_per_question, rated.idx, rated.prompt_lengths, rated.ends, reference
        )
        log_groups(name, groups)
        datasets.append(groups)
    train, heldout = datasets
    module = DPOModule(
        start.init.model_config, config["optim"], tokenizer.chars, stage.beta, stage.temperature, config, cfg.seed
    )
    module.model.load_state_dict(start.policy.state_dict())
    train_loader = DataLoader(train, batch_size=stage.batch_size, shuffle=True, drop_last=True)
    heldout_loader = DataLoader(heldout, batch_size=len(heldout))
    (before,) = trainer.validate(module, heldout_loader, verbose=False)
    trainer.fit(module, train_loader, heldout_loader)
    (after,) = trainer.validate(module, heldout_loader, verbose=False)
    module.validation = {"before": before, "after": after}
    log.info(
        f"held-out DPO loss {before['val/loss']:.4f} -> {after['val/loss']:.4f}, implicit reward pairwise accuracy "
        f"{before['val/accuracy']:.3f} -> {after['val/accuracy']:.3f} ({count_pairs(heldout)} pairs)"
    )
    return module


run_ppo = run_rollouts(
    PPOModule,
    "update {update}: reward model {rm_score:+.3f}, rater {rater_score:.3f}, KL {kl:.2f}, stop rate {stop_rate:.2f}, "
    "distinct {distinct:.2f}",
)
run_grpo = run_rollouts(
    GRPOModule,
    "update {update}: reward {reward:+.3f}, rater {rater_score:.3f} (picks up {rater_picks_up:.3f}), KL {kl:.2f}, "
    "stop rate {stop_rate:.2f}, distinct {distinct:.2f}",
)
STAGES = {"sft": run_sft, "reward": run_reward, "ppo": run_ppo, "dpo": run_dpo, "grpo": run_grpo}
