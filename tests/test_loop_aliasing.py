"""A loop (or if) with a test known only at run time may hand back an array it was given,
unchanged: a loop's initial value when it runs no times. Two consequences, each checked for
while and for loops running zero, one and several times (trip counts known only at run
time), forward (gj.jit, against numpy) and reverse (gj.grad, against closed forms):

- the kernels: an update in place of a buffer that a loop's result may still be must not
  change that result. The gradient of a zero-trip loop used to count a cotangent twice: the
  backward loop's result was its zero initial buffer itself, which the optimiser shares with
  another zero cotangent, updated in place (y[0]'s) afterwards. The buffer is copied then,
  and only when it is in fact shared at run time (no copy when the loop ran);
- numpy's aliasing: after `b = a` and a loop that rebinds `b`, `b` is `a` on some runs only.
  A write into one of them is seen through the other on those runs only, which no value of
  the IR follows: a TraceError where the other is read (as for a second name of an array
  written in a loop), and where the two are never one array (a swap, a copy) no error.
"""

import os

import numpy as np
import pytest

import gradjit as gj

HERE = os.path.basename(__file__)

pytestmark = pytest.mark.usefixtures("module_cache_dir")


def _line(marker):
    with open(__file__) as f:
        for k, text in enumerate(f, 1):
            if text.rstrip().endswith(f"# <{marker}>"):
                return f"{HERE}:{k}"
    raise LookupError(marker)


E0 = np.array([1.0, 0.0])

# =============================================================================================
# Gradients through loops that run zero, one or several times
# =============================================================================================


def while_scaled(x, y):
    s = y[0] * 5.0
    v = x
    while np.sum(v) < 0.0:
        v = v + y
    return s + np.sum(v * y)


def while_sin(x, y):
    s = np.sin(y[0])
    v = x
    while np.sum(v) < 0.0:
        v = v + y
    return s + np.sum(v * y)


def while_square(x, y):
    s = y[0] * y[0]
    v = x
    while np.sum(v) < 0.0:
        v = v + y
    return s + np.sum(v * y)


def while_peeled(x, y):
    s = y[0] * 5.0
    v = x
    k = 0
    while k < 1 or np.sum(v) < 0.0:  # the first trip is certain: run before the loop
        v = v + y
        k += 1
    return s + np.sum(v * y)


def trips(x, y, at_least=0):
    """How many times `while np.sum(v) < 0: v = v + y` runs from v = x."""
    v, k = x.copy(), 0
    while k < at_least or np.sum(v) < 0.0:
        v = v + y
        k += 1
    return k


# (x, y) pairs: zero, one and three trips
POINTS = [
    (np.array([1.0, 2.0]), np.array([3.0, 4.0])),
    (np.array([-3.0, 1.0]), np.array([1.0, 2.0])),
    (np.array([-7.0, -1.0]), np.array([1.0, 2.0])),
]
# d/dy of the term in y[0]: 5 y0, sin(y0), y0 * y0
LEADING = {while_scaled: lambda y0: 5.0, while_sin: np.cos, while_square: lambda y0: 2.0 * y0}


@pytest.mark.parametrize("fn", [while_scaled, while_sin, while_square])
@pytest.mark.parametrize("point", range(3))
def test_grad_through_a_while_loop(fn, point):
    x, y = POINTS[point]
    k = trips(x, y)
    assert k == [0, 1, 3][point]
    # f = lead(y0) + sum((x + k y) * y): df/dy = lead'(y0) e0 + x + 2 k y
    want = LEADING[fn](y[0]) * E0 + x + 2 * k * y
    np.testing.assert_allclose(gj.grad(fn, argnums=1)(x, y), want, rtol=1e-13)
    val, g = gj.value_and_grad(fn, argnums=1)(x, y)
    assert val == pytest.approx(fn(x, y), rel=1e-13)
    np.testing.assert_allclose(g, want, rtol=1e-13)
    assert gj.jit(fn)(x, y) == pytest.approx(fn(x, y), rel=1e-13)


@pytest.mark.parametrize("point", range(3))
def test_grad_when_the_loop_left_after_peeling_runs_no_times(point):
    x, y = POINTS[point]
    k = trips(x, y, at_least=1)
    want = 5.0 * E0 + x + 2 * k * y
    np.testing.assert_allclose(gj.grad(while_peeled, argnums=1)(x, y), want, rtol=1e-13)
    assert gj.jit(while_peeled)(x, y) == pytest.approx(while_peeled(x, y), rel=1e-13)


def for_range(x, y, n):
    s = y[0] * 5.0
    v = x
    for i in range(n):
        v = v + y
    return s + np.sum(v * y)


def for_size(x, y):
    s = y[0] * 5.0
    v = x
    for i in range(x.shape[0] - 2):  # a size known only at run time
        v = v + y
    return s + np.sum(v * y)


