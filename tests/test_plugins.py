"""The plugin host: entry-point discovery of a throwaway third-party plugin, `slope info`, broken and clashing
plugins, and in-process registration of procedures and operators.

Third-party plugins are "installed" without pip: a temporary directory holds the package and a hand-written
`<name>-0.1.dist-info/` (METADATA + entry_points.txt, group `slope`); a subprocess gets it on PYTHONPATH, where
importlib.metadata discovers it like any installed distribution.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import slope
from slope.plugins import SlopePluginError, hookimpl
from slope_testing import backends_under_test

TOY_PLUGIN = Path(__file__).parent / "toy_plugin"
BACKENDS = backends_under_test()


def install(site: Path, distribution: str, package: str, entry_points: dict[str, str], source: Path | str) -> None:
    """Put a package and its dist-info into `site`: what pip would leave behind, without pip."""
    target = site / package
    if isinstance(source, Path):
        shutil.copytree(source, target)
    else:
        target.mkdir(parents=True)
        (target / "__init__.py").write_text(source)
    dist_info = site / f"{distribution.replace('-', '_')}-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 0.1\n")
    lines = ["[slope]", *(f"{name} = {module}" for name, module in entry_points.items()), ""]
    (dist_info / "entry_points.txt").write_text("\n".join(lines))


def run_python(site: Path, *args: str, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the venv's Python with `site` on PYTHONPATH (and no backend forced by the environment)."""
    env = {k: v for k, v in os.environ.items() if k not in ("SLOPE_BACKEND", "SLOPE_DEVICE", "LOG_JIT")}
    env["PYTHONPATH"] = str(site)
    env.update(extra_env or {})
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=120)


def info_blocks(text: str) -> dict[str, list[str]]:
    """`slope info` backend sections: backend name -> its lines (header and coverage)."""
    blocks: dict[str, list[str]] = {}
    current = None
    in_backends = False
    for line in text.splitlines():
        if line == "backends:":
            in_backends = True
            continue
        if in_backends and line.startswith("  ") and not line.startswith("    "):
            current = line.strip().split(":")[0].split(" ")[0]
            blocks[current] = [line.strip()]
        elif in_backends and line.startswith("    ") and current:
            blocks[current].append(line.strip())
        elif not line.strip():
            current = None
    return blocks


def coverage(block: list[str], kind: str) -> set[str]:
    for line in block:
        if line.startswith(kind):
            return set(line.split(":", 1)[1].split())
    return set()


