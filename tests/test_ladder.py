"""The lecture's ladder: the averaging trick, the rungs' configs and models, the ladder run, attention maps."""

import pytest
import torch
from matplotlib.image import imread
from omegaconf import OmegaConf
from torch import nn
from torch.nn import functional as F

from gpt.core.errors import UserError
from gpt.core.model import BigramLanguageModel, CausalAverage, CausalSelfAttention, GPTConfig
from gpt.pretrain.ladder import LADDERS, main
from gpt.pretrain.lightning_module import GPTModule
from gpt.pretrain.training import check_config
from gpt.sampling import sample

from .conftest import run_script
from .test_config import compose_train
from .test_train_and_sample import sample_cfg

VOCAB = 65
RUNGS = LADDERS["lecture"].rungs()
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# The lecture's three ways to let each position average itself with its past ("bag of words").
def average_by_loop(x):
    out = torch.zeros_like(x)
    for t in range(x.size(1)):
        out[:, t] = x[:, : t + 1].mean(dim=1)
    return out


def average_by_matmul(x):
    weights = torch.tril(torch.ones(x.size(1), x.size(1)))
    return (weights / weights.sum(dim=1, keepdim=True)) @ x


def average_by_softmax(x):
    T = x.size(1)
    scores = torch.zeros(T, T).masked_fill(torch.tril(torch.ones(T, T)) == 0, float("-inf"))
    return F.softmax(scores, dim=-1) @ x  # the future gets exp(-inf) = 0, the past equal shares


def test_three_ways_to_average_the_past_agree_and_the_model_computes_the_same():
    x = torch.randn(4, 8, 2)
    by_loop = average_by_loop(x)
    torch.testing.assert_close(average_by_matmul(x), by_loop)
    torch.testing.assert_close(average_by_softmax(x), by_loop)
    torch.testing.assert_close(CausalAverage()(x), by_loop)
    torch.testing.assert_close(CausalAverage().weights(x), average_by_matmul(torch.eye(8)[None])[0])


def test_attention_whose_scores_are_all_zero_is_the_average():
    attention = CausalSelfAttention(GPTConfig(VOCAB, block_size=6, n_layer=1, n_head=2, n_embd=8))
    with torch.no_grad():
        attention.c_attn.weight[:8] = 0  # the queries: every query·key score is 0
    x = torch.randn(1, 6, 8)
    for head in attention.weights(x)[0]:
        torch.testing.assert_close(head, CausalAverage().weights(x))


def test_attention_weights_are_those_the_forward_pass_uses():
    attention = CausalSelfAttention(GPTConfig(VOCAB, block_size=6, n_layer=1, n_head=2, n_embd=8))
    x = torch.randn(3, 6, 8)
    _, _, v = attention._heads(x)
    heads = attention.weights(x) @ v  # (B, n_head, T, head_size)
    spelled_out = attention.c_proj(heads.transpose(1, 2).reshape(3, 6, 8))
    torch.testing.assert_close(attention(x), spelled_out)


def ladder_model(rung, *overrides):
    cfg = compose_train(f"model=ladder/{rung}", *overrides)
    check_config(cfg)
    return cfg, GPTModule(OmegaConf.to_container(cfg.model), {}, vocab=[chr(i) for i in range(VOCAB)]).model


def structure(model):
    """What the model is made of, read off its modules: (blocks, mixer, heads, mlp, residual, layer_norm)."""
    if isinstance(model, BigramLanguageModel):
        return "bigram"
    if not model.blocks:
        return (0, None, None, False, False, False)
    block = model.blocks[0]
    mixer = type(block.mixer).__name__
    heads = getattr(block.mixer, "n_head", None)
    layer_norm = isinstance(block.ln_1, nn.LayerNorm)
    return (len(model.blocks), mixer, heads, block.mlp is not None, block.residual, layer_norm)


def test_the_average_rung_with_rope_samples_past_its_context_as_without_the_cache():
    """With model.pos=rope the KV cache rolls, keeping the last block_size - 1 positions; the average counted every
    position seen, and the first validation's sample died past block_size ("The size of tensor a ... must match")."""
    _, model = ladder_model("3_average", "model.pos=rope")
    start, n = torch.zeros((1, 1), dtype=torch.long), 3 * model.block_size
    cached = model.eval().generate(start, n, temperature=0)
    # one block whose input is the characters alone (no positions): the rolling window is the cropped one
    assert torch.equal(cached, model.generate(start, n, temperature=0, use_cache=False))
    assert cached.shape == (1, 1 + n)


