"""The math of SFT, the reward model and PPO against hand-computed examples, and the stage modules on toys."""

import math

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from gpt.core.errors import UserError
from gpt.core.model import build_model
from gpt.core.tokenizer import CharTokenizer
from gpt.posttrain import stages
from gpt.posttrain.evaluation import win_rate
from gpt.posttrain.finetuning import count_pairs, encode_documents, ranked_groups
from gpt.posttrain.qa import QAPair, Rater
from gpt.posttrain.qa_data import hinted_answers
from gpt.posttrain.rlhf import (
    RewardModel,
    answer_logprobs,
    answer_loss,
    at_answer,
    bradley_terry_loss,
    dpo_loss,
    gae,
    group_advantages,
    join,
    kl_divergence,
    kl_estimate,
    pad_right,
    pairwise_accuracy,
    ppo_policy_loss,
    ppo_rewards,
    ppo_value_loss,
    sample_answers,
)
from gpt.posttrain.stages import GRPOModule, PPOModule, RewardModule

TOKENIZER = CharTokenizer(sorted(set("QA: \nabcdefghijklmnopqrstuvwxyz.!?")))
MODEL = {"arch": "gpt", "block_size": 32, "n_layer": 1, "n_head": 2, "n_embd": 16, "dropout": 0.0, "bias": False}
OPTIM = {"lr": 3e-3, "weight_decay": 0.0, "betas": [0.9, 0.99], "warmup_steps": 0, "decay_steps": 100, "min_lr": 3e-3}
PPO = {
    "temperature": 1.0,
    "kl_coef": 0.1,
    "clip": 0.2,
    "value_clip": 0.2,
    "value_coef": 0.5,
    "gamma": 1.0,
    "lam": 0.95,
    "missing_stop_reward": -1.0,
    "max_grad_norm": 1.0,
    "epochs": 2,
    "minibatch_size": 4,
    "examples_per_update": 2,
    "seed": 0,
}


def trainer(**kwargs):
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def test_the_answer_mask_covers_exactly_the_answer_and_its_stop():
    pairs = [QAPair("who goes", "a friend."), QAPair("hi", "ho")]
    x, y, mask = encode_documents(pairs, TOKENIZER)
    assert [TOKENIZER.decode(y[i][mask[i]].tolist()) for i in range(2)] == ["a friend.\n", "ho\n"]
    assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one


def test_question_targets_change_no_loss_term_and_answer_targets_do():
    pairs = [QAPair("who goes there", "a friend."), QAPair("ay", "no")]
    _, y, mask = encode_documents(pairs, TOKENIZER)
    logits = torch.randn(*y.shape, TOKENIZER.vocab_size, requires_grad=True)
    loss = answer_loss(logits, y, mask)
    loss.backward()
    assert logits.grad[~mask].abs().max() == 0 and logits.grad[mask].abs().min() > 0
    question, answer = y.clone(), y.clone()
    question[~mask] = (question[~mask] + 1) % TOKENIZER.vocab_size
    answer[0, mask[0].nonzero()[0]] = (answer[0, mask[0].nonzero()[0]] + 1) % TOKENIZER.vocab_size
    assert answer_loss(logits, question, mask) == loss
    assert answer_loss(logits, answer, mask) != loss


def test_bradley_terry_loss_and_accuracy_by_hand():
    # Question 1: answer 0 is rated above 1 and 2 (tied): pairs (0, 1), (0, 2). Question 2: 1 above 0, 2 no pair
    # with 0 (tied), 1 above 2: pairs (1, 0), (1, 2). Margins: 2 - 0, 2 - 1, 0 - 3, 0 - 0.
    scores = torch.tensor([[2.0, 0.0, 1.0], [3.0, 0.0, 0.0]])
    ratings = torch.tensor([[0.9, 0.5, 0.5], [0.2, 0.7, 0.2]])
    margins = torch.tensor([2.0, 1.0, -3.0, 0.0])
    expected = sum(math.log1p(math.exp(-m)) for m in margins.tolist()) / 4
    assert bradley_terry_loss(scores, ratings).item() == pytest.approx(expected)
    assert pairwise_accuracy(scores, ratings).item() == pytest.approx(2 / 4)  # a tie counts as wrong
    # Scores that rank every pair like the rater; the order of the answers within a question does not matter.
    assert pairwise_accuracy(ratings * 5, ratings).item() == 1.0
    assert pairwise_accuracy(-ratings, ratings).item() == 0.0


