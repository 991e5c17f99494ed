"""The public contract of API.md: transforms, options, pytrees, dtypes, closures and globals,
caching, and use with scipy."""

from __future__ import annotations

import numpy as np
import pytest

import gradjit as gj
from gradjit.runtime import state

# ---------------------------------------------------------------------------------------------
# The transforms and their call forms
# ---------------------------------------------------------------------------------------------


def cube_sum(x):
    return np.sum(x ** 3)


@gj.grad
def decorated(x):
    return np.sum(np.sin(x))


@gj.grad(argnums=1)
def decorated_with_options(x, y):
    return np.sum(x * y ** 2)


@gj.jit
def jitted(x, y):
    return x * y + 1.0


def test_grad_plain_call_and_decorators():
    x = np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(gj.grad(cube_sum)(x), 3 * x ** 2)
    np.testing.assert_allclose(decorated(x), np.cos(x))
    np.testing.assert_allclose(decorated_with_options(x, x), 2 * x * x)
    np.testing.assert_allclose(jitted(x, x), x * x + 1)


def test_value_and_grad():
    x = np.array([1.0, 2.0, 3.0])
    value, g = gj.value_and_grad(cube_sum)(x)
    assert value == pytest.approx(36.0)
    np.testing.assert_allclose(g, 3 * x ** 2)
    value, (gx, gy) = gj.value_and_grad(lambda x, y: np.sum(x * y), argnums=(0, 1))(x, 2 * x)
    assert value == pytest.approx(28.0)
    np.testing.assert_allclose(gx, 2 * x)
    np.testing.assert_allclose(gy, x)


def test_jit_same_results_as_numpy():
    x = np.linspace(-1, 1, 7)

    def f(x):
        y = np.tanh(x) * 2
        return y, {"s": y.sum(), "m": np.max(y)}
    got = gj.jit(f)(x)
    want = f(x)
    np.testing.assert_allclose(got[0], want[0])
    assert set(got[1]) == {"s", "m"}
    assert got[1]["s"] == pytest.approx(want[1]["s"])
    assert got[1]["m"] == pytest.approx(want[1]["m"])


def test_jit_static_argnums():
    def f(x, n):
        return x * n + len(range(n))
    g = gj.jit(f, static_argnums=1)
    x = np.arange(3.0)
    np.testing.assert_allclose(g(x, 2), x * 2 + 2)
    np.testing.assert_allclose(g(x, 5), x * 5 + 5)


def test_vjp():
    x, y = np.array([1.0, 2.0]), np.array([3.0, 4.0, 5.0])
    out, back = gj.vjp(lambda x, y: np.outer(x, y), x, y)
    np.testing.assert_allclose(out, np.outer(x, y))
    ct = np.arange(6.0).reshape(2, 3)
    gx, gy = back(ct)
    np.testing.assert_allclose(gx, ct @ y)
    np.testing.assert_allclose(gy, x @ ct)
    res = back(np.ones((2, 3)))
    assert isinstance(res, tuple) and len(res) == 2


def test_stop_gradient():
    x = np.array([1.0, 2.0])
    assert gj.stop_gradient(x) is x  # outside a trace: the value itself
    g = gj.grad(lambda x: np.sum(gj.stop_gradient(x) ** 2 + x))(x)
    np.testing.assert_allclose(g, [1.0, 1.0])


def test_gradient_of_a_function_that_ignores_its_argument():
    g = gj.grad(lambda x, y: np.sum(y) * 2.0)(np.ones(3), np.ones(2))
    np.testing.assert_array_equal(g, np.zeros(3))
    assert g.dtype == np.float64 and g.shape == (3,)
    assert gj.grad(lambda x: 3.0 + 0 * x)(2.0) == 0.0
    g32 = gj.grad(lambda x, y: np.sum(y))(np.ones((2, 2), np.float32), np.ones(2))
    assert g32.dtype == np.float32 and not g32.any()


def test_lower_exposes_the_generated_source_and_ir():
    low = gj.grad(cube_sum).lower(np.ones(4))
    assert "def kernel" in low.source and "@numba.njit" in low.source
    assert "pow" in low.traced_ir


