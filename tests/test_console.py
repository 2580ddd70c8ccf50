"""What a person reads while a run trains: progress by step, no upstream advertisements or deprecation noise."""

from .conftest import TINY_RUN, train


def test_the_console_shows_steps_losses_and_speed_and_no_upstream_noise(tmp_path, corpus_path):
    steps = ["trainer.max_steps=10", "trainer.val_check_interval=5", "optim.warmup_steps=0"]
    console = train(tmp_path, corpus_path, *TINY_RUN, *steps)
    for noise in ("litlogger", "LeafSpec", "FLOPs", "Epoch", "exists and is not empty", "Validation DataLoader"):
        assert noise not in console
    assert "step: 100%" in console
    for shown in ("train/loss=", "val/loss=", "train/tokens_per_sec=", "model: GPT, "):
        assert shown in console
