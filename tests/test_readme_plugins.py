"""The README's "Writing a plugin" guide is kept true: its Python snippets run (in order, in one fresh process, on
every installed backend), and its shell command runs slope.testing's matrix on examples/plugins/tiny_backend.py."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
GUIDE = README[README.index("## Writing a plugin") : README.index("## Repository")]


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", GUIDE, flags=re.DOTALL)


def run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("SLOPE_BACKEND", "SLOPE_DEVICE", "LOG_JIT")}
    environment.update(env)
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=environment, timeout=600)


def test_the_guides_python_snippets_run():
    snippets = blocks("python")
    assert len(snippets) >= 4, "the guide lost its snippets"
    result = run([sys.executable, "-W", "error::UserWarning", "-c", "\n".join(snippets)], SLOPE_STRICT_PLUGINS="1")
    assert result.returncode == 0, result.stderr


def test_the_guides_pytest_command_runs_the_matrix_on_the_tiny_backend():
    (command,) = [line for block in blocks("sh") for line in block.splitlines() if " pytest " in f" {line}"]
    variables, words = [], shlex.split(command)
    while "=" in words[0]:
        variables.append(words.pop(0))
    assert words[0] == "pytest" and "--slope-backend=tiny" in words
    # (sort and argsort: their bool rows cast to int8, which the tiny backend lacks)
    extra = [
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:xdist",
        "--slope-functions=add,exp,tanh,softmax,matmul,sort,argsort",
    ]
    env = dict(variable.split("=", 1) for variable in variables)
    env["PYTHONPATH"] = str(ROOT / env["PYTHONPATH"])
    result = run([sys.executable, "-m", *words, *extra], **env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert re.search(r"\d{2,} passed", summary) and "failed" not in summary, summary