# ---------------------------------------------------------------------------------------------
# argnums and has_aux
# ---------------------------------------------------------------------------------------------


def three_args(x, y, z):
    return np.sum(x * y * z)


def test_argnums_int_and_tuple():
    x, y, z = np.array([1.0, 2.0]), np.array([3.0, 4.0]), np.array([5.0, 6.0])
    np.testing.assert_allclose(gj.grad(three_args, argnums=1)(x, y, z), x * z)
    gz, gx = gj.grad(three_args, argnums=(2, 0))(x, y, z)
    np.testing.assert_allclose(gz, x * y)
    np.testing.assert_allclose(gx, y * z)
    (g,) = gj.grad(three_args, argnums=(0,))(x, y, z)
    np.testing.assert_allclose(g, y * z)
    np.testing.assert_allclose(gj.grad(three_args, argnums=-1)(x, y, z), x * y)


def test_has_aux_grad_and_value_and_grad():
    def f(x):
        return np.sum(x ** 2), {"double": 2 * x, "n": x.shape[0]}
    x = np.array([1.0, 2.0, 3.0])
    g, aux = gj.grad(f, has_aux=True)(x)
    np.testing.assert_allclose(g, 2 * x)
    np.testing.assert_allclose(aux["double"], 2 * x)
    assert aux["n"] == 3
    (value, aux), g = gj.value_and_grad(f, has_aux=True)(x)
    assert value == pytest.approx(14.0)
    np.testing.assert_allclose(aux["double"], 2 * x)
    np.testing.assert_allclose(g, 2 * x)


def test_integer_argnum_is_a_type_error():
    with pytest.raises(TypeError):
        gj.grad(lambda x, n: np.sum(x) * n, argnums=1)(np.ones(3), 2)
    with pytest.raises(TypeError):
        gj.grad(lambda x: np.sum(x * 1.0))(np.arange(3))


# ---------------------------------------------------------------------------------------------
# Pytrees, dtypes, scalars
# ---------------------------------------------------------------------------------------------


def tree_loss(params, data):
    (w, b), extra = params["layer"], params["extra"]
    x, y = data
    pred = x @ w + b + extra[0] * extra[1]["s"]
    return np.mean((pred - y) ** 2)


def test_pytrees_nested_structures():
    rng = np.random.default_rng(0)
    params = {"layer": (rng.standard_normal(3), 0.5), "extra": [2.0, {"s": np.array(0.25)}]}
    data = [rng.standard_normal((4, 3)), rng.standard_normal(4)]
    g = gj.grad(tree_loss)(params, data)
    assert set(g) == {"layer", "extra"}
    assert isinstance(g["layer"], tuple) and isinstance(g["extra"], list)
    assert isinstance(g["extra"][1], dict)
    x, y = data
    w, b = params["layer"]
    r = 2 * (x @ w + b + 2.0 * 0.25 - y) / 4
    np.testing.assert_allclose(g["layer"][0], x.T @ r)
    assert g["layer"][1] == pytest.approx(r.sum())
    assert g["extra"][0] == pytest.approx(r.sum() * 0.25)
    assert np.shape(g["extra"][1]["s"]) == ()
    assert g["extra"][1]["s"] == pytest.approx(r.sum() * 2.0)
    # both arguments
    _, gd = gj.grad(tree_loss, argnums=(0, 1))(params, data)
    assert isinstance(gd, list) and gd[0].shape == (4, 3) and gd[1].shape == (4,)


