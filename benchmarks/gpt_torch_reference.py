"""PyTorch reference for examples/nn/char_gpt.py: the same GPT, initial weights, batches, optimizer and schedule.

    python benchmarks/gpt_torch_reference.py                 # 2,000 iterations, prints the validation losses
    python benchmarks/gpt_torch_reference.py --steps 200

The model mirrors char_gpt.GPT module for module (pre-norm blocks, LayerNorm without bias, bias-free linears, the
output layer tied to the token embedding) and starts from the Slope model's initial weights; batches come from the
same seeded NumPy generator, AdamW has the same parameter groups (decay on tensors of 2 or more dimensions),
nanoGPT's warm-up + cosine schedule and gradient clipping. benchmarks/gpt.py times it against Slope.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as tnf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "nn"))
import char_gpt  # noqa: E402 - after the path setup

import slope  # noqa: E402


class TorchBlock(torch.nn.Module):
    """char_gpt.Block in PyTorch."""

    def __init__(self, n_embd: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.approximate = "none"  # "tanh" in the 2023-02 variant
        self.ln1 = torch.nn.LayerNorm(n_embd, bias=False)
        self.qkv = torch.nn.Linear(n_embd, 3 * n_embd, bias=False)
        self.proj = torch.nn.Linear(n_embd, n_embd, bias=False)
        self.ln2 = torch.nn.LayerNorm(n_embd, bias=False)
        self.fc = torch.nn.Linear(n_embd, 4 * n_embd, bias=False)
        self.out = torch.nn.Linear(4 * n_embd, n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        heads = self.qkv(self.ln1(x)).view(batch, length, 3, self.n_head, width // self.n_head).permute(2, 0, 3, 1, 4)
        y = tnf.scaled_dot_product_attention(heads[0], heads[1], heads[2], is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(batch, length, width))
        return x + self.out(tnf.gelu(self.fc(self.ln2(x)), approximate=self.approximate))


class TorchGPT(torch.nn.Module):
    """char_gpt.GPT in PyTorch."""

    def __init__(self, vocab_size: int, n_layer: int, n_head: int, n_embd: int, block_size: int) -> None:
        super().__init__()
        self.block_size = block_size
        self.tokens = torch.nn.Embedding(vocab_size, n_embd)
        self.positions = torch.nn.Embedding(block_size, n_embd)
        self.blocks = torch.nn.ModuleList([TorchBlock(n_embd, n_head) for _ in range(n_layer)])
        self.ln_f = torch.nn.LayerNorm(n_embd, bias=False)

    def hidden(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tokens(idx) + self.positions.weight[: idx.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.hidden(idx) @ self.tokens.weight.T


def from_slope(model: char_gpt.GPT) -> TorchGPT:
    """A TorchGPT holding a Slope GPT's weights (the names match: char_gpt.GPT's state dict)."""
    blocks = model.blocks
    first = blocks[0]
    reference = TorchGPT(model.tokens.num_embeddings, len(blocks), first.attn.n_head, model.tokens.embedding_dim,
                         model.block_size)  # fmt: skip
    state = {name.replace(".attn.", "."): torch.tensor(value.numpy()) for name, value in model.state_dict().items()}
    reference.load_state_dict(state, strict=True)
    return reference


def nanogpt_lr(it: int, lr: float, warmup: int, decay_steps: int, min_lr: float, variant: str = "current") -> float:
    """nanoGPT's get_lr: linear warm-up to lr over `warmup` iterations, then a cosine down to min_lr (the 2023-02
    variant's warm-up starts at 0: lr * it / warmup)."""
    if it < warmup:
        return lr * it / warmup if variant == "2023-02" else lr * (it + 1) / (warmup + 1)
    if it > decay_steps:
        return min_lr
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * (it - warmup) / max(decay_steps - warmup, 1))) * (lr - min_lr)


def make_optimizer(model: TorchGPT, lr: float, steps: int, warmup: int = 100, min_lr: float = 1e-4,
                   variant: str = "current") -> tuple:  # fmt: skip
    """AdamW (decay 0.1 on tensors of 2 or more dimensions, betas 0.9/0.99) and nanoGPT's schedule, as char_gpt's.
    The 2023-02 variant decays only the linear layers' weights, by 0.01 (the token and position embeddings and the
    output layer tied to the first are not decayed)."""
    if variant == "2023-02":
        decayed = [p for name, p in model.named_parameters() if p.ndim >= 2 and "blocks." in name]
    else:
        decayed = [p for p in model.parameters() if p.ndim >= 2]
    others = [p for p in model.parameters() if all(p is not q for q in decayed)]
    decay = 0.01 if variant == "2023-02" else 0.1
    optimizer = torch.optim.AdamW([{"params": decayed, "weight_decay": decay}, {"params": others, "weight_decay": 0.0}],
                                  lr=lr, betas=(0.9, 0.99))  # fmt: skip
    min_lr = min(min_lr, lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: nanogpt_lr(it, lr, warmup, steps, min_lr, variant) / lr
    )
    return optimizer, schedule


