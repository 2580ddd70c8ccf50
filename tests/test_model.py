import math

import pytest
import torch

from gpt.core.model import GPT, BigramLanguageModel, GPTConfig, LanguageModel, build_model

VOCAB = 65


def tiny_gpt(**overrides):
    fields = dict(vocab_size=VOCAB, block_size=16, n_layer=2, n_head=4, n_embd=32, dropout=0.0)
    return GPT(GPTConfig(**{**fields, **overrides}))


MODELS = {"bigram": lambda: BigramLanguageModel(VOCAB, block_size=16), "gpt": tiny_gpt}


@pytest.mark.parametrize("name", MODELS)
def test_logits_shape_and_loss_at_init_is_ln_vocab(name):
    model = MODELS[name]()
    idx = torch.randint(VOCAB, (8, 16))
    targets = torch.randint(VOCAB, (8, 16))
    logits, loss = model(idx, targets)
    assert logits.shape == (8, 16, VOCAB)
    assert loss.item() == pytest.approx(math.log(VOCAB), abs=0.05)  # every character about equally likely
    assert model(idx)[1] is None


def test_attention_is_causal():
    model = tiny_gpt().eval()
    idx = torch.randint(VOCAB, (2, 16))
    changed = idx.clone()
    changed[:, 9:] = (changed[:, 9:] + 1) % VOCAB  # change every token from position 9 on
    logits, _ = model(idx)
    logits_changed, _ = model(changed)
    assert torch.allclose(logits[:, :9], logits_changed[:, :9], atol=1e-6)  # the past cannot see the future
    assert not torch.allclose(logits[:, 9:], logits_changed[:, 9:], atol=1e-3)


def test_residual_blocks_start_near_zero():
    model = tiny_gpt(n_layer=6)
    x = torch.randn(4, 16, 32) * 0.02 * math.sqrt(2)  # the scale of token + position embeddings at init
    for block in model.blocks:
        update = block(x) - x
        assert update.norm() < 0.3 * x.norm()  # each block adds little: the residual pathway dominates


def test_gpt_lecture_size_has_about_ten_million_parameters():
    model = build_model("gpt", VOCAB, block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.2)
    assert 10.6e6 < model.num_parameters() < 10.9e6


@pytest.mark.parametrize("name", MODELS)
def test_generate_returns_requested_length_and_never_feeds_more_than_block_size(name):
    model = MODELS[name]().eval()
    seen_lengths = []
    model.register_forward_pre_hook(lambda module, args: seen_lengths.append(args[0].shape[1]))
    out = model.generate(torch.zeros((3, 1), dtype=torch.long), max_new_tokens=40)
    assert out.shape == (3, 41)
    assert out[:, 0].eq(0).all()  # the start token is kept
    assert max(seen_lengths) == model.block_size  # the context is cropped to block_size, not beyond
    assert len(seen_lengths) == 40


def test_generate_is_reproducible_and_greedy_at_temperature_zero():
    model = tiny_gpt().eval()
    start = torch.zeros((1, 1), dtype=torch.long)
    sample = lambda **kw: model.generate(start, 30, generator=torch.Generator().manual_seed(1), **kw)  # noqa: E731
    assert torch.equal(sample(), sample())
    greedy = model.generate(start, 30, temperature=0)
    assert torch.equal(greedy, sample(top_k=1))  # only the likeliest token is left to draw
    assert torch.equal(greedy, model.generate(start, 30, temperature=0))
    with pytest.raises(ValueError, match="temperature"):
        model.generate(start, 1, temperature=-1)


def test_top_k_only_draws_among_the_k_likeliest():
    model = BigramLanguageModel(VOCAB, block_size=4).eval()
    start = torch.zeros((200, 1), dtype=torch.long)
    allowed = set(model(start[:1])[0][0, -1].topk(3).indices.tolist())
    drawn = set(model.generate(start, 1, top_k=3)[:, 1].tolist())
    assert drawn <= allowed


class FixedLogits(LanguageModel):
    """A language model that predicts the same next-token logits after any context."""

    def __init__(self, logits):
        super().__init__(block_size=4)
        self.register_buffer("logits", torch.as_tensor(logits))

    def forward(self, idx, targets=None):
        return self.logits.expand(*idx.shape, -1), None


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_top_k_draws_the_k_likeliest_with_their_renormalised_probabilities(temperature):
    logits = torch.tensor([0.5, 2.0, -1.0, 3.0, 1.0, 2.5, 0.0, -2.0])  # the 3 likeliest: tokens 3, 5, 1
    model = FixedLogits(logits).eval()
    n = 20_000
    generator = torch.Generator().manual_seed(0)
    drawn = model.generate(torch.zeros((n, 1), dtype=torch.long), 1, temperature, top_k=3, generator=generator)[:, 1]
    assert set(drawn.tolist()) == {3, 5, 1}
    frequencies = torch.bincount(drawn, minlength=len(logits)).float() / n
    expected = torch.zeros(len(logits))
    expected[[3, 5, 1]] = torch.softmax(torch.tensor([3.0, 2.5, 2.0]) / temperature, dim=0)
    torch.testing.assert_close(frequencies, expected, atol=0.015, rtol=0)  # ~4 standard deviations of n draws


def test_generate_stream_yields_the_tokens_generate_returns():
    model = tiny_gpt().eval()
    start = torch.zeros((1, 1), dtype=torch.long)
    streamed = list(model.generate_stream(start, 10, generator=torch.Generator().manual_seed(3)))
    full = model.generate(start, 10, generator=torch.Generator().manual_seed(3))
    assert torch.equal(torch.cat([start, *streamed], dim=1), full)


def test_a_chunk_fed_after_the_cache_gives_the_full_forwards_logits():
    # The prompt (5 tokens) fills the cache, then a chunk of 4 new tokens attends to the cached 5 and causally
    # to itself, then one token at a time: every step's logits are those of one forward over the whole sequence.
    model = tiny_gpt().eval()
    idx = torch.randint(VOCAB, (2, 12))
    full, _ = model(idx)
    cache = model.new_cache()
    with torch.no_grad():
        pieces = [model(idx[:, :5], cache=cache)[0], model(idx[:, 5:9], cache=cache)[0]]
        pieces += [model(idx[:, t : t + 1], cache=cache)[0] for t in range(9, 12)]
    assert cache.length == 12
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


def test_bad_model_configs_are_refused():
    with pytest.raises(ValueError, match="divisible"):
        tiny_gpt(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="unknown model arch"):
        build_model("lstm", VOCAB, block_size=8)
    with pytest.raises(ValueError, match="longer than block_size"):
        tiny_gpt()(torch.zeros((1, 17), dtype=torch.long))


def test_a_setting_no_model_has_and_a_missing_one_are_named():
    with pytest.raises(ValueError) as err:
        build_model("gpt", VOCAB, block_size=8, n_layers=2, n_head=1, n_embd=8)
    message = str(err.value)
    assert message.startswith("model.n_layers is not a setting of arch=gpt: one of ['block_size', 'n_layer', ")
    assert message.endswith("; model.n_layer is missing: a gpt model needs it") and "\n" not in message
