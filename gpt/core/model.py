"""The models of the "let's build GPT" lecture, in plain PyTorch.

Every model shares one interface: ``forward(idx, targets=None) -> (logits, loss)`` and ``generate`` (its sampling
loop and key/value cache are in gpt.core.generation).
``BigramLanguageModel`` is the lecture's baseline (a lookup table of next-character scores); ``GPT`` is the
decoder-only Transformer it grows into. ``GPT``'s switches (``mixer``, ``mlp``, ``residual``,
``layer_norm``, ``n_layer=0``) rebuild each intermediate step of the lecture from the same modules, so the
ladder from bigram to Transformer (``conf/model/ladder/``) is one model family, not nine copies.
Other switches (``pos``, ``norm``, ``qk_norm``, ``activation``, ``zero_init_proj``, ``logit_softcap``, ``init``)
go past the lecture to the parts later GPTs use (docs/modern.md); off, they leave the lecture's model bit for bit.
Nothing here knows about Lightning or Hydra: ``GPTConfig`` holds a GPT's settings and checks them
(``model_problems``), and ``build_model(arch=..., **fields)`` turns plain config into a model.
"""

import copy
import dataclasses
import math
from functools import partial

import torch
import torch.nn as nn
from torch.nn import functional as F

from gpt.core.generation import GenerationMixin, KVCache


def causal_mask(n: int, device=None) -> torch.Tensor:
    """(n, n) booleans, True where a position may look: itself and the positions before it."""
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()


class LanguageModel(GenerationMixin, nn.Module):
    """What every model here shares: the cross-entropy loss, and ``generate`` (gpt.core.generation)."""

    def __init__(self, block_size: int):
        super().__init__()
        self.block_size = block_size  # the longest context the model can condition on

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def new_cache(self) -> KVCache | None:
        """A key/value cache for ``generate``, or None where the model has nothing to cache."""
        return None

    @staticmethod
    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # F.cross_entropy wants the classes in dim 1, so fold time into the batch: (B, T, C) -> (B*T, C).
        B, T, C = logits.shape
        return F.cross_entropy(logits.view(B * T, C), targets.view(B * T))


class BigramLanguageModel(LanguageModel):
    """The baseline: each token reads the scores of the next token off a row of a (vocab, vocab) table."""

    def __init__(self, vocab_size: int, block_size: int):
        super().__init__(block_size)
        self.token_embedding_table = nn.Embedding(vocab_size, vocab_size)
        # Small logits at start make every character equally likely: the loss begins at ln(vocab_size).
        nn.init.normal_(self.token_embedding_table.weight, std=0.02)

    def forward(self, idx, targets=None):
        logits = self.token_embedding_table(idx)  # (B, T, vocab_size), read as next-token logits
        return logits, None if targets is None else self.loss(logits, targets)


class CausalAverage(nn.Module):
    """The lecture's first way for tokens to talk: each position takes the plain average of itself and the past.

    A "bag of words" with no parameters, written as the lecture's matrix trick: a lower-triangular matrix of
    equal weights (row t holds 1/(t+1) in its first t+1 columns) multiplied with the inputs.
    """

    def weights(self, x, cache=None):
        """(T, T') averaging weights for x's T positions over the T' positions they may see: x's own (no cache),
        or all the cache holds (all seen so far or, rolling with RoPE, the last block_size, in its slots' order)."""
        T = x.size(1)
        mask = causal_mask(T, x.device) if cache is None else cache.visible(T, x.device)
        return mask / mask.sum(dim=1, keepdim=True)

    def forward(self, x, cache=None):
        weights = self.weights(x, cache).to(x.dtype)  # asked before the cache takes x's positions
        past = x if cache is None else cache.update(self, x[:, None], x[:, None])[1][:, 0]
        return weights @ past  # (T, T') @ (B, T', C) -> (B, T, C)


