"""The differential check of exported models (`slope.jit(f).lower(*args).export(path)`): cases and comparison.

A case is a function of tensors and its inputs. Slope's jitted result is the reference; the exported artifact, run
without Slope's own session settings, must give the same bits: NaN at the same positions (payloads aside), every
other value bit for bit, so signs of zeros and infinities too. Cases come from the differential table
(tests/differential/table.py: every registered operator and procedure, inputs with +-0, +-inf, NaN, subnormals and
huge values) and from composite programs (a train step, gradients, vmap, the MNIST predictors, attention).
Used by packages/slope-*/tests/test_export_differential.py, one per backend.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

import slope

TESTS = Path(__file__).parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))  # `differential` is a package of this folder


@dataclass
class Case:
    """A function of tensors, its inputs, and (where not every bit is defined) why and how closely to compare."""

    label: str
    fn: Callable
    inputs: list
    rtol: float = 0.0  # 0: bit for bit


def _quiet(fn: Callable) -> tuple[Any, BaseException | None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return fn(), None
        except Exception as error:  # noqa: BLE001 - an invalid call is not compared
            return None, error


def table_case(entry: Any, layout: Any, arrays: dict, dtype: str | None) -> Case:
    """The jitted call of one differential-table example, its tensors as the program's inputs."""
    from differential.strategies import fill, placeholders

    tensors = placeholders((layout.args, layout.kwargs))

    def call(*values: slope.Tensor) -> Any:
        by_id = {id(t): v for t, v in zip(tensors, values)}
        make = lambda v: v if isinstance(v, slope.Tensor) else slope.tensor(v)  # noqa: E731
        args, kwargs = fill(layout.args, by_id, make), fill(layout.kwargs, by_id, make)
        if entry.dtype_arg and dtype is not None:
            kwargs = {**kwargs, "dtype": slope.dtypes.as_dtype(dtype)}
        return entry.call_slope()(*args, **kwargs)

    return Case(f"{entry.name}[{dtype}]", call, [arrays[id(t)] for t in tensors])


def slope_run(case: Case) -> tuple[Any, list[np.ndarray]] | None:
    """The case's Lowered program and Slope's jitted results, or None where Slope refuses the call."""
    fn = slope.jit(case.fn)
    inputs = [slope.tensor(a) for a in case.inputs]
    lowered, error = _quiet(lambda: fn.lower(*inputs))
    if error is not None:
        return None
    outs, error = _quiet(lambda: fn(*inputs))
    if error is not None:
        return None
    return lowered, [np.asarray(o.numpy()) for o in slope.tree.leaves(outs)]


def same_bits(got: Any, want: np.ndarray, rtol: float = 0.0) -> str | None:
    """Why `got` is not `want`: dtype, shape, NaN positions, then every other value bit for bit (rtol 0) or within
    rtol (relative; infinities, NaN and signs of zeros still exact)."""
    got = np.asarray(got)
    if got.dtype != want.dtype or got.shape != want.shape:
        return f"{got.dtype}{got.shape}, Slope {want.dtype}{want.shape}"
    if want.dtype.kind not in "fV":  # integers, bools
        bad = got != want
    else:
        g, w = got.astype(np.float64), want.astype(np.float64)
        nan_g, nan_w = np.isnan(g), np.isnan(w)
        if (nan_g != nan_w).any():
            bad = nan_g != nan_w
        else:
            g, w = np.where(nan_w, 0.0, g), np.where(nan_w, 0.0, w)
            infinite = np.isinf(g) | np.isinf(w)
            if rtol:  # relative to each value and to the output's largest finite one (sums that cancel)
                scale = np.abs(np.where(infinite, 0.0, w))
                with np.errstate(invalid="ignore"):
                    close = np.abs(g - w) <= rtol * (scale + scale.max(initial=0.0))
                bad = np.where(infinite, g != w, ~close) | ((g == 0) & (w == 0) & (np.signbit(g) != np.signbit(w)))
            else:
                bad = (g != w) | (np.signbit(g) != np.signbit(w))
    if not bad.any():
        return None
    first = tuple(int(i) for i in np.argwhere(bad)[0]) if bad.ndim else ()
    return f"{int(bad.sum())} of {bad.size} differ (first at {first}: {got[first]!r}, Slope {want[first]!r})"


