"""Kernel quality: small arrays held as scalar locals (with a kernel version specialised on
the sizes that static indices suggest), and batched code fused into one loop over the batch
with the small static axes unrolled. Each test checks the generated source and the values
(closed forms, or central finite differences)."""

import re

import numpy as np
import pytest

import gradjit as gj
from gradjit.compiler import primitives as P
from gradjit.compiler.codegen import cpu
from gradjit.compiler.codegen.backend import RuleTable
from benchmarks.workloads import softmax_xent as xent
from benchmarks.workloads import softmax_xent_grad


def himmelblau(x):
    return (x[0] ** 2 + x[1] - 11) ** 2 + (x[0] + x[1] ** 2 - 7) ** 2


def himmelblau_grad(x):
    a = x[0] ** 2 + x[1] - 11
    c = x[0] + x[1] ** 2 - 7
    return np.array([4 * a * x[0] + 2 * c, 2 * a + 4 * c * x[1]])


@gj.jit
def descend(x, lr, steps):
    for _ in range(steps):
        x = x - lr * gj.grad(himmelblau)(x)
    return x


def function_source(src, name):
    """The text of generated function ``name`` in a kernel module."""
    m = re.search(rf"^def {name}\(.*?(?=^@|^def |\Z)", src, re.MULTILINE | re.DOTALL)
    assert m, f"no function {name} in\n{src}"
    return m.group(0)


def block_after(text, header):
    """The lines of the block opened by the first line starting with ``header``."""
    lines = text.splitlines()
    start = next(k for k, ln in enumerate(lines) if ln.strip().startswith(header))
    indent = len(lines[start]) - len(lines[start].lstrip())
    out = []
    for ln in lines[start + 1:]:
        if ln.strip() and len(ln) - len(ln.lstrip()) <= indent:
            break
        out.append(ln)
    return "\n".join(out)


def code_lines(text):
    return [ln for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]


ALLOC = re.compile(r"np\.(empty|zeros|full|ones|concatenate)\(|\.copy\(\)|ascontiguousarray")


def fd_grad(f, x, h=1e-6):
    g = np.zeros_like(x)
    for k in range(x.size):
        e = np.zeros_like(x)
        e.flat[k] = h
        g.flat[k] = (f(x + e) - f(x - e)) / (2 * h)
    return g


# ---- small arrays as scalars --------------------------------------------------------------------


def test_descent_loop_carries_scalars_and_allocates_nothing():
    x = descend(np.zeros(2), 0.001, 30000)
    np.testing.assert_allclose(x, [3.0, 2.0], atol=1e-4)
    src = descend.lower(np.zeros(2), 0.001, 30000).source
    small = function_source(src, "kernel_small")
    body = block_after(small, "for ")
    assert not ALLOC.search(body), body
    assert "[" not in "".join(code_lines(body)), body  # no array reads or writes either
    assert len(ALLOC.findall(small)) == 1  # the returned array


def test_descent_other_sizes_take_the_general_kernel():
    # x of size 3: the same kernel module, the version for any size (x[2] has no gradient)
    x = descend(np.array([0.0, 0.0, 1.5]), 0.001, 30000)
    np.testing.assert_allclose(x, [3.0, 2.0, 1.5], atol=1e-4)
    # one step, checked against the closed-form gradient
    x0 = np.array([0.3, -1.2])
    np.testing.assert_allclose(descend(x0, 0.01, 1), x0 - 0.01 * himmelblau_grad(x0), rtol=1e-14)


def test_gradient_of_a_2_vector_allocates_only_its_result():
    g = gj.grad(himmelblau)
    for x in (np.array([1.5, -0.75]), np.array([-2.0, 3.0])):
        np.testing.assert_allclose(g(x), himmelblau_grad(x), rtol=1e-13)
    small = function_source(g.lower(np.zeros(2)).source, "kernel_small")
    assert len(ALLOC.findall(small)) == 1, small
    assert "for " not in small


def two_params(p):
    return (p[0] + 5 * p[1]) ** 2 + np.sin(p[0]) * p[1]


def test_hessian_of_two_parameters_is_straight_line_code():
    h = gj.hessian(two_params)
    p = np.array([2.0, 3.0])
    want = np.array([[2 - np.sin(2.0) * 3.0, 10 + np.cos(2.0)], [10 + np.cos(2.0), 50.0]])
    np.testing.assert_allclose(h(p), want, rtol=1e-13)
    small = function_source(h.lower(p).source, "kernel_small")
    assert "for " not in small and len(ALLOC.findall(small)) == 1, small