class Rotary(nn.Module):
    """Rotary position embeddings (RoPE; Su et al. 2021, "RoFormer"): position enters attention as a rotation.

    Each pair of channels (i, i + d/2) of a query or key at position p is rotated by the angle p·θ_i, with
    θ_i = base^(-2i/d) (fast turns in the first pairs, slow in the last). A rotation keeps lengths, and the
    dot product of a query rotated by p·θ and a key rotated by p'·θ depends on p - p' only: attention sees
    how far back a key is, not where the window starts. Nothing is learned and nothing is added to the
    residual stream; a cached key keeps its rotation, valid however far the window has rolled.
    """

    def __init__(self, head_size: int, base: float = 10000.0):
        super().__init__()
        self.head_size, self.base = head_size, base
        # cos and sin of every position's angles so far, in float32: computed once, not per call, and kept out of
        # the buffers, whose casts (FSDP's bf16 mixed precision) would make training rotate otherwise than sampling
        self._table: tuple[torch.Tensor, torch.Tensor] | None = None

    def angles(self, start: int, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, cos) and (-sin, sin) of the angles of positions start, ..., start + n - 1: (n, head_size) each,
        float32, laid out to rotate every pair (i, i + d/2) with two products and a sum (``forward``)."""
        # A table made under torch.inference_mode (Lightning's validation, or sampling) cannot enter a graph that
        # trains: made again outside it.
        stale = self._table is not None and self._table[0].is_inference() and not torch.is_inference_mode_enabled()
        if self._table is None or stale or self._table[0].size(0) < start + n or self._table[0].device != device:
            length = max(start + n, 2 * self._table[0].size(0) if self._table is not None else 0)
            inv_freq = self.base ** -(torch.arange(0, self.head_size, 2, device=device).float() / self.head_size)
            angles = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv_freq)
            cos, sin = angles.cos(), angles.sin()
            self._table = torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1)
        cos, sin = self._table
        return cos[start : start + n], sin[start : start + n]

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Rotate ``x`` (B, T, ..., head_size), whose positions are start, ..., start + T - 1 (dim 1)."""
        cos, sin = self.angles(start, x.size(1), x.device)
        shape = (x.size(1),) + (1,) * (x.dim() - 3) + (-1,)  # broadcast over the dims between T and the channels
        cos, sin = cos.to(x.dtype).view(shape), sin.to(x.dtype).view(shape)
        x1, x2 = x.chunk(2, dim=-1)
        # (x1 cos - x2 sin, x2 cos + x1 sin), as x (cos, cos) + (x2, x1) (-sin, sin): four passes, not seven
        return x * cos + torch.cat((x2, x1), dim=-1) * sin


class CausalSelfAttention(nn.Module):
    """Multi-head masked self-attention: each position takes a learned, weighted average of the past.

    The lecture's version: q = x Wq, k = x Wk, v = x Wv per head; weights = softmax(q kᵀ / sqrt(head_size))
    with the future masked to -inf; heads concatenated, then projected back into the residual stream.
    ``F.scaled_dot_product_attention`` computes exactly that in a fused kernel; ``weights`` spells it out.

    ``pos="rope"``: queries and keys are rotated by their positions (``Rotary``) instead of the model adding
    learned position embeddings. ``qk_norm``: queries and keys are RMS-normalised per head before that, so their
    dot products (the attention logits) stay bounded however large the weights grow: softmax cannot saturate.
    """

    def __init__(self, config: "GPTConfig"):
        super().__init__()
        n_embd = config.n_embd
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=config.bias)  # q, k, v of all heads in one matmul
        self.c_proj = nn.Linear(n_embd, n_embd, bias=config.bias)  # the projection back into the residual stream
        self.resid_dropout = nn.Dropout(config.dropout)
        self.rotary = Rotary(n_embd // config.n_head) if config.pos == "rope" else None
        self.qk_norm = config.qk_norm

    def _heads(self, x, start=0):
        """q, k, v, each (B, n_head, T, head_size): the heads attend independently, in parallel.
        ``start``: the position of x's first token (what RoPE rotates by)."""
        B, T, C = x.shape
        qkv = self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head)
        qk = qkv[:, :, :2]  # queries and keys are normalised and rotated together: one pass each, not two
        if self.qk_norm:
            qk = F.rms_norm(qk, (qk.size(-1),))
        if self.rotary is not None:
            qk = self.rotary(qk, start)
        q, k = qk.unbind(2)
        return q.transpose(1, 2), k.transpose(1, 2), qkv[:, :, 2].transpose(1, 2)

    def weights(self, x):
        """The attention weights (B, n_head, T, T), computed the lecture's way: row t is where position t looks."""
        q, k, _ = self._heads(x)
        scores = q @ k.transpose(-2, -1) / math.sqrt(k.size(-1))
        scores = scores.masked_fill(~causal_mask(x.size(1), x.device), float("-inf"))
        return F.softmax(scores, dim=-1)

    def forward(self, x, cache=None):
        B, T, C = x.shape
        q, k, v = self._heads(x, 0 if cache is None else cache.length)
        # Without a cache (or on the prompt) queries and keys are the same positions: the causal triangle.
        # A single new query may see every stored key. Otherwise the cache says which keys each query may see.
        mask = None if cache is None or T == 1 or cache.length == 0 else cache.visible(T, x.device)
        if cache is not None:
            k, v = cache.update(self, k, v)  # the keys and values of every position so far
        triangle = T == k.size(2)
        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=triangle)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # concatenate the heads
        return self.resid_dropout(self.c_proj(y))


