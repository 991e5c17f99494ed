"""Python control flow on values, compiled once and differentiated in reverse mode.

The d2l tutorial's ``while norm(b) < 1000: b = b * 2`` followed by an ``if`` on the sign of
the sum: the loop runs a number of times that depends on the value of ``a``, and c = k * a
for a factor k found at run time, so dc/da = c / a. gradjit compiles the loop as a loop (one
kernel serves every value and trip count), not one trace per value. Then an explicit
numba-style element loop, its gradient one backward loop, and Newton's method differentiated
through its iterations.

The ``*_gradient`` functions return (what gradjit computed, the value a reader should
expect) for the workload table of ``run_all.py``.

    python examples/control_flow.py
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


def main():
    from _check import central_grad, check, print_ir, section

    section("while norm(b) < 1000: b = b * 2; then an if on sign(sum(b))")
    g = gj.grad(lambda a: tutorial(a).sum())
    g(np.float64(0.5))
    entries = gj.cache_info().memory_entries
    for a in [np.float64(-1.5694), np.float64(0.3), np.float64(1e-3), np.float64(-40.0)]:
        c = tutorial(a)
        check(f"a = {float(a):<8g} c = {float(c):<12g} dc/da", g(a), c / a)
    assert gj.cache_info().memory_entries == entries, "a new value must not compile again"
    print("  one kernel served every value: the loop ran 4 to 19 times, the if took both branches")
    a = np.random.default_rng(0).standard_normal((2, 2))   # d2l's exercise 3: a matrix
    check("a 2 x 2 matrix: d sum(c) / da = c / a (one factor)", g(a), tutorial(a) / a)

    section("an explicit element loop: s += (x[i+1] - x[i])^2 + cos(x[i])")
    got, want = energy_gradient()
    check("gj.grad(energy) on 100 000 elements vs the closed form", got, want, show_value=False)
    x = np.random.default_rng(2).standard_normal(6)
    check("  vs central differences on 6 elements", gj.grad(energy)(x), central_grad(energy, x),
          rtol=1e-6, atol=1e-8, show_value=False)
    print("  its gradient: one loop run backwards, scattering into the gradient, no tape:")
    print_ir(gj.grad(energy).lower(np.ones(3)).optimized_ir)

    section("Newton's method for sqrt(a), differentiated through its iterations")
    got, want = newton_gradient()
    check("d sqrt(a) / da at a = 2, 9, 1e4", got, want)

    section("break / continue in an element loop")
    got, want = break_continue_gradient()
    check("gradient of the sum of squares before the first negative", got, want)


if __name__ == "__main__":
    main()
