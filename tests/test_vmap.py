"""``gj.vmap``: batching rules against a Python loop over examples, in_axes/out_axes, and its
compositions with grad and jacobian (per-example gradients, batched Jacobians)."""

import numpy as np
import pytest

import gradjit as gj
from gradjit.compiler import primitives as P
from gradjit.compiler.batching import BATCH_RULES
from gradjit.compiler.ir import verify

RNG = np.random.default_rng(0)


def loop(f, *args, in_axes=0):
    """The reference: ``f`` applied to each example, results stacked on axis 0."""
    axes = in_axes if isinstance(in_axes, tuple) else (in_axes,) * len(args)
    n = next(np.shape(a)[ax] for a, ax in zip(args, axes) if ax is not None)
    outs = [f(*[a if ax is None else np.take(a, k, axis=ax) for a, ax in zip(args, axes)])
            for k in range(n)]
    if isinstance(outs[0], tuple):
        return tuple(np.stack([o[j] for o in outs]) for j in range(len(outs[0])))
    return np.stack(outs)


def check(f, *args, in_axes=0, rtol=1e-12, atol=1e-12, **kw):
    got = gj.vmap(f, in_axes=in_axes, **kw)(*args)
    want = loop(f, *args, in_axes=in_axes)
    if isinstance(want, tuple):
        for g, w in zip(got, want):
            assert g.shape == w.shape and g.dtype == w.dtype
            np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)
    else:
        assert got.shape == want.shape, (got.shape, want.shape)
        assert got.dtype == want.dtype, (got.dtype, want.dtype)
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
    return got


# ---- elementwise, reductions, shapes ----------------------------------------------------------


def ew_reduce(x):
    return np.sin(x) * 2.0 + np.sum(x**2) - np.max(x) / (1.0 + np.abs(x))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_elementwise_and_reductions(dtype):
    X = RNG.normal(size=(7, 4)).astype(dtype)
    tol = 1e-12 if dtype == np.float64 else 2e-5
    check(ew_reduce, X, rtol=tol, atol=tol)


def axis_reductions(A):
    return np.sum(A, axis=0) * np.mean(A, axis=1, keepdims=True) + np.prod(A, axis=1, keepdims=True)


def test_axis_reductions_on_matrices():
    check(axis_reductions, RNG.normal(size=(5, 3, 4)))


def shapes(A):
    return np.concatenate([A.T.reshape(-1), np.cumsum(A[0])]) + np.where(A[1, 0] > 0, 1.0, -1.0)


def test_transpose_reshape_concatenate_cumsum_where():
    check(shapes, RNG.normal(size=(6, 3, 2)))


def scalar_out(x, y):
    return np.sum(x * y) + 3.0


def test_scalar_outputs_and_mixed_batching():
    X = RNG.normal(size=(5, 3))
    y = RNG.normal(size=3)
    check(scalar_out, X, y, in_axes=(0, None))
    check(scalar_out, y, X, in_axes=(None, 0))


def test_in_axes_nonzero_negative_and_out_axes():
    X = RNG.normal(size=(3, 6))  # examples along axis 1
    y = RNG.normal(size=(6,))
    got = check(ew_reduce, X, in_axes=1)
    np.testing.assert_allclose(gj.vmap(ew_reduce, in_axes=-1)(X), got)
    np.testing.assert_allclose(gj.vmap(ew_reduce, in_axes=1, out_axes=1)(X), got.T)
    np.testing.assert_allclose(gj.vmap(scalar_out, in_axes=(1, 0))(X, y),
                               [scalar_out(X[:, k], y[k]) for k in range(6)])


def test_decorator_forms():
    X = RNG.normal(size=(3, 6))

    @gj.vmap
    def plain(x):
        return ew_reduce(x)

    @gj.vmap(in_axes=1, out_axes=0)
    def columns(x):
        return ew_reduce(x)

    np.testing.assert_allclose(plain(X), loop(ew_reduce, X))
    np.testing.assert_allclose(columns(X), loop(ew_reduce, X, in_axes=1))
    assert "vmap" in repr(plain)


def two_outputs(x, w):
    return x * w, np.sum(w)


def test_tuple_outputs_out_axes_and_unbatched_output():
    X = RNG.normal(size=(4, 3))
    w = RNG.normal(size=3)
    a, b = gj.vmap(two_outputs, in_axes=(0, None), out_axes=(1, None))(X, w)
    np.testing.assert_allclose(a, (X * w).T)
    assert np.isclose(b, np.sum(w))
    a, b = gj.vmap(two_outputs, in_axes=(0, None))(X, w)  # an unbatched output is repeated
    np.testing.assert_allclose(b, np.full(4, np.sum(w)))


def tree_fn(p, x):
    return np.tanh(p["w"] @ x + p["b"])


