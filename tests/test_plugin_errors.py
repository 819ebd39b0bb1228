"""Deliberately broken third-party plugins (issue 12, points 1-8), each installed through entry-point metadata.

For each: `import slope` works, a SlopePluginWarning names the plugin, its distribution and the problem, the other
backends and operators still compute the right numbers, and SLOPE_STRICT_PLUGINS=1 (or `python -W error`) makes it an
error. A translation that returns the wrong shape or dtype is an error naming the operator, backend and plugin.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_plugins import TOY_PLUGIN, install, run_python

HEADER = """
import numpy as np
import slope
from slope.plugins import hookimpl


class Double(slope.Operator):
    name = "double_it"

    def infer(self, x):
        return x

    def procedure(self, x):
        return x * 2.0


class Tiny(slope.Backend):
    name = "tiny_bad"
    dtypes = frozenset({slope.float32})

    def compile(self, program, device):
        raise NotImplementedError

    def from_numpy(self, array, device):
        return array

    def to_numpy(self, buffer):
        return buffer

"""

# case -> (the plugin's hooks, a phrase the warning must contain)
CASES = {
    # 1: a clash, a hook that raises, a hook of the wrong type, a bad slope_translations return
    "clash": (
        "@hookimpl\ndef slope_operators():\n    return [Double('exp')]",
        "'exp' is defined by plugin 'slope-core.operators' first",
    ),
    "clash_nn": (
        "@hookimpl\ndef slope_procedures():\n    return {'softmax': abs}",
        "'softmax' is defined by plugin 'nn' first",
    ),
    "raises": (
        "@hookimpl\ndef slope_procedures():\n    return {}['missing']",
        "slope_procedures hook failed: KeyError",
    ),
    "wrong_type": ("@hookimpl\ndef slope_operators():\n    return 'double_it'", "must return a list, got str"),
    "wrong_items": ("@hookimpl\ndef slope_operators():\n    return ['double_it']", "must be a slope.Operator instance"),
    "bad_translations": (
        "@hookimpl\ndef slope_translations(backend):\n    return ['exp']",
        "slope_translations hook failed for backend",
    ),
    "translations_raise": (
        "@hookimpl\ndef slope_translations(backend):\n    return {'exp': backend.no_such_thing}",
        "has no attribute 'no_such_thing'",
    ),
    # 2: an entry point named like Slope's NumPy backend
    "numpy": (
        "@hookimpl\ndef slope_procedures():\n    return {'plus_one': lambda x: x + 1.0}",
        "is taken by slope-numpy",
    ),
    # 4: registrations Slope cannot use
    "not_callable": ("@hookimpl\ndef slope_procedures():\n    return {'seven': 7}", "'seven' is not callable"),
    "not_identifier": ("@hookimpl\ndef slope_procedures():\n    return {'my-fn': abs}", "not a Python identifier"),
    "empty_name": ("@hookimpl\ndef slope_procedures():\n    return {'': abs}", "not a Python identifier"),
    "shadows_grad": ("@hookimpl\ndef slope_procedures():\n    return {'grad': abs}", "shadow Slope's own `slope.grad`"),
    "shadows_numpy": ("@hookimpl\ndef slope_procedures():\n    return {'numpy': abs}", "`Tensor.numpy`"),
    "backend_instance": ("@hookimpl\ndef slope_backends():\n    return [Tiny()]", "the class, not an instance"),
    "operator_class": ("@hookimpl\ndef slope_operators():\n    return [Double]", "(not a class)"),
    "no_compile": (
        "class NoCompile(slope.Backend):\n    name = 'no_compile'\n    dtypes = frozenset({slope.float32})\n\n\n"
        "@hookimpl\ndef slope_backends():\n    return [NoCompile]",
        "its own compile, from_numpy, to_numpy",
    ),
    "no_dtypes": (
        "class NoDtypes(Tiny):\n    name = 'no_dtypes'\n    dtypes = frozenset()\n\n\n"
        "@hookimpl\ndef slope_backends():\n    return [NoDtypes]",
        "'no_dtypes' declares no dtypes",
    ),
    # 5: an operator with neither `infer` nor a procedure
    "no_infer": (
        "class Bare(slope.Operator):\n    name = 'bare'\n\n\n@hookimpl\ndef slope_operators():\n    return [Bare()]",
        "defines neither `infer` nor a `procedure`",
    ),
    # 6: a hook name no spec has (it was accepted and contributed nothing, silently; pytest refuses these)
    "misspelled_hook": (
        "@hookimpl\ndef slope_procedure():\n    return {'plus_two': lambda x: x + 2.0}",
        "unknown hook 'slope_procedure'",
    ),
    # 7: a plugin that fails on import (listed once by `slope info`)
    "import_error": ("raise ImportError('needs a library that is not installed')", "ImportError: needs a library"),
}

# run after `import slope`: the numbers every backend must still give, as JSON on the last line
CHECK = """
import json, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import slope

    results = {}
    for name in ("numpy", "onnxruntime"):
        with slope.use_backend(name):
            x = slope.tensor([0.5, -1.0, 2.0])
            grad = slope.grad(lambda x: (x.exp() * x).sum())(x)
            results[name] = grad.tolist() + slope.jit(lambda x: x.softmax(-1))(x).tolist()
