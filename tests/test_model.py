import math

import pytest
import torch

from gpt.core.model import GPT, BigramLanguageModel, GPTConfig, build_model

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
