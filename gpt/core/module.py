"""What every LightningModule of this project stands on (GPTModule, and the post-training stages): the checkpoint
record, every rank's RNG, and the optimizer and schedule that ``optim`` describes."""

import logging
from functools import partial

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn
from torch.distributed.fsdp import FullyShardedDataParallel, OptimStateKeyType

from gpt.core.checkpoint import KIND_KEY
from gpt.core.config import is_number
from gpt.core.errors import UserError, invalid_config
from gpt.core.model import full_config
from gpt.core.muon import NS_DTYPES, MuonWithAdamW
from gpt.core.schedules import SCHEDULES, lr_factor, wsd_factor
from gpt.core.tokenizer import tokenizer_for

log = logging.getLogger(__name__)

OPTIMIZERS = ("adamw", "muon")
# The default model's Muon with FSDP: refused at start-up (train.py's config check) and where the optimizer is built
MUON_UNDER_FSDP = (
    "optim=muon orthogonalises whole matrices, which FSDP shards: use trainer=ddp, or FSDP with optim=adamw"
)
MATRIX_LAYERS = (nn.Linear, nn.Embedding)  # whose weights AdamW decays


def optim_problems(optim) -> list[str]:
    """The optimizer settings this module reads that cannot work, one line each naming the key (``optim`` as in
    conf/optim/; missing keys take their defaults: an older checkpoint's config is AdamW + cosine)."""
    problems = []

    def require(ok, message):
        if not ok:
            problems.append(message)

    def number(key, default=None):
        """optim.<key> (or ``default``) if it is a number or unset; None, and a problem, if it is anything else."""
        value = optim.get(key, default)
        if value is None or is_number(value):
            return value
        problems.append(f"optim.{key}={value!r} must be a number")
        return None

    def at_least(key, low, strict=False):
        value = number(key)
        if value is not None:
            relation = ">" if strict else ">="
            require(value > low if strict else value >= low, f"optim.{key}={value} must be {relation} {low}")
        return value

    name = optim.get("name", "adamw")
    require(name in OPTIMIZERS, f"optim.name={name} is not one of {list(OPTIMIZERS)} (choose with optim=...)")
    schedule = optim.get("schedule", "cosine")
    require(schedule in SCHEDULES, f"optim.schedule={schedule} is not one of {list(SCHEDULES)}")
    if (fraction := number("decay_fraction", 0.2)) is not None:
        require(0 <= fraction <= 1, f"optim.decay_fraction={fraction} must be in [0, 1]")
    lr, min_lr = at_least("lr", 0, strict=True), number("min_lr")
    if lr is not None and min_lr is not None:
        require(0 <= min_lr <= lr, f"optim.min_lr={min_lr} must be in [0, optim.lr={lr}]")
    at_least("weight_decay", 0)
    betas = optim.get("betas")
    if betas is not None:
        require(
            len(betas) == 2 and all(is_number(b) and 0 <= b < 1 for b in betas),
            f"optim.betas={list(betas)} must be two numbers in [0, 1)",
        )
    at_least("warmup_steps", 0)
    at_least("decay_steps", 1)  # null: the stage's own length (PPO)
    if name == "muon":
        ns_dtype = optim.get("ns_dtype", "auto")
        require(ns_dtype in ("auto", *NS_DTYPES), f"optim.ns_dtype={ns_dtype} is not one of {['auto', *NS_DTYPES]}")
        at_least("muon_lr", 0, strict=True)
        if (momentum := number("muon_momentum", 0.95)) is not None:
            require(0 <= momentum < 1, f"optim.muon_momentum={momentum} must be in [0, 1)")
        at_least("muon_weight_decay", 0)
        at_least("ns_steps", 1)
    return problems


def check_optim(optim) -> None:
    """Raise one UserError listing ``optim_problems``, if there are any."""
    if problems := optim_problems(optim):
        raise invalid_config(problems)


