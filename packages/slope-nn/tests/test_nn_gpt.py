"""examples/nn/char_gpt.py: a tiny GPT's next-token function exported to ONNX samples the same tokens in plain
onnxruntime as in Slope, its loss matches PyTorch, and the script trains and samples end to end in a short run."""

from __future__ import annotations

import math
import re
import sys

import numpy as np
import pytest
from nn_helpers import REPO

import slope

sys.path.insert(0, str(REPO / "examples" / "nn"))
import char_gpt  # noqa: E402 - after the path setup

TINY = {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 8, "dropout": 0.0}


def tiny_model(vocab: int = 11) -> char_gpt.GPT:
    return char_gpt.GPT(vocab, **TINY, key=slope.random.key(5)).eval()


def test_exported_next_token_samples_the_same_tokens_in_plain_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    if "onnxruntime" not in slope.plugins.backends:
        pytest.skip("the onnxruntime backend (slope-onnx) is not installed")
    model = tiny_model()
    prompt, count, key = [3, 1, 4], 20, slope.random.key(7)  # 20 tokens: the window (8) fills and slides
    with slope.use_backend("onnxruntime"):
        expected = char_gpt.generate(model, prompt, count, key, temperature=0.9, top_k=5)
    draws_path, step_path = char_gpt.export_next_token(model, tmp_path, count, temperature=0.9, top_k=5)
    draws_session = ort.InferenceSession(str(draws_path), providers=["CPUExecutionProvider"])
    (draws,) = draws_session.run(None, {draws_session.get_inputs()[0].name: key.numpy()})
    session = ort.InferenceSession(str(step_path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    window, length = char_gpt.start_window(prompt, TINY["block_size"])
    tokens = []
    for u in draws:
        token, window, length = session.run(None, dict(zip(names, [window, length, np.asarray(u)])))
        tokens.append(int(token))
    assert tokens == expected
    assert len(set(tokens)) > 1  # sampled, not one repeated argmax


def test_generation_respects_top_k_and_the_window():
    model = tiny_model()
    key = slope.random.key(3)
    greedy = char_gpt.generate(model, [1, 2], 12, key, temperature=1.0, top_k=1)
    # top-1 sampling is the argmax of the full forward pass over the last block_size ids (a fresh recompute)
    ids = [1, 2]
    for token in greedy:
        window = np.array([ids[-TINY["block_size"] :]])
        logits = model(slope.tensor(window)).numpy()[0, -1]
        assert token == int(np.argmax(logits))
        ids.append(token)


def test_generation_refuses_a_temperature_of_0_and_top_k_of_0():
    # dividing by 0 made the probabilities NaN and every sampled id 0 ('\n' in Shakespeare), where PyTorch raises
    model, key = tiny_model(), slope.random.key(3)
    for temperature, top_k in ((0.0, 5), (-1.0, None), (1.0, 0)):
        with pytest.raises(ValueError, match="temperature must be above 0 and top_k at least 1"):
            char_gpt.generate(model, [1, 2], 3, key, temperature=temperature, top_k=top_k)


def test_a_tiny_temperature_samples_the_greedy_token():
    """logits / 1e-39 overflowed float32: softmax of inf - inf was NaN, no id had a probability, and the sample was id
    0 (PyTorch's multinomial raises); the logits are shifted by their maximum first, so it tends to the argmax."""
    model = tiny_model()
    key = slope.random.key(3)
    greedy = char_gpt.generate(model, [1, 2], 6, key, temperature=1.0, top_k=1)
    for temperature in (1e-39, 1e-45):
        assert char_gpt.generate(model, [1, 2], 6, key, temperature=temperature, top_k=None) == greedy


def test_a_temperature_that_is_0_in_float32_is_refused():
    """1e-46 > 0 passed the check as a Python float, but traced in float32 it is 0: logits / 0 were NaN, no id passed
    and every sampled id was 0. It is refused with the smallest temperature allowed (that one samples greedily), as
    PyTorch's multinomial refuses the NaN probabilities; in float64 1e-50 is not 0 and samples greedily."""
    model, key = tiny_model(), slope.random.key(3)
    for temperature in (1e-46, 1e-50, 1e-300):
        with pytest.raises(ValueError, match=rf"temperature {temperature} is 0 in float32 .* at least 1.401e-45"):
            char_gpt.generate(model, [1, 2], 4, key, temperature=temperature, top_k=None)
    greedy = char_gpt.generate(model, [1, 2], 4, key, temperature=1.0, top_k=1)
    assert char_gpt.generate(model, [1, 2], 4, key, temperature=1.401e-45, top_k=None) == greedy
    wide = slope.tree.map(lambda t: t.astype(slope.float64) if isinstance(t, slope.Tensor) else t, model)
    assert char_gpt.generate(wide, [1, 2], 4, key, temperature=1e-50, top_k=None) == greedy


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_logits_are_an_error_not_id_0(bad):
    """A diverged model's NaN (or inf) logits gave NaN probabilities, no id passed and the sample was id 0 at every
    step; PyTorch's multinomial raises "probability tensor contains either inf, nan or element < 0"."""
    model, key = tiny_model(), slope.random.key(3)
    model.blocks[0].fc.weight = model.blocks[0].fc.weight.at[0, 0].set(bad)
    with pytest.raises(RuntimeError, match=r"generate: the next-id probabilities at step 1 of 5 contain NaN"):
        char_gpt.generate(model, [1, 2], 5, key, temperature=0.8, top_k=3)
    # a finite model's step is valid
    step = slope.jit(lambda w, n, u: char_gpt.next_token(tiny_model(), w, n, u, 0.8, 3))
    window, length = char_gpt.start_window([1, 2], TINY["block_size"])
    *_, valid = step(slope.tensor(window), slope.tensor(length), slope.tensor(np.float32(0.5)))
    assert bool(valid)


def test_an_empty_prompt_is_refused():
    # it conditioned on id 0 (the first character of the vocabulary), which the user never gave; nanoGPT fails too
    with pytest.raises(ValueError, match="char_gpt: the prompt is empty"):
        char_gpt.generate(tiny_model(), [], 3, slope.random.key(3))


@pytest.mark.parametrize(
    "flag, value, expected",
    [
        ("--steps", "0", "an integer of at least 1"),  # (ZeroDivisionError after training nothing)
        ("--steps", "-2", "an integer of at least 1"),  # (IndexError)
        ("--eval-every", "0", "an integer of at least 1"),
        ("--batch-size", "0", "an integer of at least 1"),
        ("--n-head", "0", "an integer of at least 1"),
        ("--n-head", "-2", "an integer of at least 1"),
        ("--n-layer", "-1", "an integer of at least 0"),
        ("--seed", "-1", "an integer of at least 0"),
        ("--eval-batches", "0", "an integer of at least 1"),  # (a NaN validation loss)
        ("--block-size", "0", "an integer of at least 1"),
        ("--n-embd", "0", "an integer of at least 1"),
        ("--lr", "-1", "a number of at least 0.0"),  # (gradient ascent; torch.optim.AdamW refuses it)
        ("--lr", "nan", "a number of at least 0.0"),
        ("--dropout", "1.5", "a number from 0.0 to 1.0"),
        ("--steps", "1.5", "an integer of at least 1"),
    ],
)
def test_bad_flags_are_argparse_usage_errors(tmp_path, capsys, flag, value, expected):
    data = tmp_path / "text.txt"
    data.write_text("abcd\n" * 1000, encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        char_gpt.main(["--data", str(data), "--out", str(tmp_path / "out"), "--steps", "1", flag, value])
    assert exit_info.value.code == 2  # (argparse's usage error)
    assert f"error: argument {flag}: expected {expected}, got '{value}'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_sequence_longer_than_the_block_is_a_clear_error():
    # it was "slope.add: shapes (1, 9, 16) and (8, 16) cannot be broadcast" (nanoGPT asserts)
    with pytest.raises(ValueError, match="GPT: cannot forward a sequence of 9 tokens, the block size is 8"):
        tiny_model()(slope.zeros((1, 9), dtype=slope.int64))


@pytest.mark.parametrize(
    "text, options, message",
    [
        ("abc" * 100, [], "must each be longer than --block-size 64"),  # (NumPy's "high <= 0" before)
        ("", [], "must each be longer than --block-size 64"),
        ("abcd" * 1000, ["--n-embd", "10", "--n-head", "4"], "--n-embd 10 must be a multiple of --n-head 4"),
        ("abcd" * 1000, [], "outside the vocabulary: ['\\n']"),  # (the default prompt "\n": found after training)
        ("abcd" * 1000, ["--prompt", "a", "--temperature", "0"], "expected --temperature above 0"),
        ("abcd" * 1000, ["--prompt", "a", "--top-k", "0"], "--top-k at least 1"),
        ("abcd" * 1000, ["--prompt", "a", "--chars", "-3"], "--chars at least 0"),
        ("abcd" * 1000, ["--prompt", "a", "--temperature", "1e-50"], "--temperature 1e-50 is 0 in float32"),
        ("abcd" * 1000, ["--prompt", ""], "--prompt is empty"),  # (it conditioned on the hidden character "a")
    ],
)
def test_bad_settings_are_refused_before_training(tmp_path, text, options, message):
    data = tmp_path / "text.txt"
    data.write_text(text, encoding="utf-8")
    with pytest.raises(SystemExit, match=re.escape(message)):
        char_gpt.main(
            ["--data", str(data), "--out", str(tmp_path / "out"), "--steps", "1", "--eval-batches", "1", *options]
        )
    assert not (tmp_path / "out").exists()  # (nothing trained, nothing saved)


def test_sampling_never_returns_an_id_top_k_excluded():
    # the largest draw, 1 - 2**-23, above a float32 total of 0.9999998: a count of the ids at or below it picked the
    # last id even where top-k had masked it
    model = tiny_model()
    window, length = char_gpt.start_window([1, 2, 3], TINY["block_size"])
    logits = model(slope.tensor(window)[:, :3]).numpy()[0, -1]
    allowed = set(np.argsort(-logits)[:2].tolist())
    for u in (0.0, 0.5, 1 - 2**-23, 1 - 2**-24):
        token, *_ = char_gpt.next_token(model, slope.tensor(window), slope.tensor(length),
                                        slope.tensor(np.float32(u)), 0.8, 2)  # fmt: skip
        assert int(token) in allowed


def test_sampling_at_the_largest_draw_keeps_a_top_k_id_when_the_scan_overshoots():
    # the scan's last cumulative value lay ulps above the last kept id's, so at u = 1 - 2**-23 no kept id passed and
    # argmax of no True gave id 0 (excluded by top-k); the total is now the largest cumulative value of a kept id
    logits = np.array([-1.3, -4.4, -1.5, -4.9, -1.8, 0.5, 2.1, 3.8, -1.1, 0.6, 1.1, 1.5, -8.7, -2.5, 2.2, -3.5],
                      np.float32)  # fmt: skip

    class Fixed:  # what next_token reads of a GPT: hidden states and the tied output layer
        class tokens:  # noqa: N801 - the GPT's attribute name
            attend = staticmethod(lambda h: slope.tensor(logits) + h.sum() * 0)

        hidden = staticmethod(lambda w: slope.zeros((1, w.shape[1], 4)))

    window, length = char_gpt.start_window([1], 8)
    allowed = set(np.argsort(-logits)[:4].tolist())
    for u in (0.0, 0.5, 1 - 2**-23):
        token, *_ = char_gpt.next_token(Fixed, slope.tensor(window), slope.tensor(length),
                                        slope.tensor(np.float32(u)), 1.0, 4)  # fmt: skip
        assert int(token) in allowed, u


def test_gpt_loss_matches_pytorch():
    torch = pytest.importorskip("torch")
    sys.path.insert(0, str(REPO / "benchmarks"))
    from gpt_torch_reference import from_slope

    model = tiny_model()
    reference = from_slope(model)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 11, (3, 8)), rng.integers(0, 11, (3, 8))
    loss, grads = slope.jit(slope.value_and_grad(char_gpt.loss_fn))(model, slope.tensor(x), slope.tensor(y))
    logits = reference(torch.tensor(x))
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 11), torch.tensor(y).reshape(-1))
    expected.backward()
    np.testing.assert_allclose(float(loss), expected.item(), rtol=1e-5)
    np.testing.assert_allclose(grads.tokens.weight.numpy(), reference.tokens.weight.grad.numpy(), atol=2e-5)
    np.testing.assert_allclose(grads.blocks[0].attn.qkv.weight.numpy(), reference.blocks[0].qkv.weight.grad.numpy(),
                               atol=2e-5)  # fmt: skip


