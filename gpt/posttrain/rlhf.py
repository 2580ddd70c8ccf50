"""The pieces of fine-tuning that are plain PyTorch: masks, losses, GAE, sampling answers (the reward model,
plain PyTorch too, is in gpt.core.model, where the checkpoint loader builds it).

Every mask here is built from lengths (of the prompt, of the answer), never by searching for the stop
character: the prompt holds newlines too. A batch of sequences of different lengths is padded on the right,
which changes nothing before the padding in a causal model.
"""

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from gpt.core.model import GPT, RewardModel  # noqa: F401  (RewardModel: with the math it is trained by)


def length_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """(N, width) booleans: True in the first ``lengths[i]`` places of row i."""
    return torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def pad_right(rows: list[list[int]]) -> torch.Tensor:
    """Token lists of different lengths as one (N, longest) tensor, padded with token 0 (masks ignore it)."""
    width = max(len(row) for row in rows)
    return torch.tensor([row + [0] * (width - len(row)) for row in rows], dtype=torch.long)


def answer_positions(prompt_lengths: torch.Tensor, width: int) -> torch.Tensor:
    """(N, width) indices of the positions whose outputs predict answer tokens 0..width-1 (or score them):
    answer token t of row i sits at ``prompt_lengths[i] + t`` and is predicted at the position before it."""
    return prompt_lengths[:, None] - 1 + torch.arange(width, device=prompt_lengths.device)[None, :]