class _ReLUSquared(torch.autograd.Function):
    """relu(x)² with its gradient 2·relu(x)·g in two passes over the (wide) MLP activations. Autograd's own
    chain (square's pow backward, then relu's threshold backward) takes four, the largest element-wise cost of a
    small model's step on a CPU; the result is the same to the bit (2·r·g is exact either way)."""

    @staticmethod
    def forward(ctx, x):
        r = F.relu(x)
        ctx.save_for_backward(r)
        return r * r

    @staticmethod
    def backward(ctx, grad):
        (r,) = ctx.saved_tensors
        return grad * (r + r)


class ReLUSquared(nn.Module):
    """relu(x)²: the activation found by search in "Primer" (So et al. 2021) and used by modded-nanogpt."""

    def forward(self, x):
        # the autograd function only where a gradient is wanted: sampling's one-token steps skip its overhead
        return _ReLUSquared.apply(x) if x.requires_grad else F.relu(x).square()


ACTIVATIONS = {"gelu": nn.GELU, "relu2": ReLUSquared}


class MLP(nn.Module):
    """The feed-forward layer: each position thinks on its own about what it gathered (4x wider inside).

    ``activation``: GELU (the lecture's, GPT-2's) or ReLU². ReLU² rather than SwiGLU: it keeps the MLP's two
    matrices and its width, so the switch changes the nonlinearity and nothing else (SwiGLU needs a third
    matrix and a 2/3 width to keep the parameter count).
    """

    def __init__(self, config: "GPTConfig"):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.act = ACTIVATIONS[config.activation]()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class Block(nn.Module):
    """Communication (the mixer: attention) then computation (the MLP).

    In the full model each forks off the residual pathway and adds back (``residual``), on a LayerNorm-ed
    copy of the stream (``layer_norm``, pre-norm): the stream itself is never normalised and gradients flow
    from the loss straight to the embeddings through the additions. The switches turn these off to show,
    as the lecture does, what each one buys.
    """

    def __init__(self, config: "GPTConfig"):
        super().__init__()
        make_norm = partial(NORMS[config.norm], config.n_embd, config.bias) if config.layer_norm else nn.Identity
        self.ln_1 = make_norm()
        self.mixer = CausalSelfAttention(config) if config.mixer == "attention" else CausalAverage()
        self.ln_2 = make_norm() if config.mlp else None
        self.mlp = MLP(config) if config.mlp else None
        self.residual = config.residual

    def forward(self, x, cache=None):
        x = self._join(x, self.mixer(self.ln_1(x), cache))
        if self.mlp is not None:
            x = self._join(x, self.mlp(self.ln_2(x)))
        return x

    def _join(self, x, branch):
        return x + branch if self.residual else branch


