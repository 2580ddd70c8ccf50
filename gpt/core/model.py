"""The models of the "let's build GPT" lecture, in plain PyTorch.

Every model shares one interface: ``forward(idx, targets=None) -> (logits, loss)`` and ``generate``.
``BigramLanguageModel`` is the lecture's baseline (a lookup table of next-character scores); ``GPT`` is the
decoder-only Transformer it grows into. ``GPT``'s switches (``mixer``, ``mlp``, ``residual``,
``layer_norm``, ``n_layer=0``) rebuild each intermediate step of the lecture from the same modules, so the
ladder from bigram to Transformer (``conf/model/ladder/``) is one model family, not nine copies.
Other switches (``pos``, ``norm``, ``qk_norm``, ``activation``, ``zero_init_proj``, ``logit_softcap``, ``init``)
go past the lecture to the parts later GPTs use (docs/modern.md); off, they leave the lecture's model bit for bit.
Nothing here knows about Lightning or Hydra: ``build_model(arch=..., **fields)`` turns plain config into a model.
"""

import copy
import inspect
import math
from functools import partial

import torch
import torch.nn as nn
from torch.nn import functional as F


def causal_mask(n_queries: int, n_keys: int, device=None) -> torch.Tensor:
    """(n_queries, n_keys) booleans, True where a query may look: the queries are the last positions."""
    return torch.ones(n_queries, n_keys, dtype=torch.bool, device=device).tril(diagonal=n_keys - n_queries)


class KVCache:
    """The keys and values every layer computed for the positions seen so far.

    With it, each new token costs one position per layer instead of the whole window: the new token's query
    attends to the stored keys and values, which are exactly those a full forward pass would recompute.
    ``length`` counts the positions seen (the model advances it after each forward pass).

    ``rolling``: once ``max_length`` positions are stored, the oldest is dropped for each new one, so the
    window slides on past ``max_length``. Only a model with relative positions (RoPE) may do so: its cached
    keys carry their rotation, and a query scores them by offset alone, wherever the window now starts.
    """

    def __init__(self, max_length: int, rolling: bool = False):
        self.max_length = max_length
        self.rolling = rolling
        self.length = 0
        self._layers: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}

    def update(self, layer: nn.Module, k: torch.Tensor, v: torch.Tensor):
        """Store ``layer``'s k, v (B, H, T, head_size) after the cached positions; return all of them so far
        (rolling: the last ``max_length``)."""
        T = k.size(2)
        if layer not in self._layers:  # allocated once, at full length: no re-allocation per token
            shape = (k.size(0), k.size(1), self.max_length, k.size(3))
            self._layers[layer] = (k.new_empty(shape), v.new_empty(shape[:3] + (v.size(3),)))
        keys, values = self._layers[layer]
        stored = min(self.length, self.max_length)
        kept = min(stored, self.max_length - T) if self.rolling else stored  # the stored positions that stay
        if kept < stored:  # roll: the oldest positions leave, the kept ones move to the front
            keys[:, :, :kept] = keys[:, :, stored - kept : stored].clone()
            values[:, :, :kept] = values[:, :, stored - kept : stored].clone()
        keys[:, :, kept : kept + T] = k
        values[:, :, kept : kept + T] = v
        return keys[:, :, : kept + T], values[:, :, : kept + T]