messages = [str(w.message) for w in caught if issubclass(w.category, slope.plugins.SlopePluginWarning)]
print(json.dumps({"warnings": messages, "results": results, "backends": sorted(slope.plugins.backends)}))
"""

# the same, without catching warnings: `python -W error` and SLOPE_STRICT_PLUGINS=1 make a plugin's mistake an error
STRICT_CHECK = "import slope\nfor name in ('numpy', 'onnxruntime'):\n    slope.get_backend(name)\n"


def expected_results() -> list[float]:
    x = np.array([0.5, -1.0, 2.0])
    softmax = np.exp(x) / np.exp(x).sum()
    return list(np.exp(x) * (1 + x)) + list(softmax)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    (tmp_path / "site").mkdir()
    return tmp_path / "site"


def install_case(site: Path, case: str) -> str:
    hooks, _ = CASES[case]
    source = hooks if case == "import_error" else HEADER + "\n" + hooks + "\n"
    entry_point = case if case == "numpy" else f"bad-{case}"
    install(
        site, f"slope-bad-{case.replace('_', '-')}", f"slope_bad_{case}", {entry_point: f"slope_bad_{case}"}, source
    )
    return entry_point


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_broken_plugin_is_a_warning_and_everything_else_works(site, case):
    plugin = install_case(site, case)
    distribution = f"slope-bad-{case.replace('_', '-')} 0.1"
    result = run_python(site, "-c", CHECK)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    ours = [message for message in report["warnings"] if distribution in message]
    assert len(ours) == (2 if "translations" in case else 1), report["warnings"]  # (translations: per backend)
    named = "plugin 'slope-bad-numpy:numpy'" if case == "numpy" else f"plugin {plugin!r}"
    assert named in ours[0] and CASES[case][1] in ours[0], ours[0]
    assert "SLOPE_DISABLE_PLUGINS=" in ours[0] and "pip uninstall slope-bad-" in ours[0], ours[0]
    assert {"numpy", "onnxruntime"} <= set(report["backends"])
    for backend, values in report["results"].items():
        np.testing.assert_allclose(values, expected_results(), rtol=1e-5, err_msg=backend)

    strict = run_python(site, "-c", STRICT_CHECK, extra_env={"SLOPE_STRICT_PLUGINS": "1"})
    assert strict.returncode != 0, strict.stdout
    last = strict.stderr.strip().splitlines()[-1]
    assert "SlopePluginError" in last and distribution in last and CASES[case][1] in last, strict.stderr
    if case in ("clash", "bad_translations", "import_error"):
        as_error = run_python(site, "-W", "error", "-c", STRICT_CHECK)
        assert as_error.returncode != 0 and "SlopePluginWarning" in as_error.stderr


def test_a_plugin_that_reuses_an_entry_point_name_drops_nothing(site):
    install_case(site, "numpy")
    code = "import slope; print(sorted(slope.plugins.backends), slope.plus_one(slope.tensor([1.0])).tolist())"
    result = run_python(site, "-W", "ignore", "-c", code)
    assert result.returncode == 0, result.stderr
    assert "'numpy'" in result.stdout and "[2.0]" in result.stdout


def test_plugins_can_be_disabled_or_chosen(site):
    install(site, "slope-toy", "slope_toy", {"toy": "slope_toy"}, TOY_PLUGIN / "slope_toy")
    install_case(site, "import_error")
    code = "import slope; print(sorted(slope.plugins.plugin_versions()), sorted(slope.plugins.backends))"
    result = run_python(site, "-c", code, extra_env={"SLOPE_DISABLE_PLUGINS": "bad-import_error, toy"})
    assert result.returncode == 0 and not result.stderr, result.stderr
    assert "toy" not in result.stdout and "bad-import_error" not in result.stdout
    only = {"SLOPE_DISABLE_PLUGIN_AUTOLOAD": "1", "SLOPE_PLUGINS": "numpy,slope-toy"}
    result = run_python(site, "-c", code, extra_env=only)
    assert result.returncode == 0 and not result.stderr, result.stderr
    plugins, backends = result.stdout.strip().split("] [")
    assert "'toy'" in plugins and "'numpy'" in plugins and "onnxruntime" not in plugins and "nn" not in plugins
    assert backends.rstrip("]") == "'numpy', 'toy'"


def test_an_operator_with_only_a_procedure_derives_infer(site):
    source = HEADER + "\nclass Half(slope.Operator):\n    name = 'half_it'\n\n    def procedure(self, x):\n"
    source += "        return x * 0.5\n\n\n@hookimpl\ndef slope_operators():\n    return [Half()]\n"
    install(site, "slope-half", "slope_half", {"half": "slope_half"}, source)
    code = (
        "import slope\nx = slope.tensor([[2.0, 4.0]])\n"
        "print([slope.half_it(x).tolist(), slope.grad(lambda x: slope.half_it(x).sum())(x).tolist(),"
        " list(slope.jit(slope.half_it)(x).shape), slope.vmap(slope.half_it)(x).tolist()])"
    )
    result = run_python(site, "-W", "error", "-c", code)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [[[1.0, 2.0]], [[0.5, 0.5]], [1, 2], [[1.0, 2.0]]]


WRONG_SHAPE = (
    HEADER
    + """
