"""Training throughput of a model config: tokens/s, ms/step and peak memory through ``GPTModule`` + Lightning's
``Trainer`` and through a plain PyTorch loop over the same model, optimizer, schedule, clipping and batches (the
ratio of their step times is Lightning's overhead), and on a GPU the model FLOPs utilisation (MFU)."""

import tempfile
import time

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from omegaconf import OmegaConf

from gpt.bench.common import VOCAB, load_config, synchronize
from gpt.core.model import build_model
from gpt.core.trainer import allow_clipping_with_fused_optimizers
from gpt.pretrain.callbacks import peak_memory_mb
from gpt.pretrain.data import RandomBatches
from gpt.pretrain.lightning_module import GPTModule

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets; the first key found in the device's name
# wins. None: a name that would otherwise match a wrong entry (a MIG slice has a fraction of its GPU's peak; the
# NVL boards have their own), whose MFU is then reported unknown rather than guessed.
PEAK_BF16_FLOPS = {
    "MIG": None,
    "H100 NVL": None,
    "H200 NVL": None,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "A10G": 125e12,
    "L4": 121e12,
}


def flops_per_token(model_cfg, n_params: int) -> float:
    """Model FLOPs per token: 6 x parameters + 12 x layers x context x width (the PaLM/nanoGPT estimate, counting
    the attention scores)."""
    if model_cfg.arch != "gpt":
        return 2.0 * n_params  # a table lookup is not a matmul; this only keeps the column defined
    return 6.0 * n_params + 12.0 * model_cfg.n_layer * model_cfg.block_size * model_cfg.n_embd


def peak_bf16_flops(device_name: str) -> float | None:
    """The dense bf16 peak (FLOP/s) of a GPU named like ``torch.cuda.get_device_name``; None if not known."""
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in device_name), None)


def device_peak_flops(device: torch.device) -> tuple[str, float | None]:
    if device.type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    return name, peak_bf16_flops(name)


def mfu_pct(flops_per_token: float, tokens_per_s: float, peak_flops: float | None, devices: int = 1) -> float | None:
    """Model FLOPs utilisation in percent: achieved FLOP/s over the peak of ``devices`` GPUs (None: no peak known)."""
    if peak_flops is None:
        return None
    return 100 * flops_per_token * tokens_per_s / (peak_flops * devices)


def make_module(cfg, device):
    """GPTModule exactly as train.py builds it, on ``device``, and batches of random tokens sampled there."""
    config = OmegaConf.to_container(cfg, resolve=True)
    module = GPTModule(config["model"], config["optim"], VOCAB, compile=cfg.compile).to(device)
    data = torch.randint(len(VOCAB), (1_000_000,), device=device)
    batches = RandomBatches(data, cfg.model.block_size, cfg.data.batch_size, seed=cfg.seed)
    return module, batches


def plain_loop_ms_per_step(cfg, device, steps: int, warmup: int) -> float:
    """The same model, optimizer, schedule, clipping and batches as the Lightning run, in a bare loop."""
    torch.manual_seed(cfg.seed)
    module, batches = make_module(cfg, device)
    optim = module.configure_optimizers()
    optimizer, scheduler = optim["optimizer"], optim["lr_scheduler"]["scheduler"]
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=cfg.trainer.precision == "bf16-mixed")
    module.train()
    for i, (x, y) in enumerate(batches):
        if i == warmup:
            synchronize(device)
            started = time.perf_counter()
        if i == warmup + steps:
            break
        with autocast:
            _, loss = module.train_forward(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.trainer.gradient_clip_val)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    synchronize(device)
    return (time.perf_counter() - started) * 1000 / steps


class StepTimer(L.Callback):
    """Wall time of the training batches after the warm-up ones."""

    def __init__(self, warmup: int):
        self.warmup, self.started, self.seconds = warmup, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:
            synchronize(pl_module.device)
            self.started = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        synchronize(pl_module.device)
        self.seconds = time.perf_counter() - self.started


def lightning_ms_per_step(cfg, device, steps: int, warmup: int, log_dir: str) -> float:
    torch.manual_seed(cfg.seed)
    module, batches = make_module(cfg, device)
    timer = StepTimer(warmup)
    trainer = L.Trainer(
        accelerator=device.type,
        devices=1,
        precision=cfg.trainer.precision,
        max_steps=warmup + steps,
        gradient_clip_val=cfg.trainer.gradient_clip_val,
        log_every_n_steps=cfg.trainer.log_every_n_steps,
        logger=CSVLogger(log_dir),
        callbacks=[timer],
        limit_val_batches=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    allow_clipping_with_fused_optimizers(trainer)  # as train.py's trainer: bf16 + fused AdamW + clipping
    trainer.fit(module, train_dataloaders=batches)
    return timer.seconds * 1000 / steps


def bench_throughput(name: str, device, steps: int, warmup: int, overrides=(), plain: bool = True) -> dict:
    """Tokens/s, ms/step, peak memory and MFU of config ``model=name`` (plus ``overrides``) trained on random tokens;
    with ``plain``, also the plain loop's ms/step and Lightning's overhead (None without)."""
    accelerator = f"trainer.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}"
    cfg = load_config([f"model={name}", accelerator, *overrides])
    n_params = build_model(vocab_size=len(VOCAB), **cfg.model).num_parameters()
    tokens_per_step = cfg.data.batch_size * cfg.model.block_size
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory() as log_dir:
        lightning_ms = lightning_ms_per_step(cfg, device, steps, warmup, log_dir)
    peak_mb = peak_memory_mb(device)
    plain_ms = plain_loop_ms_per_step(cfg, device, steps, warmup) if plain else None
    device_name, peak = device_peak_flops(device)
    tokens_per_s = tokens_per_step / (lightning_ms / 1000)
    return {
        "model": name,
        "parameters": n_params,
        "tokens_per_step": tokens_per_step,
        "precision": cfg.trainer.precision,
        "compile": bool(cfg.compile),
        "lightning_ms_per_step": lightning_ms,
        "plain_ms_per_step": plain_ms,
        "lightning_overhead_pct": None if plain_ms is None else 100 * (lightning_ms / plain_ms - 1),
        "tokens_per_s": tokens_per_s,
        "peak_memory_mb": peak_mb,
        "mfu_pct": mfu_pct(flops_per_token(cfg.model, n_params), tokens_per_s, peak),
        "device": device_name,
        "peak_flops": peak,
    }