def test_tuple_and_list_arguments():
    f = gj.grad(lambda xs: xs[0] * np.sum(xs[1]))
    g = f((2.0, np.array([1.0, 2.0])))
    assert isinstance(g, tuple) and g[0] == pytest.approx(3.0)
    np.testing.assert_allclose(g[1], [2.0, 2.0])
    g = f([2.0, np.array([1.0, 2.0])])
    assert isinstance(g, list)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_of_results(dtype):
    x = np.linspace(0.1, 1.0, 5).astype(dtype)
    g = gj.grad(lambda x: np.sum(np.sin(x) * x))(x)
    assert g.dtype == dtype
    np.testing.assert_allclose(g, np.cos(x) * x + np.sin(x), rtol=1e-5 if dtype == np.float32 else 1e-12)
    value, g = gj.value_and_grad(lambda x: np.sum(x * x))(x)
    assert np.asarray(value).dtype == dtype and g.dtype == dtype
    y = gj.jit(lambda x: x * 2.0 + 1)(x)
    assert y.dtype == dtype
    s = gj.grad(lambda a: a * a)(dtype(3.0))
    assert np.asarray(s).dtype == dtype and s == 6.0


def test_mixed_float32_and_float64_arguments():
    x32, x64 = np.ones(3, np.float32), np.ones(3)
    g32, g64 = gj.grad(lambda a, b: np.sum(a * b), argnums=(0, 1))(x32, 2 * x64)
    assert g32.dtype == np.float32 and g64.dtype == np.float64


def test_zero_dimensional_arrays():
    x = np.array(1.5)
    g = gj.grad(lambda x: x ** 2)(x)
    assert np.shape(g) == () and g == pytest.approx(3.0) and np.asarray(g).dtype == np.float64
    y = gj.jit(lambda x, v: x * v)(x, np.arange(3.0))
    np.testing.assert_allclose(y, 1.5 * np.arange(3.0))
    g = gj.grad(lambda x, v: np.sum(x * v))(np.array(2.0, dtype=np.float32), np.ones(3, np.float32))
    assert np.shape(g) == () and np.asarray(g).dtype == np.float32 and g == 3.0


def test_python_scalars_as_arguments():
    f = gj.grad(lambda x, n, c: n * x ** 2 + c)
    g = f(3.0, 2, 1.0)
    assert g == 12.0 and np.asarray(g).dtype == np.float64
    assert gj.jit(lambda x, n: x * n)(np.arange(3.0), 2)[2] == 4.0
    assert gj.grad(lambda x: x * 2)(np.float64(1.0)) == 2.0


# ---------------------------------------------------------------------------------------------
# Closures, globals, helpers, lambdas
# ---------------------------------------------------------------------------------------------

DATA = np.array([1.0, 2.0, 3.0])
SCALE = 2.0


def uses_globals(w):
    return np.sum((w * DATA) ** 2) * SCALE


def test_global_array_changed_between_calls_is_never_stale():
    global DATA
    f = gj.grad(uses_globals)
    w = 1.5
    old = DATA
    try:
        assert f(w) == pytest.approx(2 * w * np.sum(DATA ** 2) * SCALE)
        DATA = np.array([4.0, 5.0, 6.0])  # rebound
        assert f(w) == pytest.approx(2 * w * np.sum(DATA ** 2) * SCALE)
        DATA[0] = 10.0  # mutated in place
        assert f(w) == pytest.approx(2 * w * np.sum(DATA ** 2) * SCALE)
        DATA = np.arange(7.0)  # a new length
        assert f(w) == pytest.approx(2 * w * np.sum(DATA ** 2) * SCALE)
        DATA = np.arange(3, dtype=np.float32)  # a new dtype
        assert f(w) == pytest.approx(2 * w * np.sum(DATA.astype(float) ** 2) * SCALE, rel=1e-6)
    finally:
        DATA = old


def test_global_scalar_changed_gives_the_new_result():
    global SCALE
    f = gj.grad(uses_globals)
    old = SCALE
    try:
        assert f(1.0) == pytest.approx(2 * np.sum(DATA ** 2) * SCALE)
        SCALE = 5.0
        assert f(1.0) == pytest.approx(2 * np.sum(DATA ** 2) * 5.0)
        SCALE = 3  # an int now
        assert f(1.0) == pytest.approx(2 * np.sum(DATA ** 2) * 3)
    finally:
        SCALE = old