def small_ops(x):
    a = np.stack([x[0] * x[1], x[0] + x[1], np.sin(x[0])])
    m = a.reshape(3, 1) * a
    t = m.T + 2 * m + np.eye(3)[::-1]
    s = np.sum(t, axis=0)
    c = np.concatenate([s, a[::-1], np.cumsum(a)])
    return np.sum(c ** 2) + np.max(a) + np.prod(x)


def test_small_array_operations_against_finite_differences():
    vg = gj.value_and_grad(small_ops)
    for x in (np.array([0.7, -0.4]), np.array([1.3, 0.2])):
        val, g = vg(x)
        np.testing.assert_allclose(val, small_ops(x), rtol=1e-13)
        np.testing.assert_allclose(g, fd_grad(small_ops, x), rtol=1e-6, atol=1e-8)
    small = function_source(vg.lower(np.zeros(2)).source, "kernel_small")
    assert "for " not in small  # stack, reshape, transpose, sums, concatenate: all unrolled
    # float32 keeps its dtype through the scalar version
    _, g32 = vg(np.array([0.7, -0.4], np.float32))
    assert g32.dtype == np.float32
    np.testing.assert_allclose(g32, vg(np.array([0.7, -0.4]))[1], rtol=1e-4)


def shrink(p):
    x = p
    while np.sum(x * x) > 1.0:
        x = x * 0.5
    if x[0] + x[1] > 0:
        y = 2.0 * x
    else:
        y = -x
    return np.sum(y * p)


def test_small_values_through_while_and_if():
    g = gj.grad(shrink)
    for p, k, sign in ((np.array([3.0, 1.0]), 2, 2.0), (np.array([-0.5, 0.25]), 0, -1.0)):
        # x = p / 2**k and y = sign * x, so d/dp sum(y * p) = 2 * sign * p / 2**k
        np.testing.assert_allclose(g(p), 2 * sign * p / 2 ** k, rtol=1e-14)
        np.testing.assert_allclose(g(np.append(p, 0.0)), np.append(2 * sign * p / 2 ** k, 0.0),
                                   rtol=1e-14)
    small = function_source(g.lower(np.zeros(2)).source, "kernel_small")
    assert not ALLOC.search(block_after(small, "while True")), small


# ---- batched code: one loop over the batch ------------------------------------------------------


def b(p):
    x, y, z = p[0], p[1], p[2]
    return np.stack([x ** 3 - y ** 2, y ** 2 + z ** 2, z ** 3 - x ** 2])


def b_jacobian(P):
    x, y, z = P[:, 0], P[:, 1], P[:, 2]
    J = np.zeros((len(P), 3, 3))
    J[:, 0, 0], J[:, 0, 1] = 3 * x ** 2, -2 * y
    J[:, 1, 1], J[:, 1, 2] = 2 * y, 2 * z
    J[:, 2, 0], J[:, 2, 2] = -2 * x, 3 * z ** 2
    return J


def test_batched_jacobian_is_one_loop_writing_the_output():
    J = gj.vmap(gj.jacobian(b))
    P = np.random.default_rng(0).standard_normal((1000, 3))
    np.testing.assert_allclose(J(P), b_jacobian(P), rtol=1e-14)
    small = function_source(J.lower(P).source, "kernel_small")
    assert len(re.findall(r"^\s*for ", small, re.MULTILINE)) == 1, small
    assert len(ALLOC.findall(small)) == 1, small  # the (N, 3, 3) result, written in the loop
    # 4 coordinates per point: the general version (the fourth column is zero)
    P4 = np.concatenate([P[:5], np.ones((5, 1))], axis=1)
    got = J(P4)
    assert got.shape == (5, 3, 4)
    np.testing.assert_allclose(got[:, :, :3], b_jacobian(P4[:5, :3]), rtol=1e-14)
    assert not got[:, :, 3].any()


def test_per_example_gradients_fuse_into_one_loop():
    g = gj.vmap(gj.grad(himmelblau))
    X = np.random.default_rng(1).standard_normal((500, 2))
    np.testing.assert_allclose(g(X), np.stack([himmelblau_grad(x) for x in X]), rtol=1e-12, atol=1e-12)
    small = function_source(g.lower(X).source, "kernel_small")
    assert len(re.findall(r"^\s*for ", small, re.MULTILINE)) == 1, small


