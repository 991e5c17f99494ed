"""Hand-written numba kernels with the analytic gradient: the practical limit gradjit is
measured against.

Each `*_grad` kernel takes the same arguments as the workload function in `workloads.py`
and returns what `gj.grad(f, argnums=...)` returns. Rules followed here:

- One pass over the data where possible; no temporaries the size of the input.
- Compiled with gradjit's own floating-point flags and error model (`njit` below): numpy's
  error model (no division-by-zero branches) and `contract` (fused multiply-adds) on every
  kernel, `reassoc` added under `parallel=True`, as gradjit's kernels have them
  (`gradjit/compiler/codegen/cpu.py`). Where noted, reductions written as loops add `reassoc`
  (+ `nsz`) so that LLVM vectorises the sum, as gradjit does for its accumulators.
- No `cache=True`: `benchmarks/coldstart.py` measures their compile time.
"""

import math

import numpy as np
import numba
from numba import prange

from gradjit.compiler.codegen.cpu import FASTMATH, PARALLEL_FASTMATH

# Just enough fast-math to vectorize a reduction (reorder the sum), no unsafe-math.
REDUCE = {"reassoc", "nsz"}


def njit(fn=None, *, fastmath=(), **kw):
    """``numba.njit`` with the flags gradjit's kernels are compiled with (added to any given
    here): the comparison measures the code, not the compiler options."""
    flags = PARALLEL_FASTMATH if kw.get("parallel") else FASTMATH
    kw.setdefault("error_model", "numpy")
    deco = numba.njit(fastmath=set(fastmath) | flags, **kw)
    return deco if fn is None else deco(fn)

# ---------------------------------------------------------------------------------------
# W1, W2: scalar-sized gradients (these measure call overhead)
# ---------------------------------------------------------------------------------------


@njit
def poly_grad(x):
    return 2.0 * x + 3.0 * x * x


@njit
def himmelblau_grad(x):
    x0 = x[0]
    x1 = x[1]
    a = x0 * x0 + x1 - 11.0
    c = x0 + x1 * x1 - 7.0
    out = np.empty(2)
    out[0] = 4.0 * a * x0 + 2.0 * c
    out[1] = 2.0 * a + 4.0 * c * x1
    return out


# ---------------------------------------------------------------------------------------
# W3: elementwise chains, summed. The gradient is elementwise, so it is one streaming pass.
# ---------------------------------------------------------------------------------------


@njit
def poly_sum_grad(x):
    out = np.empty_like(x)
    for i in range(x.size):
        xi = x[i]
        out[i] = xi * (2.0 + 3.0 * xi)
    return out


@njit(parallel=True)
def poly_sum_grad_par(x):
    out = np.empty_like(x)
    for i in prange(x.size):
        xi = x[i]
        out[i] = xi * (2.0 + 3.0 * xi)
    return out


@njit
def sin_exp_sum_grad(x):
    out = np.empty_like(x)
    for i in range(x.size):
        xi = x[i]
        out[i] = math.exp(-xi * xi) * (math.cos(xi) - 2.0 * xi * math.sin(xi))
    return out


@njit(parallel=True)
def sin_exp_sum_grad_par(x):
    out = np.empty_like(x)
    for i in prange(x.size):
        xi = x[i]
        out[i] = math.exp(-xi * xi) * (math.cos(xi) - 2.0 * xi * math.sin(xi))
    return out


# Forward passes, for the gradient/forward ("cheap gradient") ratio.


@njit(fastmath=REDUCE)
def poly_sum(x):
    s = 0.0
    for i in range(x.size):
        xi = x[i]
        s += xi * xi + xi * xi * xi + 5.0
    return s


@njit(fastmath=REDUCE)
def sin_exp_sum(x):
    s = 0.0
    for i in range(x.size):
        xi = x[i]
        s += math.sin(xi) * math.exp(-xi * xi)
    return s


# ---------------------------------------------------------------------------------------
# W4: linear-model MSE. One pass over the rows of X: residual, then its outer contribution.
# ---------------------------------------------------------------------------------------