@hookimpl
def slope_operators():
    return [Double()]


@hookimpl
def slope_translations(backend):
    if backend.name == "numpy":  # a sum where an elementwise result is due: a 0-d output
        return {"double_it": lambda inputs, params, out: f"np.sum({inputs[0]})"}
    if backend.name == "onnxruntime":  # float64 where float32 is due
        return {"double_it": lambda graph, inputs, instruction: graph.cast(inputs[0], slope.float64)}
"""
)


@pytest.mark.parametrize("backend", ["numpy", "onnxruntime"])
@pytest.mark.parametrize("how", ["eager", "jit"])
def test_a_wrong_shaped_translation_is_an_error_not_a_result(site, backend, how):
    install(site, "slope-wrong-shape", "slope_wrong_shape", {"wrong-shape": "slope_wrong_shape"}, WRONG_SHAPE)
    call = "slope.double_it(x)" if how == "eager" else "slope.jit(lambda x: slope.double_it(x) + x)(x)"
    code = f"import slope\nslope.set_backend({backend!r})\nx = slope.tensor([1.0, 2.0, 3.0])\nprint({call})"
    result = run_python(site, "-c", code)
    assert result.returncode != 0, result.stdout
    last = result.stderr.strip().splitlines()[-1]
    assert "SlopeBackendError: slope.double_it:" in last, result.stderr
    assert f"backend {backend!r}" in last and "plugin 'wrong-shape'" in last, last
    if backend == "numpy":  # (onnxruntime refuses the graph: its output's declared type is infer's)
        assert "returns ['float32[]'] where the operator's `infer` gives ['float32[3]']" in last, last
    else:
        assert "fails on inputs [[3, f32]]" in last and "does not match expected type (tensor(double))" in last


def test_a_plugin_translation_is_checked_once_when_compiled_never_on_an_eager_cache_hit(monkeypatch):
    import slope
    import slope.backend as backend_module

    class Triple(slope.Operator):
        name = "triple_checked"

        def infer(self, x):
            return x

        def procedure(self, x):
            return x * 3.0

    class Plugin:
        @slope.plugins.hookimpl
        def slope_operators(self):
            return [Triple()]

        @slope.plugins.hookimpl
        def slope_translations(self, backend):
            return (
                {"triple_checked": lambda inputs, params, out: f"{inputs[0]} * 3"} if backend.name == "numpy" else None
            )

    checks, probes, real = [], [], backend_module.check_translations
    monkeypatch.setattr(backend_module, "check_translations", lambda *args: checks.append(args[0]) or real(*args))
    plugin = Plugin()
    slope.plugins.register(plugin, "triple-plugin")
    try:
        with slope.use_backend("numpy"):
            backend = slope.get_backend()
            assert backend.translation_plugins["triple_checked"] == "triple-plugin"
            compile_ = backend.compile
            monkeypatch.setattr(
                backend, "compile", lambda program, device: probes.append(program) or compile_(program, device)
            )
            x = slope.tensor([1.0, 2.0])
            for _ in range(3):  # the first call compiles (and probes the translation once); the others hit the cache
                assert slope.triple_checked(x).tolist() == [3.0, 6.0]
            assert len(checks) == 1 and len(probes) == 2  # the probe and the program itself
            assert slope.jit(lambda x: slope.triple_checked(x) + 1.0)(x).tolist() == [4.0, 7.0]
            assert len(checks) == 2 and len(probes) == 3  # the same instruction again: not probed again
            backend_module._checked.clear()
            monkeypatch.setattr(type(backend), "checks_translations", True)  # a backend whose compile checks them
            assert slope.jit(lambda x: slope.triple_checked(x) * 2.0)(x).tolist() == [6.0, 12.0]
            assert len(checks) == 3 and len(probes) == 4  # the program alone
    finally:
        slope.plugins.unregister(plugin)


def test_slope_info_reports_a_failed_plugin_once_and_every_function_with_v(site):
    install_case(site, "import_error")
    text = run_python(site, "-W", "ignore", "-m", "slope", "info", "-v")
    assert text.returncode == 0, text.stderr
    assert text.stdout.count("bad-import_error") == 1, text.stdout
    assert "  exp (plugin slope-core.operators)" in text.stdout and "  softmax (plugin nn)" in text.stdout
    version = run_python(site, "-m", "slope", "--version")
    assert version.returncode == 0 and version.stdout.startswith("slope 0.")


def test_slope_info_as_json(site):
    install_case(site, "import_error")
    data = json.loads(run_python(site, "-W", "ignore", "-m", "slope", "info", "--json").stdout)
    assert data["plugins"]["bad-import_error"]["version"] is None
    assert data["backends"]["numpy"]["plugin"] == "numpy" and "exp" in data["backends"]["numpy"]["native"]
    assert data["operators"]["erf"] == "nn"


def test_slope_info_fails_without_a_usable_backend(site):
    result = run_python(site, "-m", "slope", "info", extra_env={"SLOPE_DISABLE_PLUGINS": "numpy,onnxruntime,iree"})
    assert result.returncode == 1
    assert "backends:\n  no default backend: SlopeBackendError: slope: no backend is installed" in result.stdout


def test_slope_info_survives_a_failing_slope_commands_hook(site):
    # the hook ran unguarded: one plugin's broken subcommand made `slope info` (and every subcommand) crash
    source = "from slope.plugins import hookimpl\n\n@hookimpl\ndef slope_commands(subparsers):\n    raise RuntimeError('no')\n"
    install(site, "slope-bad-commands", "slope_bad_commands", {"bad-commands": "slope_bad_commands"}, source)
    result = run_python(site, "-m", "slope", "info")
    assert result.returncode == 0, result.stderr
    assert "numpy" in result.stdout and "bad-commands" in result.stderr
    assert "its slope_commands hook failed: RuntimeError: no" in result.stderr


def test_a_plugin_adds_a_slope_subcommand(site):
    # the hook's working path for a plugin of its own (slope-iree's `slope cache` is the other user)
    source = """from slope.plugins import hookimpl


@hookimpl
def slope_commands(subparsers):
    parser = subparsers.add_parser("hello", help="say hello")
    parser.add_argument("name")
    parser.set_defaults(run=lambda args: print(f"hello {args.name}") or 3)
"""
    install(site, "slope-hello", "slope_hello", {"hello": "slope_hello"}, source)
    result = run_python(site, "-m", "slope", "hello", "there")
    assert result.returncode == 3, result.stderr
    assert result.stdout.strip() == "hello there"
    assert "hello" in run_python(site, "-m", "slope", "--help").stdout
