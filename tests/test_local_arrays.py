"""Local arrays written element by element (issue 3, part 2): `out[i] = v`, `A[i, j] = v`,
`out[a:b] = v`, `out[i] += v`, in straight-line code, loops and branches. Values and reverse-mode
gradients against closed forms and central differences, one compile for every size, writes
lowered in place (no per-iteration copy, no whole array on the tape), and the error for
writing into an input."""

import os
import re
import sys

import numpy as np
import pytest

import gradjit as gj
from gradjit.compiler.ir import verify

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples"))
import local_arrays as L  # noqa: E402  (the shipped workloads)

HERE = os.path.basename(__file__)


# a fresh cache directory, so compile counts are this module's own (conftest.py)
pytestmark = pytest.mark.usefixtures("module_cache_dir")


def central(f, x, h=1e-6, coords=None):
    """Central differences of ``f`` at ``x`` (only at ``coords``, flat indices, if given)."""
    x = np.array(x, dtype=np.float64)
    g = np.zeros_like(x)
    for idx in (np.ndindex(x.shape) if coords is None else
                [np.unravel_index(c, x.shape) for c in coords]):
        e = np.zeros_like(x)
        e[idx] = h
        g[idx] = (f(x + e) - f(x - e)) / (2 * h)
    return g


def compiles():
    return gj.cache_info().compiles


def rng(n, seed=0):
    return np.random.default_rng(seed).standard_normal(n)


def loop_lines(src):
    """The lines of generated source that run inside a loop."""
    out, stack = [], []
    for line in src.splitlines():
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        ind = len(line) - len(line.lstrip())
        while stack and ind <= stack[-1]:
            stack.pop()
        if stack:
            out.append(text)
        if re.match(r"(for|while)\b", text):
            stack.append(ind)
    return out


def assert_no_array_copy_per_iteration(src, row_tapes=False):
    inner = loop_lines(src)
    assert inner, "expected loops in the kernel"
    copies = [line for line in inner if ".copy()" in line or "np.empty(" in line]
    if row_tapes:  # rows may be computed and copied (`v = v.copy()`: a view's own elements)
        copies = [line for line in copies if not re.fullmatch(r"(\w+) = \1\.copy\(\)", line)
                  and not re.search(r"np\.empty\(\(\w+,\)", line)]
    assert not copies, copies
    # tapes hold what a write overwrote: `(np.empty((max(n, 16),), dtype), 0)` for an element
    # (which the pattern does not match), one more size for a row; never the whole array
    tapes = re.findall(r"np\.empty\(\(max\([^()]*\), ([^()]*)\)", src)
    assert all(len([d for d in t.split(",") if d.strip()]) <= int(row_tapes) for t in tapes), tapes


# =============================================================================================
# The three workloads, at n = 10 and n = 100000 with one compile
# =============================================================================================