class LanguageModel(nn.Module):
    """What every model here shares: the cross-entropy loss and the sampling loop."""

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

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None, use_cache=True):
        """Extend every row of ``idx`` (B, T) by ``max_new_tokens`` sampled tokens; returns (B, T + new)."""
        tokens = self.generate_stream(idx, max_new_tokens, temperature, top_k, generator, use_cache)
        return torch.cat([idx, *tokens], dim=1)

    @torch.no_grad()
    def generate_stream(self, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None, use_cache=True):
        """Yield each new token, shape (B, 1), as soon as it is sampled (``generate`` collects them).

        ``temperature`` divides the logits (0 means greedy: always the most likely token); ``top_k``
        keeps only the k most likely tokens; ``generator`` makes the draw reproducible.

        With ``use_cache`` the prompt is run once and each later step feeds only the newest token, reusing
        the cached keys and values: the same logits as running the whole window, so the same characters
        under the same seed, as long as the sequence fits in ``block_size``.

        Past ``block_size`` it depends on the positions. Learned (absolute) position embeddings: the cropped
        window starts at a new position and cached keys no longer apply, so from there every step recomputes
        the last ``block_size`` tokens, exactly as without the cache (same output, uncached speed). RoPE
        (relative): the cache rolls (``KVCache.rolling``), keeping the last ``block_size - 1`` keys, so long
        samples keep the cache's speed; the outputs then differ from the uncached ones by design: a cached key
        was computed when its token saw its own full window, while the uncached path recomputes every key of
        the cropped window from that window alone (the oldest tokens lose the context before it).
        """
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
        cache = self.new_cache() if use_cache else None
        if cache is not None and cache.rolling and idx.size(1) > self.block_size:
            idx = idx[:, -self.block_size :]  # a rolling cache starts from the last window of a long prompt
        for _ in range(max_new_tokens):
            if cache is not None and (cache.rolling or idx.size(1) <= self.block_size):
                logits, _ = self(idx[:, cache.length :], cache=cache)  # the prompt, then one token at a time
            else:
                logits, _ = self(idx[:, -self.block_size :])  # positions past block_size have no embedding
            logits = logits[:, -1, :]  # only the last time step predicts the next token
            if temperature == 0:
                idx_next = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth_best = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                    logits = logits.masked_fill(logits < kth_best, float("-inf"))
                probs = F.softmax(logits, dim=-1)
                idx_next = torch.multinomial(probs, num_samples=1, generator=generator)
            idx = torch.cat((idx, idx_next), dim=1)
            yield idx_next


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

    def weights(self, x, n_past=0):
        """(T, n_past + T) averaging weights for T new positions after ``n_past`` earlier ones."""
        mask = causal_mask(x.size(1), n_past + x.size(1), x.device)
        return mask / mask.sum(dim=1, keepdim=True)

    def forward(self, x, cache=None):
        past = x if cache is None else cache.update(self, x[:, None], x[:, None])[1][:, 0]
        # the positions the cache holds: all seen so far, or (a rolling cache, with RoPE) the last block_size
        return self.weights(x, past.size(1) - x.size(1)).to(x.dtype) @ past  # (T, T') @ (B, T', C) -> (B, T, C)


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

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Rotate ``x`` (B, H, T, head_size), whose positions are start, ..., start + T - 1."""
        # The frequencies are computed here in float32, not kept in a buffer: a buffer follows the module's casts
        # (FSDP's bf16 mixed precision casts buffers), and the rotation of training would differ from sampling's.
        inv_freq = self.base ** -(torch.arange(0, self.head_size, 2, device=x.device).float() / self.head_size)
        pos = torch.arange(start, start + x.size(-2), device=x.device, dtype=torch.float32)
        angles = torch.outer(pos, inv_freq)  # (T, head_size / 2)
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class CausalSelfAttention(nn.Module):
    """Multi-head masked self-attention: each position takes a learned, weighted average of the past.

    The lecture's version: q = x Wq, k = x Wk, v = x Wv per head; weights = softmax(q kᵀ / sqrt(head_size))
    with the future masked to -inf; heads concatenated, then projected back into the residual stream.
    ``F.scaled_dot_product_attention`` computes exactly that in a fused kernel; ``weights`` spells it out.

    ``rope``: queries and keys are rotated by their positions (``Rotary``) instead of the model adding learned
    position embeddings. ``qk_norm``: queries and keys are RMS-normalised per head before that, so their dot
    products (the attention logits) stay bounded however large the weights grow: softmax cannot saturate.
    """

    def __init__(self, n_embd, n_head, dropout, bias, rope=False, qk_norm=False):
        super().__init__()
        self.n_head = n_head
        self.dropout = dropout
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)  # q, k, v of all heads in one matmul
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)  # the projection back into the residual stream
        self.resid_dropout = nn.Dropout(dropout)
        self.rotary = Rotary(n_embd // n_head) if rope else None
        self.qk_norm = qk_norm

    def _heads(self, x, start=0):
        """q, k, v, each (B, n_head, T, head_size): the heads attend independently, in parallel.
        ``start``: the position of x's first token (what RoPE rotates by)."""
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in self.c_attn(x).split(C, 2))
        if self.qk_norm:
            q, k = F.rms_norm(q, (q.size(-1),)), F.rms_norm(k, (k.size(-1),))
        if self.rotary is not None:
            q, k = self.rotary(q, start), self.rotary(k, start)
        return q, k, v

    def weights(self, x):
        """The attention weights (B, n_head, T, T), computed the lecture's way: row t is where position t looks."""
        q, k, _ = self._heads(x)
        scores = q @ k.transpose(-2, -1) / math.sqrt(k.size(-1))
        scores = scores.masked_fill(~causal_mask(x.size(1), x.size(1), x.device), float("-inf"))
        return F.softmax(scores, dim=-1)

    def forward(self, x, cache=None):
        B, T, C = x.shape
        q, k, v = self._heads(x, 0 if cache is None else cache.length)
        if cache is not None:
            k, v = cache.update(self, k, v)  # the keys and values of every position so far
        # Without a cache (or on the prompt) queries and keys are the same positions: the causal triangle.
        # A single new query may see every stored key. Otherwise the queries are the last T of the keys.
        triangle = T == k.size(2)
        mask = None if triangle or T == 1 else causal_mask(T, k.size(2), x.device)
        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=triangle)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # concatenate the heads
        return self.resid_dropout(self.c_proj(y))