def batch_loss(P):
    q = np.stack([P[:, 0] * P[:, 1], P[:, 1] ** 2, np.cos(P[:, 2])], axis=1)  # (N, 3)
    return np.sum(q * np.array([1.0, -2.0, 0.5])) + np.sum(np.max(q, axis=1))


def test_reductions_over_the_batch_and_within_rows():
    vg = gj.value_and_grad(batch_loss)
    P = np.random.default_rng(2).standard_normal((50, 3))
    val, g = vg(P)
    np.testing.assert_allclose(val, batch_loss(P), rtol=1e-13)
    np.testing.assert_allclose(g, fd_grad(batch_loss, P), rtol=1e-6, atol=1e-7)


# ---- matrix-vector products computed row by row -------------------------------------------------


def mse(w, b, X, y):
    return np.mean((X @ w + b - y) ** 2)


def test_linear_model_gradient_reads_the_matrix_in_one_loop():
    g = gj.grad(mse, argnums=(0, 1))
    rng = np.random.default_rng(3)
    X, y, w = rng.standard_normal((300, 7)), rng.standard_normal(300), rng.standard_normal(7)
    gw, gb = g(w, 0.25, X, y)
    r = X @ w + 0.25 - y
    np.testing.assert_allclose(gw, 2 * X.T @ r / 300, rtol=1e-12)
    np.testing.assert_allclose(gb, 2 * r.mean(), rtol=1e-12)
    src = g.lower(w, 0.25, X, y).source
    assert "np.dot" not in src, src
    assert len(re.findall(r"^\s*for i0 ", src, re.MULTILINE)) == 1, src


def residual_form(w, X, y):
    r = np.tanh(X @ w) - y
    return 0.5 * np.sum((r @ X) ** 2) + np.sum(X.T @ y * w)


def test_row_products_both_ways_against_finite_differences():
    vg = gj.value_and_grad(residual_form)
    rng = np.random.default_rng(4)
    X, y, w = rng.standard_normal((40, 5)), rng.standard_normal(40), 0.3 * rng.standard_normal(5)
    val, g = vg(w, X, y)
    np.testing.assert_allclose(val, residual_form(w, X, y), rtol=1e-12)
    np.testing.assert_allclose(g, fd_grad(lambda v: residual_form(v, X, y), w), rtol=1e-6, atol=1e-7)


def write_rows(x):
    out = np.zeros((2, 3))
    out[1] = x * x
    out[0, 2] = np.sum(x)
    return np.sum(out * x)


def test_vmap_of_writes_into_a_local_array():
    X = np.random.default_rng(5).standard_normal((6, 3))
    got = gj.vmap(gj.value_and_grad(write_rows))(X)
    # sum(out * x) = sum(x**3) + sum(x) * x[2]
    want_val = np.sum(X ** 3, axis=1) + X.sum(axis=1) * X[:, 2]
    want_grad = 3 * X ** 2 + X[:, 2:3] + np.array([0.0, 0.0, 1.0]) * X.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(got[0], want_val, rtol=1e-13)
    np.testing.assert_allclose(got[1], want_grad, rtol=1e-13)


def test_parallel_row_loops_reduce_once_per_iteration():
    P = np.random.default_rng(6).standard_normal((3000, 3))
    par = gj.value_and_grad(batch_loss, target="parallel")
    val, g = par(P)
    ref_val, ref_g = gj.value_and_grad(batch_loss)(P)
    np.testing.assert_allclose(val, ref_val, rtol=1e-12)
    np.testing.assert_allclose(g, ref_g, rtol=1e-14)
    assert "prange" in par.lower(P).source


# ---- fewer temporaries: no copies, values computed where they are read, buffers reused --------


def log_density(x, A):
    return -0.5 * x @ A @ x - 0.25 * np.sum(x ** 4)


