"""The learning-rate schedules (gpt/core/schedules.py): warmup, then cosine or warmup-stable-decay to min_lr."""

import pytest

from gpt.core.schedules import lr_factor, wsd_factor


def test_lr_warms_up_linearly_then_decays_by_cosine_to_min_lr():
    factor = lambda step: lr_factor(step, warmup_steps=10, decay_steps=110, min_lr_ratio=0.1)  # noqa: E731
    warmup = [factor(s) for s in range(11)]
    assert warmup[0] == pytest.approx(1 / 11) and warmup[10] == pytest.approx(1.0)
    assert all(b - a == pytest.approx(1 / 11) for a, b in zip(warmup[:10], warmup[1:10]))
    assert factor(60) == pytest.approx(0.55)  # halfway down the cosine: halfway between 1 and 0.1
    decay = [factor(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))
    assert factor(110) == factor(1000) == pytest.approx(0.1)


def test_wsd_warms_up_holds_the_peak_then_decays_linearly_to_min_lr():
    wsd = lambda step: wsd_factor(step, warmup_steps=10, decay_steps=110, min_lr_ratio=0.1, decay_fraction=0.2)  # noqa: E731
    cosine = lambda step: lr_factor(step, warmup_steps=10, decay_steps=110, min_lr_ratio=0.1)  # noqa: E731
    assert [wsd(s) for s in range(10)] == [cosine(s) for s in range(10)]  # the same warmup
    assert all(wsd(s) == 1.0 for s in range(10, 89))  # the stable phase, up to the last 22 steps (20% of 110)
    assert wsd(88) == 1.0 and wsd(99) == pytest.approx(1 - 11 / 22 * 0.9)  # linear from step 88 ...
    assert wsd(109) == pytest.approx(1 - 21 / 22 * 0.9) and wsd(110) == 0.1 == wsd(10**6)  # ... to min_lr, flat
    steps = [wsd(s) for s in range(88, 111)]
    assert all(a > b for a, b in zip(steps, steps[1:]))
