# iree float64 2**x / 1.5**x / x**y: up to ~200 float64 ulps off where PyTorch (and slope's onnxruntime/numpy) are <= 1 ulp
import numpy as np, torch, slope, mpmath
mpmath.mp.prec = 120
slope.set_backend("iree")
for base, x in [(2.0, 882.977139021592), (2.0, -963.0078699327095), (2.0, 500.3), (1.5, -1692.592006479603), (10.0, 300.123)]:
    s = (base ** slope.tensor([x], dtype=slope.float64)).numpy()[0]
    j = slope.jit(lambda t: base ** t)(slope.tensor([x], dtype=slope.float64)).numpy()[0]
    t = (base ** torch.tensor([x], dtype=torch.float64)).numpy()[0]
    ref = mpmath.power(mpmath.mpf(base), mpmath.mpf(x))
    u = float(abs(ref)) * 2.0**-52
    print(f"{base}**{x}: slope {s!r} ({float(abs(s-ref))/u:.0f} ulps) jit {j!r} torch {t!r} ({float(abs(t-ref))/u:.2f} ulps)")
x = slope.tensor([1e300, 3.3e-300], dtype=slope.float64)
print("x**1.01", (x ** 1.01).numpy(), (torch.tensor([1e300, 3.3e-300], dtype=torch.float64) ** 1.01).numpy())