def test_pytree_arguments_and_per_leaf_in_axes():
    W, b = RNG.normal(size=(2, 3)), RNG.normal(size=2)
    X = RNG.normal(size=(5, 3))
    got = gj.vmap(tree_fn, in_axes=(None, 0))({"w": W, "b": b}, X)
    np.testing.assert_allclose(got, np.tanh(X @ W.T + b))
    Bs = RNG.normal(size=(5, 2))
    got = gj.vmap(tree_fn, in_axes=({"w": None, "b": 0}, 0))({"w": W, "b": Bs}, X)
    np.testing.assert_allclose(got, np.tanh(X @ W.T + Bs))


# ---- matmul ---------------------------------------------------------------------------------


def mm(a, b):
    return a @ b


@pytest.mark.parametrize("sa,sb,in_axes", [
    ((5, 3), (3, 4), (0, None)),     # batch of vectors @ matrix: one 2-D product
    ((5, 2, 3), (3, 4), (0, None)),  # batch of matrices @ matrix: stacked rows
    ((2, 3), (5, 3), (None, 0)),     # matrix @ batch of vectors
    ((3,), (5, 3, 4), (None, 0)),    # vector @ batch of matrices
    ((2, 3), (5, 3, 4), (None, 0)),  # matrix @ batch of matrices
    ((5, 2, 3), (5, 3), (0, 0)),     # both batched
    ((5, 3), (5, 3), (0, 0)),        # batched dot products
])
def test_matmul(sa, sb, in_axes):
    check(mm, RNG.normal(size=sa), RNG.normal(size=sb), in_axes=in_axes)


# ---- indexing -----------------------------------------------------------------------------------


def basic_index(x):
    return x[1:] * x[0] + x[-1]


def take(x, i):
    return x[i] * 2.0


def gather_rows(A, idx):
    return A[idx] + 1.0


def mixed_index(x, i, j):
    return x[1, i] + x[j, 0] * 2 + x[j, 1:3].sum()


def test_basic_indexing():
    check(basic_index, RNG.normal(size=(4, 5)))


def test_integer_index_per_example():
    x = RNG.normal(size=6)
    idx = np.array([0, 5, 2, -1, 3])
    np.testing.assert_allclose(gj.vmap(take, in_axes=(None, 0))(x, idx), x[idx] * 2.0)
    X = RNG.normal(size=(5, 6))
    np.testing.assert_allclose(gj.vmap(take, in_axes=(0, 0))(X, idx),
                               X[np.arange(5), idx] * 2.0)


def reference(f, *args):
    """The batched graph run by the numpy reference evaluator (no fusion, no numba)."""
    from gradjit.compiler.reference import evaluate
    out = evaluate(f.lower(*args).optimized, *args, check=True)
    return out[0] if len(out) == 1 else tuple(out)


def test_gather_with_index_arrays_reference():
    A = RNG.normal(size=(4, 6, 2))
    idx = np.array([5, 0, 0, 3])
    idxs = RNG.integers(0, 6, size=(4, 3))
    for args, axes in (((A, idx), (0, None)), ((A, idxs), (0, 0)), ((A[0], idxs), (None, 0))):
        np.testing.assert_allclose(reference(gj.vmap(gather_rows, in_axes=axes), *args),
                                   loop(gather_rows, *args, in_axes=axes))
    X, i, j = RNG.normal(size=(5, 4, 6)), np.array([0, 3, -1, 2, 5]), np.array([1, 2, 3, 0, -2])
    for axes in ((0, 0, 0), (None, 0, 0)):
        x = X if axes[0] == 0 else X[0]
        np.testing.assert_allclose(reference(gj.vmap(mixed_index, in_axes=axes), x, i, j),
                                   loop(mixed_index, x, i, j, in_axes=axes), rtol=1e-12)


def test_gather_with_index_arrays():
    A = RNG.normal(size=(4, 6, 2))
    idx = np.array([5, 0, 0, 3])
    check(gather_rows, A, idx, in_axes=(0, None))
    idxs = RNG.integers(0, 6, size=(4, 3))
    check(gather_rows, A, idxs, in_axes=(0, 0))
    check(gather_rows, A[0], idxs, in_axes=(None, 0))
    X, i, j = RNG.normal(size=(5, 4, 6)), np.array([0, 3, -1, 2, 5]), np.array([1, 2, 3, 0, -2])
    check(mixed_index, X, i, j)


def gather_loss(w, i):
    return np.sum(w[i] ** 2)


@pytest.mark.parametrize("compiled", [False, True])
def test_gradient_of_batched_gather_scatters_back(compiled):
    # the adjoint of a gather batched over examples is a batched scatter_add
    w = RNG.normal(size=(6, 2))
    idxs = RNG.integers(0, 6, size=(4, 3))
    f = gj.vmap(gj.grad(gather_loss), in_axes=(None, 0))
    g = f(w, idxs) if compiled else reference(f, w, idxs)
    want = np.zeros((4, 6, 2))
    for k in range(4):
        np.add.at(want[k], idxs[k], 2 * w[idxs[k]])
    np.testing.assert_allclose(g, want)


