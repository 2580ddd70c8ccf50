"""Past the lecture: the model's modern switches, the optimizer settings, the schedule setting, and the lecture's
recipes pinned so that none of these moves their losses (Muon: tests/test_muon.py; the WSD schedule:
tests/test_schedules.py; the rolling KV cache: tests/test_generation.py)."""

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from gpt.core.config import compose_config
from gpt.core.errors import UserError
from gpt.core.model import GPT, CausalSelfAttention, GPTConfig, ReLUSquared, Rotary
from gpt.core.schedules import lr_factor, wsd_factor
from gpt.pretrain.lightning_module import GPTModule

from .conftest import run_script

VOCAB = [chr(c) for c in range(97, 117)]
SHAPE = dict(block_size=16, n_layer=2, n_head=2, n_embd=32)
OFF = dict(pos="learned", norm="layernorm", qk_norm=False, activation="gelu", zero_init_proj=False,
           logit_softcap=None, init="lecture")  # fmt: skip
ON = dict(pos="rope", norm="rmsnorm", qk_norm=True, activation="relu2", zero_init_proj=True, logit_softcap=15.0,
          init="pytorch")  # fmt: skip
MUON = dict(lr=1e-3, weight_decay=0.1, betas=[0.9, 0.99], warmup_steps=0, decay_steps=10, min_lr=1e-4,
            name="muon", muon_lr=0.02, muon_momentum=0.95, muon_nesterov=True, muon_weight_decay=0.0, ns_steps=5,
            ns_dtype="auto")  # fmt: skip


# --- the switches ---------------------------------------------------------------------------------------------

# Recorded from the code before the switches existed (commit 02e9859): GPT(65, block_size=16, n_layer=2, n_head=2,
# n_embd=32, **kwargs) seeded with torch.manual_seed(0), on randint(65, (2, 16)) drawn with a generator seeded 1:
# (loss, logits[1, -1, :4], sum of |logits|), and the state-dict keys (a one-layer model's).
TODAY = {
    (): (4.181087017059326, [-0.20823264122009277, -0.0769462138414383, -0.10493288189172745, 0.029626913368701935],
         183.12464952082883),
    (("bias", True), ("tie_weights", True)): (
        3.7912633419036865, [0.14365927875041962, 0.0518665686249733, 0.10778477042913437, 0.05496976524591446],
        193.10364486745857),
}  # fmt: skip
TODAYS_KEYS = ["token_embedding.weight", "position_embedding.weight", "blocks.0.ln_1.weight",
               "blocks.0.mixer.c_attn.weight", "blocks.0.mixer.c_proj.weight", "blocks.0.ln_2.weight",
               "blocks.0.mlp.c_fc.weight", "blocks.0.mlp.c_proj.weight", "ln_f.weight", "lm_head.weight"]  # fmt: skip