@pytest.mark.parametrize("n", [0, 1, 4])
def test_grad_through_a_for_loop_with_a_run_time_trip_count(n):
    x, y = np.array([1.0, -2.0]), np.array([0.5, 3.0])
    want = 5.0 * E0 + x + 2 * n * y
    np.testing.assert_allclose(gj.grad(for_range, argnums=1)(x, y, n), want, rtol=1e-13)
    assert gj.jit(for_range)(x, y, n) == pytest.approx(for_range(x, y, n), rel=1e-13)


@pytest.mark.parametrize("size", [2, 3, 6])
def test_grad_through_a_for_loop_over_a_size(size):
    x = np.linspace(-1.0, 2.0, size)
    y = np.linspace(0.5, 1.5, size)
    n = size - 2
    want = 5.0 * np.eye(size)[0] + x + 2 * n * y
    np.testing.assert_allclose(gj.grad(for_size, argnums=1)(x, y), want, rtol=1e-13)


def while_two_uses(x, y):
    # two carried arrays from one zero start, and y[0], y[1] updated in place afterwards
    s = y[0] * 5.0 + y[1] * 3.0
    v = x
    w = x * 0.5
    while np.sum(v) < 0.0:
        v = v + y
        w = w + 2.0 * y
    return s + np.sum(v * y) + np.sum(w * y)


@pytest.mark.parametrize("point", range(3))
def test_grad_with_several_carried_cotangents(point):
    x, y = POINTS[point]
    k = trips(x, y)
    # sum((x + k y) y) + sum((x / 2 + 2 k y) y): d/dy = 1.5 x + 6 k y
    want = np.array([5.0, 3.0]) + 1.5 * x + 6 * k * y
    np.testing.assert_allclose(gj.grad(while_two_uses, argnums=1)(x, y), want, rtol=1e-13)


def test_the_kernel_copies_only_a_buffer_that_is_shared_at_run_time():
    x, y = POINTS[0]
    src = gj.grad(while_scaled, argnums=1).lower(x, y).source
    update = [ln.strip() for ln in src.splitlines() if "gj_shares(" in ln]
    # y[0]'s cotangent goes into the backward loop's zero start: copied only if the loop
    # handed that buffer back (it ran no times)
    assert len(update) == 1 and ".copy() if gj_shares(" in update[0], src
    assert sum(".copy()" in ln for ln in src.splitlines()) == 1, src


def zeros_shared(x):
    z = np.zeros(x.shape[0])
    w = np.zeros(x.shape[0])  # the optimiser makes the two zeros one value
    while np.sum(w) < 1.0:
        w = w + x
    z[0] = 1.0  # in place: w may be that buffer
    return np.sum(z * 3.0) + np.sum(w * w)


@pytest.mark.parametrize("x", [np.array([2.0, 3.0]), np.array([0.4, 0.3]),
                               np.array([-1.0, -2.0, 3.5])])
def test_a_write_after_a_loop_into_a_zero_it_may_hand_back(x):
    assert gj.jit(zeros_shared)(x) == pytest.approx(zeros_shared(x), rel=1e-13)
    np.testing.assert_allclose(gj.grad(zeros_shared)(x), 2 * trips_from_zero(x) ** 2 * x,
                               rtol=1e-12)


def trips_from_zero(x):
    w, k = np.zeros_like(x), 0
    while np.sum(w) < 1.0:
        w, k = w + x, k + 1
    return k


# =============================================================================================
# numpy's aliasing through a loop or if
# =============================================================================================


def alias_read(x):
    a = x * 2.0
    b = a
    while np.sum(b) < 0.0:
        b = b * 2.0
    a[0] = 7.0
    return np.sum(a) + np.sum(b * b)  # <alias-read>


def alias_read_for(x, n):
    a = x * 2.0
    b = a
    for i in range(n):
        b = b * 2.0
    a[0] = 7.0
    return np.sum(b)  # <alias-read-for>


def alias_write_other(x):
    a = x * 2.0
    b = a
    while np.sum(b) < 0.0:
        b = b * 2.0
    b[0] = 7.0
    return np.sum(a)  # <alias-write-other>


def alias_view(x):
    a = x * 2.0
    b = a
    while np.sum(b) < 0.0:
        b = b * 2.0
    c = b[1:]
    a[1] = 7.0
    return np.sum(c)  # <alias-view>


def alias_handed_on(x):
    a = x * 2.0
    b = x * 3.0
    while np.sum(b) < 10.0:
        b = a  # after a trip, b is a
    a[0] = 7.0
    return np.sum(b)  # <alias-handed-on>


def alias_later_loop(x):
    a = x * 2.0
    b = a
    while np.sum(b) < 0.0:
        b = b * 2.0
    for i in range(x.shape[0]):
        a[i] = 1.0
    return np.sum(b)  # <alias-later-loop>


def alias_if(x):
    a = x * 2.0
    b = a
    if np.sum(x) > 0:
        b = b * 3.0
    a[0] = 7.0
    return np.sum(b)  # <alias-if>


def alias_ifexp(x):
    a = x * 2.0
    b = a if np.sum(x) > 0 else a * 3.0
    a[0] = 7.0
    return np.sum(b)  # <alias-ifexp>