MIXERS = ("attention", "average")
# LayerNorm (the lecture's: subtract the mean, divide by the spread, then a gain) or RMSNorm (divide by the
# root mean square, then a gain: no centring, no bias; cheaper, and as good in practice). Called (n_embd, bias).
NORMS = {"layernorm": lambda n, bias: nn.LayerNorm(n, bias=bias), "rmsnorm": lambda n, bias: nn.RMSNorm(n)}
POSITIONS = ("learned", "rope")
INITS = ("lecture", "pytorch")


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    """Every setting of a ``GPT``: its size, then its switches, each at the lecture's final model by default.

    ``vocab_size`` comes from the data (the tokenizer), the rest from a run's ``model:`` config or a checkpoint's.
    The switches of the lecture's ladder (conf/model/ladder/) turned off give its earlier steps; those past the
    lecture (docs/modern.md) left off give the lecture's model bit for bit. A config that cannot work is refused
    when built: a ValueError naming each such setting ``model.<key>`` (``model_problems``).
    """

    vocab_size: int
    block_size: int  # the longest context the model conditions on
    n_layer: int  # 0: embeddings and a linear head
    n_head: int
    n_embd: int
    dropout: float = 0.0
    bias: bool = False  # in the Linear layers and the LayerNorms
    # the lecture's ladder
    mixer: str = "attention"  # "average": each position takes the plain average of its past instead
    mlp: bool = True
    residual: bool = True
    layer_norm: bool = True
    tie_weights: bool = False  # the output head shares the token embedding (fewer parameters; off in the lecture)
    # past the lecture
    pos: str = "learned"  # "rope": rotary position embeddings in attention instead of a learned table added
    norm: str = "layernorm"  # "rmsnorm": RMSNorm instead of LayerNorm (wherever layer_norm puts a norm)
    qk_norm: bool = False  # queries and keys RMS-normalised per head before attention
    activation: str = "gelu"  # "relu2": ReLU² in the MLP instead of GELU
    zero_init_proj: bool = False  # the projections into the residual stream start at zero: blocks start as identity
    logit_softcap: float | None = None  # a cap: logits squashed into (-cap, cap) by cap·tanh(logits / cap) (Gemma 2)
    # "lecture": GPT-2's N(0, 0.02) with scaled residual projections; "pytorch": PyTorch's defaults (embeddings
    # N(0, 1), Linear uniform ±1/sqrt(fan_in))
    init: str = "lecture"

    def __post_init__(self):
        settings = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "vocab_size"}
        if problems := model_problems({"arch": "gpt", **settings}):
            raise ValueError("; ".join(problems))


