"""Train a character-level GPT on Shakespeare, plot the loss, save a checkpoint and sample from it.

    python examples/nn/char_gpt.py                         # 2,000 iterations of the small CPU configuration
    python examples/nn/char_gpt.py --steps 200 --backend numpy
    python examples/nn/char_gpt.py --sample-only examples/nn/out/char_gpt.safetensors --prompt "ROMEO:"
    python examples/nn/char_gpt.py --data my_text.txt      # any UTF-8 text

The defaults are the well-known small configuration for a CPU: 4 layers, 4 heads, 128-wide embeddings, context 64,
batch 12, dropout 0, AdamW (lr 1e-3, betas 0.9/0.99, weight decay 0.1 on matrices only, gradients clipped to norm 1)
with nanoGPT's schedule (lr * (it + 1) / 101 for the first 100 iterations, then a cosine down to 1e-4 at iteration
2,000); the output layer shares the token embedding. This is karpathy/nanoGPT's shakespeare_char configuration with
its README's CPU overrides, detail for detail (its train.py and model.py as of 2024-12: bias-free linears and
LayerNorms with eps 1e-5, exact erf GELU, normal(0.02) initialisation with 0.02 / sqrt(2 * n_layer) for the residual
projections, decay on every tensor of 2 or more dimensions, embeddings included).
The data is split into the first 90% for training and the last 10% for validation; batches are random windows drawn
from a NumPy generator seeded by --seed (benchmarks/gpt_torch_reference.py trains PyTorch on the same batches).
One jitted function does a whole train step; generation is one jitted function per token over a fixed-shape window
of the last `context` characters, so it compiles once.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import non_negative_float, non_negative_int, positive_int, probability
from tqdm import tqdm

import slope
import slope.nn as nn

HERE = Path(__file__).resolve().parent


def default_data() -> Path:
    """tinyshakespeare/input.txt in $SLOPE_DATA_DIR, else in ../shared/data beside the repository (or a folder above)."""
    relative = Path("tinyshakespeare") / "input.txt"
    if os.environ.get("SLOPE_DATA_DIR"):
        return Path(os.environ["SLOPE_DATA_DIR"]) / relative
    candidates = [parent / "shared" / "data" / relative for parent in HERE.parents[1:]]
    return next((path for path in candidates if path.exists()), candidates[1])


CONFIG = {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64, "dropout": 0.0}


# ----------------------------------------------------------------------------------------------- the model


def _normal(key: slope.Tensor, shape: tuple, std: float, dtype: Any = None) -> slope.Tensor:
    return slope.random.normal(key, shape, dtype=dtype) * std


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with one (C, 3C) input projection, as GPT-2."""

    def __init__(self, n_embd: int, n_head: int, n_layer: int, dropout: float, key: slope.Tensor) -> None:
        super().__init__()
        keys = slope.random.split(key, 2)
        self.n_head = n_head
        self.qkv = nn.Linear(n_embd, 3 * n_embd, bias=False)
        self.qkv.weight = _normal(keys[0], (3 * n_embd, n_embd), 0.02)
        self.proj = nn.Linear(n_embd, n_embd, bias=False)
        self.proj.weight = _normal(keys[1], (n_embd, n_embd), 0.02 / math.sqrt(2 * n_layer))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: slope.Tensor) -> slope.Tensor:
        """(B, T, C) -> (B, T, C)."""
        batch, length, width = x.shape

        def heads(i: int) -> slope.Tensor:  # (B, H, T, D) from rows i*C .. (i+1)*C of the (3C, C) projection
            part = nn.functional.linear(x, self.qkv.weight[i * width : (i + 1) * width])
            return part.reshape((batch, length, self.n_head, width // self.n_head)).permute((0, 2, 1, 3))

        # three products with slices of the weight, not one product sliced: the gradient then adds (C, C) blocks of
        # the weight, not three zero-padded copies of the (B, T, 3C) output (five passes over it per layer)
        p = self.dropout.p if self.training else 0.0
        y = nn.functional.scaled_dot_product_attention(heads(0), heads(1), heads(2), is_causal=True, dropout_p=p)
        return self.dropout(self.proj(y.permute((0, 2, 1, 3)).reshape((batch, length, width))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, n_embd: int, n_head: int, n_layer: int, dropout: float, key: slope.Tensor) -> None:
        super().__init__()
        keys = slope.random.split(key, 3)
        self.ln1 = nn.LayerNorm(n_embd, bias=False)
        self.attn = CausalSelfAttention(n_embd, n_head, n_layer, dropout, keys[0])
        self.ln2 = nn.LayerNorm(n_embd, bias=False)
        self.fc = nn.Linear(n_embd, 4 * n_embd, bias=False)
        self.fc.weight = _normal(keys[1], (4 * n_embd, n_embd), 0.02)
        self.gelu = nn.GELU()
        self.out = nn.Linear(4 * n_embd, n_embd, bias=False)
        self.out.weight = _normal(keys[2], (n_embd, 4 * n_embd), 0.02 / math.sqrt(2 * n_layer))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: slope.Tensor) -> slope.Tensor:
        """(B, T, C) -> (B, T, C)."""
        x = x + self.attn(self.ln1(x))
        return x + self.dropout(self.out(self.gelu(self.fc(self.ln2(x)))))


class GPT(nn.Module):
    """Token and position embeddings, n_layer blocks, a final LayerNorm and the tied output layer."""

    def __init__(self, vocab_size: int, n_layer: int = 4, n_head: int = 4, n_embd: int = 128, block_size: int = 64,
                 dropout: float = 0.0, key: slope.Tensor | None = None) -> None:  # fmt: skip
        super().__init__()
        key = slope.random.key(0) if key is None else key
        keys = slope.random.split(key, n_layer + 2)
        self.block_size = block_size
        self.tokens = nn.Embedding(vocab_size, n_embd)
        self.tokens.weight = _normal(keys[0], (vocab_size, n_embd), 0.02)
        self.positions = nn.Embedding(block_size, n_embd)
        self.positions.weight = _normal(keys[1], (block_size, n_embd), 0.02)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList([Block(n_embd, n_head, n_layer, dropout, keys[2 + i]) for i in range(n_layer)])
        self.ln_f = nn.LayerNorm(n_embd, bias=False)

    def hidden(self, idx: slope.Tensor) -> slope.Tensor:
        """(B, T) token ids -> (B, T, C) final hidden states (before the output layer)."""
        if idx.shape[1] > self.block_size:  # (the position embeddings stop there; as nanoGPT's assertion)
            raise ValueError(
                f"GPT: cannot forward a sequence of {idx.shape[1]} tokens, the block size is {self.block_size}"
            )
        x = self.dropout(self.tokens(idx) + self.positions.weight[: idx.shape[1]])
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)

    def forward(self, idx: slope.Tensor) -> slope.Tensor:
        """(B, T) token ids -> (B, T, vocab) logits."""
        return self.tokens.attend(self.hidden(idx))


def loss_fn(model: GPT, x: slope.Tensor, y: slope.Tensor) -> slope.Tensor:
    """Mean next-character cross-entropy over (batch, time)."""
    logits = model(x)
    return nn.cross_entropy(logits.reshape((-1, logits.shape[-1])), y.reshape((-1,)))


def nanogpt_schedule(lr: float, warmup: int, decay_steps: int, min_lr: float) -> Any:
    """nanoGPT's get_lr as a function of the step count (a tensor): lr * (it + 1) / (warmup + 1) during the warm-up,
    then a cosine from lr down to min_lr at decay_steps, then min_lr."""

    def schedule(step: slope.Tensor) -> slope.Tensor:
        warm = lr * (step + 1.0) / float(warmup + 1)
        progress = slope.clip((step - float(warmup)) / float(max(decay_steps - warmup, 1)), 0.0, 1.0)
        cosine = min_lr + (lr - min_lr) * 0.5 * (1.0 + slope.cos(progress * math.pi))
        return slope.where(step < float(warmup), warm, cosine)

    return schedule


def make_optimizer(lr: float, steps: int, warmup: int = 100, min_lr: float = 1e-4) -> nn.AdamW:
    """AdamW with decoupled weight decay on tensors of 2 or more dimensions and nanoGPT's warm-up + cosine schedule."""
    schedule = nanogpt_schedule(lr, warmup, steps, min(min_lr, lr))  # (a run of <= warmup steps only warms up)
    return nn.AdamW(schedule, betas=(0.9, 0.99), weight_decay=0.1, decay=nn.optim.no_decay_on_biases_and_norms)


def make_train_step(optimizer: nn.AdamW, grad_clip: float = 1.0) -> Any:
    """One jitted step: loss, gradients (the dropout key feeds nn.apply), clipping, the AdamW update."""

    @slope.jit
    def train_step(model: GPT, state: Any, x: slope.Tensor, y: slope.Tensor, key: slope.Tensor) -> tuple:
        def loss_with_key(model: GPT) -> slope.Tensor:
            logits, _ = nn.apply(model, x, key=key)
            return nn.cross_entropy(logits.reshape((-1, logits.shape[-1])), y.reshape((-1,)))

        loss, grads = slope.value_and_grad(loss_with_key)(model)
        grads, _ = nn.optim.clip_grad_norm(grads, grad_clip)
        model, state = optimizer.step(model, grads, state)
        return model, state, loss

    return train_step


# ----------------------------------------------------------------------------------------------- data


class CharData:
    """A text as character ids: the vocabulary (sorted distinct characters) and the 90% / 10% split."""

    def __init__(self, text: str, chars: list[str] | None = None) -> None:
        self.chars = sorted(set(text)) if chars is None else list(chars)
        self.index = {c: i for i, c in enumerate(self.chars)}
        unknown = set(text) - set(self.index)
        if unknown:
            raise SystemExit(f"char_gpt: the text has characters the checkpoint's vocabulary lacks: {sorted(unknown)}")
        ids = np.array([self.index[c] for c in text], dtype=np.int64)
        split = int(0.9 * len(ids))
        self.train, self.val = ids[:split], ids[split:]

    def encode(self, text: str) -> list[int]:
        """Character ids of a string (characters outside the vocabulary are an error)."""
        missing = sorted(set(text) - set(self.index))
        if missing:
            raise SystemExit(f"char_gpt: the prompt has characters outside the vocabulary: {missing}")
        return [self.index[c] for c in text]

    def decode(self, ids: Any) -> str:
        """The string of character ids."""
        return "".join(self.chars[int(i)] for i in ids)


def get_batch(ids: np.ndarray, batch_size: int, block_size: int, gen: np.random.Generator) -> tuple:
    """Random windows x and their next characters y, shapes (batch_size, block_size)."""
    starts = gen.integers(0, len(ids) - block_size, batch_size)  # nanoGPT's torch.randint(len(data) - block_size)
    x = np.stack([ids[s : s + block_size] for s in starts])
    y = np.stack([ids[s + 1 : s + 1 + block_size] for s in starts])
    return x, y


def val_batches(data: CharData, batch_size: int, block_size: int, count: int, seed: int = 1234) -> list:
    """A fixed set of validation batches (the same at every evaluation, and in the PyTorch reference)."""
    gen = np.random.default_rng(seed)
    return [get_batch(data.val, batch_size, block_size, gen) for _ in range(count)]


# ----------------------------------------------------------------------------------------------- generation


def zero_temperature_error(temperature: float, dtype: Any, name: str) -> str | None:
    """The error for a temperature above 0 that is 0 in the logits' dtype (traced in it, logits / 0 were NaN and every
    sampled id 0), naming the argument `name` and the smallest temperature allowed; None for any other."""
    if np.asarray(temperature, dtype.numpy) != 0:
        return None
    zero = np.zeros((), dtype.numpy)
    smallest = float(np.nextafter(zero, zero + 1))
    return (f"char_gpt: {name} {temperature} is 0 in {dtype.name} (the logits' dtype), so the logits divided by it "
            f"are NaN: pass at least {smallest:.4g}, the smallest positive {dtype.name} (which samples the most "
            f"likely id)")  # fmt: skip


def next_token(model: GPT, window: slope.Tensor, length: slope.Tensor, u: slope.Tensor, temperature: float,
               top_k: int | None) -> tuple:  # fmt: skip
    """Sample the character after the first `length` ids of a (1, T) window with the uniform draw `u` (inverse CDF);
    returns (token, window, length, valid) with the token appended (the window slides left once full); valid is False
    where the probabilities were not finite (NaN or inf logits: the token is then meaningless). Fixed shapes, so it is
    jitted once."""
    if not temperature > 0 or top_k is not None and top_k < 1:  # (as PyTorch's multinomial and topk refuse them)
        raise ValueError(f"char_gpt: temperature must be above 0 and top_k at least 1, got {temperature} and {top_k}")
    block = window.shape[1]
    hidden = model.hidden(window)[0]  # (T, C)
    at_last = (slope.arange(block) == length - 1).astype(hidden.dtype)
    logits = model.tokens.attend((hidden * at_last.unsqueeze(-1)).sum(0))  # (V,)
    error = zero_temperature_error(temperature, logits.dtype, "temperature")
    if error:
        raise ValueError(error)
    logits = (logits - logits.max()) / temperature  # (shifted first: a tiny temperature gives greedy, not inf - inf)
    if top_k is not None and top_k < logits.shape[0]:
        # keep the logits of which fewer than top_k are larger (ties with the k-th value stay, as nanoGPT's topk)
        larger = (logits.unsqueeze(0) > logits.unsqueeze(1)).astype(slope.int64).sum(1)
        logits = slope.where(larger < top_k, logits, -math.inf)
    # the first id of nonzero probability whose cumulative probability exceeds u times the total (which float32 may
    # leave below 1: a count of the ids at or below u could pass the last one, even one that top-k excluded); the
    # total is the largest cumulative value of a kept id (the scan's last value may lie ulps above it, and then no
    # id passed at u near 1: argmax of no True gave id 0)
    probs = nn.functional.softmax(logits, -1)
    cumulative = slope.cumsum(probs, 0)
    total = slope.where(probs > 0, cumulative, 0.0).max()
    passed = (cumulative > u.astype(probs.dtype) * total) & (probs > 0)
    token = passed.astype(slope.int64).argmax()
    # NaN probabilities (NaN or inf logits) pass nowhere and argmax gave id 0; PyTorch's multinomial raises "probability
    # tensor contains either inf, nan or element < 0": the flag lets generate raise (outside the jitted step)
    valid = passed.any() & ~slope.isnan(probs).any()
    placed = slope.where(slope.arange(block).unsqueeze(0) == length, token, window)
    slid = slope.cat([window[:, 1:], token.reshape((1, 1))], 1)
    window = slope.where(length >= block, slid, placed)
    return token, window, (length + 1).clip(None, block), valid


def uniforms(key: slope.Tensor, count: int) -> slope.Tensor:
    """The `count` uniform draws generation uses, all from one key in one program (a draw inside each token's step
    would add the ~300 operators of the counter-based generator to every step: 40% of them)."""
    return slope.random.uniform(key, (count,))


def start_window(prompt_ids: list[int], block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The (1, T) window holding the last block_size prompt ids left-aligned, and how many it holds."""
    if not len(prompt_ids):  # (it conditioned on id 0, a character the user never gave; nanoGPT fails on it too)
        raise ValueError("char_gpt: the prompt is empty: generation needs at least one id to start from")
    ids = prompt_ids[-block_size:]
    window = np.zeros((1, block_size), dtype=np.int64)
    window[0, : len(ids)] = ids
    return window, np.array(len(ids), dtype=np.int64)


@functools.lru_cache(maxsize=8)
def _jitted_next_token(temperature: float, top_k: int | None) -> slope.jit:
    """One jitted next_token per sampling setting (so repeated generate calls reuse the compiled step)."""
    return slope.jit(lambda m, w, n, u: next_token(m, w, n, u, temperature, top_k))


_jitted_uniforms = slope.jit(uniforms, static_argnums=1)


def generate(model: GPT, prompt_ids: list[int], count: int, key: slope.Tensor, temperature: float = 0.8,
             top_k: int | None = 40) -> list[int]:  # fmt: skip
    """`count` sampled ids after the prompt, one jitted fixed-shape step per id (a RuntimeError, as PyTorch's
    multinomial, where the model's probabilities are not finite)."""
    step = _jitted_next_token(temperature, top_k)
    window, length = start_window(prompt_ids, model.block_size)
    draws = _jitted_uniforms(key, count).numpy()
    window, length = slope.tensor(window), slope.tensor(length)
    tokens, valid = [], []
    for u in draws:
        token, window, length, ok = step(model, window, length, slope.tensor(u))
        tokens.append(token)
        valid.append(ok)
    bad = next((i for i, ok in enumerate(valid) if not bool(ok)), None)  # (read at the end: no sync per step)
    if bad is not None:
        raise RuntimeError(f"char_gpt.generate: the next-id probabilities at step {bad + 1} of {count} contain NaN: "
                           "the model's logits are NaN or inf (has training diverged?); PyTorch's multinomial raises "
                           "'probability tensor contains either inf, nan or element < 0'")  # fmt: skip
    return [int(t) for t in tokens]


def export_next_token(model: GPT, folder: Path, count: int, temperature: float = 0.8,
                      top_k: int | None = 40) -> tuple[str, str]:  # fmt: skip
    """Write generation as two ONNX models that run without Slope: `uniforms.onnx` (key (2,) int64 -> `count`
    float32 draws) and `next_token.onnx` (weights as constants; inputs window (1, T) int64, length () int64 and one
    draw u () float32; outputs token, window and length, which a plain onnxruntime loop feeds back)."""
    window, length = start_window([0], model.block_size)
    step = slope.jit(lambda w, n, u: next_token(model, w, n, u, temperature, top_k)[:3])  # (no validity flag)
    folder = Path(folder)
    with slope.use_backend("onnxruntime"):
        (draws,) = slope.jit(lambda k: uniforms(k, count)).lower(slope.random.key(0)).export(folder / "uniforms.onnx")
        lowered = step.lower(slope.tensor(window), slope.tensor(length), slope.tensor(np.float32(0.5)))
        (next_path,) = lowered.export(folder / "next_token.onnx")
    return draws, next_path


# ----------------------------------------------------------------------------------------------- main


def evaluate(model: GPT, batches: list) -> float:
    """Mean loss over the fixed validation batches (eval mode: no dropout)."""
    model = model.eval()
    jitted = slope.jit(loss_fn)
    losses = [float(jitted(model, slope.tensor(x), slope.tensor(y))) for x, y in batches]
    model.train()
    return float(np.mean(losses))


def plot(losses: list[float], evals: list[tuple[int, float, float]], path: Path) -> None:
    """The training loss per step and the evaluated train/validation losses, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(np.arange(1, len(losses) + 1), losses, linewidth=0.6, alpha=0.5, label="train loss per step")
    if evals:
        steps, train, val = zip(*evals)
        ax.plot(steps, train, "o-", label="train loss (evaluated)")
        ax.plot(steps, val, "s-", label="validation loss")
    ax.set_xlabel("iteration")
    ax.set_ylabel("cross-entropy (nats per character)")
    ax.set_title("character-level GPT on tiny Shakespeare")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"loss plot: {path}")


def save_checkpoint(model: GPT, data: CharData, config: dict, path: Path) -> None:
    """The weights (safetensors) and, beside them, the configuration and vocabulary (JSON)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    path.with_suffix(".json").write_text(json.dumps({"config": config, "chars": data.chars}))
    print(f"checkpoint: {path} (+ {path.with_suffix('.json').name})")


def load_checkpoint(path: Path) -> tuple[GPT, dict, list[str]]:
    """A model, its configuration and vocabulary from save_checkpoint's files."""
    meta = json.loads(Path(path).with_suffix(".json").read_text())
    config = meta["config"]
    model = GPT(len(meta["chars"]), **config)
    model.load(path)
    return model.eval(), config, meta["chars"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command-line flags."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="a UTF-8 text file (default: tiny Shakespeare, see the README)")
    p.add_argument("--backend", default=None, help="onnxruntime, iree or numpy (default: Slope's default)")
    # (argparse types refuse values that failed later: 0 steps or eval-every divided by 0, 0 heads or eval batches gave
    # tracebacks or NaN losses, a negative learning rate ascended the gradient)
    p.add_argument("--steps", type=positive_int, default=2000, help="training iterations (default 2000)")
    p.add_argument("--batch-size", type=positive_int, default=12)
    p.add_argument("--lr", type=non_negative_float, default=1e-3)
    p.add_argument("--n-layer", type=non_negative_int, default=CONFIG["n_layer"])
    p.add_argument("--n-head", type=positive_int, default=CONFIG["n_head"])
    p.add_argument("--n-embd", type=positive_int, default=CONFIG["n_embd"])
    p.add_argument("--block-size", type=positive_int, default=CONFIG["block_size"])
    p.add_argument("--dropout", type=probability, default=CONFIG["dropout"])
    p.add_argument("--eval-every", type=positive_int, default=250, help="validation loss every this many steps")
    p.add_argument("--eval-batches", type=positive_int, default=50, help="validation batches per evaluation")
    p.add_argument("--seed", type=non_negative_int, default=1337)
    p.add_argument("--out", default=str(HERE / "out"), help="folder for the checkpoint and loss plot")
    p.add_argument("--sample-only", metavar="CHECKPOINT", default=None, help="skip training: sample from a checkpoint")
    p.add_argument("--prompt", default="\n", help="the text generation starts from")
    p.add_argument("--chars", type=int, default=500, help="characters to sample (default 500)")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=40)
    return p.parse_args(argv)


def check_sampling(data: CharData, args: argparse.Namespace) -> None:
    """Refuse bad sampling settings before any training (they were found only after the whole run)."""
    data.encode(args.prompt)
    if not args.prompt:  # (it conditioned on the first character of the vocabulary, which the user never gave)
        raise SystemExit('char_gpt: --prompt is empty: generation needs at least one character to start from (the '
                         'default is "\\n")')  # fmt: skip
    if not args.temperature > 0 or args.top_k is not None and args.top_k < 1 or args.chars < 0:
        raise SystemExit(f"char_gpt: expected --temperature above 0, --top-k at least 1 and --chars at least 0, got "
                         f"{args.temperature}, {args.top_k} and {args.chars}")  # fmt: skip
    error = zero_temperature_error(args.temperature, slope.float32, "--temperature")  # (the model is float32)
    if error:
        raise SystemExit(error)


def sample(model: GPT, data: CharData, args: argparse.Namespace) -> str:
    """Print and return `args.chars` characters sampled after the prompt, with the generation speed."""
    key = slope.random.key(args.seed)
    prompt = data.encode(args.prompt)
    generate(model, prompt, 2, key, args.temperature, args.top_k)  # trace and compile the step once
    _jitted_uniforms(key, args.chars)  # and the draws for this many characters
    start = time.perf_counter()
    ids = generate(model, prompt, args.chars, key, args.temperature, args.top_k)
    elapsed = time.perf_counter() - start
    text = data.decode(ids)
    print(f"--- {args.chars} characters sampled (temperature {args.temperature}, top-k {args.top_k}) in {elapsed:.2f} s "
          f"({args.chars / elapsed:.0f} tokens/s) ---")  # fmt: skip
    print(args.prompt + text)
    print("---")
    return text


def main(argv: list[str] | None = None) -> None:
    """Train (or load), evaluate, save, plot and sample."""
    args = parse_args(argv)
    if args.backend:
        slope.set_backend(args.backend)
    print(f"backend: {slope.get_backend().name}")
    if args.sample_only:
        model, _, chars = load_checkpoint(Path(args.sample_only))
        check_sampling(data := CharData("", chars), args)
        sample(model, data, args)
        return
    path = Path(args.data) if args.data else default_data()
    if not path.exists():
        raise SystemExit(
            f"char_gpt: no text at {path}; pass --data FILE or set SLOPE_DATA_DIR (see examples/README.md)"
        )
    if not path.is_file():
        raise SystemExit(f"char_gpt: {path} is not a file; pass --data FILE (a UTF-8 text file)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise SystemExit(f"char_gpt: {path} is not UTF-8 text ({error.reason} at byte {error.start}); pass --data a "
                         "UTF-8 text file (or convert it, e.g. iconv -t UTF-8)") from None  # fmt: skip
    data = CharData(text)
    if min(len(data.train), len(data.val)) <= args.block_size:  # (a window and its next character must fit in each)
        raise SystemExit(f"char_gpt: the text's training and validation parts ({len(data.train)} and {len(data.val)} "
                         f"characters) must each be longer than --block-size {args.block_size}: use a longer text "
                         f"(at least about {10 * (args.block_size + 1)} characters) or a smaller --block-size")  # fmt: skip
    if args.n_embd % args.n_head:
        raise SystemExit(f"char_gpt: --n-embd {args.n_embd} must be a multiple of --n-head {args.n_head}")
    check_sampling(data, args)
    config = {"n_layer": args.n_layer, "n_head": args.n_head, "n_embd": args.n_embd, "block_size": args.block_size,
              "dropout": args.dropout}  # fmt: skip
    model = GPT(len(data.chars), **config, key=slope.random.key(args.seed))
    print(f"{len(data.train):,} training and {len(data.val):,} validation characters, vocabulary {len(data.chars)}; "
          f"{model.num_parameters():,} parameters")  # fmt: skip
    optimizer = make_optimizer(args.lr, args.steps)
    state = optimizer.init(model)
    train_step = make_train_step(optimizer)
    gen = np.random.default_rng(args.seed)
    held_out = val_batches(data, args.batch_size, args.block_size, args.eval_batches)
    drop_key = slope.random.key(args.seed + 1)
    losses: list[float] = []
    evals: list[tuple[int, float, float]] = []
    begin = time.perf_counter()
    pending: list = []
    with tqdm(total=args.steps, desc="training", unit="step") as bar:
        for step in range(1, args.steps + 1):
            x, y = get_batch(data.train, args.batch_size, args.block_size, gen)
            model, state, loss = train_step(model, state, slope.tensor(x), slope.tensor(y),
                                            slope.random.fold_in(drop_key, step))  # fmt: skip
            pending.append(loss)
            if step % 10 == 0 or step == args.steps:
                losses.extend(float(v) for v in pending)  # one sync every 10 steps
                pending.clear()
                bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
            bar.update(1)
            if step % args.eval_every == 0 or step == args.steps:
                train_gen = np.random.default_rng(step)
                train_eval = evaluate(model, [get_batch(data.train, args.batch_size, args.block_size, train_gen)
                                              for _ in range(args.eval_batches)])  # fmt: skip
                val = evaluate(model, held_out)
                evals.append((step, train_eval, val))
                tqdm.write(f"step {step}: train loss {train_eval:.4f}, val loss {val:.4f}")
    wall = time.perf_counter() - begin
    print(f"trained {args.steps} steps in {wall:.1f} s ({1000 * wall / args.steps:.1f} ms/step with evaluations); "
          f"final val loss {evals[-1][2]:.4f}")  # fmt: skip
    out = Path(args.out)
    save_checkpoint(model, data, config, out / "char_gpt.safetensors")
    plot(losses, evals, out / "char_gpt_loss.png")
    sample(model.eval(), data, args)


if __name__ == "__main__":
    main()
