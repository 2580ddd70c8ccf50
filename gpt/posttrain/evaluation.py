"""The job behind evaluate.py: pre-trained, SFT, PPO, DPO and GRPO checkpoints compared on held-out questions."""

import logging
import random
from pathlib import Path

import torch
from matplotlib.figure import Figure
from omegaconf import DictConfig

from gpt.core.checkpoint import load_model, read_checkpoint
from gpt.core.device import pick_device
from gpt.core.errors import UserError
from gpt.core.report import markdown_table
from gpt.core.runs import latest, latest_or_refuse
from gpt.posttrain.qa import STOP, QAPair, Rating, shares_content_word
from gpt.posttrain.qa_data import QAData, encode_documents, load_policy, load_qa, sample_rated
from gpt.posttrain.rlhf import Answers, answer_loss, at_answer, join, kl_divergence, length_mask, pad_right

log = logging.getLogger(__name__)

# config key: (the table's column, the kinds it accepts); reward_model is a reward checkpoint
POLICIES = {
    "pretrained": ("pre-trained", ("pretrained",)),
    "sft": ("SFT", ("sft",)),
    "ppo": ("PPO", ("ppo",)),
    "dpo": ("DPO", ("dpo",)),
    "grpo": ("GRPO", ("grpo",)),
    "overoptimised": ("PPO, over-optimised", ("ppo",)),
}

REAL = "real replies"  # the column of the play's own replies to the held-out questions (their answers)

COLUMNS = {  # figure: (table header, format); a figure of None (KL, loss of the real replies) reads "n/a"
    "rater": ("rater score", "{:.3f}"),
    **{c: (c.replace("_", " "), "{:.3f}") for c in Rating.COMPONENTS},
    "reward_model": ("reward-model score", "{:+.3f}"),
    "kl_to_sft": ("KL to SFT (nats/answer)", "{:.2f}"),
    "answer_loss": ("held-out answer loss", "{:.3f}"),
    "stop_rate": ("stop rate", "{:.3f}"),
    "distinct": ("distinct answers", "{:.3f}"),
    "on_topic": ("shares a content word with its question", "{:.3f}"),
    "win_rate": ("win rate against SFT (rater, ties half)", "{:.3f}"),
    "answer_chars": ("answer length (chars)", "{:.1f}"),
    "wall_time_s": ("stage wall time (s)", "{:.1f}"),
}


def win_rate(totals: list[float], sft_totals: list[float]) -> float:
    """The share of questions whose answer the rater scores above the SFT model's answer, a tie counting half."""
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(totals, sft_totals)) / len(totals)


def cell(figure: float | None, key: str) -> str:
    return "n/a" if figure is None else COLUMNS[key][1].format(figure)


def answer_figures(pairs: list[QAPair], answers: Answers, texts, ratings, idx, prompt_lengths, reward_model) -> dict:
    """The figures that need only the answers: the rater's, the reward model's, stop rate, distinct answers,
    how many share a content word with their question (an answer that never stopped does not), length."""
    rating = Rating.means(ratings)
    on_topic = [s and shares_content_word(p.question, t) for p, t, s in zip(pairs, texts, answers.stopped.tolist())]
    return {
        "rater": rating["total"],
        **{c: rating[c] for c in Rating.COMPONENTS},
        "reward_model": reward_model.score(idx, prompt_lengths + answers.lengths).mean().item(),
        "on_topic": sum(on_topic) / len(on_topic),
        **answers.stats(texts),
    }


@torch.no_grad()
def measure_replies(tokenizer, reward_model, pairs: list[QAPair], qa: QAData):
    """The figures of the play's own replies to the questions (each pair's answer, then the stop), scored like
    a policy's answers; they have no KL to the SFT model and no answer loss."""
    device = next(reward_model.parameters()).device
    texts = [pair.answer for pair in pairs]
    prompts = [tokenizer.encode(pair.prompt) for pair in pairs]
    answers = Answers(
        pad_right([tokenizer.encode(text + STOP) for text in texts]).to(device),
        torch.tensor([len(text) + 1 for text in texts], device=device),
        torch.ones(len(texts), dtype=torch.bool, device=device),
    )
    idx, prompt_lengths = join(prompts, answers)
    ratings = [qa.rater.rate(pair.question, pair.answer) for pair in pairs]
    figures = answer_figures(pairs, answers, texts, ratings, idx, prompt_lengths, reward_model)
    return {**figures, "kl_to_sft": None, "answer_loss": None, "wall_time_s": None}, texts, ratings


