"""The LightningModules of the stages after pre-training: SFT, reward model, PPO, DPO, GRPO.

Each builds its own model and stands, as pre-training's ``GPTModule`` does, on ``gpt.core.module``'s
``CheckpointedModule``: its checkpoint records its kind (``sft``, ``reward``, ``ppo``, ``dpo``, ``grpo``), model config,
vocabulary, run config and RNG states; AdamW with the warmup + cosine schedule of ``optim``; ``train/lr``
logging. The policies' checkpoints hold only the language model's weights (under ``model.``), the reward
model's its ``RewardModel``; any of them loads with ``gpt.core.checkpoint.load_model``.
"""

import copy
import math
from pathlib import Path

import torch
from lightning.pytorch.loggers import WandbLogger

from gpt.core.model import RewardModel, build_model, build_reward_model
from gpt.core.module import CheckpointedModule
from gpt.core.report import markdown_table
from gpt.posttrain.qa import STOP, Rater, Rating, question_of
from gpt.posttrain.rlhf import (
    answer_logprobs,
    answer_loss,
    at_answer,
    bradley_terry_loss,
    dpo_loss,
    entropy,
    gae,
    group_advantages,
    join,
    kl_divergence,
    kl_estimate,
    length_mask,
    masked_mean,
    pairwise_accuracy,
    ppo_policy_loss,
    ppo_rewards,
    ppo_value_loss,
    sample_answers,
    token_logprobs,
    whiten,
)


class SFTModule(CheckpointedModule):
    """Supervised fine-tuning on Q/A documents: the loss counts the answer's characters (and stop) only.

    Batches are (inputs, targets, answer mask), see ``gpt.posttrain.finetuning.encode_documents``.
    """

    KIND = "sft"

    def __init__(self, model: dict, optim: dict, vocab: list[str], run_config: dict | None = None, seed: int = 0):
        super().__init__(model, optim, vocab, run_config, seed)
        self.model = build_model(vocab_size=len(vocab), **model)

    def training_step(self, batch, batch_idx):
        x, y, mask = batch
        loss = answer_loss(self.model(x)[0], y, mask)
        self.log("train/answer_loss", loss, prog_bar=True)
        self.log_learning_rate()
        return loss

    def validation_step(self, batch, batch_idx):
        x, y, mask = batch  # one batch: all held-out documents, so the logged value is their exact mean
        self.log("val/answer_loss", answer_loss(self.model(x)[0], y, mask), prog_bar=True)


NORMALISE_CHUNK = 1024  # answers scored at once by RewardModule.normalise


class RewardModule(CheckpointedModule):
    """A reward model (GPT backbone + scalar head) trained with the Bradley-Terry loss on ranked answers.

    Batches are (sequences (B, K, T), their lengths (B, K), the rater's scores (B, K)): the K answers to each of
    B questions. The loss averages each question's pairs that the rater ranks (ties dropped), then the questions.
    """

    KIND = "reward"

    def __init__(self, model: dict, optim: dict, vocab: list[str], run_config: dict | None = None, seed: int = 0):
        super().__init__(model, optim, vocab, run_config, seed)
        self.model = build_reward_model(vocab_size=len(vocab), **model)

    def scores(self, sequences: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
        """(B, K) scores of the answers ``sequences[b, k, :ends[b, k]]``."""
        return self.model.score(sequences.flatten(0, 1), ends.flatten()).view(ends.shape)

    def training_step(self, batch, batch_idx):
        sequences, ends, ratings = batch
        scores = self.scores(sequences, ends)
        loss = bradley_terry_loss(scores, ratings)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/accuracy", pairwise_accuracy(scores, ratings))
        self.log_learning_rate()
        return loss

    def validation_step(self, batch, batch_idx):
        sequences, ends, ratings = batch  # one batch: all held-out questions
        scores = self.scores(sequences, ends)
        self.log("val/loss", bradley_terry_loss(scores, ratings))
        self.log("val/accuracy", pairwise_accuracy(scores, ratings), prog_bar=True)

    @torch.no_grad()
    def normalise(self, sequences: torch.Tensor, ends: torch.Tensor) -> None:
        """Set the score's mean and spread to those of these answers (the SFT model's), so PPO's reward is
        centred with unit spread whatever scale the Bradley-Terry loss left the head at."""
        self.model.mean.zero_()
        self.model.std.fill_(1.0)
        self.model.eval()
        # in chunks: one batch of every training answer would hold gigabytes of activations
        chunks = zip(sequences.split(NORMALISE_CHUNK), ends.split(NORMALISE_CHUNK))
        scores = torch.cat([self.model.score(seq.to(self.device), end.to(self.device)) for seq, end in chunks])
        self.model.mean.copy_(scores.mean())
        self.model.std.copy_(scores.std().clamp(min=1e-6))


class PolicyModule(CheckpointedModule):
    """A stage that moves a policy away from a reference by comparing their probabilities of the same answers
    (PPO, DPO, GRPO): every network stays in eval mode (no dropout), so that a ratio or a log-ratio compares
    deterministic functions (it is exactly 1, or 0, before the first update) and frozen models never train.
    Its checkpoint holds only the policy (``model.``): a language model that sample.py and load_model read."""

    def train(self, mode: bool = True):
        return super().train(False)

    def on_save_checkpoint(self, checkpoint):
        super().on_save_checkpoint(checkpoint)  # kind, run config, RNG
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}