def check(case: Case, runners: dict[str, Callable], folder: Path) -> list[str]:
    """Export the case and run it with each runner (name -> run(files, inputs) -> outputs); the problems found."""
    ran = slope_run(case)
    if ran is None:
        return []
    lowered, expected = ran
    files = [str(f) for f in lowered.export(folder / case.label.translate(str.maketrans("[], ", "____")))]
    problems = []
    for name, run in runners.items():
        outs, error = _quiet(lambda run=run: run(files, case.inputs))
        if error is not None:
            problems.append(f"{case.label} {name}: raised {type(error).__name__}: {str(error)[:300]}")
            continue
        flags, outs = outs[len(expected) :], outs[: len(expected)]  # iree: a bool per index check, after them
        if any(f.dtype != np.bool_ or f.any() for f in map(np.asarray, flags)):
            problems.append(f"{case.label} {name}: index checks failed or extra outputs: {flags}")
        if len(outs) != len(expected):
            problems.append(f"{case.label} {name}: {len(outs)} outputs, Slope {len(expected)}")
            continue
        for k, (got, want) in enumerate(zip(outs, expected)):
            problem = same_bits(got, want, case.rtol)
            if problem:
                problems.append(f"{case.label} {name}: output {k}: {problem}; inputs {_show(case.inputs)}")
    return problems


def _show(inputs: list) -> str:
    return "; ".join(f"{a.dtype}{a.shape} {np.asarray(a, np.float64).tolist()!r}"[:400] for a in inputs)


# ----------------------------------------------------------------------------------------------- table draws


def table_examples(data: Any, entry: Any, dtypes: int = 2) -> list[Case]:
    """One layout of the entry with arrays drawn for float32 (where taken) and another of its dtypes."""
    from differential.strategies import placeholders, values
    from hypothesis import strategies as st

    layout = data.draw(entry.layout, label="layout")
    run = ["float32"] if "float32" in entry.dtypes else []
    others = [d for d in entry.dtypes if d not in run]
    while others and len(run) < dtypes:
        run.append(data.draw(st.sampled_from(others), label="dtype"))
        others.remove(run[-1])
    if entry.dtype_arg:
        run = run or [None]
    cases = []
    for dtype in run:
        arrays = {}
        for t in placeholders((layout.args, layout.kwargs)):
            name = t.dtype or dtype or "float32"
            arrays[id(t)] = data.draw(values(t.shape, name, t.kind), label=f"{name}{t.shape} {t.kind}")
        cases.append(table_case(entry, layout, arrays, dtype))
    return cases


# ----------------------------------------------------------------------------------------------- composite programs


def _leaves_case(label: str, fn: Callable, state: Any, data: list, rtol: float = 0.0) -> Case:
    """A case whose inputs are the leaves of `state` (a model, an optimizer state) followed by `data`."""
    leaves, treedef = slope.tree.flatten(state)
    count = len(leaves)

    def call(*values: slope.Tensor) -> Any:
        return fn(slope.tree.unflatten(treedef, list(values[:count])), *values[count:])

    return Case(label, call, [np.asarray(leaf.numpy()) for leaf in leaves] + list(data), rtol)