def train_step(model: TorchGPT, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Forward, backward, clip to norm 1, update."""
    logits = model(x)
    loss = tnf.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return loss


@torch.no_grad()
def evaluate(model: TorchGPT, batches: list) -> float:
    """Mean loss over fixed batches."""
    losses = []
    for x, y in batches:
        logits = model(torch.from_numpy(x))
        losses.append(float(tnf.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.from_numpy(y).reshape(-1))))
    return float(np.mean(losses))


def full_validation(model: TorchGPT, val: np.ndarray, block_size: int = 64) -> float:
    """The loss over the whole validation split as non-overlapping windows (every character predicted once)."""
    count = (len(val) - 1) // block_size
    x = val[: count * block_size].reshape(count, block_size)
    y = val[1 : count * block_size + 1].reshape(count, block_size)
    return evaluate(model, [(x, y)])


def nanogpt_estimates(model: TorchGPT, val: np.ndarray, draws: int, seed: int = 0) -> list[float]:
    """`draws` of nanoGPT's estimate_loss for the val split: the mean loss of 20 random batches of 12."""
    gen = np.random.default_rng(seed)
    return [evaluate(model, [char_gpt.get_batch(val, 12, 64, gen) for _ in range(20)]) for _ in range(draws)]


def main() -> None:
    """Train PyTorch on char_gpt's defaults and print the evaluated losses."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--eval-batches", type=int, default=50)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: PyTorch's)")
    p.add_argument("--data", default=None)
    p.add_argument("--variant", choices=["current", "2023-02"], default="current",
                   help="nanoGPT as of 2024-12 (char_gpt's configuration), or as when its README reported 1.88 "
                   "(2023-02-05: weight decay 0.01 on linear weights only, tanh GELU, warm-up from 0)")  # fmt: skip
    p.add_argument("--estimates", type=int, default=0, help="at the end: this many of nanoGPT's 20-batch estimates")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    path = Path(args.data) if args.data else char_gpt.default_data()
    data = char_gpt.CharData(path.read_text(encoding="utf-8"))
    slope_model = char_gpt.GPT(len(data.chars), **char_gpt.CONFIG, key=slope.random.key(args.seed))
    model = from_slope(slope_model)
    if args.variant == "2023-02":
        for block in model.blocks:
            block.approximate = "tanh"
    optimizer, schedule = make_optimizer(model, 1e-3, args.steps, variant=args.variant)
    gen = np.random.default_rng(args.seed)
    held_out = char_gpt.val_batches(data, 12, 64, args.eval_batches)
    begin = time.perf_counter()
    for step in range(1, args.steps + 1):
        x, y = char_gpt.get_batch(data.train, 12, 64, gen)
        loss = train_step(model, optimizer, torch.from_numpy(x), torch.from_numpy(y))
        schedule.step()
        if step % args.eval_every == 0 or step == args.steps:
            model.eval()
            train_gen = np.random.default_rng(step)
            train_eval = evaluate(model, [char_gpt.get_batch(data.train, 12, 64, train_gen)
                                          for _ in range(args.eval_batches)])  # fmt: skip
            val = evaluate(model, held_out)
            model.train()
            print(f"step {step}: train loss {train_eval:.4f}, val loss {val:.4f} (last batch {loss.item():.4f})",
                  flush=True)  # fmt: skip
    wall = time.perf_counter() - begin
    print(f"trained {args.steps} steps in {wall:.1f} s ({1000 * wall / args.steps:.1f} ms/step with evaluations)")
    if args.estimates:
        model.eval()
        draws = nanogpt_estimates(model, data.val, args.estimates)
        print(f"whole validation split: {full_validation(model, data.val):.4f}; {args.estimates} nanoGPT estimates "
              f"(20 random batches each): mean {np.mean(draws):.4f}, sd {np.std(draws):.4f}, min {min(draws):.4f}, "
              f"max {max(draws):.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
