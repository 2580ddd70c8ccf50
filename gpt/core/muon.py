"""Muon for the hidden matrices and AdamW for the rest, as one ``torch.optim.Optimizer``, in plain PyTorch.

Muon (Keller Jordan, 2024: https://kellerjordan.github.io/posts/muon/, reference code
https://github.com/KellerJordan/Muon/blob/master/muon.py, as in modded-nanogpt) updates a weight matrix by its
momentum *orthogonalised*: the nearest matrix with all singular values ~1, computed by five Newton–Schulz
steps. Every direction of the update then moves the same amount, instead of the few large ones dominating.
It suits the 2-D matrices inside the blocks; embeddings (a lookup, not a matmul), the output head and the
gains and biases keep AdamW.

Why not ``torch.optim.Muon`` (torch 2.13)? It runs Newton–Schulz in bfloat16, a GPU's fast type that many
CPUs emulate: on a 2-core CPU without native bfloat16 a step of the tiny model took ~13x an AdamW step, against
~1.3-1.6x in float32. Here the dtype is a setting (``ns_dtype``: ``auto`` = bfloat16 on CUDA, float32
elsewhere); in bfloat16 the update is computed by exactly torch's operations (tested).

Why one optimizer for both parts? Lightning's automatic optimization clips, accumulates, scales and
checkpoints exactly one optimizer per step; two would need manual optimization. Each parameter group says
which rule it follows (``use_muon``); the state of each is what its rule keeps (Muon: a momentum buffer;
AdamW: step, exp_avg, exp_avg_sq), so ``state_dict`` / ``load_state_dict`` resume it exactly.
This module knows nothing of Lightning or Hydra.
"""

import torch
from torch.optim.adamw import adamw as adamw_update

# The quintic's coefficients, chosen to make the slope at 0 large (Keller Jordan's reference, torch's Muon).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def orthogonalize(grad: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.bfloat16, eps: float = 1e-7):
    """Newton–Schulz: ``grad`` (a matrix, or a batch of matrices of one shape: (..., rows, cols)) with its
    singular values pushed towards 1 (to about 0.5-1.5: the quintic trades exactness for speed, which does not
    hurt training), computed in ``dtype``.

    On a matrix, the same operations as Keller Jordan's ``zeropower_via_newtonschulz5`` and torch's
    ``torch.optim._muon._zeropower_via_newtonschulz``, with the dtype as a parameter; on a batch, the same with
    batched matrix products (as the speed runs do: one call for many small matrices).
    """
    a, b, c = NS_COEFFICIENTS
    x = grad.to(dtype)
    tall = grad.size(-2) > grad.size(-1)
    if tall:  # iterate on the wide orientation: the Gram matrix x xᵀ is then the smaller one
        x = x.mT
    # Frobenius norm >= spectral norm: every singular value is now <= 1
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    multiply_add = torch.addmm if x.dim() == 2 else torch.baddbmm
    for _ in range(steps):
        gram = x @ x.mT
        x = multiply_add(x, multiply_add(gram, gram, gram, beta=b, alpha=c), x, beta=a)  # a x + (b G + c G²) x
    return x.mT if tall else x


class MuonWithAdamW(torch.optim.Optimizer):
    """Muon on the param groups with ``use_muon=True`` (2-D matrices only), AdamW on the others.

    Muon groups: ``lr``, ``momentum`` (0.95), ``nesterov`` (True), ``weight_decay`` (decoupled, times lr),
    ``ns_steps`` (5), ``ns_dtype`` (auto|float32|bfloat16). AdamW groups: ``lr``, ``betas``, ``eps``,
    ``weight_decay``, ``fused`` (torch's fused AdamW kernel for this part, e.g. on CUDA).

    The step does not take part in a gradient scaler's unscaling (no ``_step_supports_amp_scaling``): under
    16-mixed the scaler unscales the gradients before it, so clipping works in every precision.
    """

    def __init__(self, param_groups: list[dict]):
        defaults = dict(
            use_muon=False, lr=1e-3, weight_decay=0.0, momentum=0.95, nesterov=True, ns_steps=5, ns_dtype="auto",
            betas=(0.9, 0.999), eps=1e-8, fused=False,
        )  # fmt: skip
        super().__init__(param_groups, defaults)
        for group in self.param_groups:
            if group["ns_dtype"] not in ("auto", *NS_DTYPES):
                raise ValueError(f"ns_dtype={group['ns_dtype']!r} must be one of {['auto', *NS_DTYPES]}")
            if group["use_muon"] and any(p.dim() != 2 for p in group["params"]):
                raise ValueError("Muon orthogonalises matrices: a use_muon group may hold 2-D parameters only")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["use_muon"]:
                self._muon_step(group)
            else:
                self._adamw_step(group)
        return loss

    def _muon_step(self, group):
        lr, momentum = group["lr"], group["momentum"]
        # the updates by shape: each shape's matrices go through Newton-Schulz as one batch
        by_shape: dict[tuple, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for p in group["params"]:
            if p.grad is None:
                continue
            grad, state = p.grad, self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(grad)
            buf = state["momentum_buffer"]
            buf.lerp_(grad, 1 - momentum)  # an average of the past gradients
            update = grad.lerp(buf, momentum) if group["nesterov"] else buf  # Nesterov: look one step ahead
            by_shape.setdefault((tuple(p.shape), p.device), []).append((p, update))
        for (_, device), params in by_shape.items():
            dtype = group["ns_dtype"]
            if dtype == "auto":  # bfloat16 where it is fast (tensor cores), float32 on a CPU
                dtype = "bfloat16" if device.type == "cuda" else "float32"
            updates = orthogonalize(torch.stack([u for _, u in params]), group["ns_steps"], NS_DTYPES[dtype])
            for (p, _), update in zip(params, updates):
                p.mul_(1 - lr * group["weight_decay"])
                # Scaled by sqrt(max(1, rows/cols)) as in the reference: the update's entries then have an rms of
                # 1/sqrt(cols) (fan-in) for every shape; a tall matrix's would otherwise be 1/sqrt(rows), smaller.
                p.add_(update, alpha=-lr * max(1, p.size(0) / p.size(1)) ** 0.5)

    def _adamw_step(self, group):
        params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:  # as torch.optim.AdamW keeps it: the step count is a tensor (on the device if fused)
                device = p.device if group["fused"] else None
                state["step"] = torch.zeros((), dtype=torch.float32, device=device)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        if not params:
            return
        beta1, beta2 = group["betas"]
        adamw_update(
            params, grads, exp_avgs, exp_avg_sqs, [], steps, fused=group["fused"] or None, amsgrad=False,
            beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"],
            maximize=False,
        )  # fmt: skip
