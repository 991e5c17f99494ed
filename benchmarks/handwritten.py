"""Hand-written numba kernels with the analytic gradient: the practical limit gradjit is
measured against.

Each `*_grad` kernel takes the same arguments as the workload function in `workloads.py`
and returns what `gj.grad(f, argnums=...)` returns. Rules followed here:

- One pass over the data where possible; no temporaries the size of the input.
- `fastmath` only where noted, and then only `reassoc` (+ `nsz`): it lets LLVM vectorize a
  floating-point sum by reordering it, which changes rounding but not accuracy class.
- No `cache=True`: `benchmarks/coldstart.py` measures their compile time.
"""

import math

import numpy as np
from numba import njit, prange

# Just enough fast-math to vectorize a reduction (reorder the sum), no unsafe-math.
REDUCE = {"reassoc", "nsz"}

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
