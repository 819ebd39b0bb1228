"""jit: trace once, compile on the backend, cache; .lower shows the slope IR and the backend's code."""

import time

import slope


@slope.jit
def gelu_layer(x: slope.Tensor, w: slope.Tensor) -> slope.Tensor:
    """A linear map followed by GELU."""
    return slope.gelu(x @ w)


x = slope.randn(4, 3)
w = slope.randn(3, 2)
start = time.perf_counter()
gelu_layer(x, w)  # traces and compiles
compiled = time.perf_counter() - start
start = time.perf_counter()
out = gelu_layer(x, w)  # cached: runs the compiled program
cached = time.perf_counter() - start
print(f"first call {1000 * compiled:.1f} ms (trace + compile), second {1000 * cached:.2f} ms")
print("out shape:", out.shape, "backend:", slope.get_backend().name)

lowered = gelu_layer.lower(x, w)
print("--- slope IR")
print(lowered.program)
print(f"--- {slope.get_backend().name} code (first 15 lines)")
print("\n".join(lowered.code.splitlines()[:15]))