def test_schedule_is_nanogpts_get_lr():
    sys.path.insert(0, str(REPO / "benchmarks"))
    from gpt_torch_reference import nanogpt_lr

    steps = slope.tensor([0.0, 1.0, 50.0, 99.0, 100.0, 101.0, 1000.0, 1999.0, 2000.0, 2500.0], dtype=slope.float64)
    got = char_gpt.nanogpt_schedule(1e-3, 100, 2000, 1e-4)(steps).numpy()
    # nanoGPT's train.py (2024-12): learning_rate * (it + 1) / (warmup_iters + 1), then the cosine to min_lr
    expected = [nanogpt_lr(int(it), 1e-3, 100, 2000, 1e-4) for it in steps.numpy()]
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert got[0] == pytest.approx(1e-3 / 101) and got[-1] == pytest.approx(1e-4)
    # a run shorter than the warm-up only warms up, as nanoGPT's (the warm-up was shortened to the run: 2x the rate)
    schedule = char_gpt.make_optimizer(1e-3, 50).lr
    short = schedule(slope.tensor([0.0, 49.0], dtype=slope.float64)).numpy()
    np.testing.assert_allclose(short, [nanogpt_lr(it, 1e-3, 100, 50, 1e-4) for it in (0, 49)], rtol=1e-12)