class DPOModule(PolicyModule):
    """DPO on a policy initialised from SFT, against the SFT model's log-probabilities of the same answers
    (computed once, before training: the reference is frozen, so nothing else of it is needed).

    Batches are (sequences (B, K, T), prompt lengths (B, K), ends (B, K), reference log-probs (B, K), the
    rater's scores (B, K)): the K rated SFT answers to each of B questions, every pair the rater ranks a
    preference (ties dropped), a mean per question, as the reward model learns from the same samples. No reward
    model, no sampling during training.
    """

    KIND = "dpo"

    def __init__(self, model, optim, vocab, beta: float, temperature: float, run_config=None, seed: int = 0):
        super().__init__(model, optim, vocab, run_config, seed, beta=beta, temperature=temperature)
        self.model = build_model(vocab_size=len(vocab), **model)
        self.validation: dict = {}  # the held-out figures before and after training, kept in the checkpoint
        self.eval()  # Lightning keeps the modes modules start fit with

    def on_save_checkpoint(self, checkpoint):
        super().on_save_checkpoint(checkpoint)
        checkpoint["dpo_validation"] = self.validation

    def losses(self, batch):
        """DPO's loss of the batch and the share of ranked pairs whose implicit rewards rank like the rater."""
        sequences, prompt_lengths, ends, reference_logprobs, ratings = batch
        idx = sequences.flatten(0, 1)
        logits = self.model(idx)[0]
        logprobs = answer_logprobs(logits, idx, prompt_lengths.flatten(), ends.flatten(), self.hparams.temperature)
        loss, rewards = dpo_loss(logprobs.view(ends.shape), reference_logprobs, ratings, self.hparams.beta)
        return loss, pairwise_accuracy(rewards, ratings)

    def training_step(self, batch, batch_idx):
        loss, accuracy = self.losses(batch)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/accuracy", accuracy)
        self.log_learning_rate()
        return loss

    def validation_step(self, batch, batch_idx):
        loss, accuracy = self.losses(batch)  # one batch: all held-out questions
        self.log("val/loss", loss)
        self.log("val/accuracy", accuracy, prog_bar=True)