def test_cumsum_loop_one_compile():
    f, g = gj.jit(L.cumsum_loop), gj.grad(L.cumsum_loop)
    x = rng(10)
    assert f(x) == pytest.approx(L.cumsum_loop(x), rel=1e-12)
    np.testing.assert_allclose(g(x), central(L.cumsum_loop, x), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(g(x), L.cumsum_grad_closed(x), rtol=1e-12)
    before = compiles()
    x = rng(100000, 1)
    assert f(x) == pytest.approx(L.cumsum_loop(x), rel=1e-10)
    np.testing.assert_allclose(g(x), L.cumsum_grad_closed(x), rtol=1e-9)
    assert compiles() == before


def test_stencil_one_compile():
    f, g = gj.jit(L.stencil), gj.grad(L.stencil)
    u = rng(10, 2)
    assert f(u) == pytest.approx(L.stencil(u), rel=1e-12)
    np.testing.assert_allclose(g(u), central(L.stencil, u), rtol=1e-6, atol=1e-8)
    before = compiles()
    u = rng(100000, 3)
    assert f(u) == pytest.approx(L.stencil(u), rel=1e-10)
    want = L.stencil_grad_closed(u)
    np.testing.assert_allclose(g(u), want, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(g(u)[[0, 1, 500, 99998, 99999]],
                               central(L.stencil, u, h=1e-5, coords=[0, 1, 500, 99998, 99999])
                               [[0, 1, 500, 99998, 99999]], rtol=1e-4)
    assert compiles() == before


def test_euler_sensitivity_matches_the_analytic_one():
    vg = gj.value_and_grad(L.euler)
    for p, n in ((np.array([0.7, 1.3]), 10), (np.array([0.7, 1.3]), 2000),
                 (np.array([0.001, 0.002]), 100000)):
        if n == 2000:
            before = compiles()
        y, dy = vg(p, 0.5, n)
        want_y, want_dy = L.euler_closed(p, 0.5, n)
        assert y == pytest.approx(want_y, rel=1e-10)
        assert y == pytest.approx(L.euler(p, 0.5, n), rel=1e-12)
        np.testing.assert_allclose(dy, want_dy, rtol=1e-8)
    assert compiles() == before  # a new trip count is not a new signature


def test_euler_initial_value_gradient():
    g = gj.grad(L.euler, argnums=1)
    p = np.array([0.3, 0.1])
    assert g(p, 0.5, 50) == pytest.approx((1 - 0.01 * 0.3) ** 50, rel=1e-12)


def test_rows_of_a_trajectory_written_in_a_loop():
    p, y0 = np.array([0.5, 2.0, 0.1]), np.array([1.0, -0.5, 2.0])
    g = gj.grad(L.euler_rows, argnums=(0, 1))
    for n in (10, 3000):
        a = 1 - 0.01 * p  # y_n = a^n y0 in each component
        assert gj.jit(L.euler_rows)(p, y0, n) == pytest.approx(np.sum(a ** n * y0), rel=1e-12)
        gp, gy = g(p, y0, n)
        np.testing.assert_allclose(gp, n * a ** (n - 1) * -0.01 * y0, rtol=1e-10)
        np.testing.assert_allclose(gy, a ** n, rtol=1e-10)
    assert_no_array_copy_per_iteration(g.lower(p, y0, 10).source, row_tapes=True)


# =============================================================================================
# The forms of writes
# =============================================================================================


def test_straight_line_writes_and_second_derivative():
    a, b = 1.5, 2.0
    assert gj.jit(L.straight)(a, b) == pytest.approx(L.straight(a, b))
    ga, gb = gj.grad(L.straight, argnums=(0, 1))(a, b)
    # out = [a, ab, ab^2]: f = a^2 + a^2 b^2 + a^2 b^4
    assert ga == pytest.approx(2 * a * (1 + b ** 2 + b ** 4))
    assert gb == pytest.approx(a ** 2 * (2 * b + 4 * b ** 3))
    h = gj.grad(gj.grad(L.straight))
    assert h(a, b) == pytest.approx(2 * (1 + b ** 2 + b ** 4))
    assert h(-0.3, 0.5) == pytest.approx(2 * (1 + 0.5 ** 2 + 0.5 ** 4))


def test_hessian_and_vmap_of_local_array_writes():
    x = rng(3, 18)
    np.testing.assert_allclose(gj.hessian(L.slice_write)(x), np.diag([8.0, 8.0, 2.0]), atol=1e-12)
    X = np.random.default_rng(19).standard_normal((4, 6))
    np.testing.assert_allclose(gj.vmap(L.cumsum_loop)(X), [L.cumsum_loop(r) for r in X],
                               rtol=1e-12)
    np.testing.assert_allclose(gj.vmap(gj.grad(L.cumsum_loop))(X),
                               [L.cumsum_grad_closed(r) for r in X], rtol=1e-12)


def test_two_d_element_writes_in_nested_loops():
    x = rng(6, 4)
    assert gj.jit(L.matrix_fill)(x) == pytest.approx(L.matrix_fill(x), rel=1e-12)
    np.testing.assert_allclose(gj.grad(L.matrix_fill)(x), central(L.matrix_fill, x),
                               rtol=1e-6, atol=1e-8)


def test_a_table_filled_in_nested_loops_from_its_own_entries():
    g = gj.grad(L.dp_table)
    for seed in (16, 17):
        x = rng(7, seed) * 0.5
        assert gj.jit(L.dp_table)(x) == pytest.approx(L.dp_table(x), rel=1e-12)
        np.testing.assert_allclose(g(x), central(L.dp_table, x), rtol=1e-6, atol=1e-8)
    # the outer loop tapes the elements the inner loop overwrites, not the table
    src = g.lower(x).source
    assert "tape_push" in src
    assert not re.findall(r"np\.empty\(\(max\([^()]*\), ([^()]*)\)", src)  # element tapes only


def test_overwriting_an_element_twice():
    x = rng(10, 5)
    assert gj.jit(L.overwrite_twice)(x) == pytest.approx(L.overwrite_twice(x), rel=1e-12)
    np.testing.assert_allclose(gj.grad(L.overwrite_twice)(x), central(L.overwrite_twice, x),
                               rtol=1e-6, atol=1e-8)
    src = gj.grad(L.overwrite_twice).lower(x).source
    assert_no_array_copy_per_iteration(src)


def test_writes_in_both_branches_of_an_if_in_a_loop():
    x = rng(12, 6)
    assert (x > 0).any() and (x < 0).any()
    g = gj.grad(L.branch_writes)
    assert gj.jit(L.branch_writes)(x) == pytest.approx(L.branch_writes(x), rel=1e-12)
    np.testing.assert_allclose(g(x), np.where(x > 0, 2 * x, 3.0), rtol=1e-12)
    np.testing.assert_allclose(g(x), central(L.branch_writes, x), rtol=1e-6)
    assert_no_array_copy_per_iteration(g.lower(x).source)


@pytest.mark.parametrize("name", ["two_arrays_one_if", "write_until_break"])
def test_writes_under_branches_and_breaks(name):
    fn = getattr(L, name)
    g = gj.grad(fn)
    for seed in (20, 21):
        x = rng(12, seed)
        assert gj.jit(fn)(x) == pytest.approx(fn(x), rel=1e-12)
        np.testing.assert_allclose(g(x), central(fn, x), rtol=1e-5, atol=1e-6)
    assert_no_array_copy_per_iteration(g.lower(x).source)


def test_slice_write_with_static_bounds():
    x = rng(3, 7)
    assert gj.jit(L.slice_write)(x) == pytest.approx(L.slice_write(x), rel=1e-12)
    np.testing.assert_allclose(gj.grad(L.slice_write)(x), [8 * x[0], 8 * x[1], 2 * x[2]],
                               rtol=1e-12)


def test_elements_read_back_in_later_iterations():
    g = gj.grad(L.recurrence)
    x = rng(10, 8)
    np.testing.assert_allclose(g(x), central(L.recurrence, x), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(g(x), L.recurrence_grad_closed(x), rtol=1e-12)
    before = compiles()
    x = rng(100000, 9) * 0.1
    assert gj.jit(L.recurrence)(x) == pytest.approx(L.recurrence(x), rel=1e-10)
    np.testing.assert_allclose(g(x), L.recurrence_grad_closed(x), rtol=1e-9)
    assert compiles() <= before + 1  # the jit above is its own transform
    assert_no_array_copy_per_iteration(g.lower(x).source)


def test_writes_in_a_while_loop():
    x = rng(9, 10)
    assert gj.jit(L.while_fill)(x) == pytest.approx(L.while_fill(x), rel=1e-12)
    np.testing.assert_allclose(gj.grad(L.while_fill)(x), central(L.while_fill, x),
                               rtol=1e-6, atol=1e-8)
    assert_no_array_copy_per_iteration(gj.grad(L.while_fill).lower(x).source)


@pytest.mark.parametrize("name, shape", [("row_writes", (70, 3)), ("chained_index", (3,)),
                                         ("dynamic_slices", (6,))])
def test_row_chained_and_dynamic_slice_writes(name, shape):
    fn = getattr(L, name)
    x = np.random.default_rng(15).standard_normal(shape)
    assert gj.jit(fn)(x) == pytest.approx(fn(x), rel=1e-12)
    np.testing.assert_allclose(gj.grad(fn)(x), central(fn, x), rtol=1e-6, atol=1e-7)


def test_writing_a_value_of_the_wrong_size_is_a_shape_error():
    x = np.array([1.5])  # out[1:] and x[1:] are empty: fine
    assert gj.jit(L.dynamic_slices)(x) == pytest.approx(L.dynamic_slices(x))
    with pytest.raises(gj.ShapeError):
        gj.jit(wrong_size)(np.ones(5))


def wrong_size(x):
    out = np.zeros(x.shape[0])
    out[1:] = x[2:]
    return np.sum(out)


def test_augmented_assignment_and_aliases():
    x = rng(7, 11)
    assert gj.jit(L.accumulate_writes)(x) == pytest.approx(L.accumulate_writes(x), rel=1e-12)
    np.testing.assert_allclose(gj.grad(L.accumulate_writes)(x), central(L.accumulate_writes, x),
                               rtol=1e-6, atol=1e-8)


def test_writing_into_a_copy_of_an_argument():
    x = rng(4, 12)
    keep = x.copy()
    assert gj.jit(L.copy_then_write)(x) == pytest.approx(L.copy_then_write(x), rel=1e-12)
    np.testing.assert_allclose(gj.grad(L.copy_then_write)(x), central(L.copy_then_write, x),
                               rtol=1e-6, atol=1e-8)
    np.testing.assert_array_equal(x, keep)


# =============================================================================================
# In-place lowering
# =============================================================================================


@pytest.mark.parametrize("name", ["cumsum_loop", "stencil"])
def test_generated_source_has_no_per_iteration_copy(name):
    fn = getattr(L, name)
    x = rng(10)
    assert_no_array_copy_per_iteration(gj.grad(fn).lower(x).source)
    assert_no_array_copy_per_iteration(gj.jit(fn).lower(x).source)


def test_euler_source_has_no_per_iteration_copy():
    low = gj.grad(L.euler).lower(np.array([0.7, 1.3]), 0.5, 10)
    verify(low.optimized)
    assert_no_array_copy_per_iteration(low.source)


def keeps_old_value(x):
    a = np.zeros(3)
    a[0] = x[0]
    b = a * 1.0 + 0.0  # reads `a` ...
    a[1] = x[1]  # ... which is still used after this write: one copy, not an aliasing bug
    return np.sum(b * b) + np.sum(a * 3.0)


def test_a_write_copies_when_the_old_value_is_used_later():
    x = rng(3, 13)
    assert gj.jit(keeps_old_value)(x) == pytest.approx(keeps_old_value(x), rel=1e-12)
    np.testing.assert_allclose(gj.grad(keeps_old_value)(x), central(keeps_old_value, x),
                               rtol=1e-6, atol=1e-8)


def old_view_read(x):
    a = x * 1.0
    s = a[0:2]  # a view of `a`: numpy shows later writes into `a` through it
    a[0] = 5.0
    return np.sum(s * s)  # <stale-view>


def view_read_before_write(x):
    a = x * 1.0
    s = a[0:2]
    t = np.sum(s * s)  # read before the write: fine
    a[0] = 5.0
    return t + np.sum(a)


def test_reading_a_view_after_writing_into_its_array():
    with pytest.raises(gj.TraceError) as ei:
        gj.jit(old_view_read)(np.ones(3))
    assert _line("stale-view") in str(ei.value) and "view of 'a'" in str(ei.value)
    x = rng(3, 14)
    assert gj.jit(view_read_before_write)(x) == pytest.approx(view_read_before_write(x), rel=1e-12)
    np.testing.assert_allclose(gj.grad(view_read_before_write)(x),
                               central(view_read_before_write, x), rtol=1e-6, atol=1e-8)


def alias_in_loop(x):
    out = np.zeros_like(x)
    other = out
    for i in range(x.shape[0]):
        out[i] = x[i]
    return np.sum(other)  # <loop-alias>


def test_a_second_name_of_an_array_written_in_a_loop():
    with pytest.raises(gj.TraceError) as ei:
        gj.jit(alias_in_loop)(np.ones(100))
    assert _line("loop-alias") in str(ei.value) and "'out'" in str(ei.value)


# =============================================================================================
# Errors
# =============================================================================================


def writes_argument(x):
    x[0] = 1.0  # <arg>
    return np.sum(x)


def writes_argument_in_loop(x):
    for i in range(x.shape[0]):
        x[i] = x[i] * 2.0  # <arg-loop>
    return np.sum(x)


def writes_argument_alias(x):
    y = x
    y[0] = 1.0  # <alias>
    return np.sum(y)


def writes_argument_view(x):
    y = x[1:]
    y[0] = 1.0  # <view>
    return np.sum(y)


GLOBAL_ARRAY = np.ones(3)


def writes_global(x):
    GLOBAL_ARRAY[0] = x[0]  # <global>
    return np.sum(GLOBAL_ARRAY)


def _line(marker):
    with open(__file__) as f:
        for k, text in enumerate(f, 1):
            if text.rstrip().endswith(f"# <{marker}>"):
                return f"{HERE}:{k}"
    raise LookupError(marker)


@pytest.mark.parametrize("fn, marker", [
    (writes_argument, "arg"), (writes_argument_in_loop, "arg-loop"),
    (writes_argument_alias, "alias"), (writes_argument_view, "view"),
    (writes_global, "global"),
])
def test_writing_into_an_input_is_a_trace_error(fn, marker):
    for t in (gj.jit, gj.grad):
        with pytest.raises(gj.TraceError) as ei:
            t(fn)(np.ones(4))
        msg = str(ei.value)
        assert _line(marker) in msg and "must not mutate their inputs" in msg, msg


def writes_local_view(x):
    a = np.zeros(4)
    row = a[1:3]
    row[0] = x[0]  # <local-view>
    return np.sum(a)


def test_writing_into_a_view_of_a_local_array_is_a_trace_error():
    with pytest.raises(gj.TraceError) as ei:
        gj.jit(writes_local_view)(np.ones(4))
    assert _line("local-view") in str(ei.value) and "'a'" in str(ei.value)
