"""Muon (gpt/core/muon.py) for the blocks' matrices and AdamW for the rest: which parameters each gets, the step
against torch's Muon, Newton-Schulz's dtypes, and a Muon run that resumes exactly."""

import pytest
import torch

from gpt.core.muon import MuonWithAdamW, orthogonalize
from gpt.pretrain.lightning_module import GPTModule

from .conftest import TINY_RUN, train
from .test_modern import MUON, ON, SHAPE, VOCAB


@pytest.mark.parametrize("model", [{}, {"bias": True, "tie_weights": True, **ON}])
def test_muon_gets_exactly_the_blocks_matrices_and_adamw_the_rest(model):
    module = GPTModule({"arch": "gpt", **SHAPE, **model}, MUON, VOCAB)
    optimizer = module.configure_optimizers()["optimizer"]
    assert isinstance(optimizer, MuonWithAdamW)
    names = {id(p): name for name, p in module.model.named_parameters()}
    muon = {names[id(p)] for g in optimizer.param_groups if g["use_muon"] for p in g["params"]}
    adamw = [names[id(p)] for g in optimizer.param_groups if not g["use_muon"] for p in g["params"]]
    hidden = {f"blocks.{i}.{m}.weight" for i in range(2) for m in ("mixer.c_attn", "mixer.c_proj", "mlp.c_fc",
                                                                     "mlp.c_proj")}  # fmt: skip
    assert muon == hidden
    assert sorted(adamw) == sorted(set(names.values()) - hidden)  # each of the rest once
    assert "token_embedding.weight" in adamw and ("lm_head.weight" in adamw) != bool(model.get("tie_weights"))
    decayed = {names[id(p)] for g in optimizer.param_groups if not g["use_muon"] and g["weight_decay"]
               for p in g["params"]}  # fmt: skip
    assert decayed == {n for n in adamw if n.endswith("embedding.weight") or n == "lm_head.weight"}


def test_muon_in_bfloat16_computes_exactly_torchs_muon():
    torch.manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(96, 32)), torch.nn.Parameter(torch.randn(32, 128))]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    group = dict(use_muon=True, lr=0.02, weight_decay=0.1, ns_dtype="bfloat16")
    optimizers = MuonWithAdamW([{"params": ours, **group}]), torch.optim.Muon(theirs, lr=0.02, weight_decay=0.1)
    for _ in range(3):
        for a, b in zip(ours, theirs):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        for optimizer in optimizers:
            optimizer.step()
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("shape", [(32, 32), (96, 32), (32, 128)])
def test_newton_schulz_in_float32_and_bfloat16_agree_to_bfloat16_precision(shape):
    grad = torch.randn(shape)
    exact, fast = orthogonalize(grad, dtype=torch.float32), orthogonalize(grad, dtype=torch.bfloat16)
    assert exact.dtype == torch.float32 and fast.dtype == torch.bfloat16
    assert not torch.equal(fast.float(), exact)  # two computations...
    assert (fast.float() - exact).norm() / exact.norm() < 0.03  # ... equal to bf16's ~3 significant digits
    singular_values = torch.linalg.svdvals(exact)  # and the result is near-orthogonal (the quintic's 0.5-1.5)
    assert 0.5 < singular_values.min() and singular_values.max() < 1.5


def test_muon_float32_on_a_cpu_unless_told(monkeypatch):
    used = []
    real = orthogonalize

    def spy(update, steps, dtype):
        used.append(dtype)
        return real(update, steps, dtype)

    monkeypatch.setattr("gpt.core.muon.orthogonalize", spy)
    for setting in ("auto", "bfloat16"):
        p = torch.nn.Parameter(torch.randn(8, 4))
        p.grad = torch.randn(8, 4)
        MuonWithAdamW([{"params": [p], "use_muon": True, "ns_dtype": setting}]).step()
    assert used == [torch.float32, torch.bfloat16]


EVERY_SWITCH_ON = ["model.pos=rope", "model.norm=rmsnorm", "model.qk_norm=true", "model.activation=relu2",
                   "model.zero_init_proj=true", "model.logit_softcap=15.0", "model.init=pytorch",
                   "model.tie_weights=true"]  # fmt: skip
MUON_RUN = [*TINY_RUN, "optim=muon", *EVERY_SWITCH_ON, "model.dropout=0.1", "optim.schedule=wsd",
            "optim.decay_steps=20", "trainer.val_check_interval=10", "trainer.gradient_clip_val=0.5",
            "trainer.accumulate_grad_batches=2"]  # fmt: skip


@pytest.mark.slow  # three train.py runs: ~40 s
def test_a_muon_run_with_every_switch_resumes_exactly(corpus_path, tmp_path):
    """10 + 10 steps == 20 straight: Muon's momentum, AdamW's moments, the WSD schedule and the RNG all resume,
    with clipping and two micro-batches per step."""
    straight, first, second = tmp_path / "straight", tmp_path / "first", tmp_path / "second"
    train(straight, corpus_path, *MUON_RUN, "trainer.max_steps=20")
    train(first, corpus_path, *MUON_RUN, "trainer.max_steps=10")
    train(second, corpus_path, *MUON_RUN, "trainer.max_steps=20", f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}")
    expected = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)
    resumed = torch.load(second / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 20 and resumed["hyper_parameters"]["optim"]["name"] == "muon"
    for name, weight in expected["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][name], weight, rtol=0, atol=1e-6)
    groups = expected["optimizer_states"][0]["param_groups"]
    assert [g["use_muon"] for g in groups] == [False, False, True]
    muon_ids = set(groups[2]["params"])
    for i, state in resumed["optimizer_states"][0]["state"].items():
        key = "momentum_buffer" if i in muon_ids else "exp_avg_sq"
        torch.testing.assert_close(state[key], expected["optimizer_states"][0]["state"][i][key], rtol=0, atol=1e-7)
