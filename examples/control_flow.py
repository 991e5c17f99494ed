"""Python control flow on values, compiled once and differentiated in reverse mode.

Each function returns (what gradjit computed, the value a reader should expect), for
``run_all.py``; run this file on its own to also see the generated kernels:

    .venv/bin/python examples/control_flow.py
"""

import numpy as np

import gradjit as gj


# --- The PyTorch autograd tutorial: a while loop and an if on values -------------------------
def tutorial(a):
    b = a * 2
    while np.linalg.norm(b) < 1000:
        b = b * 2
    if b.sum() > 0:
        c = b
    else:
        c = 100 * b
    return c


def tutorial_gradient():
    g = gj.grad(lambda a: tutorial(a).sum())
    values = [np.float64(-1.57), np.float64(0.3), np.random.default_rng(0).standard_normal((2, 2))]
    # c = k * a for a k that depends on a's value (a power of two, times 100 if negative)
    return tuple(g(a) for a in values), tuple(tutorial(a) / a for a in values)


# --- A numba-style element loop ----------------------------------------------------------------
def energy(x):
    s = 0.0
    for i in range(x.shape[0] - 1):
        d = x[i + 1] - x[i]
        s += d * d + np.cos(x[i])
    return s


def energy_gradient():
    x = np.random.default_rng(1).standard_normal(100_000)
    d = np.diff(x)
    want = np.zeros_like(x)
    want[1:] += 2 * d
    want[:-1] -= 2 * d + np.sin(x[:-1])
    return gj.grad(energy)(x), want


# --- Newton's method, differentiated through its iterations (the loop uses a tape) ------------
def newton_sqrt(a):
    x = a
    while np.abs(x * x - a) > 1e-12 * a:
        x = 0.5 * (x + a / x)
    return x


def newton_gradient():
    a = np.array([2.0, 9.0, 1e4])
    g = gj.grad(newton_sqrt)
    return tuple(g(v) for v in a), tuple(1 / (2 * np.sqrt(a)))


# --- break / continue / early return ---------------------------------------------------------
def first_positive_run(x):
    s = 0.0
    for i in range(x.shape[0]):
        if x[i] < 0:
            break
        if x[i] > 2:
            continue
        s += x[i] ** 2
    return s


def break_continue_gradient():
    x = np.array([1.0, 3.0, 0.5, -1.0, 4.0])
    return gj.grad(first_positive_run)(x), np.array([2.0, 0.0, 1.0, 0.0, 0.0])


ALL = [tutorial_gradient, energy_gradient, newton_gradient, break_continue_gradient]


if __name__ == "__main__":
    for fn in ALL:
        got, want = fn()
        print(f"{fn.__name__:<24} {'ok' if all(np.allclose(g, w) for g, w in zip(got, want)) else 'FAIL'}")
    print("\nThe gradient of `energy` is one backward loop, no tape:\n")
    print(gj.grad(energy).lower(np.ones(3)).source)
    print("The gradient of `newton_sqrt` pushes each iterate on a growable tape:\n")
    print(gj.grad(newton_sqrt).lower(2.0).source)
    print(gj.cache_info())
