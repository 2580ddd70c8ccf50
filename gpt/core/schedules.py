"""The learning-rate schedules: each a multiplier of the peak learning rate at an optimizer step."""

import math


def lr_factor(step: int, warmup_steps: int, decay_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step``.

    Linear warmup over ``warmup_steps``, cosine decay down to ``min_lr_ratio`` at ``decay_steps``, then flat.
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if step >= decay_steps:
        return min_lr_ratio
    progress = (step - warmup_steps) / (decay_steps - warmup_steps)
    return min_lr_ratio + 0.5 * (1.0 + math.cos(math.pi * progress)) * (1.0 - min_lr_ratio)


def wsd_factor(step: int, warmup_steps: int, decay_steps: int, min_lr_ratio: float, decay_fraction: float) -> float:
    """Warmup-stable-decay: the same linear warmup, then the peak learning rate held, then a linear decay to
    ``min_lr_ratio`` over the last ``decay_fraction`` of the ``decay_steps`` steps, then flat.

    The long stable phase does not depend on when the run ends, so a checkpoint from it can be decayed at
    any length (Hu et al. 2024, "MiniCPM"; Hägele et al. 2024, "Scaling Laws and Compute-Optimal Training
    Beyond Fixed Training Durations").
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if step >= decay_steps:
        return min_lr_ratio
    decay_start = max(warmup_steps, decay_steps - decay_fraction * decay_steps)
    if step < decay_start:
        return 1.0
    return 1.0 - (step - decay_start) / (decay_steps - decay_start) * (1.0 - min_lr_ratio)


SCHEDULES = ("cosine", "wsd")