def test_closure_values_changed_give_new_results():
    k = 2.0
    arr = np.array([1.0, 1.0])

    def f(x):
        return np.sum(k * x * arr)
    g = gj.grad(f)
    x = np.array([3.0, 4.0])
    np.testing.assert_allclose(g(x), [2.0, 2.0])
    k = 3.0
    np.testing.assert_allclose(g(x), [3.0, 3.0])
    arr = np.array([1.0, -1.0])
    np.testing.assert_allclose(g(x), [3.0, -3.0])


def _helper_square(v):
    return v * v


def _helper_with_default(v, p=3):
    return v ** p


def test_helpers_and_lambdas_are_inlined():
    inner = lambda v: np.sin(v)

    def f(x):
        cube = lambda v: _helper_with_default(v)

        def local(v, c=2.0):
            return c * v
        return np.sum(_helper_square(x) + inner(x) + cube(x) + local(x))
    x = np.array([0.5, 1.5])
    np.testing.assert_allclose(gj.grad(f)(x), 2 * x + np.cos(x) + 3 * x ** 2 + 2.0)
    np.testing.assert_allclose(gj.grad(lambda x: np.sum(_helper_square(x)))(x), 2 * x)


def test_numpy_array_constants_inside():
    def f(x):
        c = np.array([1.0, 2.0])
        return np.sum(c * x) + np.arange(2.0) @ x
    np.testing.assert_allclose(gj.grad(f)(np.ones(2)), [1.0, 3.0])


def test_sum_of_a_scalar_broadcast_against_an_array():
    def f(x):
        return np.sum(np.arange(2.0) @ x + x)  # d/dx = x.size * arange + 1
    np.testing.assert_allclose(gj.grad(f)(np.ones(2)), [1.0, 3.0])
    assert gj.grad(lambda s, x: np.sum(x + s))(1.0, np.ones(3)) == 3.0


# ---------------------------------------------------------------------------------------------
# Caching
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """An empty disk cache, so that every new signature really compiles."""
    monkeypatch.setenv("GRADJIT_CACHE_DIR", str(tmp_path / "cache"))
    state.reset_disk_cache()
    yield
    state.reset_disk_cache()


def cached_fn(x):
    return np.sum(np.cos(x) * x)


def test_cache_same_signature_new_length_new_dtype(private_cache):
    f = gj.grad(cached_fn)
    before = gj.cache_info()
    f(np.ones(5))
    first = gj.cache_info()
    assert first.compiles == before.compiles + 1
    assert first.misses == before.misses + 1
    f(np.ones(5))  # same signature: no compile
    f(np.full(5, 2.0))
    same = gj.cache_info()
    assert same.compiles == first.compiles and same.misses == first.misses
    assert same.hits >= first.hits + 2
    f(np.ones(1000))  # a new length: no compile
    assert gj.cache_info().compiles == first.compiles
    f(np.ones(7, np.float32))  # a new dtype: exactly one compile
    f(np.ones(9, np.float32))
    assert gj.cache_info().compiles == first.compiles + 1
    info = gj.cache_info()
    for field in ("hits", "misses", "compiles", "memory_entries", "disk_entries"):
        assert isinstance(getattr(info, field), int)
    assert info.memory_entries >= 2


def test_clear_cache(private_cache):
    f = gj.jit(lambda x: x + 1)
    f(np.ones(3))
    assert gj.cache_info().memory_entries >= 1
    gj.clear_cache()
    assert gj.cache_info().memory_entries == 0
    np.testing.assert_allclose(f(np.ones(3)), 2.0)


# ---------------------------------------------------------------------------------------------
# scipy
# ---------------------------------------------------------------------------------------------


def rosenbrock(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)


def test_scipy_minimize_bfgs_with_gradjit_jac():
    from scipy.optimize import minimize
    x0 = np.array([-1.2, 1.0, 0.5, -0.3])
    res = minimize(rosenbrock, x0, jac=gj.grad(rosenbrock), method="BFGS",
                   options={"gtol": 1e-8})
    assert res.success, res.message
    np.testing.assert_allclose(res.x, np.ones(4), atol=1e-5)
    from scipy.optimize import rosen_der
    np.testing.assert_allclose(gj.grad(rosenbrock)(x0), rosen_der(x0), rtol=1e-12)
