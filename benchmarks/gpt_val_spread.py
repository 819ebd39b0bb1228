"""How noisy nanoGPT's validation figure is: a char_gpt checkpoint's loss over the whole validation split against
the spread of nanoGPT's estimate (estimate_loss: the mean loss of eval_iters=20 random batches of 12 windows of 64).

    python benchmarks/gpt_val_spread.py examples/nn/out/char_gpt.safetensors          # 50 estimates
    python benchmarks/gpt_val_spread.py CHECKPOINT --draws 200
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "nn"))
import char_gpt  # noqa: E402 - after the path setup

import slope  # noqa: E402


def whole_split_loss(model: char_gpt.GPT, ids: np.ndarray, block: int, batch: int = 12) -> float:
    """The mean loss over every non-overlapping window of the split (each character predicted once), in batches of
    `batch` windows (the last, partial batch padded and its padding left out)."""
    count = (len(ids) - 1) // block
    x = ids[: count * block].reshape(count, block)
    y = ids[1 : count * block + 1].reshape(count, block)
    logits_of = slope.jit(lambda m, t: m(t))
    total = 0.0
    for start in range(0, count, batch):
        xs, ys = x[start : start + batch], y[start : start + batch]
        real = len(xs)
        if real < batch:
            xs = np.concatenate([xs, np.zeros((batch - real, block), np.int64)])
        logits = logits_of(model, slope.tensor(xs)).numpy().astype(np.float64)[:real]
        shifted = logits - logits.max(-1, keepdims=True)
        logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        total += -np.take_along_axis(logp, ys[..., None], -1).sum()
    return total / (count * block)


def main() -> None:
    """Print the whole-split loss and the spread of nanoGPT-style estimates."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--draws", type=int, default=50, help="how many 20-batch estimates")
    p.add_argument("--data", default=None)
    args = p.parse_args()
    model, config, chars = char_gpt.load_checkpoint(Path(args.checkpoint))
    path = Path(args.data) if args.data else char_gpt.default_data()
    data = char_gpt.CharData(path.read_text(encoding="utf-8"), chars)
    block = config["block_size"]
    gen = np.random.default_rng(0)
    draws = [char_gpt.evaluate(model, [char_gpt.get_batch(data.val, 12, block, gen) for _ in range(20)])
             for _ in range(args.draws)]  # fmt: skip
    fixed = char_gpt.evaluate(model, char_gpt.val_batches(data, 12, block, 50))
    print(f"whole validation split: {whole_split_loss(model, data.val, block):.4f}; char_gpt's 50 fixed batches: "
          f"{fixed:.4f}; {args.draws} nanoGPT estimates (20 random batches of 12 each): mean {np.mean(draws):.4f}, "
          f"sd {np.std(draws):.4f}, min {min(draws):.4f}, max {max(draws):.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