@torch.no_grad()
def measure(model, tokenizer, sft, reward_model, pairs, qa: QAData, cfg: DictConfig):
    """The figures of one policy on the held-out pairs, and its answers."""
    prompts, answers, texts, ratings = sample_rated(model, tokenizer, pairs, qa.rater, 1, cfg.temperature, cfg.seed)
    idx, prompt_lengths = join(prompts, answers)
    width = answers.tokens.size(1)
    mask = length_mask(answers.lengths, width)
    kl = kl_divergence(
        at_answer(model(idx)[0], prompt_lengths, width),
        at_answer(sft(idx)[0], prompt_lengths, width),
        cfg.temperature,
    )
    x, y, answer_mask = (t.to(idx.device) for t in encode_documents(pairs, tokenizer))
    figures = {
        **answer_figures(pairs, answers, texts, ratings, idx, prompt_lengths, reward_model),
        "kl_to_sft": (kl * mask).sum(1).mean().item(),
        "answer_loss": answer_loss(model(x)[0], y, answer_mask).item(),
    }
    shown = [text if stopped else text + " …" for text, stopped in zip(texts, answers.stopped.tolist())]
    return figures, shown, ratings


def plot_history(runs: dict[str, list[dict]], path: Path) -> None:
    """Left: rater score and KL to the SFT model over PPO updates. Right: reward-model vs rater score."""
    fig = Figure(figsize=(12, 4.5))  # no pyplot: nothing global, no display needed
    left, right = fig.subplots(1, 2)
    kl_axis = left.twinx()
    for (name, history), color in zip(runs.items(), ("tab:blue", "tab:red", "tab:green")):
        updates = [h["update"] for h in history]
        left.plot(updates, [h["rater_score"] for h in history], color=color, label=f"{name}: rater score")
        kl_axis.plot(updates, [h["kl"] for h in history], color=color, linestyle="--", label=f"{name}: KL")
        right.plot(updates, [h["rm_score"] for h in history], color=color, linestyle=":", label=f"{name}: reward model")
        right.plot(updates, [h["rater_score"] for h in history], color=color, label=f"{name}: rater")
    left.set(xlabel="PPO update", ylabel="rater score (solid)", title="rater score and KL to SFT on rollouts")
    kl_axis.set_ylabel("KL to SFT, nats per answer (dashed)")
    right.set(xlabel="PPO update", ylabel="score", title="reward-model score (normalised) vs rater score")
    left.legend(loc="upper left", fontsize=8)
    kl_axis.legend(loc="lower right", fontsize=8)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def pick_checkpoints(cfg: DictConfig) -> None:
    """Fill the checkpoints not given with the latest of their kind, and say which: an SFT model and a reward
    model must exist; the pre-trained, PPO, DPO and GRPO models are compared when there is one; overoptimised
    only if given."""
    for key, kind, required in (("sft", "sft", True), ("reward_model", "reward", True),
                                ("pretrained", "pretrained", False), ("ppo", "ppo", False),
                                ("dpo", "dpo", False), ("grpo", "grpo", False)):  # fmt: skip
        if cfg[key] is not None:
            continue
        found = latest_or_refuse((kind,), f"evaluate.py {key}=") if required else getattr(latest((kind,)), "path", None)
        if found is not None:
            cfg[key] = str(found)
            log.info(f"{key}={cfg[key]} (the latest {kind} checkpoint)")


