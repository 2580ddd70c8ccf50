"""The models of the "let's build GPT" lecture, in plain PyTorch.

Two language models share one interface: ``forward(idx, targets=None) -> (logits, loss)`` and
``generate``. ``BigramLanguageModel`` is the lecture's baseline (a lookup table of next-character
scores); ``GPT`` is the decoder-only Transformer it grows into. Nothing here knows about Lightning
or Hydra: ``build_model(arch=..., **fields)`` turns a plain config into a model.
"""

import math

import torch
import torch.nn as nn
from torch.nn import functional as F


class LanguageModel(nn.Module):
    """What every model here shares: the cross-entropy loss and the sampling loop."""

    def __init__(self, block_size: int):
        super().__init__()
        self.block_size = block_size  # the longest context the model can condition on

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @staticmethod
    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # F.cross_entropy wants the classes in dim 1, so fold time into the batch: (B, T, C) -> (B*T, C).
        B, T, C = logits.shape
        return F.cross_entropy(logits.view(B * T, C), targets.view(B * T))

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None):
        """Extend every row of ``idx`` (B, T) by ``max_new_tokens`` sampled tokens; returns (B, T + new)."""
        for idx_next in self.generate_stream(idx, max_new_tokens, temperature, top_k, generator):
            idx = torch.cat((idx, idx_next), dim=1)
        return idx

    @torch.no_grad()
    def generate_stream(self, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None):
        """Yield each new token, shape (B, 1), as soon as it is sampled (``generate`` collects them).

        ``temperature`` divides the logits (0 means greedy: always the most likely token); ``top_k``
        keeps only the k most likely tokens; ``generator`` makes the draw reproducible.
        """
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
        for _ in range(max_new_tokens):
            idx_cond = idx[:, -self.block_size :]  # positions past block_size have no embedding: crop
            logits, _ = self(idx_cond)
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


class CausalSelfAttention(nn.Module):
    """Multi-head masked self-attention: each position takes a learned, weighted average of the past.

    The lecture's version: q = x Wq, k = x Wk, v = x Wv per head; weights = softmax(q kᵀ / sqrt(head_size))
    with the future masked to -inf; heads concatenated, then projected back into the residual stream.
    ``F.scaled_dot_product_attention(is_causal=True)`` computes exactly that, in a fused kernel.
    """

    def __init__(self, n_embd, n_head, dropout, bias):
        super().__init__()
        self.n_head = n_head
        self.dropout = dropout
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)  # q, k, v of all heads in one matmul
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)  # the projection back into the residual stream
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, n_head, T, head_size): heads attend independently, in parallel
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )
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
    """Communication (attention) then computation (MLP), each forking off the residual pathway and adding back.

    Pre-norm: LayerNorm is applied to the input of each branch, so the residual stream itself is never
    normalised and gradients flow from the loss straight to the embeddings through the additions.
    """

    def __init__(self, n_embd, n_head, dropout, bias):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, bias=bias)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout, bias)
        self.ln_2 = nn.LayerNorm(n_embd, bias=bias)
        self.mlp = MLP(n_embd, dropout, bias)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(LanguageModel):
    """Token + position embeddings, ``n_layer`` residual blocks, a final LayerNorm and a linear head."""

    def __init__(self, vocab_size, block_size, n_layer, n_head, n_embd, dropout=0.0, bias=False):
        super().__init__(block_size)
        if n_embd % n_head:
            raise ValueError(f"n_embd={n_embd} must be divisible by n_head={n_head}")
        self.token_embedding = nn.Embedding(vocab_size, n_embd)
        self.position_embedding = nn.Embedding(block_size, n_embd)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, dropout, bias) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd, bias=bias)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=bias)

        self.apply(self._init_weights)
        # The projections that write into the residual stream start small (GPT-2's scaled init), so each
        # block adds little at first: the residual pathway dominates, and blocks "come online" as they learn.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx, targets=None):
        B, T = idx.shape
        if T > self.block_size:
            raise ValueError(f"sequence of length {T} is longer than block_size={self.block_size}")
        pos = torch.arange(T, device=idx.device)
        x = self.dropout(self.token_embedding(idx) + self.position_embedding(pos))  # (B, T, n_embd)
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))  # (B, T, vocab_size)
        return logits, None if targets is None else self.loss(logits, targets)


ARCHITECTURES = {"bigram": BigramLanguageModel, "gpt": GPT}


def build_model(arch: str, vocab_size: int, **fields) -> LanguageModel:
    """Build a model from plain config data, e.g. ``build_model("gpt", 65, block_size=64, n_layer=4, ...)``."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown model arch {arch!r}: choose one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch](vocab_size=vocab_size, **fields)
