"""char_gpt's model side by side: the same GPT, initial weights and batches in PyTorch (eager, torch.compile), JAX and
Slope (onnxruntime, iree): median train-step time and generation tokens/s, in one run.

    python benchmarks/gpt.py                                   # every framework that is installed
    python benchmarks/gpt.py --only torch-eager slope-onnxruntime --steps 50

Train step: forward, backward, clipping to norm 1 and the AdamW update (decay on tensors of 2 or more dimensions,
nanoGPT's warm-up + cosine schedule) on char_gpt's defaults (4 layers, 4 heads, 128 wide, context 64, batch 12); each framework runs `--warmup`
untimed steps, then `--steps` timed ones, reading the loss back every step (so asynchronous runtimes finish the
step); the median is reported, of wall time and of the calling thread's CPU time (with one thread each framework
computes in the calling thread, so on a shared machine its CPU time leaves out the waits for a core). Generation: `--tokens` characters after a one-character prompt with temperature 0.8
and top-k 40, batch 1, after a warm-up that compiles; tokens per second of the whole loop. PyTorch generates as
nanoGPT does (the growing context cropped to 64); Slope and JAX run one jitted fixed-shape step per token.
Threads: `--threads N` (default 1) for every framework: torch.set_num_threads, SLOPE_ORT_THREADS, XLA's Eigen
pool on or off (a shared machine makes multi-threaded timings meaningless: PyTorch's OpenMP pool of 2 took 5 s a
step under a load of 8 on 2 cores).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np


def _threads_from_argv() -> int:
    """--threads N, read before the frameworks are imported (XLA and onnxruntime read their settings at start)."""
    argv = sys.argv[1:]
    return int(argv[argv.index("--threads") + 1]) if "--threads" in argv else 1


THREADS = _threads_from_argv()
os.environ.setdefault("SLOPE_ORT_THREADS", str(THREADS))
os.environ.setdefault("XLA_FLAGS", f"--xla_cpu_multi_thread_eigen={'true' if THREADS > 1 else 'false'}")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "examples" / "nn"))
sys.path.insert(0, str(HERE))
import char_gpt  # noqa: E402

import slope  # noqa: E402

TEMPERATURE, TOP_K = 0.8, 40


# ----------------------------------------------------------------------------------------------- Slope


def bench_slope(backend: str, model: char_gpt.GPT, batches: list) -> tuple[Callable, Callable]:
    """Slope on one backend: the example's own jitted train step and generation."""
    optimizer = char_gpt.make_optimizer(1e-3, 2000)
    train_step = char_gpt.make_train_step(optimizer)
    with slope.use_backend(backend):
        holder = {"model": model, "state": optimizer.init(model)}
        key = slope.random.key(0)
        tensors = [(slope.tensor(x), slope.tensor(y)) for x, y in batches]
        eval_model = model.eval()

    def step(i: int) -> float:
        with slope.use_backend(backend):
            x, y = tensors[i % len(tensors)]
            holder["model"], holder["state"], loss = train_step(holder["model"], holder["state"], x, y, key)
            return float(loss)

    def generate(count: int) -> list[int]:
        with slope.use_backend(backend):
            return char_gpt.generate(eval_model, [0], count, slope.random.key(1), TEMPERATURE, TOP_K)

    return step, generate


# ----------------------------------------------------------------------------------------------- PyTorch


def bench_torch(model: char_gpt.GPT, batches: list, compiled: bool) -> tuple[Callable, Callable]:
    """PyTorch eager or torch.compile'd, from the same weights."""
    import torch
    import torch.nn.functional as tnf
    from gpt_torch_reference import from_slope, make_optimizer, train_step

    torch.set_num_threads(THREADS)
    reference = from_slope(model)
    optimizer, schedule = make_optimizer(reference, 1e-3, 2000)
    forward = torch.compile(reference) if compiled else reference
    tensors = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in batches]

    def step(i: int) -> float:
        x, y = tensors[i % len(tensors)]
        loss = train_step(forward, optimizer, x, y)
        schedule.step()
        return loss.item()

    generator = torch.Generator().manual_seed(1)
    sampler = from_slope(model).eval()  # generation samples from the initial weights, as Slope's does
    forward_eval = torch.compile(sampler) if compiled else sampler

    @torch.no_grad()
    def generate(count: int) -> list[int]:
        idx = torch.zeros((1, 1), dtype=torch.long)
        for _ in range(count):
            logits = forward_eval(idx[:, -sampler.block_size :])[:, -1, :] / TEMPERATURE
            top, _ = torch.topk(logits, TOP_K)
            logits[logits < top[:, [-1]]] = -math.inf
            idx = torch.cat([idx, torch.multinomial(tnf.softmax(logits, -1), 1, generator=generator)], 1)
        return idx[0, 1:].tolist()

    return step, generate