# ---- control flow ------------------------------------------------------------------------------


def loops(x, c):
    s = 0.0
    for i in range(x.shape[0]):  # the same trip count for every example
        s = s + x[i] ** 2 * c
    if s > 1.0:                  # a per-example branch: both sides, then a select
        s = s * 2
    while s < 100.0:             # a per-example condition: loop while any example continues
        s = s * 3 + np.sin(s)
    return s


def shared_branch(x, c):
    t = x
    k = 0
    while k < 3:                 # a condition that does not depend on the example
        t = np.sin(t) + c
        k = k + 1
    if c > 0:                    # a branch on an unmapped value stays a branch
        t = t * c
    return np.sum(t)


def taped(x):
    t = x
    while np.sum(t) < 10.0:      # its adjoint pops a tape, per example a different count
        t = t * 1.3 + np.sin(t) * 0.2
    return np.sum(t ** 2)


def per_example_trips(x, n):
    s = 0.0
    for i in range(n):           # a trip count that differs per example
        s = s + np.sin(x[i] * s + 1.0)
    return s


def test_control_flow_per_example_and_shared():
    X = RNG.uniform(0.1, 1, size=(6, 2))
    c = np.array([0.5, -0.3, 0.2, 1.0, -1.0, 0.1])
    check(loops, X, np.abs(c), in_axes=(0, 0), rtol=1e-12)
    check(loops, X, 0.7, in_axes=(0, None), rtol=1e-12)
    check(shared_branch, X, 0.5, in_axes=(0, None))
    check(shared_branch, X[0], c, in_axes=(None, 0))
    check(taped, X)
    ns = np.array([0, 1, 2, 2, 1, 0])
    check(per_example_trips, X, ns)


def test_per_example_gradients_through_loops_and_tapes():
    X = RNG.uniform(0.1, 1, size=(6, 2))
    ns = np.array([0, 1, 2, 2, 1, 0])
    for f, args in ((taped, (X,)), (per_example_trips, (X, ns)), (loops, (X, 0.7))):
        axes = (0,) * (len(args) - 1) + ((0,) if f is not loops else (None,))
        got = gj.vmap(gj.grad(f), in_axes=axes)(*args)
        want = loop(gj.grad(f), *args, in_axes=axes)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def lin(A, b):
    return np.linalg.solve(A, b) + np.linalg.det(A) + np.sum(np.linalg.inv(A))


def test_linalg_runs_once_per_example():
    A = RNG.normal(size=(5, 3, 3)) + 3 * np.eye(3)
    b = RNG.normal(size=(5, 3))
    check(lin, A, b, rtol=1e-10, atol=1e-12)
    check(lin, A, b[0], in_axes=(0, None), rtol=1e-10, atol=1e-12)
    spd = A @ np.swapaxes(A, 1, 2)
    check(lambda a, v: np.linalg.cholesky(a) @ v, spd, b, rtol=1e-10, atol=1e-12)


# ---- compositions with grad and jacobian -------------------------------------------------------


def himmelblau(x):
    return (x[0] ** 2 + x[1] - 11) ** 2 + (x[0] + x[1] ** 2 - 7) ** 2


def himmelblau_grad(P2):
    x, y = P2[:, 0], P2[:, 1]
    return np.stack([4 * x * (x**2 + y - 11) + 2 * (x + y**2 - 7),
                     2 * (x**2 + y - 11) + 4 * y * (x + y**2 - 7)], axis=1)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_per_sample_gradients_himmelblau(dtype):
    pts = RNG.uniform(-4, 4, size=(50, 2)).astype(dtype)
    g = gj.vmap(gj.grad(himmelblau))(pts)
    assert g.shape == (50, 2) and g.dtype == dtype
    tol = 1e-10 if dtype == np.float64 else 1e-3
    np.testing.assert_allclose(g, himmelblau_grad(pts.astype(np.float64)), rtol=tol, atol=tol)


def sq_err(w, x):
    return (np.tanh(x @ w) - 0.5) ** 2


def batched_loss(w, X):
    return np.sum(gj.vmap(sq_err, in_axes=(None, 0))(w, X))


def test_grad_of_function_calling_vmap_against_finite_differences():
    w = RNG.normal(size=3)
    X = RNG.normal(size=(8, 3))
    g = gj.grad(batched_loss)(w, X)
    eps = 1e-6
    fd = [(batched_loss_np(w + eps * e, X) - batched_loss_np(w - eps * e, X)) / (2 * eps)
          for e in np.eye(3)]
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8)
    assert np.isclose(gj.jit(batched_loss)(w, X), batched_loss_np(w, X))