@njit(fastmath=REDUCE)
def mse_grad(w, b, X, y):
    n, d = X.shape
    gw = np.zeros(d)
    gb = 0.0
    for i in range(n):
        r = b - y[i]
        for j in range(d):
            r += X[i, j] * w[j]
        for j in range(d):
            gw[j] += r * X[i, j]
        gb += r
    scale = 2.0 / n
    return gw * scale, gb * scale


@njit(fastmath=REDUCE)
def mse(w, b, X, y):
    n, d = X.shape
    s = 0.0
    for i in range(n):
        r = b - y[i]
        for j in range(d):
            r += X[i, j] * w[j]
        s += r * r
    return s / n


# ---------------------------------------------------------------------------------------
# W5: softmax cross-entropy, one pass over the rows of X: logits, softmax, and the row's
# outer-product contribution to the gradient. Both small matrices are kept transposed so
# the inner loops run over the 32 contiguous features. (Measured: ~20% faster than two BLAS
# matmuls around a fused softmax loop; OpenBLAS is poor at these skinny shapes.)
# ---------------------------------------------------------------------------------------


@njit(fastmath=REDUCE)
def softmax_xent_grad(W, X, y):
    n, d = X.shape
    k = W.shape[1]
    WT = np.ascontiguousarray(W.T)
    GT = np.zeros((k, d))
    p = np.empty(k)
    inv_n = 1.0 / n
    for i in range(n):
        xi = X[i]
        m = -np.inf
        for j in range(k):
            zj = 0.0
            for a in range(d):
                zj += xi[a] * WT[j, a]
            p[j] = zj
            m = max(m, zj)
        s = 0.0
        for j in range(k):
            e = math.exp(p[j] - m)
            p[j] = e
            s += e
        c = inv_n / s
        for j in range(k):
            p[j] *= c
        p[y[i]] -= inv_n  # d/dz of -log softmax(z)[y] is softmax(z) - onehot(y)
        for j in range(k):
            pj = p[j]
            for a in range(d):
                GT[j, a] += pj * xi[a]
    return np.ascontiguousarray(GT.T)


# =======================================================================================
# Control flow (L*)
# =======================================================================================

# L1: the gradient of the `energy` element loop, one pass (each x[i] gets the d/dx of the two
# terms it appears in).


@njit
def energy_grad(x):
    n = x.shape[0]
    g = np.zeros(n)
    for i in range(n - 1):
        d2 = 2.0 * (x[i + 1] - x[i])
        g[i] -= d2 + math.sin(x[i])
        g[i + 1] += d2
    return g


@njit
def energy(x):
    s = 0.0
    for i in range(x.shape[0] - 1):
        d = x[i + 1] - x[i]
        s += d * d + math.cos(x[i])
    return s


# L2: Euler for Lotka-Volterra, d(final state)/d(parameters) by the adjoint method: the
# forward sweep stores the states (2 x steps floats), one backward sweep carries both rows
# of the Jacobian.


@njit
def lotka_volterra_jacobian(p, y0, dt, steps):
    a, b, c, e = p[0], p[1], p[2], p[3]
    us = np.empty(steps)
    vs = np.empty(steps)
    u, v = y0[0], y0[1]
    for k in range(steps):
        us[k] = u
        vs[k] = v
        du = a * u - b * u * v
        dv = c * u * v - e * v
        u += dt * du
        v += dt * dv
    # (lu[r], lv[r]): adjoint of (u, v) for output row r; both rows in one backward sweep.
    lu0, lv0, lu1, lv1 = 1.0, 0.0, 0.0, 1.0
    J = np.zeros((2, 4))
    for k in range(steps - 1, -1, -1):
        u = us[k]
        v = vs[k]
        uv = u * v
        fu, fv, gu, gv = a - b * v, -b * u, c * v, c * u - e  # d(du, dv)/d(u, v)
        s0, t0, s1, t1 = dt * lu0, dt * lv0, dt * lu1, dt * lv1
        J[0, 0] += s0 * u
        J[0, 1] -= s0 * uv
        J[0, 2] += t0 * uv
        J[0, 3] -= t0 * v
        J[1, 0] += s1 * u
        J[1, 1] -= s1 * uv
        J[1, 2] += t1 * uv
        J[1, 3] -= t1 * v
        lu0, lv0 = lu0 + s0 * fu + t0 * gu, lv0 + s0 * fv + t0 * gv
        lu1, lv1 = lu1 + s1 * fu + t1 * gu, lv1 + s1 * fv + t1 * gv
    return J