class ReLUSquared(nn.Module):
    """relu(x)²: the activation found by search in "Primer" (So et al. 2021) and used by modded-nanogpt."""

    def forward(self, x):
        return F.relu(x).square()


ACTIVATIONS = {"gelu": nn.GELU, "relu2": ReLUSquared}


class MLP(nn.Module):
    """The feed-forward layer: each position thinks on its own about what it gathered (4x wider inside).

    ``activation``: GELU (the lecture's, GPT-2's) or ReLU². ReLU² rather than SwiGLU: it keeps the MLP's two
    matrices and its width, so the switch changes the nonlinearity and nothing else (SwiGLU needs a third
    matrix and a 2/3 width to keep the parameter count).
    """

    def __init__(self, n_embd, dropout, bias, activation="gelu"):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.act = ACTIVATIONS[activation]()
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class Block(nn.Module):
    """Communication (the mixer: attention) then computation (the MLP).

    In the full model each forks off the residual pathway and adds back (``residual``), on a LayerNorm-ed
    copy of the stream (``layer_norm``, pre-norm): the stream itself is never normalised and gradients flow
    from the loss straight to the embeddings through the additions. The switches turn these off to show,
    as the lecture does, what each one buys.
    """

    def __init__(
        self, n_embd, n_head, dropout, bias, mixer="attention", mlp=True, residual=True, layer_norm=True,
        norm="layernorm", rope=False, qk_norm=False, activation="gelu",
    ):  # fmt: skip
        super().__init__()
        make_norm = partial(NORMS[norm], n_embd, bias) if layer_norm else nn.Identity
        self.ln_1 = make_norm()
        if mixer == "attention":
            self.mixer = CausalSelfAttention(n_embd, n_head, dropout, bias, rope, qk_norm)
        else:
            self.mixer = CausalAverage()
        self.ln_2 = make_norm() if mlp else None
        self.mlp = MLP(n_embd, dropout, bias, activation) if mlp else None
        self.residual = residual

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