def test_bradley_terry_loss_weighs_every_question_the_same_however_many_pairs_it_ranks():
    # Question 1 ranks 3 pairs (margins 2 - 1, 1 - 0, 2 - 0), question 2 two (0 - 2 twice: its answers 1 and 2
    # tie), question 3 none (all tied). Over all 5 pairs, question 1 would weigh 3/5.
    scores = torch.tensor([[2.0, 1.0, 0.0], [0.0, 2.0, 2.0], [1.0, 4.0, 0.0]])
    ratings = torch.tensor([[0.9, 0.5, 0.1], [0.8, 0.2, 0.2], [0.3, 0.3, 0.3]])
    per_question = [(2 * math.log1p(math.exp(-1)) + math.log1p(math.exp(-2))) / 3, math.log1p(math.exp(2))]
    assert bradley_terry_loss(scores, ratings).item() == pytest.approx(sum(per_question) / 2)
    assert pairwise_accuracy(scores, ratings).item() == pytest.approx(3 / 5)  # the held-out figure: every pair


def test_ranked_groups_keep_each_questions_answers_together_and_drop_questions_without_a_pair():
    idx, ends = torch.arange(18).view(6, 3), torch.tensor([1, 2, 3, 3, 2, 1])
    groups = ranked_groups([0.5, 0.9, 0.5, 0.2, 0.2, 0.2], 3, idx, ends)  # question 2: all tied
    sequences, lengths, ratings = groups.tensors
    assert sequences.tolist() == [idx[:3].tolist()] and lengths.tolist() == [[1, 2, 3]]
    assert ratings.tolist() == [[0.5, 0.9, 0.5]] and count_pairs(groups) == 2  # (1, 0) and (1, 2)
    with pytest.raises(UserError, match="no pairs to learn from"):
        ranked_groups([0.2] * 6, 3, idx, ends)