def test_train_steps_match_pytorch_with_nanogpts_optimizer():
    """Five of char_gpt's jitted train steps (AdamW with decay on every 2-d tensor, embeddings included, clipping,
    nanoGPT's schedule) against the PyTorch reference from the same weights and batches."""
    torch = pytest.importorskip("torch")
    sys.path.insert(0, str(REPO / "benchmarks"))
    from gpt_torch_reference import from_slope, make_optimizer, train_step

    model = char_gpt.GPT(11, **TINY, key=slope.random.key(5))
    reference = from_slope(model)
    optimizer = char_gpt.make_optimizer(1e-2, 6, warmup=2)
    state, step = optimizer.init(model), char_gpt.make_train_step(optimizer)
    torch_optimizer, schedule = make_optimizer(reference, 1e-2, 6, warmup=2)
    decayed = {id(p) for p in torch_optimizer.param_groups[0]["params"]}
    assert id(reference.tokens.weight) in decayed and id(reference.positions.weight) in decayed
    rng = np.random.default_rng(0)
    for _ in range(5):
        x, y = rng.integers(0, 11, (3, 8)), rng.integers(0, 11, (3, 8))
        model, state, loss = step(model, state, slope.tensor(x), slope.tensor(y), slope.random.key(0))
        expected = train_step(reference, torch_optimizer, torch.tensor(x), torch.tensor(y))
        schedule.step()
        np.testing.assert_allclose(float(loss), expected.item(), rtol=1e-5)
    for name, value in model.state_dict().items():
        np.testing.assert_allclose(value.numpy(), reference.state_dict()[name.replace(".attn.", ".")].numpy(),
                                   rtol=1e-4, atol=2e-6, err_msg=name)  # fmt: skip


@pytest.mark.slow
def test_char_gpt_short_run_trains_saves_plots_and_samples(tmp_path):
    import subprocess

    text = tmp_path / "text.txt"
    text.write_text("to be or not to be, that is the question.\n" * 40, encoding="utf-8")
    out = tmp_path / "out"
    command = [sys.executable, str(REPO / "examples" / "nn" / "char_gpt.py"), "--data", str(text), "--steps", "6",
               "--eval-every", "3", "--eval-batches", "2", "--n-layer", "1", "--n-embd", "16", "--n-head", "2",
               "--block-size", "8", "--batch-size", "4", "--chars", "20", "--out", str(out), "--prompt", "to "]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "step 6: train loss" in result.stdout and "characters sampled" in result.stdout
    assert (out / "char_gpt_loss.png").stat().st_size > 1000
    resumed = subprocess.run([sys.executable, str(REPO / "examples" / "nn" / "char_gpt.py"), "--sample-only",
                              str(out / "char_gpt.safetensors"), "--chars", "20", "--prompt", "to "],
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    # the same checkpoint, key and prompt sample the same text
    assert result.stdout.split("---")[-2] == resumed.stdout.split("---")[-2]
