"""The modern ladder (conf/model/modern/): nanoGPT's CPU recipe, then one change per rung; its run with seeds;
the default model and the speed-run preset it leads to."""

import statistics

import pytest
from omegaconf import OmegaConf

from gpt.core.model import build_model
from gpt.pretrain.ladder import LADDERS, main
from gpt.pretrain.plots import read_metrics

from .test_config import compose_train

RUNGS = LADDERS["modern"].rungs()

# Each rung past the first: what it changes in the previous rung's composed config.
CHANGES = {
    "2_tuned": {"optim": {"lr": 4e-3, "min_lr": 2e-4}},
    "3_pytorch_init": {"model": {"init": "pytorch"}},
    "4_rope": {"model": {"pos": "rope"}},
    "5_rmsnorm": {"model": {"norm": "rmsnorm"}},
    "6_qk_norm": {"model": {"qk_norm": True}},
    "7_relu2": {"model": {"activation": "relu2"}},
    "8_zero_init_proj": {"model": {"zero_init_proj": True}},
    "9_muon": {"optim": {"name": "muon", "muon_lr": 0.02, "muon_momentum": 0.95, "muon_nesterov": True,
                         "muon_weight_decay": 0.0, "ns_steps": 5, "ns_dtype": "auto"}},
    "10_wsd": {"optim": {"schedule": "wsd"}},
    "11_softcap": {"model": {"logit_softcap": 15.0}},
}  # fmt: skip


def test_the_modern_ladder_is_rung_1_and_one_change_per_rung_in_order():
    assert [RUNGS[n] for n in sorted(RUNGS)] == ["1_nanogpt_cpu", *CHANGES] and sorted(RUNGS) == list(range(1, 12))


def test_rung_1_is_the_lecture_tiny_model_at_nanogpts_cpu_settings():
    cfg = compose_train("model=modern/1_nanogpt_cpu")
    tiny = compose_train("model=tiny")
    assert cfg.model == tiny.model  # the lecture's model, every modern switch off
    assert (cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd, cfg.model.block_size) == (4, 4, 128, 64)
    assert (cfg.data.batch_size, cfg.trainer.max_steps, cfg.optim.name, cfg.optim.schedule) == (
        12,
        2000,
        "adamw",
        "cosine",
    )
    assert (cfg.optim.lr, cfg.optim.min_lr, cfg.optim.warmup_steps) == (1e-3, 1e-4, 100)


def test_each_rung_is_the_previous_one_plus_one_change():
    previous = compose_train(f"model=modern/{RUNGS[1]}")
    for rung, change in CHANGES.items():
        cfg = compose_train(f"model=modern/{rung}")
        expected = OmegaConf.merge(OmegaConf.to_container(previous), change)  # Muon adds keys: not in struct mode
        assert OmegaConf.to_container(cfg) == OmegaConf.to_container(expected), rung  # the rest untouched
        previous = cfg


@pytest.fixture(scope="module")
def quick_modern_ladder(tmp_path_factory, corpus_path):
    """Two rungs of the modern ladder with two seeds, 4 steps of batch 2 each, validated twice."""
    out = tmp_path_factory.mktemp("modern")
    quick = ["--ladder", "modern", "--rungs", "1,9", "--steps", "4", "--evals", "2", "--batch-size", "2"]
    overrides = [f"data.path={corpus_path}", "data.eval_chunks=4", "callbacks.text_sample.max_new_tokens=5",
                 "trainer.accelerator=cpu"]  # fmt: skip
    return main([*quick, "--out", str(out), *overrides])