def test_gae_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.5, 2.0, 9.0]])  # row 2 ends after 2 tokens: its 9 is padding
    values = torch.tensor([[0.5, 0.5, 0.5], [1.0, 1.0, 7.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # Row 1: deltas 0, 0, 0.5 -> A2 = 0.5, A1 = 0 + 0.5 * 0.5 = 0.25, A0 = 0.125.
    # Row 2: delta1 = 2 - 1 = 1 (nothing after it), delta0 = 0.5 + 1 - 1 = 0.5 -> A1 = 1, A0 = 0.5 + 0.5 = 1.
    torch.testing.assert_close(advantages, torch.tensor([[0.125, 0.25, 0.5], [1.0, 1.0, 0.0]]))
    torch.testing.assert_close(returns, torch.tensor([[0.625, 0.75, 1.0], [2.0, 2.0, 0.0]]))
    advantages, _ = gae(rewards, values, mask, gamma=0.5, lam=1.0)
    # Row 1: delta2 = 0.5, delta1 = 0.25 - 0.5, delta0 = 0.25 - 0.5; A1 = -0.25 + 0.25, A0 = -0.25 + 0.
    torch.testing.assert_close(advantages[0], torch.tensor([-0.25, 0.0, 0.5]))


def test_ppo_rewards_by_hand():
    # Two answers in a batch 5 wide: row 0 ends after 2 characters, row 1 after 4; both have padding, whose
    # log-probs (what the models say at the padded positions) are not zero.
    logprobs = torch.tensor([[-1.0, -2.0, -0.5, -3.0, -1.0], [-0.2, -0.4, -1.5, -0.7, -2.0]])
    reference = torch.tensor([[-1.5, -1.0, -0.4, -0.1, -2.0], [-0.6, -0.9, -1.0, -2.0, -0.5]])
    lengths = torch.tensor([2, 4])
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    final_reward = torch.tensor([0.7, -1.0])  # the normalised reward-model scores of the two answers
    rewards = ppo_rewards(logprobs, reference, mask, lengths, final_reward, kl_coef=0.1)
    # -0.1 * (logprob - reference) per answer character; the score added at the last one (index length - 1).
    # Row 0: -0.1 * 0.5 = -0.05; -0.1 * -1.0 = 0.1, + 0.7 = 0.8. Row 1: -0.1 * 0.4 = -0.04; -0.1 * 0.5 = -0.05;
    # -0.1 * -0.5 = 0.05; -0.1 * 1.3 = -0.13, - 1.0 = -1.13. Padding: exactly 0.
    expected = torch.tensor([[-0.05, 0.8, 0.0, 0.0, 0.0], [-0.04, -0.05, 0.05, -1.13, 0.0]])
    torch.testing.assert_close(rewards, expected)
    assert rewards[~mask].eq(0).all()


def test_clipped_policy_and_value_losses_by_hand():
    old = torch.zeros(1, 4)
    logprobs = torch.log(torch.tensor([[1.5, 0.5, 1.1, 1.5]]))
    advantages = torch.tensor([[1.0, -1.0, 2.0, -1.0]])
    mask = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)  # the last token is padding
    loss, clip_fraction = ppo_policy_loss(logprobs, old, advantages, mask, clip=0.2)
    # Per token max(-A r, -A clip(r)): max(-1.5, -1.2) = -1.2; max(0.5, 0.8) = 0.8; max(-2.2, -2.2) = -2.2.
    assert loss.item() == pytest.approx((-1.2 + 0.8 - 2.2) / 3)
    assert clip_fraction.item() == pytest.approx(2 / 3)
    values, old_values = torch.tensor([[1.0, 0.0, 0.5]]), torch.tensor([[0.0, 0.0, 0.0]])
    returns = torch.tensor([[0.0, 1.0, 1.0]])
    # max((V - R)^2, (V_clipped - R)^2): max(1, 0.04) = 1; max(1, 1) = 1; max(0.25, 0.64) = 0.64.
    loss = ppo_value_loss(values, old_values, returns, torch.ones(1, 3, dtype=torch.bool), clip=0.2)
    assert loss.item() == pytest.approx(0.5 * (1 + 1 + 0.64) / 3)


def test_kl_is_non_negative_and_zero_for_identical_policies():
    p, q = torch.randn(3, 5, 7) * 3, torch.randn(3, 5, 7) * 3
    assert (kl_divergence(p, q) >= 0).all() and kl_divergence(p, q).sum() > 0
    assert kl_divergence(p, p.clone()).abs().max() == 0
    exact = (p.softmax(-1) * (p.log_softmax(-1) - q.log_softmax(-1))).sum(-1)
    torch.testing.assert_close(kl_divergence(p, q), exact)


class ScriptedModel(torch.nn.Module):
    """Generates a fixed script of tokens per prompt length, like ``generate_stream`` (one (B, 1) at a time)."""

    def __init__(self, scripts: dict[int, list[list[int]]], block_size: int):
        super().__init__()
        self.block_size = block_size
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.scripts = scripts

    def generate_stream(self, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None):
        script = torch.tensor(self.scripts[idx.size(1)])
        yield from script[:, :max_new_tokens].T[:, :, None]


def test_sampled_answers_stop_at_the_first_generated_stop_or_the_end_of_the_context():
    stop = 9
    prompts = [[1, stop, 2], [stop], [3, stop, 4]]  # the prompts hold stop characters too
    model = ScriptedModel({3: [[5, stop, 6, stop], [5, 6, 7, 8]], 1: [[stop, 7, 7, 7, 7, 7]]}, block_size=7)
    answers = sample_answers(model, prompts, stop_id=stop)  # answers fill at most the context: 4 or 6 tokens
    assert answers.lengths.tolist() == [2, 1, 4] and answers.stopped.tolist() == [True, True, False]
    assert answers.tokens[0, :2].tolist() == [5, stop] and answers.tokens[2].tolist() == [5, 6, 7, 8, 0, 0]
    idx, prompt_lengths = join(prompts, answers)
    assert idx.tolist() == [[1, stop, 2, 5, stop, 0, 0], [stop, stop, 0, 0, 0, 0, 0], [3, stop, 4, 5, 6, 7, 8]]
    # Answer token t of row i is predicted at position prompt_lengths[i] - 1 + t.
    positions = at_answer(torch.arange(7.0).expand(3, 7), prompt_lengths, 2)
    assert positions.tolist() == [[2, 3], [0, 1], [2, 3]]


def test_hinted_answers_start_with_a_word_of_the_question_and_keep_the_best_that_picks_it_up():
    tokenizer = CharTokenizer(sorted(set("QA: \nabcdefghijklmnopqrstuvwxyzPSTW,.?")))
    rater = Rater(set("tongue of mine prince my lord a sweet".split()), topic_weight=0.8)
    questions = ["Whose tongue?", "What say you?", "a sweet prince?"]

    def script(*continuations):  # rows of one length: each padded with its last character
        width = max(len(c) for c in continuations)
        return [tokenizer.encode(c.ljust(width, c[-1])) for c in continuations]

    # Rows of one prompt length are sampled together: "Q: Whose tongue?\nA: tongue" is 26 characters,
    # "Q: a sweet prince?\nA: prince" 28: an answer starts with the question's last content word. "What say you?"
    # has none: no row.
    model = ScriptedModel(
        {
            26: script(" of mine.\n", *["s?\n"] * 3),  # "tongues?" reuses no word of the question: never kept
            28: script(" sweet?\n", ", my lord.\n", " of mine", " of mine.\n"),
            # an echo; picks it up (1 of 2 content words); never stops; picks it up, its one content word
        },
        block_size=64,
    )
    found = hinted_answers(model, tokenizer, questions, rater, samples=4, min_form=0.9, max_chars=30)
    assert found == [QAPair("Whose tongue?", "tongue of mine."), QAPair("a sweet prince?", "prince of mine.")]
    assert (
        rater.rate("a sweet prince?", "prince, my lord.").total < rater.rate("a sweet prince?", "prince of mine.").total
    )
    # A bar on the form, or on the length, the answers do not pass drops them.
    assert hinted_answers(model, tokenizer, questions, rater, samples=4, min_form=1.0, max_chars=14) == []


def test_reward_model_learns_an_obvious_preference(monkeypatch):
    """Answers ending in '!' beat answers ending in '?': held-out pairwise accuracy close to 1."""
    generator = torch.Generator().manual_seed(0)
    letters = TOKENIZER.encode("abcdefghijklmnopqrstuvwxyz")

    def questions(n):
        """n questions, each with a '!' answer rated above the same answer ending in '?'."""
        rows = []
        for _ in range(n):
            body = [letters[i] for i in torch.randint(26, (int(torch.randint(2, 8, (1,))),), generator=generator)]
            rows += [body + TOKENIZER.encode("!\n"), body + TOKENIZER.encode("?\n")]
        ends = torch.tensor([len(r) for r in rows]).view(n, 2)
        return TensorDataset(pad_right(rows).view(n, 2, -1), ends, torch.tensor([[1.0, 0.0]]).expand(n, 2))

    module = RewardModule(MODEL, OPTIM, TOKENIZER.chars)
    heldout = questions(64)
    trainer(max_steps=60).fit(module, DataLoader(questions(512), batch_size=16, shuffle=True))
    module.eval()
    sequences, ends, ratings = heldout.tensors
    with torch.no_grad():
        assert pairwise_accuracy(module.scores(sequences, ends), ratings) >= 0.95
    answers, answer_ends = sequences.flatten(0, 1), ends.flatten()
    monkeypatch.setattr(stages, "NORMALISE_CHUNK", 10)  # scored in 13 chunks, normalised as one
    module.normalise(answers, answer_ends)  # normalised on these answers: mean 0, std 1
    with torch.no_grad():
        scores = module.model.score(answers, answer_ends)
    assert scores.mean().abs() < 1e-5 and scores.std().item() == pytest.approx(1.0, abs=1e-4)


def test_ppo_starts_at_zero_kl_moves_only_the_policy_and_value_and_counts_updates_not_steps(tmp_path):
    torch.manual_seed(0)
    sft, reward_backbone = (build_model(vocab_size=TOKENIZER.vocab_size, **MODEL) for _ in range(2))
    reward_model = RewardModel(reward_backbone)
    torch.nn.init.normal_(reward_model.head.weight)
    reward_model.eval().requires_grad_(False)
    reward_before = {k: v.clone() for k, v in reward_model.state_dict().items()}
    module = PPOModule(MODEL, OPTIM, TOKENIZER.chars, PPO, reward_model, Rater({"a"}), sft.state_dict())
    prompts = [TOKENIZER.encode(f"Q: {q}\nA: ") for q in ("ab", "abc", "ab", "b", "ab", "abc", "ab", "b")] * 3
    loader = DataLoader(prompts, batch_size=8, collate_fn=list)  # 3 updates of 8 questions, 2 minibatches
    fit = trainer(max_epochs=1, default_root_dir=tmp_path)
    fit.fit(module, loader)

    assert [h["update"] for h in module.history] == [1, 2, 3]
    assert fit.global_step == 3 * 2 * 2  # Lightning counts every optimizer step under manual optimization
    assert module.history[0]["kl"] == 0.0 and module.history[-1]["kl"] > 0  # exactly 0 before the first update
    assert not module.reference.training and not module.reward_model.training
    for name, weight in sft.state_dict().items():
        assert torch.equal(module.reference.state_dict()[name], weight)
    assert any(not torch.equal(module.model.state_dict()[n], w) for n, w in sft.state_dict().items())
    assert all(torch.equal(module.reward_model.state_dict()[k], v) for k, v in reward_before.items())
    assert not torch.equal(module.value_model.head.weight, reward_model.head.weight)
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["state_dict"].keys() == {f"model.{k}" for k in sft.state_dict()}
    assert len(checkpoint["ppo_history"]) == 3
    assert (tmp_path / "ppo_samples.md").read_text().count("| prompt | answer | reward | rater |") == 3


def test_dpo_loss_by_hand():
    # One question, two answers, answer 0 preferred: implicit rewards 0.5 * (-1 + 1.5) = 0.25 and
    # 0.5 * (-2 + 1.5) = -0.25, margin 0.5, loss -log sigmoid(0.5) = log(1 + e^-0.5) = 0.474077.
    logprobs, reference = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -1.5]])
    loss, rewards = dpo_loss(logprobs, reference, torch.tensor([[0.9, 0.1]]), beta=0.5)
    assert loss.item() == pytest.approx(0.474077, abs=1e-6)
    assert rewards.tolist() == [[0.25, -0.25]]
    # The policy equal to the reference: every margin 0, loss log 2 whatever the ratings.
    loss, _ = dpo_loss(reference, reference, torch.tensor([[0.1, 0.9]]), beta=0.5)
    assert loss.item() == pytest.approx(math.log(2))
    # The rater preferring answer 1 instead: margin -0.5, loss log(1 + e^0.5) = 0.974077.
    loss, _ = dpo_loss(logprobs, reference, torch.tensor([[0.1, 0.9]]), beta=0.5)
    assert loss.item() == pytest.approx(0.974077, abs=1e-6)