@pytest.mark.parametrize("fn, marker, args", [
    (alias_read, "alias-read", ()), (alias_read_for, "alias-read-for", (2,)),
    (alias_write_other, "alias-write-other", ()), (alias_view, "alias-view", ()),
    (alias_handed_on, "alias-handed-on", ()), (alias_later_loop, "alias-later-loop", ()),
    (alias_if, "alias-if", ()), (alias_ifexp, "alias-ifexp", ()),
])
def test_a_name_that_is_the_written_array_on_some_runs_only(fn, marker, args):
    for t in (gj.jit, gj.grad):
        with pytest.raises(gj.TraceError) as ei:
            t(fn)(np.array([1.0, 2.0]), *args)
        msg = str(ei.value)
        assert _line(marker) in msg and "may be the same array as" in msg, msg
        assert "on some runs only" in msg, msg


def test_the_message_names_the_loop_and_the_write():
    with pytest.raises(gj.TraceError) as ei:
        gj.jit(alias_read)(np.array([1.0, 2.0]))
    msg = str(ei.value)
    src = open(__file__).read().splitlines()
    loop = next(k for k, t in enumerate(src, 1) if t.strip() == "while np.sum(b) < 0.0:"
                and "def alias_read(" in src[k - 4])
    assert "'b' may be the same array as 'a'" in msg and "loop at" in msg, msg
    assert f"{HERE}:{loop}" in msg and f"{HERE}:{loop + 2}" in msg, msg  # the loop, the write


def write_into_input_through_loop(x):
    b = x
    while np.sum(b) < 0.0:
        b = b * 2.0
    b[0] = 7.0  # <input-loop>
    return np.sum(b)


def test_writing_into_what_may_be_an_input():
    for t in (gj.jit, gj.grad):
        with pytest.raises(gj.TraceError) as ei:
            t(write_into_input_through_loop)(np.ones(3))
        msg = str(ei.value)
        assert _line("input-loop") in msg and "must not mutate their inputs" in msg, msg


# -- where the two names are never one array, or the other is not read: numpy's values -------


def written_not_read(x):
    a = x * 2.0
    b = a
    while np.sum(b) < 0.0:
        b = b + 1.0
    a[0] = 7.0
    return np.sum(a * a)


def read_before_write(x):
    a = x * 2.0
    b = a
    while np.sum(b) < 0.0:
        b = b + 1.0
    t = np.sum(b * b)
    a[0] = 7.0
    return t + np.sum(a)


def copied_before(x):
    a = x * 2.0
    old = a.copy()
    while np.sum(a) < 0.0:
        a = a + 1.0
    a[0] = 7.0
    return np.sum(a * a) + np.sum(old)


def copied_at_the_loop(x):
    a = x * 2.0
    b = a.copy()
    while np.sum(b) < 0.0:
        b = b + 1.0
    a[0] = 7.0
    return np.sum(a) + np.sum(b * b)


def swapped(x, n):
    u = x * 1.0
    v = x * 2.0
    for i in range(n):
        u, v = v, u  # two arrays, never one
    u[0] = 5.0
    return np.sum(u * u) + np.sum(v)


def prev_and_next(x):
    prev = x * 1.0
    cur = x * 2.0
    while np.sum(cur) < 10.0:
        prev, cur = cur, cur * 2.0
    cur[0] = 0.0
    return np.sum(prev * prev) + np.sum(cur)


def trips_of(fn, x):
    """Points where ``fn``'s loop runs zero, one and several times (x sums to 3.5)."""
    return {
        written_not_read: [x, -0.1 * x, -x],
        read_before_write: [x, -0.1 * x, -x],
        copied_before: [x, -0.1 * x, -x],
        copied_at_the_loop: [x, -0.1 * x, -x],
        prev_and_next: [4 * x, x, 0.3 * x],
    }[fn]


@pytest.mark.parametrize("fn", [written_not_read, read_before_write, copied_before,
                                copied_at_the_loop, prev_and_next])
def test_no_error_where_numpy_has_one_answer(fn):
    for x in trips_of(fn, np.array([1.0, 2.0, 0.5])):
        assert gj.jit(fn)(x) == pytest.approx(fn(x.copy()), rel=1e-13)
        h = 1e-6
        num = np.array([(fn(x + h * e) - fn(x - h * e)) / (2 * h) for e in np.eye(3)])
        np.testing.assert_allclose(gj.grad(fn)(x), num, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_a_swap_in_a_loop_keeps_two_arrays(n):
    x = np.array([1.0, -2.0, 0.5])
    assert gj.jit(swapped)(x, n) == pytest.approx(swapped(x.copy(), n), rel=1e-13)
    # u ends as x (n even) or 2x (odd), with u[0] = 5; v the other
    cu, cv = (1.0, 2.0) if n % 2 == 0 else (2.0, 1.0)
    want = 2 * cu * cu * x * np.array([0.0, 1.0, 1.0]) + cv
    np.testing.assert_allclose(gj.grad(swapped)(x, n), want, rtol=1e-13)