def at_answer(per_position: torch.Tensor, prompt_lengths: torch.Tensor, width: int) -> torch.Tensor:
    """Pick the answer's predicting positions out of (N, T, ...) per-position outputs: (N, width, ...)."""
    positions = answer_positions(prompt_lengths, width).clamp(max=per_position.size(1) - 1)
    index = positions.view(*positions.shape, *[1] * (per_position.dim() - 2))
    return per_position.gather(1, index.expand(-1, -1, *per_position.shape[2:]))


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(token) under ``softmax(logits / temperature)``, in fp32: sampling's distribution (no top-k)."""
    logprobs = F.log_softmax(logits.float() / temperature, dim=-1)
    return logprobs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def kl_divergence(logits_p: torch.Tensor, logits_q: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(p || q) of the next-token distributions at each position (summed over the vocabulary), in fp32.

    Summed over an answer's positions, along answers sampled from p, it estimates the KL of whole answers.
    """
    logp = F.log_softmax(logits_p.float() / temperature, dim=-1)
    logq = F.log_softmax(logits_q.float() / temperature, dim=-1)
    return (logp.exp() * (logp - logq)).sum(-1).clamp(min=0)  # clamp: rounding only, KL is never negative


def entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    logp = F.log_softmax(logits.float() / temperature, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def answer_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over the answer characters only: ``mask`` is True where a target is an answer
    character (or the stop), so the question's characters add nothing to the loss or its gradient."""
    losses = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none")
    return masked_mean(losses.view(targets.shape), mask)


def ranked_margins(scores: torch.Tensor, ratings: torch.Tensor) -> torch.Tensor:
    """The score margins ``scores[q, i] - scores[q, j]`` of every pair of answers to one question that the
    rater ranks ``i`` above ``j`` (ties give no pair), for (questions, K) scores and ratings: one value a pair."""
    better = ratings[:, :, None] > ratings[:, None, :]
    return (scores[:, :, None] - scores[:, None, :])[better]


def bradley_terry_loss(scores: torch.Tensor, ratings: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(r_better - r_worse) averaged over the ranked pairs of each question's K answers, then over
    the questions that rank a pair: the likelihood that the preferred answer wins under Bradley-Terry, each
    question weighing the same however many of its pairs the rater ties (InstructGPT divides a prompt's loss by
    its number of pairs). A question's K answers are one batch element, each scored once for its K - 1 pairs, as
    InstructGPT trains its reward model: K = 8 costs 8 forward passes a question, not the 56 of its 28 pairs
    shuffled apart (which also show every answer K - 1 times an epoch)."""
    better = ratings[:, :, None] > ratings[:, None, :]
    losses = torch.where(better, -F.logsigmoid(scores[:, :, None] - scores[:, None, :]), 0.0)
    pairs = better.sum((1, 2))
    return (losses.sum((1, 2))[pairs > 0] / pairs[pairs > 0]).mean()


def pairwise_accuracy(scores: torch.Tensor, ratings: torch.Tensor) -> torch.Tensor:
    """The share of ranked pairs whose scores rank them like the rater (a tie counts as wrong)."""
    return (ranked_margins(scores, ratings) > 0).float().mean()


def answer_logprobs(logits, idx, prompt_lengths, ends, temperature: float = 1.0) -> torch.Tensor:
    """(N,) log-probability of each whole answer ``idx[i, prompt_lengths[i]:ends[i]]`` under the (N, T, vocab)
    ``logits`` of ``idx``: the sum of its characters' log-probs (the stop included), what DPO compares."""
    width = idx.size(1) - int(prompt_lengths.min())
    positions = (prompt_lengths[:, None] + torch.arange(width, device=idx.device)[None, :]).clamp(max=idx.size(1) - 1)
    logprobs = token_logprobs(at_answer(logits, prompt_lengths, width), idx.gather(1, positions), temperature)
    return (logprobs * length_mask(ends - prompt_lengths, width)).sum(1)


def dpo_loss(logprobs: torch.Tensor, reference_logprobs: torch.Tensor, ratings: torch.Tensor, beta: float):
    """DPO's loss over (questions, K) answers: the Bradley-Terry loss of the implicit rewards
    ``beta * (log pi(answer) - log pi_ref(answer))`` on every pair the rater ranks, a mean per question.

    With K = 2 and one ranked pair it is -log sigmoid(beta * ((log pi_w - log ref_w) - (log pi_l - log ref_l))),
    the loss of Rafailov et al. (2023); K answers give up to K(K-1)/2 pairs, each answer scored once, as the
    reward model learns from them. Also returns the implicit rewards, whose pairwise accuracy says how often the
    policy already prefers the rater's choice more than the reference does."""
    rewards = beta * (logprobs - reference_logprobs)
    return bradley_terry_loss(rewards, ratings), rewards


def group_advantages(rewards: torch.Tensor, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """GRPO's advantages of (questions, K) rewards of K answers to each question: each reward less its group's
    mean, divided by the group's standard deviation (unbiased, as GRPO's and TRL's) when ``scale``; a group whose
    answers all got one reward has advantage 0 throughout (eps keeps its division finite)."""
    advantages = rewards - rewards.mean(1, keepdim=True)
    return advantages / (rewards.std(1, keepdim=True) + eps) if scale else advantages


def kl_estimate(logprobs: torch.Tensor, reference_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimate of sampled tokens, GRPO's penalty ("k3", Schulman 2020):
    ``exp(ref - logp) - (ref - logp) - 1``: never negative, unbiased along samples from pi, 0 where they agree."""
    log_ratio = reference_logprobs - logprobs
    return torch.exp(log_ratio) - log_ratio - 1


def ppo_rewards(logprobs, reference_logprobs, mask, lengths, final_reward, kl_coef: float) -> torch.Tensor:
    """PPO's per-character rewards (N, width) of sampled answers that end at ``lengths`` (``mask`` True before).

    Every answer character pays the KL penalty ``-kl_coef * (logprob - reference_logprob)``; the last one
    (index ``lengths - 1``: the stop, when the answer stopped) also gets the answer's ``final_reward``; the
    padding after an answer gets exactly 0.
    """
    rewards = -kl_coef * (logprobs - reference_logprobs) * mask
    rewards[torch.arange(len(lengths), device=lengths.device), lengths - 1] += final_reward
    return rewards


def gae(rewards, values, mask, gamma: float, lam: float):
    """Generalised advantage estimates and returns, (N, T) each, for answers that end where ``mask`` ends.

    delta_t = r_t + gamma * V_{t+1} - V_t (V = 0 after the last token); A_t = delta_t + gamma * lam * A_{t+1}.
    """
    mask = mask.float()
    advantages = torch.zeros_like(rewards)
    next_value = next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.size(1))):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        next_value = values[:, t] * mask[:, t]
        advantages[:, t] = next_advantage
    return advantages, (advantages + values) * mask


def whiten(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mean = masked_mean(values, mask)
    std = masked_mean((values - mean) ** 2, mask).sqrt()
    return (values - mean) / (std + 1e-8) * mask


def ppo_policy_loss(logprobs, old_logprobs, advantages, mask, clip: float):
    """The clipped surrogate: -min(ratio * A, clip(ratio, 1 - clip, 1 + clip) * A); and the share clipped."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip, 1 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    return loss, masked_mean((clipped > unclipped).float(), mask)


def ppo_value_loss(values, old_values, returns, mask, clip: float):
    """0.5 * max((V - R)^2, (V_clipped - R)^2), V_clipped kept within ``clip`` of the rollout's value."""
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)


@dataclass
class Answers:
    """Sampled answers: ``tokens`` (N, width), padded after each answer's ``lengths`` (stop included)."""

    tokens: torch.Tensor
    lengths: torch.Tensor
    stopped: torch.Tensor

    def texts(self, tokenizer) -> list[str]:
        """The answers without their stop character."""
        return [
            tokenizer.decode(row[: n - int(stop)].tolist())
            for row, n, stop in zip(self.tokens, self.lengths.tolist(), self.stopped.tolist())
        ]

    def stats(self, texts: list[str]) -> dict[str, float]:
        """How often the answers stop, how many of their ``texts`` differ, and their mean length (stop excluded)."""
        return {
            "stop_rate": self.stopped.float().mean().item(),
            "distinct": len(set(texts)) / len(texts),
            "answer_chars": (self.lengths - self.stopped.long()).float().mean().item(),
        }


@torch.no_grad()
def sample_answers(model: GPT, prompts: list[list[int]], stop_id: int, temperature=1.0, generator=None) -> Answers:
    """Sample one answer per prompt with the KV cache, stopping each at its first ``stop_id``.

    An answer may fill the context: one that has not stopped when prompt + answer reach ``block_size`` never
    stops. ``generate`` needs rows of one length, so prompts are batched by length (the K samples of one
    question are one batch). Only generated tokens are searched for the stop; a batch ends once all its rows
    stopped.
    """
    device = next(model.parameters()).device
    width = model.block_size - min(len(prompt) for prompt in prompts)
    tokens = torch.zeros(len(prompts), width, dtype=torch.long, device=device)
    lengths = torch.zeros(len(prompts), dtype=torch.long, device=device)
    stopped = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    by_length: dict[int, list[int]] = {}
    for i, prompt in enumerate(prompts):
        by_length.setdefault(len(prompt), []).append(i)
    for prompt_length, rows in by_length.items():
        rows = torch.tensor(rows, device=device)
        idx = torch.tensor([prompts[i] for i in rows.tolist()], device=device)
        lengths[rows] = model.block_size - prompt_length  # unless a stop comes first
        stream = model.generate_stream(idx, model.block_size - prompt_length, temperature, generator=generator)
        for t, token in enumerate(stream):
            tokens[rows, t] = token[:, 0]
            newly = ~stopped[rows] & (token[:, 0] == stop_id)
            lengths[rows[newly]] = t + 1
            stopped[rows] |= newly
            if stopped[rows].all():
                break
    return Answers(tokens, lengths, stopped)


def join(prompts: list[list[int]], answers: Answers):
    """(prompt + answer) sequences padded on the right, with the prompt lengths: what the models score."""
    rows = [p + a[:n] for p, a, n in zip(prompts, answers.tokens.tolist(), answers.lengths.tolist())]
    device = answers.tokens.device
    return pad_right(rows).to(device), torch.tensor([len(p) for p in prompts], device=device)
