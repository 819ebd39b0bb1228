"""The examples run end to end in a short mode (subprocesses, as a user runs them from the README)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from nn_helpers import REPO, mnist_folder

EXAMPLES = REPO / "examples"
SIMPLE = sorted(path.name for path in (EXAMPLES / "simple").glob("*.py"))


def run_example(args: list[str], tmp_path: Path, timeout: int = 300) -> str:
    env = dict(os.environ)
    folder = mnist_folder()
    if folder is not None:
        env["MNIST_DIR"] = str(folder)
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.mark.parametrize("name", SIMPLE)
def test_simple_example(name, tmp_path):
    out = run_example([str(EXAMPLES / "simple" / name)], tmp_path)
    assert out.strip()
    if name == "linear_regression.py":
        losses = [float(line.split()[-1]) for line in out.splitlines() if line.startswith("step ")]
        assert len(losses) == 10 and all(b < a for a, b in zip(losses, losses[1:]))


needs_mnist = pytest.mark.skipif(mnist_folder() is None, reason="no MNIST folder (../shared/data/mnist or $MNIST_DIR)")


@needs_mnist
@pytest.mark.slow
def test_mnist_mlp_short(tmp_path):
    out = run_example([str(EXAMPLES / "nn" / "mnist_mlp.py"), "--epochs", "1", "--steps", "300", "--out", str(tmp_path)],
                      tmp_path)  # fmt: skip
    accuracy = float(out.split("test accuracy ")[1].split()[0])
    assert accuracy > 0.9, out
    assert (tmp_path / "mnist_mlp_loss.png").stat().st_size > 1000
    if "ONNX export skipped" not in out:
        assert "matches the trained model" in out and (tmp_path / "mnist_mlp.onnx").exists()


@needs_mnist
@pytest.mark.slow
def test_mnist_cnn_short(tmp_path):
    out = run_example([str(EXAMPLES / "nn" / "mnist_cnn.py"), "--epochs", "1", "--steps", "150", "--out", str(tmp_path)],
                      tmp_path)  # fmt: skip
    accuracy = float(out.split("test accuracy ")[1].split()[0])
    assert accuracy > 0.85, out
    assert (tmp_path / "mnist_cnn_loss.png").exists()


def test_missing_mnist_message(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("MNIST_DIR", "SLOPE_DATA")}
    env["MNIST_DIR"] = str(tmp_path / "nothing-here")
    script = "import slope.nn as nn; nn.datasets.mnist('train', download=False)"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode != 0 and str(tmp_path / "nothing-here") in result.stderr


def test_truncated_mnist_file_is_reported_like_a_missing_one(tmp_path):
    # a partly copied .gz file ended mnist_mlp.py with a bare EOFError traceback naming no file
    import gzip

    for split in ("train", "t10k"):
        for kind, header in (("images-idx3", b"\x00\x00\x08\x03"), ("labels-idx1", b"\x00\x00\x08\x01")):
            (tmp_path / f"{split}-{kind}-ubyte.gz").write_bytes(gzip.compress(header + bytes(100))[:-20])
    env = {k: v for k, v in os.environ.items() if k not in ("SLOPE_DATA_DIR", "SLOPE_DATA")}
    env["MNIST_DIR"] = str(tmp_path)
    args = [sys.executable, str(EXAMPLES / "nn" / "mnist_mlp.py"), "--epochs", "1", "--steps", "1", "--no-plot"]
    result = subprocess.run(args, capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "train-images-idx3-ubyte.gz is truncated or damaged" in result.stderr


def test_char_gpt_names_a_data_file_that_is_not_utf8_text(tmp_path):
    # a non-UTF-8 --data file raised UnicodeDecodeError without the file's name; a folder, IsADirectoryError
    binary = tmp_path / "binary.txt"
    binary.write_bytes(bytes(range(256)) * 8)
    script = str(EXAMPLES / "nn" / "char_gpt.py")
    for data, words in ((binary, "is not UTF-8 text"), (tmp_path, "is not a file")):
        args = [sys.executable, script, "--data", str(data), "--steps", "1"]
        result = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=120)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert f"char_gpt: {data} {words}" in result.stderr


@pytest.mark.parametrize(
    "flag, value, expected",
    [
        ("--steps", "0", "an integer of at least 1"),  # (a ZeroDivisionError in the epoch's timing)
        ("--epochs", "0", "an integer of at least 1"),
        ("--batch-size", "0", "an integer of at least 1"),  # (ZeroDivisionError)
        ("--lr", "-1", "a number of at least 0.0"),  # (gradient ascent; torch.optim.Adam refuses it)
        ("--seed", "-1", "an integer of at least 0"),  # (NumPy's default_rng raised after loading the data)
    ],
)
def test_mnist_examples_refuse_bad_flags_as_usage_errors(capsys, flag, value, expected):
    sys.path.insert(0, str(EXAMPLES / "nn"))
    from common import parser

    with pytest.raises(SystemExit) as exit_info:
        parser("MNIST", epochs=1, batch_size=64, lr=1e-3).parse_args([flag, value])
    assert exit_info.value.code == 2
    assert f"error: argument {flag}: expected {expected}, got '{value}'" in capsys.readouterr().err
    assert parser("MNIST", epochs=1, batch_size=64, lr=1e-3).parse_args(["--steps", "3", "--lr", "0"]).steps == 3