# L3: the Himmelblau descent, scalars in registers.


@njit
def descend(x, lr, steps):
    x0 = x[0]
    x1 = x[1]
    for _ in range(steps):
        a = x0 * x0 + x1 - 11.0
        c = x0 + x1 * x1 - 7.0
        g0 = 4.0 * a * x0 + 2.0 * c
        g1 = 2.0 * a + 4.0 * c * x1
        x0 -= lr * g0
        x1 -= lr * g1
    out = np.empty(2)
    out[0] = x0
    out[1] = x1
    return out


# =======================================================================================
# Higher order (J*)
# =======================================================================================

# J1: the 3x3 Jacobian of [x^3 - y^2, y^2 + z^2, z^3 - x^2] at each of N points.


@njit
def cubic_map_jacobians(P):
    n = P.shape[0]
    J = np.empty((n, 3, 3))  # every entry written below: one pass over the output
    for i in range(n):
        x, y, z = P[i, 0], P[i, 1], P[i, 2]
        J[i, 0, 0] = 3.0 * x * x
        J[i, 0, 1] = -2.0 * y
        J[i, 0, 2] = 0.0
        J[i, 1, 0] = 0.0
        J[i, 1, 1] = 2.0 * y
        J[i, 1, 2] = 2.0 * z
        J[i, 2, 0] = -2.0 * x
        J[i, 2, 1] = 0.0
        J[i, 2, 2] = 3.0 * z * z
    return J


@njit(parallel=True)
def cubic_map_jacobians_par(P):
    n = P.shape[0]
    J = np.empty((n, 3, 3))
    for i in prange(n):
        x, y, z = P[i, 0], P[i, 1], P[i, 2]
        J[i, 0, 0] = 3.0 * x * x
        J[i, 0, 1] = -2.0 * y
        J[i, 0, 2] = 0.0
        J[i, 1, 0] = 0.0
        J[i, 1, 1] = 2.0 * y
        J[i, 1, 2] = 2.0 * z
        J[i, 2, 0] = -2.0 * x
        J[i, 2, 1] = 0.0
        J[i, 2, 2] = 3.0 * z * z
    return J


# J2: the Hessian of f(x, w) = (x + 5w)^2 + sin(x w).


@njit
def two_param_hessian(p):
    x = p[0]
    w = p[1]
    s = math.sin(x * w)
    hxw = 10.0 + math.cos(x * w) - x * w * s
    H = np.empty((2, 2))
    H[0, 0] = 2.0 - w * w * s
    H[0, 1] = hxw
    H[1, 0] = hxw
    H[1, 1] = 50.0 - x * x * s
    return H


# J3: the Hessian of -x^T A x / 2 - sum(x^4) / 4: -(A + A^T)/2 - diag(3 x^2).


@njit
def log_density_hessian(x, A):
    d = x.shape[0]
    H = np.empty((d, d))
    for i in range(d):
        for j in range(d):
            H[i, j] = -0.5 * (A[i, j] + A[j, i])
        H[i, i] -= 3.0 * x[i] * x[i]
    return H


# J4: a leapfrog trajectory in the user's own @njit code, parameterised by the gradient it
# calls: gradjit's numba-callable kernel, or the analytic one below. The analytic gradient
# uses that A is symmetric (a precision matrix), as a hand-written one would.


@njit(fastmath=REDUCE)
def log_density_grad(x, A):
    d = x.shape[0]
    g = np.empty(d)
    for i in range(d):
        s = 0.0
        for j in range(d):
            s += A[i, j] * x[j]
        g[i] = -s - x[i] * x[i] * x[i]
    return g


def make_leapfrog(grad):
    """An @njit leapfrog integrator calling `grad(x, A)`; returns the final (x, p)."""

    @njit
    def leapfrog(x, p, A, eps, steps):
        x = x.copy()
        p = p + 0.5 * eps * grad(x, A)
        for _ in range(steps):
            x = x + eps * p
            p = p + eps * grad(x, A)
        return x, p - 0.5 * eps * grad(x, A)

    return leapfrog


leapfrog = make_leapfrog(log_density_grad)