@pytest.mark.parametrize("kwargs", TODAY)
def test_every_switch_off_is_todays_model_bit_for_bit(kwargs):
    idx = torch.randint(65, (2, 16), generator=torch.Generator().manual_seed(1))
    models = []
    for switches in ({}, OFF):  # the new keys left out, and stated at their off values
        torch.manual_seed(0)
        models.append(GPT(GPTConfig(65, **SHAPE, **dict(kwargs), **switches)).eval())
    (logits, loss), (off_logits, _) = models[0](idx, idx), models[1](idx)
    assert torch.equal(off_logits, logits)
    expected_loss, expected_logits, expected_sum = TODAY[kwargs]
    # the same initial weights and forward pass as before the switches (to float32 rounding, across CPUs)
    torch.testing.assert_close(loss.item(), expected_loss, rtol=1e-6, atol=0)
    torch.testing.assert_close(logits[1, -1, :4].tolist(), expected_logits, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(logits.double().abs().sum().item(), expected_sum, rtol=1e-6, atol=0)
    one_layer = GPT(GPTConfig(65, **{**SHAPE, "n_layer": 1}, **OFF))
    assert list(one_layer.state_dict()) == TODAYS_KEYS  # old checkpoints load


@pytest.mark.parametrize("switch", ON)
def test_each_switch_changes_the_model_and_it_still_learns(switch):
    idx = torch.randint(20, (4, 16))
    torch.manual_seed(0)
    off = GPT(GPTConfig(20, **SHAPE))
    torch.manual_seed(0)
    on = GPT(GPTConfig(20, **SHAPE, **{switch: ON[switch]}))
    if switch in ("norm", "qk_norm", "activation", "logit_softcap"):  # the same weights: only the computation differs
        on.load_state_dict(off.state_dict())
    assert not torch.allclose(on(idx)[0], off(idx)[0])
    optimizer = torch.optim.AdamW(on.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        _, loss = on(idx, idx)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5


def test_rope_rotates_each_pair_of_channels_by_its_positions_angle_exactly():
    # The rotation from the table (computed once, grown as positions come: start 0, then 40 past its end), in
    # four passes, against the pairwise formula from freshly computed angles: the same numbers to the bit.
    rotary = Rotary(8)
    x = torch.randn(2, 10, 3, 8)  # (batch, position, head, channel)
    for start in (0, 40, 3):
        inv_freq = 10000.0 ** -(torch.arange(0, 8, 2).float() / 8)
        angles = torch.outer(torch.arange(start, start + 10, dtype=torch.float32), inv_freq)[:, None]
        cos, sin = angles.cos(), angles.sin()
        x1, x2 = x.chunk(2, dim=-1)
        assert torch.equal(rotary(x, start), torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1))


def test_rope_trains_after_a_pass_under_inference_mode():
    """Lightning validates (and the stages sample) under torch.inference_mode, often before training starts: the
    angles table made there must not be what a training step's graph saves for backward."""
    rotary, x = Rotary(8), torch.randn(1, 5, 2, 8, requires_grad=True)
    with torch.inference_mode():
        rotary(x.detach())
    rotary(x).sum().backward()
    assert x.grad is not None


def test_relu_squared_has_autograds_gradient_to_the_bit():
    x = torch.randn(64, 512, requires_grad=True)
    grad = torch.randn(64, 512)
    ours = torch.autograd.grad(ReLUSquared()(x), x, grad)[0]
    autograds = torch.autograd.grad(torch.nn.functional.relu(x).square(), x, grad)[0]
    assert torch.equal(ours, autograds)


def test_rope_attention_scores_depend_only_on_the_offset_between_positions():
    rotary = Rotary(8)
    q, k = torch.randn(2, 10, 3, 8), torch.randn(2, 10, 3, 8)  # (batch, position, head, channel)

    def scores(q_start, k_start):  # (batch, head, query, key)
        return rotary(q, q_start).transpose(1, 2) @ rotary(k, k_start).permute(0, 2, 3, 1)

    for shift in (1, 37, 1000):  # every query and key moved by the same number of positions
        torch.testing.assert_close(scores(shift, shift), scores(0, 0), rtol=1e-4, atol=1e-4)
        assert not torch.allclose(rotary(q, shift), rotary(q, 0))  # the rotation itself does move them
    assert not torch.allclose(scores(0, 5), scores(0, 0))  # another offset: other scores
    # and inside the attention layer, with QK-norm: the heads at positions 100.. score as those at 0..
    attention = CausalSelfAttention(GPTConfig(20, **{**SHAPE, "n_embd": 16}, pos="rope", qk_norm=True))
    x = torch.randn(1, 6, 16)
    (q0, k0, _), (q1, k1, _) = attention._heads(x, 0), attention._heads(x, 100)
    torch.testing.assert_close(q1 @ k1.transpose(-2, -1), q0 @ k0.transpose(-2, -1), rtol=1e-4, atol=1e-4)


def test_logit_softcap_bounds_the_logits_and_zero_init_starts_every_block_as_the_identity():
    idx = torch.randint(20, (2, 16))
    torch.manual_seed(0)
    uncapped = GPT(GPTConfig(20, **SHAPE, init="pytorch", tie_weights=True))  # an N(0, 1) head: large logits
    torch.manual_seed(0)
    capped = GPT(GPTConfig(20, **SHAPE, logit_softcap=2.0, init="pytorch", tie_weights=True))
    logits, capped_logits = uncapped(idx)[0], capped(idx)[0]
    assert logits.abs().max() > 10 and capped_logits.abs().max() <= 2.0  # (tanh rounds to 1 in float32)
    torch.testing.assert_close(capped_logits, 2.0 * torch.tanh(logits / 2.0))
    model = GPT(GPTConfig(20, **SHAPE, zero_init_proj=True))
    x = torch.randn(2, 16, 32)
    for block in model.blocks:
        assert torch.equal(block(x), x)


@pytest.mark.parametrize(
    "bad, message",
    [({"pos": "absolute"}, "model.pos='absolute' must be one of ['learned', 'rope']"),
     ({"norm": "batchnorm"}, "model.norm='batchnorm'"), ({"activation": "swiglu"}, "model.activation='swiglu'"),
     ({"init": "xavier"}, "model.init='xavier'"), ({"qk_norm": "yes"}, "model.qk_norm='yes' must be true or false"),
     ({"logit_softcap": -1}, "model.logit_softcap=-1 must be null"),
     ({"pos": "rope", "n_embd": 30, "n_head": 10}, "head size n_embd/n_head=3 must be even")],
)  # fmt: skip
def test_bad_switch_values_are_refused_naming_the_key(bad, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        GPT(GPTConfig(20, **{**SHAPE, **bad}))
    with pytest.raises(UserError, match="invalid config"):  # what train.py prints as one line
        GPTModule({"arch": "gpt", **SHAPE, **bad}, {}, VOCAB)


def test_a_bad_switch_ends_train_py_with_one_line(tmp_path, corpus_path):
    result = run_script("train.py", f"hydra.run.dir={tmp_path}", f"data.path={corpus_path}", "model.pos=absolute")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr == "error: invalid config: model.pos='absolute' must be one of ['learned', 'rope']\n"


@pytest.mark.parametrize(
    "bad, message",
    [({"name": "sgd"}, "optim.name=sgd is not one of"), ({"schedule": "linear"}, "optim.schedule=linear"),
     ({"decay_fraction": 1.5}, "optim.decay_fraction=1.5"), ({"ns_dtype": "float16"}, "optim.ns_dtype=float16")],
)  # fmt: skip
def test_bad_optimizer_settings_are_refused_before_training(bad, message):
    with pytest.raises(UserError, match=message):
        GPTModule({"arch": "gpt", **SHAPE}, {**MUON, **bad}, VOCAB)


# --- the WSD schedule -----------------------------------------------------------------------------------------


def test_schedule_setting_picks_the_function_for_either_optimizer():
    for optim in ({**MUON, "warmup_steps": 2, "decay_steps": 10}, {**MUON, "name": "adamw", "decay_steps": 10}):
        module = GPTModule({"arch": "gpt", **SHAPE}, {**optim, "schedule": "wsd", "decay_fraction": 0.5}, VOCAB)
        scheduler = module.configure_optimizers()["lr_scheduler"]["scheduler"]
        expected = wsd_factor(7, optim["warmup_steps"], 10, 0.1, 0.5)
        assert expected != lr_factor(7, optim["warmup_steps"], 10, 0.1)
        assert [f(7) for f in scheduler.lr_lambdas] == [expected] * len(scheduler.lr_lambdas)


# --- the rolling KV cache -------------------------------------------------------------------------------------


# --- the lecture's recipes ------------------------------------------------------------------------------------

# The training loss at the last of `steps` steps of each lecture config on the test corpus (conftest), with the
# batch shrunk where it would be slow; recorded from the code before the modern switches, Muon and WSD existed
# (commit 02e9859), on a 2-core x86 CPU. Across CPUs a 50-step loss moves in about the 6th digit; a changed
# default (an init, an eps, betas, the schedule's shape) moves it in the 3rd or earlier.
RECIPES = {
    "tiny": (["model=tiny", "data.batch_size=8"], 50, 1.3224449157714844),
    "bigram": (["model=bigram"], 50, 2.9667041301727295),
    "small": (["model=small", "model.block_size=32", "data.batch_size=2"], 20, 1.983627438545227),
    "ladder/1_bigram": (["model=ladder/1_bigram"], 50, 2.9667041301727295),
    "ladder/2_embeddings": (["model=ladder/2_embeddings"], 50, 3.0998058319091797),
    "ladder/3_average": (["model=ladder/3_average"], 50, 3.2545032501220703),
    "ladder/4_single_head": (["model=ladder/4_single_head"], 50, 3.196749687194824),
    "ladder/5_multi_head": (["model=ladder/5_multi_head"], 50, 3.19770884513855),
    "ladder/6_feed_forward": (["model=ladder/6_feed_forward"], 50, 3.156956672668457),
    "ladder/7_residual": (["model=ladder/7_residual"], 50, 2.7612884044647217),
    "ladder/8_layer_norm": (["model=ladder/8_layer_norm"], 50, 1.729733943939209),
}


def recipe_loss(overrides, corpus_path, steps) -> float:
    """Train the composed config's model with its optimizer and schedule for ``steps`` steps; the last loss."""
    cfg = compose_config("train", [*overrides, f"data.path={corpus_path}", "data.eval_chunks=8"], "/tmp/unused")
    torch.manual_seed(cfg.seed)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    config = OmegaConf.to_container(cfg, resolve=True)
    config["optim"]["fused"] = False
    module = GPTModule(config["model"], config["optim"], datamodule.tokenizer.chars, seed=cfg.seed)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=steps, gradient_clip_val=cfg.trainer.gradient_clip_val, logger=False,
        enable_checkpointing=False, limit_val_batches=0, enable_progress_bar=False, enable_model_summary=False,
        use_distributed_sampler=False,
    )  # fmt: skip
    trainer.fit(module, datamodule=datamodule)
    return float(trainer.callback_metrics["train/loss"])


@pytest.mark.parametrize("name", RECIPES)
def test_the_lecture_recipes_train_to_the_same_loss_as_before(name, corpus_path):
    overrides, steps, expected = RECIPES[name]
    assert recipe_loss(overrides, corpus_path, steps) == pytest.approx(expected, rel=2e-5)