def test_the_modern_ladder_trains_each_rung_once_per_seed_and_reports_mean_and_spread(quick_modern_ladder):
    table = (quick_modern_ladder / "ladder.md").read_text().splitlines()
    rows = [line.strip("| ").split(" | ") for line in table[2:]]
    assert [row[0] for row in rows] == ["1 nanogpt-cpu", "9 muon"]
    for rung, row in zip(("1_nanogpt_cpu", "9_muon"), rows):
        finals = []
        for seed in (1337, 1338):
            run = quick_modern_ladder / rung / f"seed{seed}"
            assert OmegaConf.load(run / "hparams.yaml").seed == seed  # the run config Lightning logged
            steps, losses = read_metrics(run / "metrics.csv")["val/loss"]
            assert steps == [2, 4]
            finals.append(losses[-1])
        assert finals[0] != finals[1]  # two seeds, two different runs
        assert float(row[3]) == pytest.approx(statistics.fmean(finals), abs=5e-4)  # the mean over the seeds
        assert float(row[4]) == pytest.approx(max(finals) - min(finals), abs=1e-3)  # and their spread
    assert rows[0][5] == "" and float(rows[1][5]) == pytest.approx(float(rows[1][3]) - float(rows[0][3]), abs=2e-3)


def test_bad_seeds_stop_with_one_line():
    with pytest.raises(SystemExit) as stop:
        main(["--ladder", "modern", "--seeds", "1337,x"])
    assert str(stop.value) == "error: --seeds=1337,x is not a list of numbers like 1-8 or 1,4,9"


def flat(cfg, prefix="") -> dict:
    """A composed config as {"optim.lr": 0.004, ...}."""
    items = cfg.items() if prefix else OmegaConf.to_container(cfg).items()
    out = {}
    for key, value in items:
        out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def differences(a, b) -> dict:
    """The keys whose values differ between two composed configs, with their values in ``b``."""
    fa, fb = flat(a), flat(b)
    return {key: fb.get(key) for key in fa.keys() | fb.keys() if fa.get(key) != fb.get(key)}


def test_the_default_model_is_the_best_rung_with_a_budget_that_fits_rung_1s_time():
    default, best = compose_train(), compose_train("model=modern/10_wsd")
    assert default == compose_train("model=modern_tiny")
    budget = {"data.batch_size": 32, "trainer.max_steps": 700, "trainer.val_check_interval": 175,
              "optim.warmup_steps": 0, "optim.decay_fraction": 0.5}  # fmt: skip
    assert differences(best, default) == budget  # the model and optimizer: the rung's
    model = build_model(vocab_size=65, **default.model)
    assert model.num_parameters() <= 1_000_000 and default.model.block_size >= 64  # a laptop CPU's model


def test_the_speed_run_is_the_default_with_a_shorter_schedule():
    assert differences(compose_train("model=modern_tiny"), compose_train("model=speedrun")) == {
        "trainer.max_steps": 170, "trainer.val_check_interval": 170, "optim.muon_lr": 0.03}  # fmt: skip


def test_the_modern_lecture_size_model_is_the_lectures_shape_with_the_default_models_recipe():
    modern, lecture, default = compose_train("model=modern_small"), compose_train("model=small"), compose_train()
    assert build_model(vocab_size=65, **modern.model).num_parameters() <= 11_000_000
    for key in ("n_layer", "n_head", "n_embd", "block_size", "dropout"):
        assert modern.model[key] == lecture.model[key]
    switches = ("pos", "norm", "qk_norm", "activation", "zero_init_proj", "init", "logit_softcap")
    assert {k: modern.model[k] for k in switches} == {k: default.model[k] for k in switches}
    assert (modern.optim.name, modern.optim.schedule) == ("muon", "wsd")
    # and nothing else: small's file with the default's switches, Muon and WSD, and half of small's steps
    assert differences(lecture, modern) == {
        "model.pos": "rope", "model.norm": "rmsnorm", "model.qk_norm": True, "model.activation": "relu2",
        "model.zero_init_proj": True, "model.init": "pytorch", "optim.name": "muon", "optim.muon_lr": 0.02,
        "optim.muon_momentum": 0.95, "optim.muon_nesterov": True, "optim.muon_weight_decay": 0.0, "optim.ns_steps": 5,
        "optim.ns_dtype": "auto", "optim.schedule": "wsd", "optim.decay_fraction": 0.5, "trainer.max_steps": 2500,
    }  # fmt: skip
