"""char_gpt generation: a key/value cache against recomputing the window, per generated character, on onnxruntime.

    python benchmarks/gpt_kv_cache.py

The cached step feeds one new character at position p: each layer computes its query, key and value for that
character only, writes key and value into a (1, H, T, D) cache at p and attends over positions <= p. That is exact
only while the window fills: the positions are learned absolute embeddings, so once the 64-character window slides
every cached key and value belongs to a shifted position, and the sampler must recompute the window (char_gpt's
step) from then on. The script checks that both steps give the same logits during the fill, times both (medians,
interleaved) and prints what a cache would save on a 500-character sample (64 cached steps, 436 recomputed).
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "nn"))
import char_gpt  # noqa: E402

import slope  # noqa: E402
import slope.nn as nn  # noqa: E402


def cached_logits(model: char_gpt.GPT, token: slope.Tensor, position: slope.Tensor, cache: list) -> tuple:
    """Logits after one more character at `position`, and the caches with its keys and values written in."""
    block = model.block_size
    x = model.tokens(token.reshape((1, 1))) + (model.positions.weight * (slope.arange(block) == position)
                                               .astype(slope.float32).unsqueeze(-1)).sum(0)  # fmt: skip
    at = (slope.arange(block) == position).reshape((1, 1, block, 1))
    visible = (slope.arange(block) <= position).reshape((1, 1, 1, block))
    new_cache = []
    for block_module, (keys, values) in zip(model.blocks, cache):
        attn = block_module.attn
        width = x.shape[-1]
        heads = attn.qkv(block_module.ln1(x)).reshape((1, 1, 3, attn.n_head, width // attn.n_head))
        heads = heads.permute((2, 0, 3, 1, 4))  # (3, 1, H, 1, D)
        keys = slope.where(at, heads[1], keys)
        values = slope.where(at, heads[2], values)
        y = nn.functional.scaled_dot_product_attention(heads[0], keys, values, attn_mask=visible)
        x = x + attn.proj(y.permute((0, 2, 1, 3)).reshape((1, 1, width)))
        x = x + block_module.out(block_module.gelu(block_module.fc(block_module.ln2(x))))
        new_cache.append((keys, values))
    return model.tokens.attend(model.ln_f(x))[0, 0], new_cache


def main() -> None:
    """Check, time and summarize."""
    model = char_gpt.GPT(65, **char_gpt.CONFIG, key=slope.random.key(1)).eval()
    heads, width, block = model.blocks[0].attn.n_head, model.tokens.embedding_dim, model.block_size
    empty = [(slope.zeros((1, heads, block, width // heads)),) * 2 for _ in model.blocks]
    cached = slope.jit(cached_logits)
    recompute = slope.jit(lambda m, w, n: m(w)[0, n - 1])
    ids = np.random.default_rng(0).integers(0, 65, block)
    cache = empty
    for p in range(block):  # the fill: both steps must agree
        logits, cache = cached(model, slope.tensor(ids[p]), slope.tensor(p), cache)
        window = np.zeros((1, block), np.int64)
        window[0, : p + 1] = ids[: p + 1]
        full = recompute(model, slope.tensor(window), slope.tensor(p + 1))
        np.testing.assert_allclose(logits.numpy(), full.numpy(), rtol=1e-4, atol=1e-4)
    times: dict[str, list[float]] = {"cached": [], "recompute": []}
    window = slope.tensor(ids.reshape(1, block))
    for _ in range(200):
        start = time.perf_counter()
        float(cached(model, slope.tensor(ids[5]), slope.tensor(5), cache)[0][0])
        times["cached"].append(time.perf_counter() - start)
        start = time.perf_counter()
        float(recompute(model, window, slope.tensor(block))[0])
        times["recompute"].append(time.perf_counter() - start)
    cached_ms, full_ms = (1000 * statistics.median(times[k]) for k in ("cached", "recompute"))
    total_cached = 64 * cached_ms + (500 - 64) * full_ms
    print(f"logits of the cached step match the recomputed window at all {block} fill positions")
    print(f"per character: cached {cached_ms:.3f} ms, recomputed window {full_ms:.3f} ms "
          f"({full_ms / cached_ms:.1f}x); 500 characters: {500 * full_ms:.0f} ms recomputing, {total_cached:.0f} ms "
          f"with a cache during the fill ({100 * (total_cached / (500 * full_ms) - 1):+.0f}%)")  # fmt: skip
    assert math.isfinite(total_cached)


if __name__ == "__main__":
    main()