# ----------------------------------------------------------------------------------------------- JAX


def bench_jax(model: char_gpt.GPT, batches: list) -> tuple[Callable, Callable]:
    """JAX (jax.jit) with the same weights, AdamW written out (optax is not required)."""
    import jax
    import jax.numpy as jnp

    params = {name: jnp.asarray(value.numpy()) for name, value in model.state_dict().items()}
    n_layer, n_head = len(model.blocks), model.blocks[0].attn.n_head

    def layer_norm(x: Any, weight: Any) -> Any:
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + 1e-5) * weight

    def hidden(p: dict, idx: Any) -> Any:
        batch, length = idx.shape
        x = p["tokens.weight"][idx] + p["positions.weight"][:length]
        width = x.shape[-1]
        causal = jnp.tril(jnp.ones((length, length), bool))
        for i in range(n_layer):
            b = f"blocks.{i}."
            qkv = layer_norm(x, p[b + "ln1.weight"]) @ p[b + "attn.qkv.weight"].T
            heads = qkv.reshape(batch, length, 3, n_head, width // n_head).transpose(2, 0, 3, 1, 4)
            scores = heads[0] @ heads[1].swapaxes(-1, -2) / math.sqrt(width // n_head)
            weights = jax.nn.softmax(jnp.where(causal, scores, -jnp.inf), -1)
            y = (weights @ heads[2]).transpose(0, 2, 1, 3).reshape(batch, length, width)
            x = x + y @ p[b + "attn.proj.weight"].T
            h = jax.nn.gelu(layer_norm(x, p[b + "ln2.weight"]) @ p[b + "fc.weight"].T, approximate=False)
            x = x + h @ p[b + "out.weight"].T
        return layer_norm(x, p["ln_f.weight"])

    def loss_fn(p: dict, x: Any, y: Any) -> Any:
        logits = hidden(p, x) @ p["tokens.weight"].T
        logp = jax.nn.log_softmax(logits, -1)
        return -jnp.take_along_axis(logp, y[..., None], -1).mean()

    def lr_at(count: Any) -> Any:
        warm = 1e-3 * (count + 1) / 101  # nanoGPT's warm-up, as char_gpt
        cosine = 1e-4 + (1e-3 - 1e-4) * 0.5 * (1 + jnp.cos(jnp.pi * jnp.clip((count - 100) / 1900, 0, 1)))
        return jnp.where(count < 100, warm, cosine)

    @jax.jit
    def train_step(p: dict, mu: dict, nu: dict, count: Any, x: Any, y: Any) -> tuple:
        loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
        norm = jnp.sqrt(sum((g**2).sum() for g in grads.values()))
        scale = jnp.minimum(1.0, 1.0 / (norm + 1e-6))
        lr, t = lr_at(count), count + 1
        new_p, new_mu, new_nu = {}, {}, {}
        for name, g in grads.items():
            g = g * scale
            param = p[name] * (1 - lr * 0.1) if p[name].ndim >= 2 else p[name]
            new_mu[name] = 0.9 * mu[name] + 0.1 * g
            new_nu[name] = 0.99 * nu[name] + 0.01 * g * g
            denominator = jnp.sqrt(new_nu[name]) / jnp.sqrt(1 - 0.99**t) + 1e-8
            new_p[name] = param - lr / (1 - 0.9**t) * new_mu[name] / denominator
        return new_p, new_mu, new_nu, t, loss

    state = [params, jax.tree.map(jnp.zeros_like, params), jax.tree.map(jnp.zeros_like, params), jnp.float32(0)]
    arrays = [(jnp.asarray(x), jnp.asarray(y)) for x, y in batches]

    def step(i: int) -> float:
        x, y = arrays[i % len(arrays)]
        *state[:], loss = train_step(*state, x, y)
        return float(loss)

    initial = dict(params)

    @jax.jit
    def next_token(p: dict, window: Any, length: Any, key: Any) -> tuple:
        block = window.shape[1]
        h = hidden(p, window)[0]
        logits = h[length - 1] @ p["tokens.weight"].T / TEMPERATURE
        kth = jax.lax.top_k(logits, TOP_K)[0][-1]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
        key, sub = jax.random.split(key)
        token = jax.random.categorical(sub, logits)
        placed = jnp.where(jnp.arange(block) == length, token, window[0])
        slid = jnp.concatenate([window[0, 1:], token[None]])
        window = jnp.where(length >= block, slid, placed)[None]
        return token, window, jnp.minimum(length + 1, block), key

    def generate(count: int) -> list[int]:
        window, length = char_gpt.start_window([0], model.block_size)
        window, length, key = jnp.asarray(window), jnp.asarray(length), jax.random.PRNGKey(1)
        tokens = []
        for _ in range(count):
            token, window, length, key = next_token(initial, window, length, key)
            tokens.append(token)
        return [int(t) for t in tokens]

    return step, generate


# ----------------------------------------------------------------------------------------------- main


FRAMEWORKS = ("torch-eager", "torch-compile", "jax", "slope-onnxruntime", "slope-iree")


def main() -> None:
    """Run the frameworks asked for (default: all installed) and print a Markdown table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="*", choices=FRAMEWORKS, default=list(FRAMEWORKS))
    p.add_argument("--steps", type=int, default=100, help="timed train steps per framework")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--tokens", type=int, default=200, help="generated characters per round")
    p.add_argument("--rounds", type=int, default=3, help="generation rounds per framework (interleaved)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--threads", type=int, default=1, help="threads per framework (default 1)")
    args = p.parse_args()
    data = char_gpt.CharData(char_gpt.default_data().read_text(encoding="utf-8"))
    gen = np.random.default_rng(args.seed)
    batches = [char_gpt.get_batch(data.train, 12, 64, gen) for _ in range(args.warmup + args.steps)]

    def fresh() -> char_gpt.GPT:
        return char_gpt.GPT(len(data.chars), **char_gpt.CONFIG, key=slope.random.key(args.seed))

    runners = {
        "torch-eager": lambda: bench_torch(fresh(), batches, compiled=False),
        "torch-compile": lambda: bench_torch(fresh(), batches, compiled=True),
        "jax": lambda: bench_jax(fresh(), batches),
        "slope-onnxruntime": lambda: bench_slope("onnxruntime", fresh(), batches),
        "slope-iree": lambda: bench_slope("iree", fresh(), batches),
    }
    ready, failed = {}, {}
    for name in args.only:  # build, compile and warm up each one
        start = time.perf_counter()
        try:
            step, generate = runners[name]()
            for i in range(args.warmup):
                step(i)
            generate(args.tokens)
        except Exception as error:  # noqa: BLE001 - a framework that is missing or fails here is a row too
            failed[name] = f"{type(error).__name__}: {str(error).splitlines()[0][:90] if str(error) else ''}"
            continue
        ready[name] = (step, generate)
        print(f"{name}: built, compiled and warmed up in {time.perf_counter() - start:.1f} s", flush=True)
    # interleaved: step i of every framework before step i + 1 of any, so load on a shared machine hits all alike
    times: dict[str, list[float]] = {name: [] for name in ready}
    cpu: dict[str, list[float]] = {name: [] for name in ready}
    for i in range(args.warmup, args.warmup + args.steps):
        for name, (step, _) in ready.items():
            start, start_cpu = time.perf_counter(), time.thread_time()
            step(i)
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.thread_time() - start_cpu)
    rates: dict[str, list[float]] = {name: [] for name in ready}
    for _ in range(args.rounds):
        for name, (_, generate) in ready.items():
            start = time.perf_counter()
            generate(args.tokens)
            rates[name].append(args.tokens / (time.perf_counter() - start))
    print(f"\n| framework ({THREADS} thread(s)) | train step, median ms ({args.steps} steps) | CPU time of the step, "
          f"median ms | generation, median tokens/s ({args.rounds} x {args.tokens} tokens) |")  # fmt: skip
    print("|---|---|---|---|")
    for name in args.only:
        if name in failed:
            print(f"| {name} | not run: {failed[name]} | | |")
        else:
            ms, cpu_ms = 1000 * statistics.median(times[name]), 1000 * statistics.median(cpu[name])
            print(f"| {name} | {ms:.1f} | {cpu_ms:.1f} | {statistics.median(rates[name]):.0f} |")


if __name__ == "__main__":
    main()