def test_log_density_gradient_reads_the_matrix_once_and_allocates_one_array():
    g = gj.grad(log_density)
    rng = np.random.default_rng(7)
    for d in (1, 2, 3, 17, 100):
        # A not symmetric: x @ A and A @ x both count
        x, A = rng.standard_normal(d), rng.standard_normal((d, d))
        np.testing.assert_allclose(g(x, A), -0.5 * (A + A.T) @ x - x ** 3, rtol=1e-12, atol=1e-12)
    kernel = function_source(g.lower(x, A).source, "kernel")
    code = "\n".join(code_lines(kernel))
    # x @ A and A @ x in one pass over A's rows, two rows at a time (then an odd last row):
    # each element is read once, into both products; the x @ A accumulator is the result
    # (x**3 and the row dots are added in as it goes)
    assert re.search(r"^\s*for i0 in range\(0, ", code, re.MULTILINE), kernel
    inner = re.findall(r"^( *)for j0 .*\n((?:\1    .*\n)+)", code + "\n", re.MULTILINE)
    assert [sorted(re.findall(r"v1\[(i\d), j0\]", body)) for _, body in inner] \
        == [["i0", "i1"], ["i0"]], kernel
    for _, body in inner:
        assert re.search(r"d_v\d+ = gj_acc_add\(", body), kernel
        assert re.search(r"v\d+\[j0\] \+= ", body), kernel
    body = code.split("def kernel(v0, v1):")[1]
    assert set(re.findall(r"\bv1\b(?!\.shape).{0,8}", body)) == {"v1[i0, j0]", "v1[i1, j0]"}, kernel
    assert len(ALLOC.findall(code)) == 1, kernel
    assert "np.dot" not in code and "broadcast_to" not in kernel, kernel
    try:
        g(np.ones(3), np.ones((3, 4)))
    except gj.ShapeError as err:
        assert "test_codegen.py" in str(err)
    else:
        raise AssertionError("mismatched sizes were not caught")


def tanh_and_quadratic(x, A):
    return np.sum(np.tanh(A @ x)) + 0.5 * x @ A @ x


def quadratic_and_sums(x, A):
    return -0.5 * x @ A @ x - np.sum(x) * np.sum(A @ x)


def bilinear(x, y, B):
    return x @ B @ y + np.sum(x ** 2) + np.sum(np.sin(y))