def test_group_advantages_by_hand():
    rewards = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5], [0.0, 0.0, 6.0]])
    # Group 1: mean 2, std 1 -> -1, 0, 1. Group 2: all equal -> 0. Group 3: mean 2, std sqrt((4 + 4 + 16) / 2)
    # = sqrt(12) -> -2 / 3.4641, -2 / 3.4641, 4 / 3.4641.
    expected = torch.tensor([[-1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [-0.57735, -0.57735, 1.1547]])
    torch.testing.assert_close(group_advantages(rewards, eps=1e-12), expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(group_advantages(rewards, scale=False)[2], torch.tensor([-2.0, -2.0, 4.0]))
    assert group_advantages(rewards)[1].eq(0).all()  # eps: no 0 / 0


def test_kl_estimate_by_hand():
    # p(token) = 0.5 under the policy, 0.25 under the reference: ref - logp = -ln 2, e^(-ln 2) = 0.5, and
    # 0.5 + ln 2 - 1 = 0.193147. Equal log-probs: 0.
    logprobs, reference = torch.log(torch.tensor([[0.5, 0.3]])), torch.log(torch.tensor([[0.25, 0.3]]))
    torch.testing.assert_close(kl_estimate(logprobs, reference), torch.tensor([[0.193147, 0.0]]))


def test_answer_logprobs_sum_the_answer_characters_and_nothing_else():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 5)
    idx = torch.tensor([[1, 2, 3, 4, 2, 1], [1, 2, 3, 4, 2, 0]])
    prompt_lengths, ends = torch.tensor([2, 3]), torch.tensor([6, 5])  # answers [3, 4, 2, 1] and [4, 2]
    logp = logits.log_softmax(-1)  # answer character t of row i is predicted at position prompt_length - 1 + t
    expected = [logp[0, 1, 3] + logp[0, 2, 4] + logp[0, 3, 2] + logp[0, 4, 1], logp[1, 2, 4] + logp[1, 3, 2]]
    torch.testing.assert_close(answer_logprobs(logits, idx, prompt_lengths, ends), torch.stack(expected))


GRPO = {**PPO, "samples_per_question": 4, "scale_rewards": True, "kl_coef": 0.1, "minibatch_size": 8}


def test_grpo_advantages_are_relative_to_each_questions_group_and_it_moves_only_the_policy(tmp_path):
    torch.manual_seed(0)
    sft = build_model(vocab_size=TOKENIZER.vocab_size, **MODEL)
    module = GRPOModule(MODEL, OPTIM, TOKENIZER.chars, GRPO, None, Rater({"a"}), sft.state_dict())
    prompts = [TOKENIZER.encode(f"Q: {q}\nA: ") for q in ("ab", "abc", "b", "ab")] * 2
    rollouts = []
    module.rollout = lambda prompts, rollout=module.rollout: rollouts.append(rollout(prompts)) or rollouts[-1]
    fit = trainer(max_epochs=1, default_root_dir=tmp_path)
    fit.fit(module, DataLoader(prompts, batch_size=4, collate_fn=list))  # 2 updates of 4 questions x 4 answers

    assert fit.global_step == 2 * 2 * 2  # updates x epochs x (16 answers / minibatches of 8)
    assert module.history[0]["kl"] == 0.0 and module.history[-1]["kl"] > 0
    for rollout in rollouts:  # one advantage per answer, of mean 0 in each question's group of 4
        assert rollout["advantages"].shape == (16,)
        assert rollout["advantages"].view(4, 4).sum(1).abs().max() < 1e-4
        groups = rollout["idx"].view(4, 4, -1)[:, :, :8]  # a group's answers follow one prompt ("Q: b\nA: " is 8)
        assert groups.eq(groups[:, :1]).all() and rollout["prompt_lengths"].view(4, 4).tolist()[0] == [9] * 4
    assert all(torch.equal(module.reference.state_dict()[k], w) for k, w in sft.state_dict().items())
    assert any(not torch.equal(module.model.state_dict()[k], w) for k, w in sft.state_dict().items())
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["state_dict"].keys() == {f"model.{k}" for k in sft.state_dict()}
    assert len(checkpoint["grpo_history"]) == 2


def test_grpo_learns_a_reward_computed_by_a_program(tmp_path):
    """Answers are rewarded for stopping (the rater gives 0 to one that never does, missing_stop_reward -1):
    a random policy rarely stops within the context; GRPO raises its stop rate."""
    torch.manual_seed(0)
    sft = build_model(vocab_size=TOKENIZER.vocab_size, **MODEL)
    settings = {**GRPO, "samples_per_question": 8, "minibatch_size": 32, "kl_coef": 0.0, "epochs": 2}
    optim = {**OPTIM, "lr": 1e-2, "min_lr": 1e-2}
    module = GRPOModule(MODEL, optim, TOKENIZER.chars, settings, None, Rater({"a"}), sft.state_dict())
    prompts = [TOKENIZER.encode(f"Q: {q}\nA: ") for q in ("ab", "abc", "b", "ab")] * 12
    trainer(max_epochs=1, default_root_dir=tmp_path).fit(module, DataLoader(prompts, batch_size=4, collate_fn=list))
    first, last = module.history[0], module.history[-1]
    assert last["stop_rate"] > first["stop_rate"] + 0.3, (first["stop_rate"], last["stop_rate"])
    assert last["reward"] > first["reward"]


def test_win_rate_counts_a_tie_as_half():
    # Question 1 won, 2 lost, 3 tied, 4 won: (1 + 0 + 0.5 + 1) / 4.
    assert win_rate([0.9, 0.2, 0.5, 0.7], [0.1, 0.3, 0.5, 0.6]) == pytest.approx(2.5 / 4)