@pytest.fixture
def site(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    return site


# ----------------------------------------------------------------------------------------------- entry points


def test_third_party_plugin_is_discovered_selected_and_differentiable(site):
    install(site, "slope-toy", "slope_toy", {"toy": "slope_toy"}, TOY_PLUGIN / "slope_toy")
    result = run_python(site, str(TOY_PLUGIN / "check_toy.py"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "toy plugin ok" in result.stdout
    assert not [line for line in result.stderr.splitlines() if "Warning" in line and "toy" in line], result.stderr


def test_third_party_backend_from_the_environment(site):
    install(site, "slope-toy", "slope_toy", {"toy": "slope_toy"}, TOY_PLUGIN / "slope_toy")
    code = "import slope; x = slope.tensor([1.0, 2.0]); print(slope.get_backend().name, (x * x).backend.name)"
    result = run_python(site, "-c", code, extra_env={"SLOPE_BACKEND": "toy"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["toy", "toy"]


def test_slope_info_lists_the_plugin_backend_devices_and_coverage(site):
    install(site, "slope-toy", "slope_toy", {"toy": "slope_toy"}, TOY_PLUGIN / "slope_toy")
    result = run_python(site, "-m", "slope", "info")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "  toy 0.1" in text.splitlines(), text
    blocks = info_blocks(text)
    assert set(BACKENDS) | {"toy"} <= set(blocks), text
    assert "devices cpu" in blocks["toy"][0]
    toy_native, toy_procedure = coverage(blocks["toy"], "native"), coverage(blocks["toy"], "by procedure")
    assert "smooth_abs" in toy_native and "matmul" in toy_native
    assert "tanh" in toy_procedure and "tanh" not in toy_native
    for name in BACKENDS:  # the operator reaches every other backend through its procedure
        assert "smooth_abs" in coverage(blocks[name], "by procedure"), blocks[name]
        assert "devices" in blocks[name][0]


def test_plugin_that_fails_to_import_is_reported_and_slope_keeps_working(site):
    install(site, "slope-broken", "slope_broken", {"broken": "slope_broken"}, TOY_PLUGIN / "slope_broken")
    install(site, "slope-toy", "slope_toy", {"toy": "slope_toy"}, TOY_PLUGIN / "slope_toy")
    code = (
        "import slope\n"
        "print(sorted(slope.plugins.failed))\n"
        "slope.set_backend('toy')\n"
        "print(slope.grad(lambda x: slope.smooth_abs(x).sum())(slope.tensor([3.0])).item() > 0.99)\n"
    )
    result = run_python(site, "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["['broken']", "True"]
    warning = [line for line in result.stderr.splitlines() if "Warning" in line]
    assert warning, result.stderr
    assert "plugin 'broken'" in warning[0] and "RuntimeError" in warning[0] and "on purpose" in warning[0]
    info = run_python(site, "-W", "ignore", "-m", "slope", "info")
    assert info.returncode == 0, info.stderr
    assert "broken FAILED: RuntimeError: slope-broken fails on import on purpose" in info.stdout


def test_a_third_party_operator_with_its_own_rows_passes_the_repository_matrix(site):
    install(site, "slope-toy", "slope_toy", {"toy": "slope_toy"}, TOY_PLUGIN / "slope_toy")
    tests = Path(__file__).parent
    args = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", str(tests / "test_conformance.py")]
    result = run_python(site, *args, "-k", "smooth_abs or every_registered_function_has_a_row")
    assert result.returncode == 0, result.stdout[-3000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert re.search(r"\d{2,} passed", summary) and "failed" not in summary, summary
    assert "conformance matrix on toy:" in result.stdout, result.stdout[-3000:]


def test_two_plugins_defining_one_operator_name_is_a_warning_naming_both(site):
    """The second definition is skipped with a warning (issue 12); SLOPE_STRICT_PLUGINS=1 makes it the error it was."""
    plugin = (
        "import slope\n"
        "from slope.plugins import hookimpl\n\n\n"
        "class Twin(slope.Operator):\n"
        "    name = 'twin_op'\n\n"
        "    def infer(self, x):\n"
        "        return x\n\n\n"
        "@hookimpl\n"
        "def slope_operators():\n"
        "    return [Twin()]\n"
    )
    install(site, "slope-twin-a", "slope_twin_a", {"twin-a": "slope_twin_a"}, plugin)
    install(site, "slope-twin-b", "slope_twin_b", {"twin-b": "slope_twin_b"}, plugin)
    result = run_python(site, "-c", "import slope; print(slope.plugins.owners['function', 'twin_op'])")
    assert result.returncode == 0 and result.stdout.strip() in ("twin-a", "twin-b"), result.stderr
    assert "SlopePluginWarning" in result.stderr and "'twin_op'" in result.stderr, result.stderr
    assert "'twin-a'" in result.stderr and "'twin-b'" in result.stderr, result.stderr
    result = run_python(site, "-c", "import slope", extra_env={"SLOPE_STRICT_PLUGINS": "1"})
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert "SlopePluginError" in last and "'twin_op'" in last, result.stderr
    assert "'twin-a'" in last and "'twin-b'" in last, last


# ----------------------------------------------------------------------------------------------- in process


class Softsign:
    """An in-process plugin with one procedure."""

    @hookimpl
    def slope_procedures(self):
        def softsign_for_tests(x, scale=1.0):
            """x / (scale + |x|)."""
            return x / (scale + x.abs())

        return {"softsign_for_tests": softsign_for_tests}


@pytest.fixture(params=BACKENDS)
def on_backend(request):
    with slope.use_backend(request.param) as backend:
        yield backend


def test_register_procedure_in_process(on_backend):
    plugin = Softsign()
    slope.plugins.register(plugin, "softsign-plugin")
    try:
        assert slope.plugins.plugin_versions()["softsign-plugin"] == "in-process"
        x = slope.tensor([-2.0, 0.0, 3.0])
        expected = np.array([-2.0, 0.0, 3.0]) / (1.0 + np.abs([-2.0, 0.0, 3.0]))
        np.testing.assert_allclose(slope.softsign_for_tests(x).numpy(), expected, rtol=1e-6)
        np.testing.assert_allclose(x.softsign_for_tests().numpy(), expected, rtol=1e-6)
        np.testing.assert_allclose(x.softsign_for_tests(scale=2.0).numpy(), x.numpy() / (2.0 + np.abs(x.numpy())))
        grad = slope.grad(lambda x: x.softsign_for_tests().sum())(x)
        np.testing.assert_allclose(grad.numpy(), 1.0 / (1.0 + np.abs(x.numpy())) ** 2, rtol=1e-5)
        assert "softsign_for_tests" in dir(slope)
        assert slope.plugins.owners[("function", "softsign_for_tests")] == "softsign-plugin"
    finally:
        slope.plugins.unregister(plugin)
    assert not hasattr(slope, "softsign_for_tests")
    assert not hasattr(slope.Tensor, "softsign_for_tests")
    assert (slope.ones(2) * 3.0).tolist() == [3.0, 3.0]  # the registry is whole again


class Scale(slope.Operator):
    """`factor * x`: a linear operator with its own JVP, transpose and batching rules (no backend translates it)."""

    name = "scale_for_tests"

    def __call__(self, x, factor=2.0):
        return slope.bind(self, x, factor=float(factor))

    def infer(self, x, *, factor):
        if not x.dtype.is_float:
            raise self.dtype_error(f"expected a floating-point tensor, got {x.dtype.name} of shape {x.shape}")
        return x

    def jvp(self, primals, tangents, *, factor):
        return [scale(primals[0], factor)], [scale(tangents[0], factor)]

    def transpose(self, cotangents, x, *, factor):
        return [scale(cotangents[0], factor)]

    def vmap(self, axis_size, args, dims, *, factor):
        return [scale(args[0], factor)], dims

    def procedure(self, x, *, factor):
        return x * factor


scale = Scale()


class ScalePlugin:
    @hookimpl
    def slope_operators(self):
        return [scale]


def test_register_operator_in_process_works_under_every_transform(on_backend):
    plugin = ScalePlugin()
    slope.plugins.register(plugin, "scale-plugin")
    try:
        assert "scale_for_tests" in slope.plugins.operators
        x = slope.tensor([1.0, -2.0, 3.0])
        f = lambda x: (slope.scale_for_tests(x, 3.0) * x).sum()  # noqa: E731 - 3 x**2
        np.testing.assert_allclose(slope.grad(f)(x).numpy(), 6 * x.numpy(), rtol=1e-6)
        np.testing.assert_allclose(slope.jit(slope.grad(f))(x).numpy(), 6 * x.numpy(), rtol=1e-6)
        per_example = slope.vmap(slope.grad(lambda v: slope.scale_for_tests(v, 3.0) * v))(x)
        np.testing.assert_allclose(per_example.numpy(), 6 * x.numpy(), rtol=1e-6)
        _, vjp_fn = slope.vjp(lambda v: x.scale_for_tests(-1.0) * 0.0 + v.scale_for_tests(5.0), x)
        np.testing.assert_allclose(vjp_fn(slope.ones(3))[0].numpy(), [5.0, 5.0, 5.0])
        _, linear = slope.linearize(lambda v: slope.scale_for_tests(v, 4.0), x)
        np.testing.assert_allclose(linear(slope.ones(3)).numpy(), [4.0, 4.0, 4.0])
        program = slope.jit(lambda v: slope.scale_for_tests(v, 4.0)).lower(x).program
        assert "slope.scale_for_tests(x0, factor=4.0)" in str(program)
        with pytest.raises(slope.DTypeError, match=r"slope\.scale_for_tests: .*int64"):
            slope.scale_for_tests(slope.tensor([1, 2]))
    finally:
        slope.plugins.unregister(plugin)
    assert "scale_for_tests" not in slope.plugins.operators


def test_in_process_plugin_cannot_take_a_core_name():
    class Impostor:
        @hookimpl
        def slope_procedures(self):
            return {"exp": lambda x: x}

    with pytest.raises(SlopePluginError, match=r"'exp'.*slope-core\.operators.*impostor|'exp'.*impostor.*slope-core"):
        slope.plugins.register(Impostor(), "impostor")
    assert slope.exp is slope.plugins.operators["exp"]
    np.testing.assert_allclose(slope.tensor([0.0]).exp().numpy(), [1.0])


def test_in_process_plugin_with_a_misspelled_hook_is_refused():
    # a hookimpl named like no hook spec (slope_procedure) was registered and contributed nothing, silently
    class Misspelled:
        @hookimpl
        def slope_procedure(self):
            return {"plus_two": lambda x: x + 2.0}

    with pytest.raises(Exception, match="unknown hook 'slope_procedure'"):
        slope.plugins.register(Misspelled(), "misspelled")
    assert slope.plugins.manager.get_plugin("misspelled") is None and "plus_two" not in slope.plugins.procedures


def test_a_linear_operator_without_a_transpose_is_differentiated_through_its_procedure(on_backend):
    # linear_inputs gave it a JVP of itself, which reverse mode then could not transpose ("is not linear"): the README
    # says rules an operator does not define come from its procedure
    class ScaleBy(slope.Operator):  # linear in x, not in the scale
        name = "scale_by_for_tests"
        linear_inputs = (0,)

        def infer(self, x, scale):
            return x

        def procedure(self, x, scale):
            return x * scale

    class Plugin:
        @hookimpl
        def slope_operators(self):
            return [ScaleBy()]

    plugin = Plugin()
    slope.plugins.register(plugin, "scale-by-plugin")
    try:
        x, scale = slope.tensor([1.0, -2.0]), slope.tensor([3.0, 5.0])
        gx, gs = slope.grad(lambda x, s: (slope.scale_by_for_tests(x, s) ** 2).sum(), argnums=(0, 1))(x, scale)
        np.testing.assert_allclose(gx.numpy(), [18.0, -100.0])  # 2 x s^2
        np.testing.assert_allclose(gs.numpy(), [6.0, 40.0])  # 2 x^2 s
        np.testing.assert_allclose(slope.jit(slope.jacrev(lambda x: slope.scale_by_for_tests(x, scale)))(x).numpy(),
                                   np.diag([3.0, 5.0]))  # fmt: skip
    finally:
        slope.plugins.unregister(plugin)


def test_the_check_of_plugin_translations_is_bounded(on_backend):
    # it remembered every (operator, params, input shapes) it had checked, for ever: memory grew with each new shape
    from slope import backend as backend_module

    if (
        not getattr(slope.get_backend(), "translation_plugins", {}).get("relu")
        or slope.get_backend().checks_translations
    ):
        pytest.skip("this backend does not check slope-nn's relu translation")
    backend_module._checked.update((i,) for i in range(4096))
    slope.relu(slope.ones(7, 13, 3))  # a new shape: checked once more
    assert 1 <= len(backend_module._checked) <= 4096


class _BadRows:
    """A plugin whose conformance rows would replace Slope's own row for exp, and one whose hook fails."""

    def __init__(self, fails: bool):
        self.fails = fails

    @hookimpl
    def slope_conformance_rows(self):
        from slope_testing import Case, Data, Row

        if self.fails:
            raise ImportError("a missing dependency of the rows")
        return [Row("exp", [Case([Data()], lambda x: slope.exp(slope.tensor(x)).numpy())], (slope.float32,))]


def test_a_plugins_conformance_rows_cannot_replace_slopes_or_break_the_matrix():
    # a plugin's row for exp replaced Slope's (and then passed a wrong exp translation); a failing rows hook made the
    # whole matrix (every backend's collection) raise
    from slope_testing import matrix
    from slope_testing.table import ROWS

    plugins = [_BadRows(fails=False), _BadRows(fails=True)]
    for i, plugin in enumerate(plugins):
        slope.plugins.manager.register(plugin, f"bad-rows-{i}")  # (the hook is only read by the matrix)
    try:
        with pytest.warns(slope.plugins.SlopePluginWarning) as caught:
            table = matrix.rows()
        assert table["exp"] is ROWS["exp"]
        messages = " ".join(str(w.message) for w in caught)
        assert "bad-rows-0" in messages and "is not a Row, or replaces Slope's own row" in messages
        assert "bad-rows-1" in messages and "slope_conformance_rows hook failed: ImportError" in messages
        assert any(p.id == f"{BACKENDS[0]}:exp:eager:float32" for p in matrix.cells([BACKENDS[0]], ["exp"]))
    finally:
        for i, plugin in enumerate(plugins):
            slope.plugins.manager.unregister(plugin)
            slope.plugins.failed.pop(f"bad-rows-{i}", None)


class _SlightlyOff(Scale):
    """`2 x` whose derivative rules say 2 (1 + 2e-7): a float64 gradient a third-party backend could get this wrong."""

    name = "slightly_off_for_tests"

    def jvp(self, primals, tangents, *, factor):
        return [self(primals[0], factor)], [self(tangents[0], factor * (1 + 2e-7))]

    def transpose(self, cotangents, x, *, factor):
        return [self(cotangents[0], factor * (1 + 2e-7))]

    def vmap(self, axis_size, args, dims, *, factor):
        return [self(args[0], factor)], dims


class _SlightlyOffPlugin:
    @hookimpl
    def slope_operators(self):
        return [_SlightlyOff()]

    @hookimpl
    def slope_conformance_rows(self):
        from slope_testing import Case, Data, Row

        return [Row("slightly_off_for_tests", [Case([Data()], lambda x: 2.0 * x)], dtypes=(slope.float64,))]


def test_the_kit_catches_a_float64_derivative_wrong_in_the_seventh_digit():
    # the kit's float64 derivative tolerance was 1e-6: a gradient 2e-7 off (relative) passed every cell; every float64
    # cell of every backend passes at 1e-9, so 1e-8 is the tolerance now
    from slope_testing.matrix import run_cell

    plugin = _SlightlyOffPlugin()
    slope.plugins.register(plugin, "slightly-off")
    try:
        for transform in ("eager", "jit", "vmap"):
            run_cell(BACKENDS[0], "slightly_off_for_tests", transform, "float64")
        for transform in ("jvp", "grad"):
            with pytest.raises(AssertionError):
                run_cell(BACKENDS[0], "slightly_off_for_tests", transform, "float64")
    finally:
        slope.plugins.unregister(plugin)


def test_the_matrix_names_a_function_that_is_not_registered():
    # `--slope-functions=nosuchfn` (a typo, or a disabled plugin's operator) said it "is registered but has no
    # conformance row"
    from slope_testing.matrix import run_cell

    with pytest.raises(pytest.fail.Exception, match="slope.nosuchfn is not registered: a typo in --slope-functions"):
        run_cell("numpy", "nosuchfn", "eager", "float32")
