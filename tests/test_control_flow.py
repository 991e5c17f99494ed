"""Python control flow on traced values (issue 3): dynamic `if`/`while`/`for`, element loops,
break/continue/return, and reverse mode through them (branches take the same path backwards,
loops run backwards over a tape). Every check is against a closed form or central differences,
and one compile must serve every value and trip count."""

import inspect
import os
import sys

import numpy as np
import pytest

import gradjit as gj
from gradjit.compiler import control as C
from gradjit.compiler.ir import verify

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples"))
from control_flow import energy, newton_sqrt, tutorial  # noqa: E402  the shipped workloads


# a fresh cache directory, so compile counts are this module's own (conftest.py)
pytestmark = pytest.mark.usefixtures("module_cache_dir")


def central(f, x, h=1e-6):
    x = np.array(x, dtype=np.float64)
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = h
        g[idx] = (f(x + e) - f(x - e)) / (2 * h)
    return g


def counts():
    info = gj.cache_info()
    return info.misses, info.compiles


def line_of(fn, text):
    """file:line of the first line of ``fn`` containing ``text``."""
    lines, first = inspect.getsourcelines(fn)
    k = next(k for k, line in enumerate(lines) if text in line)
    return f"test_control_flow.py:{first + k}"


# =============================================================================================
# The tutorial function (PyTorch autograd tutorial): a while loop and an if on values
# =============================================================================================



def tutorial_sum(a):
    return tutorial(a).sum()


def test_tutorial_scalars_one_compile():
    g, f = gj.grad(tutorial_sum), gj.jit(tutorial)
    values = [-1.57, 0.3, 1e-3, -7e-5, 5000.0, -250.0, 12345.6]
    g(np.float64(values[0]))
    f(np.float64(values[0]))
    before = counts()
    for a in values:
        a = np.float64(a)
        expect = tutorial(a) / a  # c = k * a with k = 2**m or 100 * 2**m
        assert g(a) == pytest.approx(expect, rel=1e-12)
        assert f(a) == pytest.approx(tutorial(a), rel=1e-12)
    assert counts() == before  # no new trace, no new compile, whatever the values


def test_tutorial_matrices_one_compile():
    g = gj.grad(tutorial_sum)
    rng = np.random.default_rng(0)
    g(rng.standard_normal((2, 2)))
    before = counts()
    for scale in (1e-4, 1.0, 300.0, -2.0):
        a = rng.standard_normal((2, 2)) * scale
        np.testing.assert_allclose(g(a), tutorial(a) / a, rtol=1e-12)
    assert counts() == before


def test_tutorial_traced_ir_is_structured():
    low = gj.grad(tutorial_sum).lower(np.float64(0.3))
    text = low.optimized_ir
    assert "while" in text and "cond" in text and "for" in text
    verify(low.traced.graph)
    verify(low.transformed)
    verify(low.optimized)


# =============================================================================================
# if / elif / else, conditional expressions, early return
# =============================================================================================


def piecewise(x):
    if x > 1:
        y = x ** 2
    elif x > 0:
        y = np.sin(x) * 3
    else:
        y = -x
    return y * x


def test_elif_chain_values_and_gradients():
    g = gj.grad(piecewise)
    for x in (2.5, 0.5, -0.7):
        assert gj.jit(piecewise)(x) == pytest.approx(piecewise(x))
        assert g(x) == pytest.approx(central(piecewise, x), rel=1e-6)


def early_return(x):
    if x.sum() > 0:
        return np.sin(x).sum()
    y = np.cos(x)
    return y.sum() * 2


def test_early_return_in_branch():
    rng = np.random.default_rng(1)
    for x in (np.abs(rng.standard_normal(4)), -np.abs(rng.standard_normal(4))):
        assert gj.jit(early_return)(x) == pytest.approx(early_return(x))
        np.testing.assert_allclose(gj.grad(early_return)(x), central(early_return, x), rtol=1e-6)