def evaluate(cfg: DictConfig) -> str:
    """Write eval.md (figures, examples) and eval.png (PPO curves) into the run folder; returns the table."""
    if cfg.temperature <= 0:
        raise UserError(f"temperature={cfg.temperature} must be > 0")
    if cfg.questions is not None and cfg.questions < 1:
        raise UserError(f"questions={cfg.questions} must be >= 1 (or null: all the held-out questions)")
    if cfg.examples < 0:
        raise UserError(f"examples={cfg.examples} must be >= 0")
    pick_checkpoints(cfg)
    # Each file read once, and every kind checked before anything is loaded.
    checkpoints = {
        key: read_checkpoint(cfg[key]).require(kinds, f"evaluate.py {key}=")
        for key, (_, kinds) in POLICIES.items()
        if cfg[key] is not None
    }
    reward = read_checkpoint(cfg.reward_model).require(("reward",), "evaluate.py reward_model=")
    for checkpoint in [*checkpoints.values(), reward]:
        if checkpoint.vocab != checkpoints["sft"].vocab:
            raise UserError(f"{checkpoint.path} has another vocabulary than sft={cfg.sft}")
    device = pick_device(cfg.device)
    qa = load_qa(cfg)
    n = None if cfg.questions is None else min(cfg.questions, len(qa.heldout))  # more than there are: all
    pairs = qa.heldout if n is None else random.Random(cfg.seed).sample(qa.heldout, n)
    sft, tokenizer = load_policy(checkpoints["sft"], POLICIES["sft"][1], "evaluate.py sft=", device)
    reward_model, _ = load_model(reward, device, kinds=("reward",), job="evaluate.py reward_model=")
    results = {REAL: measure_replies(tokenizer, reward_model, pairs, qa)}  # the play's replies: the yardstick
    for key, checkpoint in checkpoints.items():
        name, kinds = POLICIES[key]
        model = sft if key == "sft" else load_policy(checkpoint, kinds, f"evaluate.py {key}=", device)[0]
        figures, texts, ratings = measure(model, tokenizer, sft, reward_model, pairs, qa, cfg)
        results[name] = {**figures, "wall_time_s": checkpoint.raw.get("wall_time_s")}, texts, ratings
    sft_totals = [rating.total for rating in results["SFT"][2]]
    for figures, _, ratings in results.values():
        figures["win_rate"] = win_rate([rating.total for rating in ratings], sft_totals)
    for name, (figures, _, _) in results.items():
        log.info(f"{name}: " + ", ".join(f"{k} {cell(v, k)}" for k, v in figures.items()))

    rows = [[COLUMNS[k][0], *(cell(f[k], k) for f, _, _ in results.values())] for k in COLUMNS]
    table = markdown_table(["on held-out questions", *results], rows)
    policies = [name for name in results if name != REAL]  # the real replies are the "held-out answer" column
    examples = [
        [pair.question, pair.answer, *(results[name][1][i] for name in policies)]
        for i, pair in enumerate(pairs[: cfg.examples])
    ]
    out = Path(cfg.output_dir)
    reward_time = reward.raw.get("wall_time_s")
    reward_note = "" if reward_time is None else f" (PPO's needs the reward model's too: {reward_time:.0f} s)"
    report = (
        f"# {len(pairs)} held-out questions, one answer each (temperature {cfg.temperature}, seed {cfg.seed})\n\n"
        f"{table}\n{REAL}: the play's own reply to each question (its first sentence), scored like the models' "
        "answers; it has no KL to SFT and no answer loss. A content word has 4 letters or more and is not in "
        "gpt/posttrain/qa.py's STOP_WORDS. form: the rater's question-blind part; picks up: the share of an "
        f"answer's content words its question holds (the rater's topic_weight is {qa.rater.topic_weight}). Win "
        "rate: per question, the rater's score of the answer against the SFT model's, a tie counting half. Stage "
        f"wall time: the finetune.py job that wrote the checkpoint{reward_note}.\n\n"
        "Examples (… marks an answer that never stopped):\n\n"
        + markdown_table(["question", "held-out answer", *policies], examples)
    )
    (out / "eval.md").write_text(report, encoding="utf-8")
    histories = {
        POLICIES[key][0]: checkpoints[key].raw.get("ppo_history")
        for key in ("ppo", "overoptimised")
        if key in checkpoints
    }
    if histories:
        plot_history({name: history for name, history in histories.items() if history}, out / "eval.png")
    log.info(f"\n{report}\nwritten to {out / 'eval.md'}" + (f" and {out / 'eval.png'}" if histories else ""))
    return table