def test_products_with_one_matrix_both_ways_against_closed_forms():
    rng = np.random.default_rng(12)
    for n in (1, 4, 7):
        x, A = rng.standard_normal(n), rng.standard_normal((n, n))
        one = np.ones(n)
        got = gj.grad(tanh_and_quadratic)(x, A)
        want = A.T @ (1 - np.tanh(A @ x) ** 2) + 0.5 * (A + A.T) @ x
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        got = gj.grad(quadratic_and_sums)(x, A)
        want = -0.5 * (A + A.T) @ x - np.sum(A @ x) * one - np.sum(x) * A.T @ one
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        # B not square: x @ B and B @ y are not added into each other
        y, B = rng.standard_normal(n + 2), rng.standard_normal((n, n + 2))
        gx, gy = gj.grad(bilinear, argnums=(0, 1))(x, y, B)
        np.testing.assert_allclose(gx, B @ y + 2 * x, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(gy, B.T @ x + np.cos(y), rtol=1e-12, atol=1e-12)
    # A @ x joins the earlier loop that reads A for x @ A: two passes over A, not three
    kernel = function_source(gj.grad(quadratic_and_sums).lower(x, A).source, "kernel")
    assert len(re.findall(r"^\s*for i0 in range\(0, ", kernel, re.MULTILINE)) == 2, kernel
    assert "np.dot" not in kernel, kernel


def product_minus_square(x, A):
    return (2 * x) @ A - x ** 2


def square_minus_product(x, A):
    return x ** 2 - (2 * x) @ A


def test_a_sum_over_rows_takes_elementwise_terms_in_the_same_pass():
    rng = np.random.default_rng(13)
    for n in (1, 2, 5):
        x, A = rng.standard_normal(n), rng.standard_normal((n, n))
        for fn in (product_minus_square, square_minus_product):
            np.testing.assert_allclose(gj.jit(fn)(x, A), fn(x, A), rtol=1e-12, atol=1e-12)
    # (2x) @ A is summed row by row; x**2 is subtracted from element i in iteration i
    kernel = function_source(gj.jit(product_minus_square).lower(x, A).source, "kernel")
    assert len(re.findall(r"^\s*for i0 ", kernel, re.MULTILINE)) == 1, kernel
    assert re.search(r"^\s*v\d+\[i0\] -= ", kernel, re.MULTILINE), kernel


def shifted_exp(x):
    return np.sum(np.exp(x) * (x - np.max(x)))


def test_a_value_read_only_by_a_later_loop_is_computed_there():
    f = gj.jit(shifted_exp)
    for x in (np.linspace(-1.0, 2.0, 7), np.array([0.5])):
        np.testing.assert_allclose(f(x), np.sum(np.exp(x) * (x - x.max())), rtol=1e-13)
    kernel = function_source(f.lower(np.zeros(7)).source, "kernel")
    assert not ALLOC.search("\n".join(code_lines(kernel))), kernel  # exp(x) is not stored


def centered(x):
    return np.sum(x ** 3 * (x - np.mean(x)))


def test_result_overwrites_a_temporary_that_is_no_longer_read():
    vg = gj.value_and_grad(centered)
    x = np.random.default_rng(8).standard_normal(30)
    val, g = vg(x)
    m = x.mean()
    np.testing.assert_allclose(val, np.sum(x ** 3 * (x - m)), rtol=1e-12)
    np.testing.assert_allclose(g, 3 * x ** 2 * (x - m) + x ** 3 - np.mean(x ** 3), rtol=1e-12)
    kernel = function_source(vg.lower(x).source, "kernel")
    # x**3 and x - mean are stored (two loops read them); the gradient reuses one of them
    assert len(ALLOC.findall("\n".join(code_lines(kernel)))) == 2, kernel


def views_of_a_temporary(X):
    u = np.exp(X - np.mean(X))
    w = u * 2.0 + X
    return np.sum(u * u.T) + np.sum(u[0] * w[:, 0]) + np.sum(w * X)


def test_temporaries_read_through_views_keep_their_values():
    vg = gj.value_and_grad(views_of_a_temporary)
    X = 0.3 * np.random.default_rng(9).standard_normal((4, 4))
    val, g = vg(X)
    np.testing.assert_allclose(val, views_of_a_temporary(X), rtol=1e-12)
    np.testing.assert_allclose(g, fd_grad(views_of_a_temporary, X), rtol=1e-6, atol=1e-8)


def squares_times_centered(x, A):
    y = x ** 2
    t = x - np.sum(x)
    return np.sum((A @ y) * t)


def test_a_vector_read_whole_by_a_row_product_is_complete_before_it():
    f = gj.jit(squares_times_centered)
    rng = np.random.default_rng(10)
    x, A = rng.standard_normal(6), rng.standard_normal((6, 6))
    np.testing.assert_allclose(f(x, A), np.sum((A @ x ** 2) * (x - x.sum())), rtol=1e-12)
    kernel = function_source(f.lower(x, A).source, "kernel")
    # x**2 is only read by the row loop of A @ y, but whole: it stays stored by the loop before
    w = re.search(r"gj_acc_add\(d_v\d+, v\d+\[i0, j0\] \* (v\d+)\[j0\]\)", kernel)
    assert w and re.search(rf"^\s*{w.group(1)} = np\.empty", kernel, re.MULTILINE), kernel
    g = gj.grad(squares_times_centered)(x, A)
    np.testing.assert_allclose(g, fd_grad(lambda v: squares_times_centered(v, A), x),
                               rtol=1e-6, atol=1e-7)


# ---- products with the identity seeds of Jacobians and Hessians ---------------------------------


def linear_map(x, M):
    return np.tanh(M @ x) + M.T @ x


def test_hessian_of_a_quadratic_form_multiplies_no_matrices():
    h = gj.hessian(log_density)
    rng = np.random.default_rng(11)
    for d in (3, 30):
        x, A = rng.standard_normal(d), rng.standard_normal((d, d))
        np.testing.assert_allclose(h(x, A), -0.5 * (A + A.T) - np.diag(3 * x ** 2), rtol=1e-12)
    src = h.lower(x, A).source
    # the seeds (identity matrices) times A are A itself: one fused loop, no d^3 products
    assert "np.dot" not in src, src
    assert len(ALLOC.findall("\n".join(code_lines(function_source(src, "kernel"))))) <= 4, src


def test_jacobian_through_identity_seeds_against_the_closed_form():
    rng = np.random.default_rng(12)
    x, M = rng.standard_normal(4), rng.standard_normal((4, 4))
    J = gj.jacobian(linear_map)(x, M)
    want = (1 - np.tanh(M @ x) ** 2)[:, None] * M + M.T
    np.testing.assert_allclose(J, want, rtol=1e-12)
    # another size: the same kernel, the identity built at run time
    x3, M3 = rng.standard_normal(3), rng.standard_normal((3, 3))
    np.testing.assert_allclose(gj.jacobian(linear_map)(x3, M3),
                               (1 - np.tanh(M3 @ x3) ** 2)[:, None] * M3 + M3.T, rtol=1e-12)


def test_general_version_is_compiled_only_when_another_size_arrives():
    gj.clear_cache()
    g = gj.grad(himmelblau)
    x = np.array([1.0, 2.0])
    np.testing.assert_allclose(g(x), himmelblau_grad(x))
    (entry,) = g.cache.values()
    assert entry.kernel is not entry.full and not entry.full.signatures  # small version only
    x3 = np.array([1.0, 2.0, 5.0])
    np.testing.assert_allclose(g(x3), np.append(himmelblau_grad(x3[:2]), 0.0))
    assert entry.kernel is entry.full and entry.full.signatures  # switched, compiled once
    np.testing.assert_allclose(g(x), himmelblau_grad(x))  # the general version serves 2 too
    assert len(g.cache) == 1


# ---- softmax losses: row reductions in registers, no dense one-hot cotangent ------------------


def test_softmax_cross_entropy_keeps_row_sums_in_registers_and_scatters_once():
    rng = np.random.default_rng(7)
    W, X = rng.standard_normal((6, 5)), rng.standard_normal((40, 6))
    for y in (rng.integers(0, 5, 40), rng.integers(-5, 0, 40)):  # negative labels count from the end
        want = softmax_xent_grad(W, X, y)  # the closed form X.T (p - onehot) / n
        np.testing.assert_allclose(gj.grad(xent)(W, X, y), want, rtol=1e-12, atol=1e-15)
    src = gj.grad(xent).lower(W, X, y).source
    # the row sum of the one-hot cotangent is the scattered value itself: no zero matrix
    assert src.count("+= ") == 1 and not re.search(r"np\.full\(\(\w+, \w+\), 0\.0", src)
    # the row max and the row sum of exp accumulate in locals, stored once per row
    assert re.search(r"a_v\d+ = gj_acc_max\(a_v\d+, ", src)
    assert re.search(r"a_v\d+ = gj_acc_add\(a_v\d+, ", src)
    with np.testing.assert_raises(IndexError):
        gj.grad(xent)(W, X, np.full(40, 5))


def _reduction(red, axis):
    return lambda a: red(a * 2.0, axis=axis)


def test_row_reductions_of_every_kind_against_numpy():
    rng = np.random.default_rng(3)
    x = rng.uniform(0.5, 1.5, (7, 4, 3)).astype(np.float32)
    for axis in ((1, 2), 2, (1,)):
        for red in (np.sum, np.max, np.min, np.prod):
            got = gj.jit(_reduction(red, axis))(x)
            assert got.dtype == np.float32
            np.testing.assert_allclose(got, red(x * 2.0, axis=axis), rtol=2e-6)


# ---- the rule tables ----------------------------------------------------------------------------


def test_a_missing_rule_names_the_primitive_the_table_and_the_backend():
    # elementwise: in loops and scalars only
    with pytest.raises(gj.GradjitError, match="no CPU lowering for primitive 'exp' in ARRAY_RULES"):
        cpu.ARRAY_RULES.lookup(P.exp_p)
    assert cpu.LOOP_RULES.lookup(P.exp_p) is cpu.LOOP_RULES.lookup(P.sin_p)  # one per family
    table = RuleTable("CPU", "TEST_RULES", "a test")
    table.register(P.exp_p)(lambda em, e: None)
    with pytest.raises(gj.GradjitError, match=r"two CPU rules for primitive 'exp' in TEST_RULES"):
        table.register(P.exp_p)(lambda em, e: None)


def test_float32_sums_accumulate_in_float64_and_are_cast_back():
    x = np.linspace(0.5, 1.5, 7).astype(np.float32)
    src = gj.jit(lambda x: np.sum(x * x)).lower(x).source
    assert re.search(r"(\w+) = 0\.0\n", src) and re.search(r"(\w+) = np\.float32\(\1\)", src), src