def return_both(x):
    if x > 0:
        return x * 3, x
    else:
        return x * x, -x


def test_return_tuples_from_both_branches():
    assert gj.jit(return_both)(2.0) == (6.0, 2.0)
    assert gj.jit(return_both)(-2.0) == (4.0, 2.0)


def safe_sqrt(x):
    return np.sqrt(x) if x > 0 else 0.0 * x


def test_conditional_expression_runs_one_side():
    g = gj.grad(safe_sqrt)
    assert g(4.0) == pytest.approx(0.25)
    assert g(-1.0) == 0.0  # not nan: the sqrt side is not evaluated
    assert gj.jit(safe_sqrt)(-1.0) == 0.0


def only_one_branch(x):
    if x.sum() > 0:
        y = x
    return y.sum()


def test_name_bound_in_one_branch_is_a_trace_error():
    with pytest.raises(gj.TraceError) as e:
        gj.jit(only_one_branch)(np.ones(3))
    assert line_of(only_one_branch, "return y.sum()") in str(e.value)
    assert "'y'" in str(e.value) and "one branch" in str(e.value)


def branch_holds_loop(x, n):
    if x > 0:
        for _ in range(n):
            x = x * 1.5
    else:
        x = x - 1
    return x


def test_loop_inside_branch():
    g = gj.grad(branch_holds_loop)
    assert gj.jit(branch_holds_loop)(2.0, 3) == pytest.approx(2.0 * 1.5 ** 3)
    assert g(2.0, 3) == pytest.approx(1.5 ** 3)
    assert g(-2.0, 3) == pytest.approx(1.0)


# =============================================================================================
# Element loops
# =============================================================================================



def energy_value(x):
    d = np.diff(x)
    return np.sum(d * d) + np.sum(np.cos(x[:-1]))


def energy_grad(x):
    d = np.diff(x)
    g = np.zeros_like(x)
    g[1:] += 2 * d
    g[:-1] -= 2 * d + np.sin(x[:-1])
    return g


