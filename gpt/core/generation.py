"""Sampling from a language model of gpt.core.model: the loop that draws one token at a time, and the key/value
cache that makes each step cost one position.

Apart from the models, as nanochat keeps its engine apart: a model computes the logits of the positions it is
given, with or without a cache (``forward(idx, cache=...)``), and says which cache it needs (``new_cache``);
how tokens are drawn from those logits, and what the cache is fed, is decided here.
"""

import torch
from torch import nn
from torch.nn import functional as F


class KVCache:
    """The keys and values every layer computed for the positions seen so far.

    With it, each new token costs one position per layer instead of the whole window: the new token's query
    attends to the stored keys and values, which are exactly those a full forward pass would recompute.
    ``length`` counts the positions seen (the model advances it after each forward pass).

    ``rolling``: past ``max_length`` positions the window slides on, keeping the last ``max_length``. Only a
    model with relative positions (RoPE) may do so: its cached keys carry their rotation, and a query scores them
    by offset alone, wherever the window now starts. The buffer is a ring: position p is stored in slot
    p % max_length, so a new token overwrites the oldest in place instead of the window being copied down one
    slot per token. The slots are then out of order, which attention does not mind (the softmax weighs keys,
    not their order); ``visible`` says which slots each new query may see.
    """

    def __init__(self, max_length: int, rolling: bool = False):
        self.max_length = max_length
        self.rolling = rolling
        self.length = 0
        self._layers: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}

    def update(self, layer: nn.Module, k: torch.Tensor, v: torch.Tensor):
        """Store ``layer``'s k, v (B, H, T, head_size) for the next T positions; return all it holds (B, H, n, ...):
        the positions so far in order, or, once the ring has wrapped, the last ``max_length`` in slot order."""
        end = self.length + k.size(2)
        if layer not in self._layers:  # allocated once, at full length: no re-allocation per token
            shape = (k.size(0), k.size(1), self.max_length, k.size(3))
            self._layers[layer] = (k.new_empty(shape), v.new_empty(shape[:3] + (v.size(3),)))
        keys, values = self._layers[layer]
        if end <= self.max_length:  # in order, as a full forward pass lays them out
            keys[:, :, self.length : end] = k
            values[:, :, self.length : end] = v
            return keys[:, :, :end], values[:, :, :end]
        slots = torch.arange(self.length, end, device=k.device) % self.max_length
        keys.index_copy_(2, slots, k)  # the new positions overwrite the oldest
        values.index_copy_(2, slots, v)
        return keys, values

    def visible(self, n_new: int, device=None) -> torch.Tensor:
        """(n_new, n_slots) booleans, True where the i-th new query (position length + i) may see a slot's key:
        the slots ``update`` returned, at or before the query's position."""
        end = self.length + n_new
        n_slots = min(end, self.max_length)
        slots = torch.arange(n_slots, device=device)
        first = end - n_slots  # the oldest position held
        positions = first + (slots - first) % self.max_length  # the position in each slot
        return positions[None, :] <= torch.arange(self.length, end, device=device)[:, None]


class GenerationMixin:
    """``generate`` and ``generate_stream`` for a model (a ``gpt.core.model.LanguageModel``) that has
    ``block_size``, ``new_cache()`` and ``forward(idx, cache=None) -> (logits, loss)``."""

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
