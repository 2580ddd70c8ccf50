"""The models of the "let's build GPT" lecture, in plain PyTorch.

Every model shares one interface: ``forward(idx, targets=None) -> (logits, loss)`` and ``generate``.
``BigramLanguageModel`` is the lecture's baseline (a lookup table of next-character scores); ``GPT`` is the
decoder-only Transformer it grows into. ``GPT``'s switches (``mixer``, ``mlp``, ``residual``,
``layer_norm``, ``n_layer=0``) rebuild each intermediate step of the lecture from the same modules, so the
ladder from bigram to Transformer (``conf/model/ladder/``) is one model family, not nine copies.
Nothing here knows about Lightning or Hydra: ``build_model(arch=..., **fields)`` turns plain config into a model.
"""

import copy
import math

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
    ``length`` counts the positions stored (the model advances it after each forward pass).
    """

    def __init__(self, max_length: int):
        self.max_length = max_length
        self.length = 0
        self._layers: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}

    def update(self, layer: nn.Module, k: torch.Tensor, v: torch.Tensor):
        """Store ``layer``'s k, v (B, H, T, head_size) after the cached positions; return all of them so far."""
        end = self.length + k.size(2)
        if layer not in self._layers:  # allocated once, at full length: no re-allocation per token
            shape = (k.size(0), k.size(1), self.max_length, k.size(3))
            self._layers[layer] = (k.new_empty(shape), v.new_empty(shape[:3] + (v.size(3),)))
        keys, values = self._layers[layer]
        keys[:, :, self.length : end] = k
        values[:, :, self.length : end] = v
        return keys[:, :, :end], values[:, :, :end]


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
        under the same seed. Position embeddings are absolute, so once the sequence outgrows ``block_size``
        the cropped window starts at a new position and cached keys no longer apply: from there every step
        recomputes the last ``block_size`` tokens, exactly as without the cache (same output, uncached speed).
        """
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
        cache = self.new_cache() if use_cache else None
        for _ in range(max_new_tokens):
            if cache is not None and idx.size(1) <= self.block_size:
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
        n_past = 0 if cache is None else cache.length
        past = x if cache is None else cache.update(self, x[:, None], x[:, None])[1][:, 0]
        return self.weights(x, n_past).to(x.dtype) @ past  # (T, T') @ (B, T', C) -> (B, T, C)


class CausalSelfAttention(nn.Module):
    """Multi-head masked self-attention: each position takes a learned, weighted average of the past.

    The lecture's version: q = x Wq, k = x Wk, v = x Wv per head; weights = softmax(q kᵀ / sqrt(head_size))
    with the future masked to -inf; heads concatenated, then projected back into the residual stream.
    ``F.scaled_dot_product_attention`` computes exactly that in a fused kernel; ``weights`` spells it out.
    """

    def __init__(self, n_embd, n_head, dropout, bias):
        super().__init__()
        self.n_head = n_head
        self.dropout = dropout
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)  # q, k, v of all heads in one matmul
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)  # the projection back into the residual stream
        self.resid_dropout = nn.Dropout(dropout)

    def _heads(self, x):
        """q, k, v, each (B, n_head, T, head_size): the heads attend independently, in parallel."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        return (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))

    def weights(self, x):
        """The attention weights (B, n_head, T, T), computed the lecture's way: row t is where position t looks."""
        q, k, _ = self._heads(x)
        scores = q @ k.transpose(-2, -1) / math.sqrt(k.size(-1))
        scores = scores.masked_fill(~causal_mask(x.size(1), x.size(1), x.device), float("-inf"))
        return F.softmax(scores, dim=-1)

    def forward(self, x, cache=None):
        B, T, C = x.shape
        q, k, v = self._heads(x)
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


class MLP(nn.Module):
    """The feed-forward layer: each position thinks on its own about what it gathered (4x wider inside)."""

    def __init__(self, n_embd, dropout, bias):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Communication (the mixer: attention) then computation (the MLP).

    In the full model each forks off the residual pathway and adds back (``residual``), on a LayerNorm-ed
    copy of the stream (``layer_norm``, pre-norm): the stream itself is never normalised and gradients flow
    from the loss straight to the embeddings through the additions. The switches turn these off to show,
    as the lecture does, what each one buys.
    """

    def __init__(self, n_embd, n_head, dropout, bias, mixer="attention", mlp=True, residual=True, layer_norm=True):
        super().__init__()
        norm = (lambda: nn.LayerNorm(n_embd, bias=bias)) if layer_norm else nn.Identity
        self.ln_1 = norm()
        self.mixer = CausalSelfAttention(n_embd, n_head, dropout, bias) if mixer == "attention" else CausalAverage()
        self.ln_2 = norm() if mlp else None
        self.mlp = MLP(n_embd, dropout, bias) if mlp else None
        self.residual = residual

    def forward(self, x, cache=None):
        x = self._join(x, self.mixer(self.ln_1(x), cache))
        if self.mlp is not None:
            x = self._join(x, self.mlp(self.ln_2(x)))
        return x

    def _join(self, x, branch):
        return x + branch if self.residual else branch


MIXERS = ("attention", "average")


class GPT(LanguageModel):
    """Token + position embeddings, ``n_layer`` blocks, a final LayerNorm and a linear head.

    The defaults are the lecture's final model. The switches give its earlier steps: ``n_layer=0`` is
    embeddings and a linear head; ``mixer="average"`` replaces attention by the causal average of the past;
    ``mlp``, ``residual`` and ``layer_norm`` remove those parts. ``tie_weights`` shares the token embedding
    with the output head (fewer parameters; a recipe choice, off in the lecture).
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
    ):
        super().__init__(block_size)
        if n_embd % n_head:
            raise ValueError(f"n_embd={n_embd} must be divisible by n_head={n_head}")
        if mixer not in MIXERS:
            raise ValueError(f"mixer={mixer!r} must be one of {MIXERS}")
        self.token_embedding = nn.Embedding(vocab_size, n_embd)
        self.position_embedding = nn.Embedding(block_size, n_embd)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(n_embd, n_head, dropout, bias, mixer, mlp, residual, layer_norm) for _ in range(n_layer)
        )
        self.ln_f = nn.LayerNorm(n_embd, bias=bias) if layer_norm else nn.Identity()
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=bias)

        self.apply(self._init_weights)
        # The projections that write into the residual stream start small (GPT-2's scaled init), so each
        # block adds little at first: the residual pathway dominates, and blocks "come online" as they learn.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * max(n_layer, 1)))
        if tie_weights:
            self.lm_head.weight = self.token_embedding.weight

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def new_cache(self) -> KVCache:
        return KVCache(self.block_size)

    def features(self, idx, cache=None):
        """The final hidden states (B, T, n_embd), before the head: what a reward or value head reads."""
        B, T = idx.shape
        start = 0 if cache is None else cache.length
        if start + T > self.block_size:
            raise ValueError(f"sequence of length {start + T} is longer than block_size={self.block_size}")
        pos = torch.arange(start, start + T, device=idx.device)
        x = self.dropout(self.token_embedding(idx) + self.position_embedding(pos))  # (B, T, n_embd)
        for block in self.blocks:
            x = block(x, cache)
        if cache is not None:
            cache.length += T
        return self.ln_f(x)

    def forward(self, idx, targets=None, cache=None):
        logits = self.lm_head(self.features(idx, cache))  # (B, T, vocab_size)
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


ARCHITECTURES = {"bigram": BigramLanguageModel, "gpt": GPT}


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