class RolloutModule(PolicyModule):
    """What PPO and GRPO share: a policy initialised from SFT (``self.model``), a frozen copy of the SFT model
    (the reference of the KL), the rater, and updates made of sampled answers.

    Each training batch is a list of prompts (token lists) and makes one update (manual optimization): sample
    answers (``rollout``), then ``epochs`` passes of minibatch steps over them (``losses``). The learning rate
    follows ``optim`` (warmup, cosine decay to ``min_lr``) over those minibatch steps. The stage's settings are
    the hyperparameter named after its kind (``ppo``, ``grpo``).
    """

    ANSWERS_PER_PROMPT_KEY: str | None = None  # the setting that says how many answers a prompt gets (None: 1)

    def __init__(self, model, optim, vocab, settings: dict, rater: Rater, init_state: dict, run_config=None):
        super().__init__(model, optim, vocab, run_config, seed=settings["seed"], **{self.KIND: settings})
        self.automatic_optimization = False  # an update is several minibatch steps on one rollout
        self.model = build_model(vocab_size=len(vocab), **model)
        self.model.load_state_dict(init_state)
        self.reference = copy.deepcopy(self.model).requires_grad_(False)
        self.rater = rater
        self.stop_id = self.tokenizer.stoi[STOP]
        self.history: list[dict] = []  # the logged figures of each update, kept in the checkpoint for plots
        self.generator = torch.Generator()

    @property
    def settings(self) -> dict:
        return self.hparams[self.KIND]

    def answers_per_prompt(self) -> int:
        return self.settings[self.ANSWERS_PER_PROMPT_KEY] if self.ANSWERS_PER_PROMPT_KEY else 1

    def optimizer_steps(self) -> int:
        """The minibatch steps of the whole run: where the cosine ends unless ``optim.decay_steps`` says."""
        cfg = self.settings
        answers = cfg["questions_per_update"] * self.answers_per_prompt()
        return cfg["updates"] * cfg["epochs"] * math.ceil(answers / cfg["minibatch_size"])

    def trained_parameters(self) -> list:
        return list(self.model.parameters())

    def configure_optimizers(self):
        cfg = self.hparams.optim
        decay_steps = self.optimizer_steps() if cfg.get("decay_steps") is None else None
        optimizer, scheduler = self.adamw(self.trained_parameters(), decay_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler}}  # stepped in training_step

    def on_train_start(self):
        super().on_train_start()
        self.generator = torch.Generator(self.device).manual_seed(self.settings["seed"])

    @torch.no_grad()
    def sample(self, prompts: list[list[int]]) -> dict:
        """Sample an answer per prompt; their log-probs under the policy and the reference, their ratings, and
        the figures every method reports (rater score and components, KL to the reference, entropy, stop rate,
        distinct answers, length)."""
        temperature = self.settings["temperature"]
        answers = sample_answers(self.model, prompts, self.stop_id, temperature, self.generator)
        idx, prompt_lengths = join(prompts, answers)
        tokens, width = answers.tokens, answers.tokens.size(1)
        mask = length_mask(answers.lengths, width)
        logits = at_answer(self.model(idx)[0], prompt_lengths, width)
        reference_logits = at_answer(self.reference(idx)[0], prompt_lengths, width)
        texts = answers.texts(self.tokenizer)
        questions = [question_of(self.tokenizer.decode(prompt)) for prompt in prompts]
        ratings = [self.rater.rate(*rated) for rated in zip(questions, texts, answers.stopped.tolist())]
        rating = Rating.means(ratings)
        stats = {
            "rater_score": rating["total"],
            **{f"rater_{c}": rating[c] for c in Rating.COMPONENTS},
            "kl": (kl_divergence(logits, reference_logits, temperature) * mask).sum(1).mean(),
            "entropy": masked_mean(entropy(logits, temperature), mask),
            **answers.stats(texts),
        }
        return {
            "answers": answers,
            "idx": idx,
            "prompt_lengths": prompt_lengths,
            "tokens": tokens,
            "mask": mask,
            "logprobs": token_logprobs(logits, tokens, temperature),
            "reference_logprobs": token_logprobs(reference_logits, tokens, temperature),
            "texts": texts,
            "ratings": ratings,
            "stats": stats,
        }

    def policy_logprobs(self, rollout: dict, rows: torch.Tensor) -> torch.Tensor:
        """The policy's log-probs, now, of the rollout's answers ``rows`` (with gradients)."""
        idx, prompt_lengths, mask = rollout["idx"][rows], rollout["prompt_lengths"][rows], rollout["mask"][rows]
        logits = at_answer(self.model(idx)[0], prompt_lengths, mask.size(1))
        return token_logprobs(logits, rollout["tokens"][rows], self.settings["temperature"])

    def rollout(self, prompts: list[list[int]]) -> dict:
        raise NotImplementedError

    def losses(self, rollout: dict, rows: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of a minibatch of the rollout's answers, and the figures to report (averaged per update)."""
        raise NotImplementedError

    def training_step(self, prompts, batch_idx):
        cfg = self.settings
        rollout = self.rollout(prompts)
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        totals, minibatches = {}, 0
        for _ in range(cfg["epochs"]):
            order = torch.randperm(rollout["mask"].size(0), generator=self.generator, device=self.device)
            for rows in order.split(cfg["minibatch_size"]):
                loss, figures = self.losses(rollout, rows)
                optimizer.zero_grad()
                self.manual_backward(loss)
                self.clip_gradients(optimizer, gradient_clip_val=cfg["max_grad_norm"], gradient_clip_algorithm="norm")
                optimizer.step()
                scheduler.step()
                for key, value in figures.items():  # summed on the device: one read of each, per update
                    totals[key] = totals.get(key, 0.0) + value.detach()
                minibatches += 1
        figures = {
            "update": batch_idx + 1,
            **{k: float(v) for k, v in rollout["stats"].items()},
            **{k: float(v) / minibatches for k, v in totals.items()},
        }
        self.history.append(figures)
        self.log_learning_rate()
        self.log_dict({f"{self.KIND}/{k}": float(v) for k, v in figures.items()}, prog_bar=False)
        self.log_examples(figures["update"], rollout["examples"][: cfg["examples_per_update"]])

    def examples(self, prompts, rollout: dict, scores: list[float]) -> list[tuple]:
        """(prompt, answer, score, rater's total) of each answer, for ``log_examples``."""
        ratings = rollout["ratings"]
        return [
            (self.tokenizer.decode(p), t, s, r.total) for p, t, s, r in zip(prompts, rollout["texts"], scores, ratings)
        ]

    def log_examples(self, update: int, examples: list[tuple]) -> None:
        """A table of sampled answers per update: in ``<kind>_samples.md`` in the run folder, and in W&B."""
        if not self.trainer.is_global_zero:
            return
        rows = [[q.replace("\n", " ").strip(), a or "(empty)", f"{s:+.2f}", f"{r:.2f}"] for q, a, s, r in examples]
        table = markdown_table(["prompt", "answer", "reward", "rater"], rows)
        with open(Path(self.trainer.default_root_dir) / f"{self.KIND}_samples.md", "a", encoding="utf-8") as f:
            f.write(f"\n## update {update}\n\n{table}")
        for logger in self.trainer.loggers:
            if isinstance(logger, WandbLogger):
                columns = ["update", "prompt", "answer", "reward", "rater"]
                logger.log_text(key=f"{self.KIND}/samples", columns=columns, data=[[update, *row] for row in rows])

    def on_save_checkpoint(self, checkpoint):
        super().on_save_checkpoint(checkpoint)  # kind, run config, RNG; only the policy's weights
        checkpoint[f"{self.KIND}_history"] = self.history


class PPOModule(RolloutModule):
    """PPO against a frozen reward model; the value function starts as a copy of the reward model.

    An update samples one answer per prompt, rewards it with the reward model's score minus ``kl_coef`` x the
    per-character log-ratio to the reference, estimates advantages with GAE, then runs the clipped policy and
    value losses over minibatches.
    """

    KIND = "ppo"

    def __init__(
        self,
        model,
        optim,
        vocab,
        ppo: dict,
        reward_model: RewardModel,
        rater: Rater,
        init_state: dict,
        run_config: dict | None = None,
    ):
        super().__init__(model, optim, vocab, ppo, rater, init_state, run_config)
        self.reward_model = reward_model.requires_grad_(False)
        self.value_model = reward_model.value_model()
        self.eval()  # Lightning keeps the modes modules start fit with (it warns that they are in eval mode)

    def trained_parameters(self) -> list:
        return [*self.model.parameters(), *self.value_model.parameters()]

    @torch.no_grad()
    def rollout(self, prompts: list[list[int]]) -> dict:
        """Sample answers and compute everything the update needs: log-probs, values, rewards, advantages."""
        cfg = self.settings
        rollout = self.sample(prompts)
        answers, idx, prompt_lengths, mask = (rollout[k] for k in ("answers", "idx", "prompt_lengths", "mask"))
        values = at_answer(self.value_model(idx), prompt_lengths, mask.size(1))
        scores = self.reward_model.score(idx, prompt_lengths + answers.lengths)
        final_reward = torch.where(answers.stopped, scores, torch.full_like(scores, cfg["missing_stop_reward"]))
        rewards = ppo_rewards(
            rollout["logprobs"], rollout["reference_logprobs"], mask, answers.lengths, final_reward, cfg["kl_coef"]
        )
        advantages, returns = gae(rewards, values, mask, cfg["gamma"], cfg["lam"])
        rollout["stats"] = {"rm_score": scores.mean(), **rollout["stats"]}
        rollout["examples"] = self.examples(prompts, rollout, scores.tolist())
        return {**rollout, "values": values, "advantages": whiten(advantages, mask), "returns": returns}

    def losses(self, rollout: dict, rows: torch.Tensor):
        """The clipped policy loss plus ``value_coef`` x the clipped value loss of a minibatch."""
        cfg = self.settings
        idx, prompt_lengths, mask = rollout["idx"][rows], rollout["prompt_lengths"][rows], rollout["mask"][rows]
        policy_loss, clip_fraction = ppo_policy_loss(
            self.policy_logprobs(rollout, rows),
            rollout["logprobs"][rows],
            rollout["advantages"][rows],
            mask,
            cfg["clip"],
        )
        values = at_answer(self.value_model(idx), prompt_lengths, mask.size(1))
        value_loss = ppo_value_loss(values, rollout["values"][rows], rollout["returns"][rows], mask, cfg["value_clip"])
        figures = {"policy_loss": policy_loss, "value_loss": value_loss, "clip_fraction": clip_fraction}
        return policy_loss + cfg["value_coef"] * value_loss, figures


class GRPOModule(RolloutModule):
    """GRPO (Shao et al. 2024): K answers per prompt, each answer's advantage its reward less the mean of its
    group's (divided by the group's spread, ``scale_rewards``), the same advantage at every character; the
    clipped objective of PPO on it, plus ``kl_coef`` x the per-character KL estimate to the reference (0: none).
    No value model. The reward is the rater's total (``reward: rater``, a reward computed by a program) or the
    frozen reward model's normalised score (``reward: reward_model``); an answer that never stops gets
    ``missing_stop_reward`` either way.
    """

    KIND = "grpo"
    ANSWERS_PER_PROMPT_KEY = "samples_per_question"

    def __init__(self, model, optim, vocab, grpo: dict, reward_model, rater, init_state, run_config=None):
        super().__init__(model, optim, vocab, grpo, rater, init_state, run_config)
        self.reward_model = None if reward_model is None else reward_model.requires_grad_(False)
        self.eval()  # Lightning keeps the modes modules start fit with (it warns that they are in eval mode)

    @torch.no_grad()
    def rollout(self, prompts: list[list[int]]) -> dict:
        """K answers per prompt (rows i*K .. i*K+K-1), their rewards and group-relative advantages."""
        cfg, k = self.settings, self.answers_per_prompt()
        prompts = [prompt for prompt in prompts for _ in range(k)]
        rollout = self.sample(prompts)
        answers = rollout["answers"]
        if self.reward_model is None:
            rewards = torch.tensor([rating.total for rating in rollout["ratings"]], device=self.device)
        else:
            rewards = self.reward_model.score(rollout["idx"], rollout["prompt_lengths"] + answers.lengths)
            rollout["stats"] = {"rm_score": rewards.mean(), **rollout["stats"]}
        rewards = torch.where(answers.stopped, rewards, torch.full_like(rewards, cfg["missing_stop_reward"]))
        advantages = group_advantages(rewards.view(-1, k), cfg["scale_rewards"]).flatten()
        rollout["stats"] = {"reward": rewards.mean(), **rollout["stats"]}
        rollout["examples"] = self.examples(prompts, rollout, rewards.tolist())
        return {**rollout, "advantages": advantages}

    def losses(self, rollout: dict, rows: torch.Tensor):
        """The clipped objective with each answer's advantage at every character, plus the KL penalty."""
        cfg = self.settings
        mask = rollout["mask"][rows]
        logprobs = self.policy_logprobs(rollout, rows)
        advantages = rollout["advantages"][rows, None].expand_as(mask)
        policy_loss, clip_fraction = ppo_policy_loss(logprobs, rollout["logprobs"][rows], advantages, mask, cfg["clip"])
        kl = masked_mean(kl_estimate(logprobs, rollout["reference_logprobs"][rows]), mask)
        figures = {"policy_loss": policy_loss, "kl_penalty": kl, "clip_fraction": clip_fraction}
        return policy_loss + cfg["kl_coef"] * kl, figures