def batched_loss_np(w, X):
    return np.sum((np.tanh(X @ w) - 0.5) ** 2)


def B(p):
    x, y, z = p[0], p[1], p[2]
    return np.stack([x**3 - y**2, y**2 + z**2, z**3 - x**2])


def B_jac(P3):
    x, y, z = P3[:, 0], P3[:, 1], P3[:, 2]
    o = np.zeros_like(x)
    return np.stack([np.stack([3 * x**2, -2 * y, o], -1), np.stack([o, 2 * y, 2 * z], -1),
                     np.stack([-2 * x, o, 3 * z**2], -1)], 1)


def test_vmap_of_jacobian_batched_jacobians():
    pts = RNG.normal(size=(6, 3))
    J = gj.vmap(gj.jacobian(B))(pts)
    assert J.shape == (6, 3, 3)
    np.testing.assert_allclose(J, B_jac(pts), rtol=1e-12)


def test_jacobian_of_vmap_has_per_point_blocks_on_the_diagonal():
    pts = RNG.normal(size=(4, 3))
    J = gj.jacobian(gj.vmap(B))(pts)
    assert J.shape == (4, 3, 4, 3)
    want = B_jac(pts)
    for i in range(4):
        for j in range(4):
            np.testing.assert_allclose(J[i, :, j, :], want[i] if i == j else 0.0, atol=0)


def test_vmap_of_hessian_and_nested_vmap():
    pts = RNG.uniform(-3, 3, size=(5, 2))
    H = gj.vmap(gj.hessian(himmelblau))(pts)
    for k in range(5):
        np.testing.assert_allclose(H[k], gj.hessian(himmelblau)(pts[k]), rtol=1e-12)
    X = RNG.normal(size=(3, 4, 5))
    np.testing.assert_allclose(gj.vmap(gj.vmap(ew_reduce))(X),
                               np.stack([[ew_reduce(r) for r in m] for m in X]), rtol=1e-12)


# ---- compilation, targets, errors --------------------------------------------------------------


def test_graph_verifies_and_new_batch_size_does_not_recompile():
    f = gj.vmap(ew_reduce)
    low = f.lower(np.ones((3, 4)))
    verify(low.transformed)
    verify(low.optimized)
    f(np.ones((3, 4)))
    before = gj.cache_info().compiles + gj.cache_info().disk_hits
    f(np.ones((11, 4)))
    f(np.ones((2, 9)))
    assert gj.cache_info().compiles + gj.cache_info().disk_hits == before


def test_parallel_target_loops_over_the_batch_with_prange():
    X = RNG.normal(size=(64, 2))
    f = gj.vmap(gj.grad(himmelblau), target="parallel")
    assert "prange(" in f.lower(X).source
    np.testing.assert_allclose(f(X), himmelblau_grad(X), rtol=1e-10)


def test_errors():
    X = RNG.normal(size=(4, 3))
    with pytest.raises(ValueError, match="different sizes"):
        gj.vmap(scalar_out)(X, np.ones((5, 3)))
    with pytest.raises(gj.GradjitError, match="at least one mapped"):
        gj.vmap(scalar_out, in_axes=None)(X, X)
    with pytest.raises(gj.GradjitError, match="out_axes=None"):
        gj.vmap(ew_reduce, out_axes=None)(X)
    with pytest.raises(ValueError, match="in_axes"):
        gj.vmap(scalar_out, in_axes=(0, 0, 0))(X, X)
    with pytest.raises(gj.GradjitError, match="out of range"):
        gj.vmap(ew_reduce, in_axes=2)(X)
    with pytest.raises(TypeError):
        gj.vmap(ew_reduce, in_axes="0")


# Primitives with no batching rule: batching them raises a TraceError naming the operation.
# ``const`` has no operands, so it is never batched. A new primitive must get a rule (in
# gradjit/compiler/batching.py) or be listed here.
NO_RULE = {"const"}


def test_primitives_lacking_a_batching_rule():
    # (one that stands for a graph, custom_vjp, is batched as that graph)
    lacking = {name for name, p in P.ALL.items() if p not in BATCH_RULES and p.expand is None}
    assert lacking == NO_RULE, f"lacking a batching rule: {sorted(lacking - NO_RULE)}"


class _Counted:
    def __init__(self):
        self.calls = 0

    def f(self, x):
        self.calls += 1
        return np.sin(x) * 2.0


def test_a_side_effect_inside_vmap_is_refused_with_its_line():
    # once per call or once per item: neither is what a reader of the loop would expect
    m = _Counted()
    with pytest.raises(gj.TraceError, match=r"test_vmap.py:\d+: a Python side effect .* inside "
                                            r"gj.vmap is not supported"):
        gj.vmap(m.f)(np.ones((2, 3)))
    assert m.calls == 0