C, T = 32, 8  # the lecture's small width and context, rungs 2-8
EMBEDDINGS_AND_HEAD = VOCAB * C + T * C + C * VOCAB
ATTENTION, MLP, NORMS = 4 * C * C, 8 * C * C, 2 * C  # q, k, v, projection; 4x up and down; two LayerNorms
LADDER = {  # rung: (structure, parameters)
    "1_bigram": ("bigram", VOCAB * VOCAB),
    "2_embeddings": ((0, None, None, False, False, False), EMBEDDINGS_AND_HEAD),
    "3_average": ((1, "CausalAverage", None, False, False, False), EMBEDDINGS_AND_HEAD),  # averaging is free
    "4_single_head": ((1, "CausalSelfAttention", 1, False, False, False), EMBEDDINGS_AND_HEAD + ATTENTION),
    "5_multi_head": ((1, "CausalSelfAttention", 4, False, False, False), EMBEDDINGS_AND_HEAD + ATTENTION),
    "6_feed_forward": ((1, "CausalSelfAttention", 4, True, False, False), EMBEDDINGS_AND_HEAD + ATTENTION + MLP),
    "7_residual": ((3, "CausalSelfAttention", 4, True, True, False), EMBEDDINGS_AND_HEAD + 3 * (ATTENTION + MLP)),
    "8_layer_norm": (
        (3, "CausalSelfAttention", 4, True, True, True),
        EMBEDDINGS_AND_HEAD + 3 * (ATTENTION + MLP + NORMS) + C,  # + the final LayerNorm
    ),
    "9_scaled": ((6, "CausalSelfAttention", 6, True, True, True), None),  # model=small: checked against it
}


def test_the_ladder_has_nine_rungs_in_order():
    assert list(LADDER) == [RUNGS[n] for n in sorted(RUNGS)] and sorted(RUNGS) == list(range(1, 10))


@pytest.mark.parametrize("rung", LADDER)
def test_every_rung_composes_and_builds_the_intended_model(rung):
    cfg, model = ladder_model(rung)
    expected_structure, expected_parameters = LADDER[rung]
    assert structure(model) == expected_structure
    if expected_parameters is not None:
        assert model.num_parameters() == expected_parameters
    assert cfg.optim.min_lr == pytest.approx(cfg.optim.lr / 10)  # the ladder's shared schedule ends at lr/10


def test_the_ends_of_the_ladder_are_the_bigram_and_small_models():
    assert compose_train("model=ladder/1_bigram") == compose_train("model=bigram")
    assert compose_train("model=ladder/9_scaled") == compose_train("model=small")


def test_each_middle_rung_is_the_previous_one_plus_one_change():
    changes = {
        "3_average": {"n_layer": 1},
        "4_single_head": {"mixer": "attention"},
        "5_multi_head": {"n_head": 4},
        "6_feed_forward": {"mlp": True},
        "7_residual": {"residual": True, "n_layer": 3},
        "8_layer_norm": {"layer_norm": True},
    }
    previous = compose_train("model=ladder/2_embeddings")
    for rung, change in changes.items():
        cfg = compose_train(f"model=ladder/{rung}")
        expected = OmegaConf.merge(previous, {"model": change})
        assert cfg == expected, rung  # the same recipe (data, optim, trainer) and model but for the change
        previous = cfg


@pytest.mark.parametrize("rung", [r for r in LADDER if r != "1_bigram"])
def test_every_rung_is_causal_and_its_attention_maps_are_causal_rows_summing_to_one(rung):
    _, model = ladder_model(rung)
    model.eval()
    idx = torch.randint(VOCAB, (1, 8))
    changed = idx.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % VOCAB
    torch.testing.assert_close(model(idx)[0][:, :5], model(changed)[0][:, :5])  # the past cannot see the future
    maps = model.attention_maps(idx)
    assert len(maps) == len(model.blocks)
    for weights in maps:
        assert weights.shape[1:] == (8, 8)
        assert torch.all(weights.triu(diagonal=1) == 0)
        torch.testing.assert_close(weights.sum(dim=-1), torch.ones(weights.shape[:2]))