class GPT(LanguageModel):
    """Token + position embeddings, ``n_layer`` blocks, a final LayerNorm and a linear head.

    The defaults are the lecture's final model. The switches give its earlier steps: ``n_layer=0`` is
    embeddings and a linear head; ``mixer="average"`` replaces attention by the causal average of the past;
    ``mlp``, ``residual`` and ``layer_norm`` remove those parts. ``tie_weights`` shares the token embedding
    with the output head (fewer parameters; a recipe choice, off in the lecture).

    Past the lecture (each off by default, and then the lecture's model bit for bit; docs/modern.md):

    - ``pos="rope"``: rotary position embeddings in attention instead of a learned table added to the input.
    - ``norm="rmsnorm"``: RMSNorm instead of LayerNorm (wherever ``layer_norm`` puts a norm).
    - ``qk_norm``: queries and keys RMS-normalised per head before attention.
    - ``activation="relu2"``: ReLU² in the MLP instead of GELU.
    - ``zero_init_proj``: the projections that write into the residual stream start at zero, so every block
      starts as the identity and the model as embeddings + head.
    - ``logit_softcap``: logits squashed smoothly into (-cap, cap) by cap·tanh(logits / cap) (Gemma 2).
    - ``init="pytorch"``: PyTorch's default initialisation (embeddings N(0, 1), Linear uniform ±1/sqrt(fan_in))
      instead of the lecture's GPT-2 N(0, 0.02) with scaled residual projections.
    """

    def __init__(
        self,
        vocab_size,
        block_size,
        n_layer,
        n_head,
        n_embd,
        dropout=0.0,
        bias=False,
        mixer="attention",
        mlp=True,
        residual=True,
        layer_norm=True,
        tie_weights=False,
        pos="learned",
        norm="layernorm",
        qk_norm=False,
        activation="gelu",
        zero_init_proj=False,
        logit_softcap=None,
        init="lecture",
    ):
        super().__init__(block_size)
        check_choices(mixer=(mixer, MIXERS), pos=(pos, POSITIONS), norm=(norm, NORMS),
                      activation=(activation, ACTIVATIONS), init=(init, INITS))  # fmt: skip
        for name, value in dict(qk_norm=qk_norm, zero_init_proj=zero_init_proj).items():
            if not isinstance(value, bool):
                raise ValueError(f"model.{name}={value!r} must be true or false")
        if n_embd % n_head:
            raise ValueError(f"n_embd={n_embd} must be divisible by n_head={n_head}")
        if pos == "rope" and (n_embd // n_head) % 2:
            raise ValueError(f"model.pos=rope rotates pairs of channels: head size n_embd/n_head={n_embd // n_head} "
                             "must be even")  # fmt: skip
        if logit_softcap is not None and not (isinstance(logit_softcap, (int, float)) and logit_softcap > 0):
            raise ValueError(f"model.logit_softcap={logit_softcap!r} must be null (off) or a number > 0")
        self.token_embedding = nn.Embedding(vocab_size, n_embd)
        self.rope = pos == "rope"
        # RoPE puts positions into attention itself: no table, and no limit on the positions a rolling cache sees
        self.position_embedding = None if self.rope else nn.Embedding(block_size, n_embd)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(n_embd, n_head, dropout, bias, mixer, mlp, residual, layer_norm, norm, self.rope, qk_norm, activation)
            for _ in range(n_layer)
        )
        self.ln_f = NORMS[norm](n_embd, bias) if layer_norm else nn.Identity()
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=bias)
        self.logit_softcap = logit_softcap

        if init == "lecture":
            self.apply(self._init_weights)
            # The projections that write into the residual stream start small (GPT-2's scaled init), so each
            # block adds little at first: the residual pathway dominates, and blocks "come online" as they learn.
            for name, p in self.named_parameters():
                if name.endswith("c_proj.weight"):
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * max(n_layer, 1)))
        if zero_init_proj:
            # The limit of the scaled init: every block starts as the identity (its branches add exactly 0).
            # The projections still get gradients (their inputs are not 0), and the layers before them get
            # theirs once the projections have moved off 0, one step later (modded-nanogpt does this).
            for name, p in self.named_parameters():
                if name.endswith("c_proj.weight"):
                    nn.init.zeros_(p)
        if tie_weights:
            self.lm_head.weight = self.token_embedding.weight

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def new_cache(self) -> KVCache:
        return KVCache(self.block_size, rolling=self.rope)  # relative positions: the window may roll on

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
        if self.logit_softcap is not None:
            # Smoothly bounded logits: near 0 the identity, never beyond ±cap, so no logit runs away.
            logits = self.logit_softcap * torch.tanh(logits / self.logit_softcap)
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


def check_choices(**settings) -> None:
    """Raise a ValueError naming the key for any ``key=(value, allowed)`` whose value is not allowed."""
    for key, (value, allowed) in settings.items():
        if value not in allowed:
            raise ValueError(f"model.{key}={value!r} must be one of {list(allowed)}")


ARCHITECTURES = {"bigram": BigramLanguageModel, "gpt": GPT}


def full_config(arch: str, **fields) -> dict:
    """``fields`` with every setting the architecture has, the defaults filled in: a config written before a
    switch existed equals the same model's config written after."""
    model = ARCHITECTURES.get(arch)
    if model is None:
        return {"arch": arch, **fields}
    defaults = {name: p.default for name, p in inspect.signature(model).parameters.items() if p.default is not p.empty}
    return {"arch": arch, **defaults, **fields}


def build_model(arch: str, vocab_size: int, **fields) -> LanguageModel:
    """Build a model from plain config data, e.g. ``build_model("gpt", 65, block_size=64, n_layer=4, ...)``."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown model arch {arch!r}: choose one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch](vocab_size=vocab_size, **fields)


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
