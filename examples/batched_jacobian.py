"""The Jacobian of a field at many points: B(x, y, z) = [x^3 - y^2, y^2 + z^2, z^3 - x^2].

The PyTorch tutorial wants the 3 x 3 Jacobian at each of n points X[i] = (x, y, z) and
gets it two ways: the full Jacobian of the batched function, n x 3 x n x 3 and zero off its
diagonal blocks, then those blocks (``torch.autograd.functional.jacobian`` and
``torch.diagonal``); and one backward pass per output component with a ones cotangent
over the batch (each point only touches its own outputs). gradjit adds the direct way,
``gj.vmap(gj.jacobian(b))`` of the per-point function. All three are checked against the
closed form [[3x^2, -2y, 0], [0, 2y, 2z], [-2x, 0, 3z^2]] and timed against a Python loop
calling ``gj.jacobian(b)`` per point.

    python examples/batched_jacobian.py
"""

import time

import numpy as np

import gradjit as gj
from _check import check, section


def get_B(X):                    # the batched field: X is n x 3, B is n x 3
    Bx = X[:, 0] ** 3 - X[:, 1] ** 2
    By = X[:, 1] ** 2 + X[:, 2] ** 2
    Bz = X[:, 2] ** 3 - X[:, 0] ** 2
    return np.stack([Bx, By, Bz], axis=1)


def b(p):                        # the same field at one point p = (x, y, z)
    return np.stack([p[0] ** 3 - p[1] ** 2, p[1] ** 2 + p[2] ** 2, p[2] ** 3 - p[0] ** 2])


def closed_form(X):
    x, y, z = X[:, 0], X[:, 1], X[:, 2]
    zero = np.zeros_like(x)
    return np.stack([np.stack([3 * x**2, -2 * y, zero], 1),
                     np.stack([zero, 2 * y, 2 * z], 1),
                     np.stack([-2 * x, zero, 3 * z**2], 1)], 1)


def by_full_jacobian(X):
    J = gj.jacobian(get_B)(X)                 # n x 3 x n x 3
    return np.einsum("iaib->iab", J)          # the diagonal blocks J[i, :, i, :]


def by_component_vjps(X):
    _, vjp_fn = gj.vjp(get_B, X)
    # ones in column a: the gradient of sum_i B[i, a], whose row i is d B[i, a] / d X[i]
    rows = [vjp_fn(np.broadcast_to(e, X.shape).copy())[0] for e in np.eye(3)]
    return np.stack(rows, axis=1)


batched = gj.vmap(gj.jacobian(b))
per_point = gj.jacobian(b)


def by_vmap(X):
    return batched(X)


def by_python_loop(X):
    return np.stack([per_point(X[i]) for i in range(X.shape[0])])


def best_time(fn, X, repeat=5):
    fn(X)                                     # compile (or load from the disk cache) first
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn(X)
        times.append(time.perf_counter() - t)
    return min(times)


WAYS = [("full Jacobian, then its diagonal blocks", by_full_jacobian),
        ("3 vjps, a ones cotangent per component", by_component_vjps),
        ("gj.vmap(gj.jacobian(b))", by_vmap),
        ("Python loop of gj.jacobian(b) per point", by_python_loop)]


def main():
    section("x = y = z = arange(10), as in the tutorial")
    X = np.stack([np.arange(10.0)] * 3, axis=1)
    for name, fn in WAYS:
        check(name, fn(X), closed_form(X), show_value=False)
    check("the Jacobian at x = y = z = 3", by_vmap(X)[3], [[27, -6, 0], [0, 6, 6], [-6, 0, 27]])

    section("random points, timed (best of 5)")
    rng = np.random.default_rng(0)
    sizes = [200, 20000]
    print(f"  {'':42}" + "".join(f"{'n = ' + str(n):>14}" for n in sizes))
    for name, fn in WAYS:
        cells = []
        for n in sizes:
            if fn is by_full_jacobian and n > 1000:
                cells.append("(n^2 memory)")
                continue
            X = rng.normal(size=(n, 3))
            got = fn(X)
            if not np.allclose(got, closed_form(X), rtol=1e-12, atol=1e-12):
                check(f"{name}, n = {n}", got, closed_form(X))
            cells.append(f"{best_time(fn, X) * 1e3:.3f} ms")
        print(f"  {name:<42}" + "".join(f"{c:>14}" for c in cells))
    print("  (every result above matches the closed form)")


if __name__ == "__main__":
    main()