class CheckpointedModule(L.LightningModule):
    """What every LightningModule of this project shares (GPTModule, and the post-training stages).

    - Its checkpoint follows the contract of gpt.core.checkpoint: the ``kind`` (the class's ``KIND``), the
      complete model config (every default filled in: the file states the whole model, whatever a later version
      defaults to) and vocabulary (the hyperparameters, plain data), and ``config``, the whole config of the
      run, as a record of how it was made; and every rank's RNG states, restored on resume.
    - Each rank draws its own dropout stream from ``seed`` when fit starts.
    - The tokenizer of the vocabulary; AdamW (or, for pre-training, Muon + AdamW) with warmup and cosine or
      warmup-stable-decay (``optim``); ``train/lr`` logging.

    A subclass builds its own ``self.model``; extra hyperparameters (``**hparams``) are saved beside the rest.
    """

    KIND: str  # "pretrained", "sft", "ppo", "dpo", "grpo" or "reward": see gpt.core.checkpoint.KINDS

    def __init__(
        self,
        model: dict,
        optim: dict,
        vocab: list[str],
        run_config: dict | None = None,
        seed: int = 0,
        **hparams,
    ):
        super().__init__()
        check_optim(optim)
        # train.py and finetune.py log run_config themselves
        self.save_hyperparameters(
            {"model": full_config(**model), "optim": optim, "vocab": vocab, **hparams}, logger=False
        )
        self.run_config = run_config
        self.wall_time_s: float | None = None  # the job's seconds up to its checkpoint, when the job says (finetune.py)
        self.seed = seed  # of each rank's dropout stream (the weights are drawn before, the batches elsewhere)
        self.tokenizer = tokenizer_for(vocab)

    def configure_optimizers(self):
        """AdamW over ``self.model``, its schedule stepped once per optimizer step (GPTModule adds Muon)."""
        optimizer, scheduler = self.adamw(self.model.parameters())
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def adamw(self, params, decay_steps: int | None = None):
        """AdamW over ``params`` and its LambdaLR schedule (stepped once per optimizer step), as ``optim`` says:
        weight decay on the matrices (weights, embeddings) only; warmup, cosine (or WSD) decay to ``min_lr`` at
        ``decay_steps`` (``optim.decay_steps`` unless given), then flat."""
        cfg = self.hparams.optim
        if cfg.get("name", "adamw") != "adamw":
            raise UserError(f"optim={cfg['name']} is for pre-training (train.py); this stage trains with optim=adamw")
        optimizer = torch.optim.AdamW(
            self._adamw_groups(params), lr=cfg["lr"], betas=tuple(cfg["betas"]), fused=self._fused()
        )
        return optimizer, self.lr_schedule(optimizer, decay_steps)

    def muon(self, named_params, decay_steps: int | None = None):
        """Muon + AdamW (gpt.core.muon) over ``named_params`` of a GPT and its schedule: Muon (``optim.muon_*``)
        for the 2-D matrices inside the blocks (attention and MLP weights), AdamW as ``adamw`` sets it up for
        the rest (embeddings, head, norm gains, biases). One schedule scales both learning rates."""
        cfg = self.hparams.optim
        if self._trainer is not None and isinstance(self.trainer.strategy, FSDPStrategy):
            raise UserError(MUON_UNDER_FSDP)
        named_params = [(name, p) for name, p in named_params if p.requires_grad]
        hidden = [p for name, p in named_params if name.startswith("blocks.") and p.dim() == 2]
        ids = {id(p) for p in hidden}
        rest = [p for _, p in named_params if id(p) not in ids]
        # AdamW's groups first: train/lr logs the first group's rate, the same one as under optim=adamw
        groups = [
            {**group, "lr": cfg["lr"], "betas": tuple(cfg["betas"]), "fused": self._fused()}
            for group in self._adamw_groups(rest)
        ]
        if hidden:  # none in the ladder's models without blocks
            groups.append({
                "params": hidden, "use_muon": True, "lr": cfg["muon_lr"], "momentum": cfg["muon_momentum"],
                "nesterov": cfg["muon_nesterov"], "weight_decay": cfg["muon_weight_decay"],
                "ns_steps": cfg["ns_steps"], "ns_dtype": cfg["ns_dtype"],
            })  # fmt: skip
        optimizer = MuonWithAdamW([group for group in groups if group["params"]])
        return optimizer, self.lr_schedule(optimizer, decay_steps)

    def _adamw_groups(self, params) -> list[dict]:
        """Weight decay on the matrices only: the weights of the linear layers and embeddings, not the norms'
        gains or the biases; each group in the order of ``params``.

        The layer that holds a parameter decides, not its shape: Lightning calls configure_optimizers once the
        strategy has wrapped the model, and under FSDP (``use_orig_params``) every parameter is then a 1-D view
        of this rank's shard, some empty. The groups are those of one device, so a checkpoint resumes with or
        without FSDP (``on_save_checkpoint``)."""
        cfg = self.hparams.optim
        params = [p for p in params if p.requires_grad]
        matrices = {id(layer.weight) for layer in self.modules() if isinstance(layer, MATRIX_LAYERS)}
        groups = [
            {"params": [p for p in params if id(p) in matrices], "weight_decay": cfg["weight_decay"]},
            {"params": [p for p in params if id(p) not in matrices], "weight_decay": 0.0},
        ]
        if not cfg["weight_decay"]:  # one group, in the models' order: the order the gradient norm is summed in
            groups = [{"params": params, "weight_decay": 0.0}]
        return groups

    def _fused(self) -> bool:
        # The fused kernel updates every parameter in one launch; it exists for CUDA tensors only.
        cfg = self.hparams.optim
        return self.device.type == "cuda" if cfg.get("fused", "auto") == "auto" else cfg["fused"]

    def lr_schedule(self, optimizer, decay_steps: int | None = None):
        """The LambdaLR of ``optim.schedule`` (cosine or wsd): every group's learning rate times one factor."""
        cfg = self.hparams.optim
        schedule = partial(
            lr_factor,
            warmup_steps=cfg["warmup_steps"],
            decay_steps=cfg["decay_steps"] if decay_steps is None else decay_steps,
            min_lr_ratio=cfg["min_lr"] / cfg["lr"],
        )
        if cfg.get("schedule", "cosine") == "wsd":
            schedule = partial(wsd_factor, **schedule.keywords, decay_fraction=cfg["decay_fraction"])
        return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    def log_learning_rate(self) -> None:
        """``train/lr`` (AdamW's, the first group's rate) and, with Muon, ``train/muon_lr``, on the steps the
        loggers record only: a logged float is copied to the device, which on a GPU waits for the queue of kernels."""
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:
            scheduler = self.lr_schedulers()
            rates = scheduler.get_last_lr()  # one per group
            self.log("train/lr", rates[0])
            for group, rate in zip(scheduler.optimizer.param_groups, rates, strict=True):
                if group.get("use_muon"):  # one Muon group
                    self.log("train/muon_lr", rate)

    def on_train_start(self):
        # A resumed optimizer takes its groups' settings from the checkpoint, `fused` among them: a CPU checkpoint
        # resumed on a GPU kept the unfused kernel while the log said fused. This run's setting wins (it computes
        # the same step), and AdamW's step counts move where that kernel keeps them: on the device when fused.
        fused = self._fused()
        for optimizer in self.trainer.optimizers:
            for group in optimizer.param_groups:
                if "fused" not in group or group.get("use_muon") or group["fused"] == fused:
                    continue
                group["fused"] = fused
                for p in group["params"]:
                    if "step" in optimizer.state[p]:
                        optimizer.state[p]["step"] = optimizer.state[p]["step"].to(p.device if fused else "cpu")

    def setup(self, stage):
        # Each rank draws its own dropout masks: the same seed everywhere would drop the same units on every
        # device. The weights were drawn before (identical on every rank), the batches have their own stream.
        if stage == "fit":
            torch.manual_seed(rank_seed(self.seed, self.global_rank))

    def on_save_checkpoint(self, checkpoint):
        # Lightning saves model, optimizer, scheduler and loop state; add the kind, the run config and every
        # rank's RNGs (dropout draws from them). Every rank runs this hook; rank 0 writes the file, so the
        # states are gathered to it.
        checkpoint[KIND_KEY] = self.KIND
        checkpoint["config"] = self.run_config
        checkpoint["wall_time_s"] = self.wall_time_s
        checkpoint["rng"] = {name: self._gather(state) for name, state in self._rng_states().items()}
        if "optimizer_states" in checkpoint and not isinstance(self.trainer.strategy, FSDPStrategy):
            checkpoint["optimizer_states"] = [
                self._keyed_by_parameter(state, optimizer)
                for state, optimizer in zip(checkpoint["optimizer_states"], self.trainer.optimizers, strict=True)
            ]

    def _keyed_by_parameter(self, state: dict, optimizer) -> dict:
        """``optimizer``'s state dict with each parameter keyed by its place among this module's parameters, as
        Lightning's FSDP writes a full checkpoint, instead of by its place in the optimizer's groups (torch's
        own keys). FSDP reads a file's keys as the former: with two groups (decay, no decay) interleaved in the
        model, torch's keys would hand one parameter's moments to another. torch's ``load_state_dict`` maps
        either kind of key by the groups' order, so one device reads both."""
        named = FullyShardedDataParallel.rekey_optim_state_dict(
            state, OptimStateKeyType.PARAM_NAME, self, optim=optimizer
        )
        return FullyShardedDataParallel.rekey_optim_state_dict(named, OptimStateKeyType.PARAM_ID, self)

    def on_load_checkpoint(self, checkpoint):
        self._restore_rng(checkpoint)

    def _restore_rng(self, checkpoint):
        rng, rank, world_size = checkpoint.get("rng"), self.global_rank, self.trainer.world_size
        states = {name: state if state.dim() == 2 else state[None] for name, state in (rng or {}).items()}
        if "torch" in states and len(states["torch"]) == world_size:
            # clone: a row of the stacked states is a view, and set_rng_state reads its storage from the start
            torch.set_rng_state(states["torch"][rank].clone())
            if "cuda" in states and self._rank_device().type == "cuda":
                torch.cuda.set_rng_state(states["cuda"][rank].clone(), self._rank_device())
            return
        # Another device count (or no saved state): exact continuation is impossible, so start each rank on a
        # stream of its own that depends on where the run resumes.
        torch.manual_seed(rank_seed(self.seed, rank, checkpoint.get("global_step", 0)))
        if rank == 0:
            log.info(
                f"the checkpoint holds the RNG states of {len(states.get('torch', []))} device(s), this run has "
                f"{world_size}: dropout reseeded on each rank from (seed, rank, step)"
            )

    def _rank_device(self) -> torch.device:
        """The device this rank trains on (known before the module is moved there)."""
        return self.trainer.strategy.root_device if self._trainer else self.device

    def _rng_states(self) -> dict[str, torch.Tensor]:
        states = {"torch": torch.get_rng_state()}
        if self._rank_device().type == "cuda":
            states["cuda"] = torch.cuda.get_rng_state(self._rank_device())
        return states

    def _gather(self, state: torch.Tensor) -> torch.Tensor:
        """(world_size, n): every rank's ``state`` (n bytes), on the CPU."""
        world_size = self.trainer.world_size if self._trainer else 1
        if world_size == 1:
            return state[None]
        return self.all_gather(state.to(self._rank_device())).cpu().view(world_size, -1)


def rank_seed(*key: int) -> int:
    """A seed for ``key`` (seed, rank[, step]): tuples of ints hash the same in every process and run."""
    return hash(key) & 0xFFFF_FFFF_FFFF