class GPT(LanguageModel):
    """Token + position embeddings, ``n_layer`` blocks, a final LayerNorm and a linear head: the lecture's model,
    its earlier steps and the parts later GPTs use, as ``GPTConfig`` sets them."""

    def __init__(self, config: GPTConfig):
        super().__init__(config.block_size)
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.n_embd)
        # RoPE puts positions into attention itself: no table, and no limit on the positions a rolling cache sees
        self.position_embedding = None if config.pos == "rope" else nn.Embedding(config.block_size, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = NORMS[config.norm](config.n_embd, config.bias) if config.layer_norm else nn.Identity()
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=config.bias)

        if config.init == "lecture":
            self.apply(self._init_weights)
            # The projections that write into the residual stream start small (GPT-2's scaled init), so each
            # block adds little at first: the residual pathway dominates, and blocks "come online" as they learn.
            for name, p in self.named_parameters():
                if name.endswith("c_proj.weight"):
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * max(config.n_layer, 1)))
        if config.zero_init_proj:
            # The limit of the scaled init: every block starts as the identity (its branches add exactly 0).
            # The projections still get gradients (their inputs are not 0), and the layers before them get
            # theirs once the projections have moved off 0, one step later (modded-nanogpt does this).
            for name, p in self.named_parameters():
                if name.endswith("c_proj.weight"):
                    nn.init.zeros_(p)
        if config.tie_weights:
            self.lm_head.weight = self.token_embedding.weight

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def new_cache(self) -> KVCache:
        return KVCache(self.block_size, rolling=self.config.pos == "rope")  # relative positions: the window may roll

    def features(self, idx, cache=None):
        """The final hidden states (B, T, n_embd), before the head: what a reward or value head reads."""
        B, T = idx.shape
        start = 0 if cache is None else cache.length
        if (T if cache is not None and cache.rolling else start + T) > self.block_size:
            raise ValueError(f"sequence of length {start + T} is longer than block_size={self.block_size}")
        x = self.token_embedding(idx)  # (B, T, n_embd)
        if self.position_embedding is not None:
            x = x + self.position_embedding(torch.arange(start, start + T, device=idx.device))
        x = self.dropout(x)
        for block in self.blocks:
            x = block(x, cache)
        if cache is not None:
            cache.length += T
        return self.ln_f(x)

    def forward(self, idx, targets=None, cache=None):
        logits = self.lm_head(self.features(idx, cache))  # (B, T, vocab_size)
        if (cap := self.config.logit_softcap) is not None:
            # Smoothly bounded logits: near 0 the identity, never beyond ±cap, so no logit runs away.
            logits = cap * torch.tanh(logits / cap)
        return logits, None if targets is None else self.loss(logits, targets)

    @torch.no_grad()
    def attention_maps(self, idx) -> list[torch.Tensor]:
        """Each layer's mixing weights over ``idx`` (1 x T): a list of (n_head, T, T), row t = where t looks."""
        inputs = []  # what each mixer receives, caught on the way through an ordinary forward pass
        hooks = [b.mixer.register_forward_pre_hook(lambda m, args: inputs.append(args[0])) for b in self.blocks]
        try:
            self(idx)
        finally:
            for hook in hooks:
                hook.remove()
        maps = [block.mixer.weights(x) for block, x in zip(self.blocks, inputs)]
        return [m[0] if m.dim() == 4 else m[None] for m in maps]  # the average has one "head"


ARCHITECTURES = ("bigram", "gpt")
CHOICES = {"mixer": MIXERS, "pos": POSITIONS, "norm": NORMS, "activation": ACTIVATIONS, "init": INITS}
SWITCHES = ("bias", "mlp", "residual", "layer_norm", "tie_weights", "qk_norm", "zero_init_proj")  # true or false


def arch_settings(arch: str) -> dict:
    """The settings of an ``arch`` model's config, each with its default (``dataclasses.MISSING``: required).
    The bigram's table needs only the context ``generate`` feeds it; a GPT's are ``GPTConfig``'s."""
    if arch == "gpt":
        return {f.name: f.default for f in dataclasses.fields(GPTConfig) if f.name != "vocab_size"}
    return {"block_size": dataclasses.MISSING} if arch == "bigram" else {}