def _with_specials(array: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The array with +-0, +-inf, NaN, subnormals and huge values at random positions (a quarter of them)."""
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-40, 3e38, -3e38, 1e20], array.dtype)
    out = array.copy().reshape(-1)
    where = rng.random(out.size) < 0.25
    out[where] = rng.choice(specials, int(where.sum()))
    return out.reshape(array.shape)


# Slope's CPU sessions of programs with real work run 2-d convolutions as onnxruntime's blocked-channel (NCHWc)
# kernels (slope_onnx.cpu_rewrites), exported models the plain Conv: their float32 sums round differently. NaN,
# infinities and signs of zeros must still match exactly.
CONV_RTOL = 1e-4


def composite_cases(small: bool = False) -> list[Case]:
    """Programs as users export them: MNIST predictors and train steps, gradients, vmap, attention."""
    import slope.nn as nn

    rng = np.random.default_rng(0)
    slope.manual_seed(0)
    cases = []

    def normalize(images: slope.Tensor) -> slope.Tensor:
        return images.astype(slope.float32) * (1.0 / (255.0 * 0.3081)) - 0.1307 / 0.3081

    def cross_entropy_loss(model: Any, images: slope.Tensor, labels: slope.Tensor) -> slope.Tensor:
        return nn.cross_entropy(model(normalize(images)), labels)

    def train_step(optimizer: Any) -> Callable:
        def step(state: tuple, images: slope.Tensor, labels: slope.Tensor) -> Any:
            model, opt_state = state
            loss, grads = slope.value_and_grad(cross_entropy_loss)(model, images, labels)
            return (*optimizer.step(model, grads, opt_state), loss)

        return step

    def predictor(model: Any, images: slope.Tensor) -> tuple:
        logits = model(normalize(images))
        return logits, logits.argmax(-1)

    batch = 8 if small else 64  # 64 x 784 inputs: Slope runs the program in a pooled (threaded) session
    mlp = nn.Sequential(nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 10))
    images = rng.integers(0, 256, (batch, 784), dtype=np.uint8)
    labels = rng.integers(0, 10, batch).astype(np.int64)
    cases.append(_leaves_case("mnist_mlp_predict", predictor, mlp, [images]))
    cases.append(Case("mnist_mlp_predict_constants", lambda pixels: predictor(mlp, pixels), [images]))
    adam = nn.Adam(5e-3)
    cases.append(_leaves_case("mnist_mlp_train_step", train_step(adam), (mlp, adam.init(mlp)), [images, labels]))
    if not small:
        cnn = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, kernel_size=5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 4 * 4, 10),
        )  # fmt: skip
        pictures = images[:8].reshape(-1, 1, 28, 28)
        cases.append(_leaves_case("mnist_cnn_predict", predictor, cnn, [pictures], rtol=CONV_RTOL))
        constants = Case("mnist_cnn_predict_constants", lambda pixels: predictor(cnn, pixels), [pictures], CONV_RTOL)
        cases.append(constants)  # the weights are constants of the program, as examples/nn/mnist_mlp.py exports
        adamw = nn.AdamW(nn.optim.cosine_decay(2e-3, total_steps=100), weight_decay=1e-4)
        step = train_step(adamw)
        state = (cnn, adamw.init(cnn))
        cases.append(_leaves_case("mnist_cnn_train_step", step, state, [pictures, labels[:8]], rtol=CONV_RTOL))

    # gradients, vmap, attention at special values
    x = _with_specials(rng.standard_normal((6, 5)).astype(np.float32), rng)
    y = _with_specials(rng.standard_normal((6, 5)).astype(np.float32), rng)

    def smooth(a: slope.Tensor, b: slope.Tensor) -> slope.Tensor:
        return (a.tanh() * b + a.abs().sqrt() - b.relu() * a.sigmoid() + (a * a + 1.0).log()).sum()

    cases.append(Case("grad_elementwise", slope.grad(smooth, argnums=(0, 1)), [x, y]))
    cases.append(Case("grad_maximum_where", slope.grad(lambda a, b: slope.where(a > b, a, b * 2.0).max()), [x, y]))
    cases.append(Case("grad_softmax", slope.grad(lambda a, b: (nn.functional.softmax(a, -1) * b).sum()), [x, y]))
    cases.append(Case("hessian_diag", lambda a: slope.jvp(slope.grad(lambda t: (t.sin() * t).sum()), (a,), (a,)), [x]))
    cases.append(Case("vmap_matvec", slope.vmap(lambda a, b: (a @ b.T).exp() / (1.0 + a.abs())), [x, y]))
    cases.append(Case("vmap_grad", slope.vmap(slope.grad(lambda a: (a.exp() - a * a).sum())), [x]))
    q = _with_specials(rng.standard_normal((2, 3, 4, 8)).astype(np.float32), rng)
    k, v = (rng.standard_normal((2, 3, 4, 8)).astype(np.float32) for _ in range(2))
    sdpa = nn.functional.scaled_dot_product_attention
    cases.append(Case("attention_causal", lambda a, b, c: sdpa(a, b, c, is_causal=True), [q, k, v]))
    cases.append(Case("attention_finite_causal", lambda a, b, c: sdpa(a, b, c, is_causal=True), [k, v, k]))
    mask = rng.random((4, 4)) < 0.5
    mask[0] = False  # a row with every key masked
    cases.append(Case("attention_masked", lambda a, b, c, m: sdpa(a, b, c, attn_mask=m), [k, v, k, mask]))
    mha = nn.MultiHeadAttention(8, 2)
    tokens = rng.standard_normal((2, 4, 8)).astype(np.float32)
    block = lambda m, t: (t + m(slope.layer_norm(t))).sum()  # noqa: E731
    cases.append(_leaves_case("multihead_attention_grad", slope.grad(block), mha, [tokens]))
    ffn = nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8), nn.RMSNorm(8), nn.SiLU())
    cases.append(Case("feed_forward_constants", lambda t: ffn(t) + mha(t), [_with_specials(tokens, rng)]))
    cases.append(Case("feed_forward_finite_constants", lambda t: ffn(t) + mha(t), [tokens]))
    double = nn.Sequential(nn.Linear(5, 7, dtype=slope.float64), nn.Tanh(), nn.Linear(7, 3, dtype=slope.float64))
    cases.append(Case("mlp_float64_constants", double, [_with_specials(x.astype(np.float64), rng)]))
    # patterns onnxruntime's optimizers rewrite: post-norm residual blocks (SkipLayerNormFusion), scaled products
    # (MatMulScaleFusion), convolutions with constant scales and batch norms (ConvMulFusion, ConvAddFusion, NCHWc),
    # a hand-written GELU (GeluFusion)
    norm = nn.LayerNorm(8)
    cases.append(Case("post_norm_block", lambda t: norm(t + mha(t)), [tokens]))
    cases.append(Case("post_norm_block_specials", lambda t: norm(t + mha(t)), [_with_specials(tokens, rng)]))
    both = lambda a, b: (a * 0.3) @ (b * 0.7).transpose(-1, -2)  # noqa: E731
    cases.append(Case("matmul_scaled_operands", both, [_with_specials(tokens, rng), tokens]))
    cases.append(Case("matmul_divided", lambda a, b: (a @ b.transpose(-1, -2)) / 3.0, [tokens * 1e37, tokens]))
    weight = slope.tensor(rng.standard_normal((4, 3, 3, 3)).astype(np.float32))
    conv, batch_norm = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4).eval()
    batch_norm.running_mean = slope.tensor(rng.standard_normal(4).astype(np.float32))
    batch_norm.running_var = slope.tensor(rng.random(4).astype(np.float32) + 0.5)
    maps = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    cases.append(Case("conv_scaled_constants", lambda a: slope.conv(a, weight) * 0.3 + 0.1, [maps], CONV_RTOL))
    cases.append(Case("conv_batch_norm_constants", lambda a: batch_norm(conv(a)).relu(), [maps], CONV_RTOL))
    gelu = lambda a: a * 0.5 * (1.0 + (a / 1.4142135381698608).erf())  # noqa: E731
    cases.append(Case("gelu_formula", gelu, [_with_specials(tokens, rng)]))
    return cases


# ----------------------------------------------------------------------------------------------- running artifacts

sys.path.insert(0, str(TESTS / "standalone"))
import run_artifact  # noqa: E402 - tests/standalone: imports no Slope

RUN_ARTIFACT = TESTS / "standalone" / "run_artifact.py"


def check_runs_without_slope(folder: Path) -> None:
    """Export a gradient program, run it in a process where Slope cannot be imported: Slope's numbers, bit for bit."""
    case = composite_case("grad_elementwise")
    lowered, expected = slope_run(case)
    files = lowered.export(folder / "model")
    outputs, imported = without_slope(files, case.inputs, folder)
    assert imported == "[]"
    assert [same_bits(got, want) for got, want in zip(outputs, expected)] == [None] * len(expected)


def without_slope(files: list, inputs: list, folder: Path, level: str | None = None) -> tuple[list, str]:
    """The model's outputs computed by run_artifact.py in a Python process where Slope cannot be imported, and the
    Slope modules it imported (none)."""
    import subprocess

    np.savez(folder / "inputs.npz", **run_artifact.pack(inputs))
    command = [sys.executable, str(RUN_ARTIFACT), str(files[-1]), str(folder / "inputs.npz"), str(folder / "out.npz")]
    result = subprocess.run(command + ([level] if level else []), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return run_artifact.unpack(np.load(folder / "out.npz")), result.stdout.strip()


def examples(ci: int) -> Any:
    """Hypothesis settings for the table tests: `ci` derandomized examples per entry, or SLOPE_EXPORT_EXAMPLES
    (a deeper hunt: `SLOPE_EXPORT_EXAMPLES=50 pytest packages/slope-onnx/tests/test_export_differential.py`)."""
    import os

    from hypothesis import HealthCheck, Phase, settings

    count = int(os.environ.get("SLOPE_EXPORT_EXAMPLES", ci))
    return settings(max_examples=count, derandomize=True, deadline=None, database=None, phases=(Phase.generate,),
                    suppress_health_check=list(HealthCheck))  # fmt: skip


def table_test(name: str, data: Any, runners: dict[str, Callable], dtypes: int = 2) -> None:
    """Export one drawn example of a table entry (float32 and another dtype) and compare every runner with Slope."""
    import tempfile

    from differential.table import ENTRIES

    with tempfile.TemporaryDirectory() as folder:
        problems = [
            p for case in table_examples(data, ENTRIES[name], dtypes) for p in check(case, runners, Path(folder))
        ]
    assert not problems, "\n".join(problems)


def composite_case(label: str) -> Case:
    """One of composite_cases() by label (built once)."""
    return _composites()[label]


def _composites() -> dict[str, Case]:
    global _BUILT
    if _BUILT is None:  # (built eagerly on NumPy where installed: on iree every eager step compiles a module)
        with slope.use_backend("numpy" if "numpy" in slope.plugins.backends else slope.get_backend().name):
            _BUILT = {case.label: case for case in composite_cases()}
    return _BUILT


_BUILT: dict | None = None
COMPOSITES = [
    "mnist_mlp_predict", "mnist_mlp_predict_constants", "mnist_mlp_train_step", "mnist_cnn_predict",
    "mnist_cnn_predict_constants", "mnist_cnn_train_step", "grad_elementwise", "grad_maximum_where", "grad_softmax",
    "hessian_diag", "vmap_matvec", "vmap_grad", "attention_causal", "attention_finite_causal", "attention_masked",
    "multihead_attention_grad", "feed_forward_constants", "feed_forward_finite_constants", "mlp_float64_constants",
    "post_norm_block", "post_norm_block_specials", "matmul_scaled_operands", "matmul_divided", "conv_scaled_constants",
    "conv_batch_norm_constants", "gelu_formula",
]  # fmt: skip
