"""Sampling (gpt/core/generation.py): generate's length, cropping, reproducibility, temperature and top-k, the
stream, and the key/value cache: the same logits and characters as the full forward pass, rolling under RoPE."""

import pytest
import torch

from gpt.core.model import GPT, BigramLanguageModel, GPTConfig, LanguageModel

VOCAB = 65


def tiny_gpt(**overrides):
    fields = dict(vocab_size=VOCAB, block_size=16, n_layer=2, n_head=4, n_embd=32, dropout=0.0)
    return GPT(GPTConfig(**{**fields, **overrides}))


MODELS = {"bigram": lambda: BigramLanguageModel(VOCAB, block_size=16), "gpt": tiny_gpt}
SHAPE = dict(block_size=16, n_layer=2, n_head=2, n_embd=32)


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


# --- the key/value cache ---


@pytest.mark.parametrize("mixer", ["attention", "average"])
def test_kv_cache_gives_the_logits_of_a_full_forward_pass(mixer):
    model = GPT(GPTConfig(20, block_size=16, n_layer=2, n_head=2, n_embd=32, mixer=mixer)).eval()
    idx = torch.randint(20, (3, 16))
    full, _ = model(idx)
    cache = model.new_cache()
    pieces = [model(idx[:, :5], cache=cache)[0]]  # a prompt, then one token at a time
    pieces += [model(idx[:, t : t + 1], cache=cache)[0] for t in range(5, 16)]
    assert cache.length == 16
    torch.testing.assert_close(torch.cat(pieces, dim=1), full)


@pytest.mark.parametrize("prompt_length", [1, 7, 20])  # 20 > block_size: starts past the cache's reach
@pytest.mark.parametrize("sampling", [{}, {"temperature": 0.8, "top_k": 5}, {"temperature": 0}])
def test_cached_sampling_draws_exactly_the_uncached_characters(prompt_length, sampling):
    torch.manual_seed(prompt_length)
    model = GPT(GPTConfig(20, block_size=16, n_layer=2, n_head=2, n_embd=32)).eval()
    prompt = torch.randint(20, (2, prompt_length))
    # 40 new tokens: the sequence outgrows block_size, where the cached path switches to re-computing the window.
    outputs = [
        model.generate(prompt, 40, generator=torch.Generator().manual_seed(7), use_cache=use_cache, **sampling)
        for use_cache in (True, False)
    ]
    assert torch.equal(*outputs)


def test_cached_sampling_feeds_one_position_per_token_while_the_context_fits():
    model = GPT(GPTConfig(20, block_size=16, n_layer=1, n_head=2, n_embd=32)).eval()
    fed = []
    model.register_forward_pre_hook(lambda module, args: fed.append(args[0].shape[1]))
    model.generate(torch.zeros((1, 4), dtype=torch.long), 20)
    # The 4-token prompt once, one token each up to 16, then the whole 16-token window per step beyond it.
    assert fed == [4] + [1] * 12 + [16] * 7


# --- the rolling cache (RoPE) ---


def rope_gpt(n_layer=2):
    return GPT(GPTConfig(20, **{**SHAPE, "n_layer": n_layer}, pos="rope", qk_norm=True)).eval()


@pytest.mark.parametrize("prompt_length", [1, 7])
@pytest.mark.parametrize("sampling", [{}, {"temperature": 0.8, "top_k": 5}, {"temperature": 0}])
def test_rolling_cache_samples_exactly_the_uncached_characters_within_block_size(prompt_length, sampling):
    torch.manual_seed(prompt_length)
    model = rope_gpt()
    prompt = torch.randint(20, (2, prompt_length))
    outputs = [
        model.generate(prompt, 40, generator=torch.Generator().manual_seed(7), use_cache=use_cache, **sampling)
        for use_cache in (True, False)
    ]
    assert torch.equal(outputs[0][:, :16], outputs[1][:, :16])  # past block_size they may differ, by design


def test_rolling_cache_keeps_the_last_window_past_block_size():
    # One layer: its keys and values depend on the token alone (RoPE adds no position to the input), so the
    # rolled cache and the uncached cropped window hold the same keys, and give the same logits at every length.
    torch.manual_seed(0)
    model = rope_gpt(n_layer=1)
    idx = torch.randint(20, (2, 40))
    cache = model.new_cache()
    with torch.no_grad():
        cached = [model(idx[:, :5], cache=cache)[0][:, -1]]
        cached += [model(idx[:, t : t + 1], cache=cache)[0][:, -1] for t in range(5, 40)]
        uncached = [model(idx[:, max(0, t - 15) : t + 1])[0][:, -1] for t in range(4, 40)]
    assert cache.length == 40
    torch.testing.assert_close(torch.stack(cached), torch.stack(uncached), rtol=1e-4, atol=1e-5)
    deep = rope_gpt(n_layer=2)  # with two layers the keys carry context the cropped window lacks: they differ
    cache = deep.new_cache()
    with torch.no_grad():
        for t in range(0, 40):
            logits = deep(idx[:, t : t + 1], cache=cache)[0][:, -1]
        assert not torch.allclose(logits, deep(idx[:, -16:])[0][:, -1], atol=1e-4)


def test_rolling_cache_feeds_one_position_per_token_at_any_length():
    model = rope_gpt(n_layer=1)
    fed = []
    model.register_forward_pre_hook(lambda module, args: fed.append(args[0].shape[1]))
    model.generate(torch.zeros((1, 20), dtype=torch.long), 30)  # a prompt already longer than block_size
    assert fed == [16] + [1] * 29  # the prompt's last window once, then one token per step


@pytest.mark.parametrize("mixer", ["attention", "average"])
def test_a_chunk_fed_once_the_ring_has_wrapped_sees_exactly_the_window_it_keeps(mixer):
    # Past block_size the rolling cache is a ring (position p in slot p % block_size): slots out of order. A chunk
    # of 5 after 30 tokens keeps the last 16 positions (19..34); its query at p sees 19..p, as one uncached pass
    # over that window computes it (one layer: a key depends on its token alone, so the windows' keys agree).
    torch.manual_seed(0)
    model = GPT(GPTConfig(20, **{**SHAPE, "n_layer": 1}, pos="rope", qk_norm=True, mixer=mixer)).eval()
    idx = torch.randint(20, (2, 35))
    cache = model.new_cache()
    with torch.no_grad():
        for t in range(30):
            model(idx[:, t : t + 1], cache=cache)
        chunk, _ = model(idx[:, 30:35], cache=cache)
        window = [model(idx[:, 19 : p + 1])[0][:, -1] for p in range(30, 35)]
    torch.testing.assert_close(chunk, torch.stack(window, dim=1), rtol=1e-4, atol=1e-5)
