"""Forward mode (jvp) and reverse mode (vjp): Jacobian-vector and vector-Jacobian products."""

import slope


def f(x: slope.Tensor) -> slope.Tensor:
    """An elementwise-and-mixing function R^3 -> R^2."""
    return slope.stack([x[0] * x[1], x[1].sin() + x[2] ** 2])


x = slope.tensor([1.0, 2.0, 3.0])

# jvp: push a tangent forward, J @ v, in one pass alongside f(x)
y, jv = slope.jvp(f, (x,), (slope.tensor([1.0, 0.0, 0.0]),))
print("f(x)     =", y.tolist())
print("J @ e0   =", jv.tolist(), "(first column of the Jacobian)")

# vjp: pull a cotangent back, u @ J
y, vjp_fn = slope.vjp(f, x)
(uj,) = vjp_fn(slope.tensor([1.0, 0.0]))
print("e0 @ J   =", uj.tolist(), "(first row of the Jacobian)")

# the whole Jacobian both ways
print("jacfwd   =", slope.jacfwd(f)(x).tolist())
print("jacrev   =", slope.jacrev(f)(x).tolist())
