"""Local arrays written element by element (``out[i] = v``), compiled once and differentiated
in reverse mode. Writes are lowered in place; a loop's reverse pass restores the elements it
overwrote instead of saving the whole array at every iteration.

Each ``*_check`` function returns (what gradjit computed, the value a reader should expect),
for ``run_all.py``:

    .venv/bin/python examples/local_arrays.py
"""

import numpy as np

import gradjit as gj


def cumsum_loop(x):
    out = np.zeros_like(x)
    s = 0.0
    for i in range(x.shape[0]):
        s = s + x[i]
        out[i] = s
    return np.sum(out * out)


def stencil(u):  # a finite-difference stencil
    d = np.zeros(u.shape[0] - 2)
    for i in range(1, u.shape[0] - 1):
        d[i - 1] = u[i - 1] - 2 * u[i] + u[i + 1]
    return np.sum(d ** 2)


def euler(p, y0, n):  # explicit Euler for y' = -p0 y + p1, the trajectory kept in a local array
    ys = np.empty(n + 1)
    ys[0] = y0
    for k in range(n):
        ys[k + 1] = ys[k] + 0.01 * (-p[0] * ys[k] + p[1])
    return ys[n]


def euler_rows(p, y0, n):  # a vector state: the trajectory stored row by row, Y[k + 1] = ...
    Y = np.zeros((n + 1, y0.shape[0]))
    Y[0] = y0
    for k in range(n):
        Y[k + 1] = Y[k] - 0.01 * p * Y[k]
    return np.sum(Y[n])


def straight(a, b):  # straight-line writes
    out = np.zeros(3)
    out[0] = a
    out[1] = b * a
    out[2] += out[1] * b
    return np.sum(out * out)


def matrix_fill(x):  # 2-D element writes: A[i, j] = x[i] * x[j] for j <= i
    n = x.shape[0]
    A = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1):
            A[i, j] = x[i] * x[j]
    return np.sum(A * A)


def dp_table(x):  # a table filled in nested loops, each entry from its neighbours (as soft-DTW)
    n = x.shape[0]
    R = np.zeros((n + 1, n + 1))
    for i in range(1, n + 1):
        R[i, 0] = R[i - 1, 0] + x[i - 1]
        for j in range(1, n + 1):
            R[i, j] = 0.5 * np.log(np.exp(R[i - 1, j]) + np.exp(R[i, j - 1])) + x[i - 1] * x[j - 1]
    return R[n, n]


def overwrite_twice(x):  # the same element written twice in one iteration
    out = np.zeros_like(x)
    for i in range(x.shape[0]):
        out[i] = x[i] * x[i]
        out[i] = out[i] + np.sin(x[i])
    return np.sum(out * x)


def branch_writes(x):  # writes in both branches of an if on values
    out = np.zeros_like(x)
    for i in range(x.shape[0]):
        if x[i] > 0:
            out[i] = x[i] * x[i]
        else:
            out[i] = 3.0 * x[i]
    return np.sum(out)


def two_arrays_one_if(x):  # two arrays written under one if, each reading its last entry
    a = np.zeros_like(x)
    b = np.zeros_like(x)
    for i in range(1, x.shape[0]):
        if x[i] > 0:
            a[i] = a[i - 1] * 0.5 + x[i]
            b[i] = b[i - 1] + a[i] * x[i]
        else:
            a[i] = a[i - 1] - x[i] * x[i]
            b[i] = b[i - 1] * 0.9
    return np.sum(a * b)


def write_until_break(x):  # writes in a loop left by a break on a value
    out = np.zeros_like(x)
    s = 0.0
    for i in range(x.shape[0]):
        s = s + x[i] * x[i]
        if s > 3.0:
            break
        out[i] = s * out[i - 1] + x[i]
    return np.sum(out * out)


def slice_write(x):  # a slice written with static bounds
    out = np.zeros(4)
    out[1:3] = x[0:2] * 2.0
    out[3] = x[2]
    return np.sum(out * out)


def recurrence(x):  # each element read back in the next iteration: y[i] = y[i-1] * x[i] + 1
    y = np.zeros_like(x)
    y[0] = x[0]
    for i in range(1, x.shape[0]):
        y[i] = y[i - 1] * np.cos(x[i]) + 1.0
    return np.sum(y * y)