def model_problems(model: dict) -> list[str]:
    """Every setting of a model config (``arch`` and its settings, as in conf/model/) that cannot work, one line
    each naming its key; none if a model can be built from it. The one check of a model config: ``GPTConfig``
    runs it when built, train.py's config check before anything is."""
    arch, given = model.get("arch"), {key: value for key, value in model.items() if key != "arch"}
    if arch not in ARCHITECTURES:
        return [f"model.arch={arch!r} is an unknown model arch: choose one of {list(ARCHITECTURES)}"]
    settings = arch_settings(arch)
    unknown = [key for key in given if key not in settings]
    missing = [key for key, default in settings.items() if default is dataclasses.MISSING and key not in given]
    if unknown or missing:  # the values are checked once the keys are right
        return [f"model.{key} is not a setting of arch={arch}: one of {list(settings)}" for key in unknown] + [
            f"model.{key} is missing: a {arch} model needs it" for key in missing
        ]
    cfg = {**settings, **given}
    problems = []

    def require(ok, message):
        if not ok:
            problems.append(message)

    def whole(key: str, low: int, note: str = "") -> bool:
        """Whether ``cfg[key]`` is a whole number >= ``low``; the problem noted if not."""
        value = cfg[key]
        if not isinstance(value, int) or isinstance(value, bool):
            problems.append(f"model.{key}={value!r} must be a whole number >= {low}")
            return False
        require(value >= low, f"model.{key}={value} must be >= {low}{note}")
        return value >= low

    def number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    whole("block_size", 1)
    if arch == "bigram":
        return problems
    whole("n_layer", 0, " (0: embeddings and a linear head)")
    heads, width = whole("n_head", 1), whole("n_embd", 1)
    if heads and width:
        n_embd, n_head = cfg["n_embd"], cfg["n_head"]
        if n_embd % n_head:
            problems.append(f"model.n_embd={n_embd} must be divisible by model.n_head={n_head}")
        elif cfg["pos"] == "rope" and (n_embd // n_head) % 2:
            problems.append(f"model.pos=rope rotates pairs of channels: head size n_embd/n_head={n_embd // n_head} "
                            "must be even")  # fmt: skip
    require(number(cfg["dropout"]) and 0 <= cfg["dropout"] < 1, f"model.dropout={cfg['dropout']!r} must be in [0, 1)")
    for key in SWITCHES:
        require(isinstance(cfg[key], bool), f"model.{key}={cfg[key]!r} must be true or false")
    for key, allowed in CHOICES.items():
        ok = isinstance(cfg[key], str) and cfg[key] in allowed
        require(ok, f"model.{key}={cfg[key]!r} must be one of {list(allowed)}")
    cap = cfg["logit_softcap"]
    require(cap is None or (number(cap) and cap > 0), f"model.logit_softcap={cap!r} must be null (off) or a number > 0")
    return problems


def full_config(arch: str, **fields) -> dict:
    """``fields`` with every setting the architecture has, the defaults filled in: what a checkpoint records, so
    that a config written before a switch existed equals the same model's config written after."""
    defaults = {key: default for key, default in arch_settings(arch).items() if default is not dataclasses.MISSING}
    return {"arch": arch, **fields, **{key: value for key, value in defaults.items() if key not in fields}}


def build_model(arch: str, vocab_size: int, **fields) -> LanguageModel:
    """Build a model from plain config data, e.g. ``build_model("gpt", 65, block_size=64, n_layer=4, ...)``;
    a config that cannot work is a ValueError naming each setting at fault."""
    if problems := model_problems({"arch": arch, **fields}):
        raise ValueError("; ".join(problems))
    if arch == "bigram":
        return BigramLanguageModel(vocab_size, **fields)
    return GPT(GPTConfig(vocab_size, **fields))


class RewardModel(nn.Module):
    """A GPT backbone and a scalar head: a score at every position; an answer's reward is read at its last
    character (the stop, when it stopped). Scores are normalised by ``mean`` and ``std`` (set after training
    to those of the SFT model's answers), so the policy's reward starts near 0 with unit spread.

    Here, beside the language models, so that one checkpoint loader builds every kind of model.
    """

    def __init__(self, backbone: GPT):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.lm_head.in_features, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.register_buffer("mean", torch.tensor(0.0))
        self.register_buffer("std", torch.tensor(1.0))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Normalised scores (N, T) at every position."""
        return (self.head(self.backbone.features(idx)).squeeze(-1) - self.mean) / self.std

    def score(self, idx: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
        """The score of each row's sequence ``idx[i, :end[i]]``, read at its last position."""
        return self(idx).gather(1, (end - 1)[:, None]).squeeze(1)

    def value_model(self) -> "RewardModel":
        """A trainable copy: PPO's value function starts from the reward model (values in reward units)."""
        return copy.deepcopy(self).train().requires_grad_(True)


def build_reward_model(vocab_size: int, **fields) -> RewardModel:
    """A reward model on a GPT backbone built from plain config data (``arch`` must be ``gpt``)."""
    backbone = build_model(vocab_size=vocab_size, **fields)
    if not isinstance(backbone, GPT):
        raise ValueError(f"a reward model needs a GPT backbone, not arch={fields.get('arch')!r}")
    return RewardModel(backbone)