def test_energy_loop_closed_form_one_compile():
    rng = np.random.default_rng(2)
    g = gj.grad(energy)
    x10 = rng.standard_normal(10)
    np.testing.assert_allclose(g(x10), energy_grad(x10), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(g(x10), central(energy, x10), rtol=1e-6, atol=1e-8)
    before = counts()
    x = rng.standard_normal(100_000)
    np.testing.assert_allclose(g(x), energy_grad(x), rtol=1e-10, atol=1e-10)
    assert counts() == before  # a new length: same kernel
    assert gj.jit(energy)(x) == pytest.approx(energy_value(x), rel=1e-10)


def test_energy_gradient_is_one_backward_loop_without_tape():
    src = gj.grad(energy).lower(np.ones(5)).source
    assert "tape" not in src and "while" not in src
    assert src.count("range(") == 2  # zeroing the gradient, and the backward loop
    assert "-1, -1)" in src  # it runs backwards


def test_compiled_size_does_not_depend_on_trip_count():
    a = gj.grad(energy).lower(np.ones(10)).source
    b = gj.grad(energy).lower(np.ones(1000)).source
    assert a == b


def sum_squares(x):
    s = 0.0
    for i in range(x.shape[0]):
        s += x[i] ** 2
    return s


def test_element_loop_float32_stays_float32():
    x = np.arange(1.0, 5.0, dtype=np.float32)
    out = gj.grad(sum_squares)(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, 2 * x)
    assert gj.jit(sum_squares)(x) == pytest.approx(30.0)


def window(x, start, stop, step):
    s = 0.0
    for i in range(start, stop, step):
        s = s + x[i] * x[i]
    return s


def test_traced_range_bounds_any_sign():
    x = np.arange(10.0)
    for start, stop, step in ((1, 9, 2), (8, 1, -3), (0, 10, 1), (5, 5, 1), (9, -1, -1)):
        expect = sum(x[i] ** 2 for i in range(start, stop, step))
        assert gj.jit(window)(x, start, stop, step) == pytest.approx(expect)
        g = np.zeros(10)
        for i in range(start, stop, step):
            g[i] += 2 * x[i]
        np.testing.assert_allclose(gj.grad(window)(x, start, stop, step), g)


def pairs(x):
    s = 0.0
    for i in range(x.shape[0]):
        for j in range(i):
            s += x[i] * x[j]
    return s


def test_nested_loops():
    x = np.random.default_rng(3).standard_normal(7)
    expect = (x.sum() ** 2 - (x * x).sum()) / 2
    assert gj.jit(pairs)(x) == pytest.approx(expect)
    np.testing.assert_allclose(gj.grad(pairs)(x), x.sum() - x, rtol=1e-12)


def test_nested_loop_gradient_accumulates_in_place():
    # the inner loop's adjoint starts from the outer accumulator: no full-size temporaries
    src = gj.grad(pairs).lower(np.ones(3)).source
    body = src.split("def kernel")[1]
    assert body.count("np.empty") == 1 and body.count("np.zeros") == 0


def stop_at_negative(x):
    s = 0.0
    for i in range(x.shape[0]):
        if x[i] < 0:
            break
        s += x[i] ** 2
    return s


def skip_negative(x):
    s = 0.0
    for i in range(x.shape[0]):
        if x[i] < 0:
            continue
        s += x[i] ** 3
    return s


@pytest.mark.parametrize("fn", [stop_at_negative, skip_negative])
def test_break_and_continue(fn):
    for x in ([1.0, 2.0, -1.0, 3.0], [0.5, 2.0, 0.25, 3.0], [-1.0, 2.0]):
        x = np.array(x)
        assert gj.jit(fn)(x) == pytest.approx(fn(x))
        np.testing.assert_allclose(gj.grad(fn)(x), central(fn, x), rtol=1e-6, atol=1e-9)


def test_branch_in_loop_updates_gradient_in_place():
    src = gj.grad(skip_negative).lower(np.ones(3)).source.split("def kernel")[1]
    assert src.count("np.empty") == 1  # the gradient itself; nothing per iteration


def first_big_product(x):
    for i in range(x.shape[0]):
        for j in range(x.shape[0]):
            if x[i] * x[j] > 3.0:
                return x[i] * x[j]
    return 0.0


def test_return_inside_nested_loops():
    x = np.array([1.0, 2.0, 3.0])
    assert gj.jit(first_big_product)(x) == 4.0
    np.testing.assert_allclose(gj.grad(first_big_product)(x), [0.0, 4.0, 0.0])
    np.testing.assert_allclose(gj.grad(first_big_product)(np.ones(3)), np.zeros(3))


def rows(m):
    s = 0.0
    for r in m:
        s = s + np.sum(r * r) * r[0]
    return s


def test_loop_over_rows_of_an_array():
    m = np.random.default_rng(4).standard_normal((80, 3))  # more rows than are unrolled
    assert gj.jit(rows)(m) == pytest.approx(rows(m))
    np.testing.assert_allclose(gj.grad(rows)(m), central(rows, m), rtol=1e-6, atol=1e-8)


def fib(x):
    a, b = x, x * 0 + 1
    k = 0
    while k < 10:
        a, b = b, a + b
        k += 1
    return a


def test_tuple_unpacking_carried():
    assert gj.jit(fib)(2.0) == pytest.approx(fib(2.0))
    assert gj.grad(fib)(2.0) == pytest.approx(34.0)  # F(9)


def bound_in_loop(x):
    for i in range(x.shape[0]):
        t = x[i]
    return t


def test_name_first_bound_in_loop_is_a_trace_error():
    with pytest.raises(gj.TraceError) as e:
        gj.jit(bound_in_loop)(np.ones(3))
    assert line_of(bound_in_loop, "return t") in str(e.value)
    assert "'t'" in str(e.value) and "loop" in str(e.value)


def long_static(x):
    s = 0.0
    for i in range(1000):
        s = s + x * i
    return s


def grows_list(x, n):
    parts = []
    for i in range(n):
        parts.append(x * i)
    return x


def test_python_container_changed_in_dynamic_loop_is_a_trace_error():
    with pytest.raises(gj.TraceError) as e:
        gj.jit(grows_list)(1.0, 3)
    assert "'parts'" in str(e.value) and line_of(grows_list, "for i in") in str(e.value)


def test_long_static_range_is_a_loop_not_unrolled():
    low = gj.grad(long_static).lower(2.0)
    assert len(low.traced.graph.eqns) < 10
    assert gj.grad(long_static)(2.0) == pytest.approx(499500.0)


W = np.linspace(0.0, 1.0, 7)


def dot_global(x):
    s = 0.0
    for i in range(W.shape[0]):
        s = s + W[i] * np.sin(x * i)
    return s


def test_loop_reading_a_global_array():
    for x in (0.3, 1.7):
        assert gj.grad(dot_global)(x) == pytest.approx(central(dot_global, x), rel=1e-6)


def wrt_second(a, x):
    s = 0.0
    for i in range(x.shape[0]):
        s = s + np.sin(a * x[i])
    return s


def test_argnums_through_loop():
    x = np.arange(4.0)
    ga, gx = gj.grad(wrt_second, argnums=(0, 1))(0.5, x)
    assert ga == pytest.approx(np.sum(x * np.cos(0.5 * x)))
    np.testing.assert_allclose(gx, 0.5 * np.cos(0.5 * x))


# =============================================================================================
# while loops with data-dependent trip counts; tapes
# =============================================================================================



def test_newton_sqrt_differentiated_through_iterations():
    g, f = gj.grad(newton_sqrt), gj.jit(newton_sqrt)
    g(2.0)
    f(2.0)
    before = counts()
    for a in (2.0, 9.0, 1e4, 0.01, 123.456):
        assert f(a) == pytest.approx(np.sqrt(a), rel=1e-12)
        assert g(a) == pytest.approx(1 / (2 * np.sqrt(a)), rel=1e-9)
    assert counts() == before  # trip counts differ; nothing is traced or compiled again
    src = g.lower(2.0).source
    assert "np.concatenate" in src  # the tape grows inside the kernel


def test_value_and_grad_through_taped_loop():
    v, d = gj.value_and_grad(newton_sqrt)(2.0)
    assert v == pytest.approx(np.sqrt(2.0))
    assert d == pytest.approx(1 / (2 * np.sqrt(2.0)))


def drift(x, n):
    k = 0
    while k < n:
        x = x + 0.001 * np.sin(x)
        k += 1
    return x


def drift_grad(x, n):
    d = 1.0
    for _ in range(n):
        d *= 1 + 0.001 * np.cos(x)
        x = x + 0.001 * np.sin(x)
    return d


def test_tape_grows_past_its_first_capacity():
    g = gj.grad(drift)
    for n in (0, 1, 17, 5000):
        assert g(0.7, n) == pytest.approx(drift_grad(0.7, n), rel=1e-10)


def euler_decay(p, n):
    h = 1.0 / n
    y = 1.0
    for _ in range(n):
        y = y - h * p * y
    return y


def test_euler_sensitivity_closed_form():
    # y_n = (1 - p h)^n, so dy_n/dp = -n h (1 - p h)^(n - 1)
    g = gj.grad(euler_decay)
    for n in (10, 1000, 100_000):
        assert g(2.0, n) == pytest.approx(-(1 - 2.0 / n) ** (n - 1), rel=1e-10)


def euler_vector(p, y0, n):
    h = 1.0 / n
    y = y0
    for _ in range(n):
        y = y - h * p * y * y
    return y.sum()


def euler_vector_adjoint(p, y0, n):
    h, ys, y = 1.0 / n, [y0], y0
    for _ in range(n):
        y = y - h * p * y * y
        ys.append(y)
    lam, gp = np.ones_like(y0), 0.0
    for k in range(n - 1, -1, -1):
        gp += np.sum(lam * (-h * ys[k] * ys[k]))
        lam = lam * (1 - 2 * h * p * ys[k])
    return gp, lam


def test_euler_array_state_through_array_tape():
    y0 = np.array([1.0, 0.5, 2.0])
    gp, gy = gj.grad(euler_vector, argnums=(0, 1))(1.5, y0, 200)
    want_p, want_y = euler_vector_adjoint(1.5, y0, 200)
    assert gp == pytest.approx(want_p, rel=1e-12)
    np.testing.assert_allclose(gy, want_y, rtol=1e-12)


def himmelblau(p):
    x, y = p[0], p[1]
    return (x * x + y - 11) ** 2 + (x + y * y - 7) ** 2


def descend(x, lr, steps):
    for _ in range(steps):
        x = x - lr * gj.grad(himmelblau)(x)
    return x


def test_gradient_descent_loop_in_one_kernel():
    np.testing.assert_allclose(gj.jit(descend)(np.zeros(2), 0.001, 30000), [3.0, 2.0], atol=1e-4)


def halve_count(x):
    k = 0
    while x > 1.0:
        x = x / 2
        k += 1
    return k * 1.0 + x


def test_integer_counter_in_while():
    assert gj.jit(halve_count)(10.0) == halve_count(10.0)
    assert gj.jit(halve_count)(1000.0) == halve_count(1000.0)
    assert gj.grad(halve_count)(10.0) == pytest.approx(1 / 16)


def while_with_else(x):
    y = x
    while y > 1.0:
        y = y / 2
        if y < 0.3:
            break
    else:
        y = y * 10
    return y


def test_while_else_and_break():
    for x, d in ((5.0, 10 / 8), (0.5, 10.0), (1.9, 5.0)):
        assert gj.jit(while_with_else)(x) == pytest.approx(while_with_else(x))
        assert gj.grad(while_with_else)(x) == pytest.approx(d)


def array_state(x):
    y = x
    for k in range(x.shape[0]):
        y = np.sin(y) + x[k]
    return y.sum()


def test_array_carried_through_loop():
    x = np.random.default_rng(5).standard_normal(4)
    assert gj.jit(array_state)(x) == pytest.approx(array_state(x))
    np.testing.assert_allclose(gj.grad(array_state)(x), central(array_state, x), rtol=1e-6)


# =============================================================================================
# The IR: structure, verifier, reference evaluator
# =============================================================================================


@pytest.mark.parametrize("fn,args", [
    (tutorial_sum, (np.float64(0.3),)), (energy, (np.ones(5),)), (newton_sqrt, (2.0,)),
    (stop_at_negative, (np.ones(4),)), (first_big_product, (np.ones(3),)),
])
def test_transformed_graphs_verify(fn, args):
    low = gj.grad(fn).lower(*args)
    for g in (low.traced.graph, low.transformed, low.optimized):
        verify(g)


@pytest.mark.parametrize("fn,args", [
    (tutorial, (np.array([[0.3, -1.0], [2.0, 0.5]]),)), (energy, (np.linspace(0, 1, 6),)),
    (newton_sqrt, (3.0,)), (skip_negative, (np.array([1.0, -2.0, 3.0]),)),
])
def test_reference_evaluator_agrees(fn, args):
    for tf in (gj.jit(fn),) + ((gj.grad(fn),) if fn is not tutorial else ()):
        low = tf.lower(*args)
        ref = C.evaluate(low.optimized, [np.asarray(a) for a in args])
        np.testing.assert_allclose(ref[0], tf(*args), rtol=1e-12)