def while_fill(x):  # writes in a while loop (its trip count is taped, not known up front)
    out = np.zeros_like(x)
    k = 0
    s = 0.0
    while k < x.shape[0]:
        s = s * 0.5 + x[k]
        out[k] = s * s
        k = k + 1
    return np.sum(out)


def accumulate_writes(x):  # out[i] += v, and a second name that sees the writes (as in numpy)
    out = np.zeros(x.shape[0] + 1)
    for i in range(x.shape[0]):
        out[i] += x[i]
        out[i + 1] += 2.0 * x[i] * x[i]
    alias = out
    alias[0] += 1.0
    return np.sum(out * out)


def copy_then_write(x):  # writing into a copy of an argument leaves the argument as it was
    y = x.copy()
    y[0] = 10.0 * x[1]
    return np.sum(y * x)


def row_writes(x):  # x: (n, 3); a whole row written per iteration
    out = np.zeros((x.shape[0], 3))
    for i in range(x.shape[0]):
        out[i, :] = x[i] * x[i]
    return np.sum(out * out)


def chained_index(x):  # A[i][j] = v writes the row back into A, as numpy does
    A = np.zeros((3, 3))
    for i in range(3):
        A[i][i] = x[i] * 2.0
    A[0][1] = x[0] * x[1]
    return np.sum(A * A)


def dynamic_slices(x):  # slice bounds from sizes known at run time, a fill, a negative index
    out = np.ones(x.shape[0])
    out[:] = 3.0
    out[1:] = x[1:] * 2.0
    out[-1] = x[0] * x[-1]
    return np.sum(out * x)


# --- closed forms ---------------------------------------------------------------------------

def cumsum_grad_closed(x):
    c = np.cumsum(x)  # d/dx_j sum_i c_i^2 = 2 sum_{i >= j} c_i
    return 2.0 * np.cumsum(c[::-1])[::-1]


def stencil_grad_closed(u):
    d = u[:-2] - 2 * u[1:-1] + u[2:]
    g = np.zeros_like(u)
    g[:-2] += 2 * d
    g[1:-1] += -4 * d
    g[2:] += 2 * d
    return g


def recurrence_grad_closed(x):
    """The adjoint recursion of ``recurrence``: ybar_i = 2 y_i + cos(x_{i+1}) ybar_{i+1}."""
    n = x.shape[0]
    y = np.empty(n)
    y[0] = x[0]
    for i in range(1, n):
        y[i] = y[i - 1] * np.cos(x[i]) + 1.0
    g, ybar = np.empty(n), 0.0
    for i in range(n - 1, 0, -1):
        ybar = 2 * y[i] + (np.cos(x[i + 1]) * ybar if i + 1 < n else 0.0)
        g[i] = -ybar * y[i - 1] * np.sin(x[i])
    g[0] = 2 * y[0] + np.cos(x[1]) * ybar
    return g


def euler_closed(p, y0, n):
    """y_n and its sensitivities to (p0, p1): y_{k+1} = a y_k + b with a = 1 - h p0, b = h p1."""
    h = 0.01
    a, b = 1 - h * p[0], h * p[1]
    an = a ** n
    geo = (1 - an) / (1 - a)  # sum_{k<n} a^k
    yn = an * y0 + b * geo
    da = n * a ** (n - 1) * y0 + b * (-(n * a ** (n - 1)) * (1 - a) + (1 - an)) / (1 - a) ** 2
    return yn, np.array([da * -h, h * geo])


def _rng(n, seed=0):
    return np.random.default_rng(seed).standard_normal(n)


def cumsum_check():
    x = _rng(1000)
    return gj.grad(cumsum_loop)(x), cumsum_grad_closed(x)


def stencil_check():
    u = _rng(1000, 1)
    return gj.grad(stencil)(u), stencil_grad_closed(u)


def euler_check():
    p = np.array([0.7, 1.3])
    got = gj.value_and_grad(euler)(p, 0.5, 5000)
    want = euler_closed(p, 0.5, 5000)
    return got, want


ALL = [cumsum_check, stencil_check, euler_check]


def main():
    from _check import check, section
    section("gradients through local arrays written element by element, vs closed forms")
    for fn in ALL:
        got, want = fn()
        check(fn.__name__, got, want, rtol=1e-7, atol=1e-9, show_value=False)
    print("\nThe gradient of `cumsum_loop`, as numba source:\n")
    print(gj.grad(cumsum_loop).lower(_rng(10)).source)


if __name__ == "__main__":
    main()