def test_bad_ladder_values_get_a_clear_message():
    cfg = compose_train("model=ladder/5_multi_head", "model.mixer=sum", "model.n_layer=-1", "model.mlp=maybe")
    with pytest.raises(UserError) as error:
        check_config(cfg)
    for problem in ("model.mixer='sum' must be one of", "model.n_layer=-1 must be >= 0", "model.mlp='maybe' must be"):
        assert problem in str(error.value)


@pytest.fixture(scope="module")
def quick_ladder(tmp_path_factory, corpus_path):
    """The whole ladder in quick mode: 2 steps of batch 2 per rung, each followed by a small evaluation."""
    out = tmp_path_factory.mktemp("ladder")
    quick = ["--steps", "2", "--evals", "2", "--batch-size", "2", "--out", str(out)]
    overrides = [f"data.path={corpus_path}", "data.eval_chunks=2", "callbacks.text_sample.max_new_tokens=5"]
    return main([*quick, *overrides, "trainer.accelerator=cpu"])


def test_quick_ladder_trains_every_rung_and_writes_its_table_and_plot(quick_ladder):
    table = (quick_ladder / "ladder.md").read_text().splitlines()
    assert table[0] == "| rung | parameters | train loss | val loss | val spread | val change | wall time |"
    rows = [line.split(" | ") for line in table[2:]]
    assert [row[0] for row in rows] == ["| 1 bigram", "| 2 embeddings", "| 3 average", "| 4 single-head",
                                        "| 5 multi-head", "| 6 feed-forward", "| 7 residual", "| 8 layer-norm",
                                        "| 9 scaled"]  # fmt: skip
    parameters = [int(row[1].replace(",", "")) for row in rows]
    assert parameters == sorted(parameters) and parameters[-1] > 10e6
    for rung in LADDER:
        assert (quick_ladder / rung / "seed1337" / "checkpoints" / "best.ckpt").is_file()  # one seed: the lecture's
    png = quick_ladder / "ladder.png"
    assert png.read_bytes().startswith(PNG_SIGNATURE) and imread(png).shape[0] > 100


def test_bad_ladder_arguments_stop_with_one_line():
    for args, message in ((["--rungs", "3-12"], "there is no rung 10"), (["--steps", "15"], "multiple of --evals")):
        with pytest.raises(SystemExit) as stop:
            main(args)
        assert str(stop.value).startswith("error: ") and message in str(stop.value) and "\n" not in str(stop.value)


def test_sample_py_saves_a_heat_map_of_one_head(quick_ladder, tmp_path):
    ckpt = quick_ladder / "5_multi_head" / "seed1337" / "checkpoints" / "best.ckpt"
    args = [f"ckpt={ckpt}", "prompt=ROMEO:", "attention_png=attention.png", "layer=0", "head=3", "device=cpu"]
    result = run_script("sample.py", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "layer 0, head 3 over 6 characters" in result.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["attention.png"]  # the heat map, and nothing else
    assert (tmp_path / "attention.png").read_bytes().startswith(PNG_SIGNATURE)
    assert imread(tmp_path / "attention.png").ndim == 3


@pytest.mark.parametrize(
    "rung, overrides, message",
    [
        ("5_multi_head", {"layer": 1}, "layer=1 does not exist: this model has layers 0 to 0"),
        ("5_multi_head", {"head": 4}, "head=4 does not exist: layer 0 has heads 0 to 3"),
        ("5_multi_head", {"head": -1}, "head=-1 does not exist"),
        ("3_average", {"head": 1}, "head=1 does not exist: layer 0 has heads 0 to 0"),
        ("5_multi_head", {"prompt": "ROMEO: to be"}, "the prompt has 12 characters, the model sees 8"),
        ("5_multi_head", {"prompt": None}, "give prompt=... or prompt_file=..."),
        ("1_bigram", {}, "no attention layers"),
        ("2_embeddings", {}, "no attention layers"),
    ],
)
def test_bad_heat_map_requests_get_a_one_line_error(quick_ladder, tmp_path, rung, overrides, message):
    ckpt = quick_ladder / rung / "seed1337" / "checkpoints" / "best.ckpt"
    request = {"prompt": "ROMEO:", "attention_png": str(tmp_path / "a.png"), "device": "cpu", **overrides}
    cfg = sample_cfg(ckpt, **request)
    with pytest.raises(UserError, match=message.replace("(", r"\(")) as error:
        sample(cfg)
    assert "\n" not in str(error.value) and not (tmp_path / "a.png").exists()
