"""The per-call path: the hot path (numba's type fingerprint, one lookup, the compiled
function) must give exactly what the full path (compile per signature) gives, whatever
sequence of shapes, unit axes, layouts and scalar kinds comes in."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import gradjit as gj


def sin_times(x, y):
    return np.sum(np.sin(x) * y)


grad_sin_times = gj.grad(sin_times, argnums=(0, 1))


def _expected(x, y):
    gx = np.cos(x) * y
    gy = np.sin(x) * np.ones_like(y)
    # y's cotangent: summed over the axes it was broadcast along
    lead = gy.ndim - y.ndim
    gy = gy.sum(axis=tuple(range(lead)))
    gy = gy.sum(axis=tuple(k for k, n in enumerate(y.shape) if n == 1), keepdims=True)
    return np.broadcast_to(gx, x.shape), gy.reshape(y.shape)


def _layout(a, kind):
    if kind == "F":
        return np.asfortranarray(a)
    if kind == "strided":  # every other row of a taller array
        big = np.repeat(a, 2, axis=0)
        return big[::2]
    if kind == "readonly":
        a = a.copy()
        a.flags.writeable = False
    return a


@given(st.lists(st.tuples(st.sampled_from([1, 2, 3]), st.sampled_from([1, 4]),
                          st.sampled_from(["C", "F", "strided", "readonly"])),
                min_size=1, max_size=6))
def test_any_sequence_of_shapes_and_layouts_matches_numpy(calls):
    rng = np.random.default_rng(len(calls))
    for rows, cols, layout in calls:
        x = _layout(rng.normal(size=(rows, cols)), layout)
        y = rng.normal(size=(cols,))
        gx, gy = grad_sin_times(x, y)
        ex, ey = _expected(x, y)
        assert gx.shape == ex.shape and gy.shape == ey.shape
        np.testing.assert_allclose(gx, ex, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(gy, ey, rtol=1e-12, atol=1e-12)


def test_unit_axis_after_the_general_kernel_changes_the_rank():
    # compiled first for sizes other than 1: a later (1, 3) argument must not reuse that
    # kernel (np.squeeze drops the 1)
    f = gj.jit(lambda x: np.squeeze(x) * 2.0)
    assert f(np.ones((2, 3))).shape == (2, 3)
    assert f(np.ones((2, 3))).shape == (2, 3)  # now on the hot path
    assert f(np.ones((1, 3))).shape == (3,)
    assert f(np.ones((2, 3))).shape == (2, 3)
    assert f(np.ones((1, 3))).shape == (3,)


@pytest.mark.parametrize("first", ["python", "numpy"])
def test_python_and_numpy_float_scalars_promote_as_numpy_does(first):
    # numba prints both as float64, but a Python float is weak: float32 * 2.0 stays float32
    f = gj.jit(lambda x, s: x * s)
    x = np.ones(3, np.float32)
    kinds = {"python": 2.0, "numpy": np.float64(2.0)}
    order = [first, "numpy" if first == "python" else "python"] * 2
    for kind in order:
        s = kinds[kind]
        assert f(x, s).dtype == (x * s).dtype, kind
        if kind == first:
            (hot,) = f.fast.values()
        # the other kind takes the full path without taking the hot path over
        assert list(f.fast.values()) == [hot]
    assert (x * 2.0).dtype == np.float32 and (x * np.float64(2.0)).dtype == np.float64


def test_errors_on_the_hot_path_read_as_on_the_full_path():
    f = gj.grad(lambda x, y: np.sum(x * y))
    f(np.ones(3), np.ones(3))
    f(np.ones(3), np.ones(3))
    with pytest.raises(gj.GradjitError, match=r"argument shapes: \(3,\), \(4,\)") as e:
        f(np.ones(3), np.ones(4))
    assert isinstance(e.value, ValueError)
    g = gj.grad(lambda x, i: x[i] ** 2)
    np.testing.assert_allclose(g(np.arange(3.0), np.int64(2)), [0, 0, 4])
    with pytest.raises(IndexError):
        g(np.arange(3.0), np.int64(5))


def test_size_specialised_kernel_then_other_sizes():
    # x[0], x[1]: a kernel for size 2 first, the general one when another size comes
    def h(x):
        return (x[0] ** 2 + x[1] - 11) ** 2 + (x[0] + x[1] ** 2 - 7) ** 2

    def dh(x):
        a, c = x[0] ** 2 + x[1] - 11, x[0] + x[1] ** 2 - 7
        g = np.zeros_like(x)
        g[0], g[1] = 4 * a * x[0] + 2 * c, 2 * a + 4 * c * x[1]
        return g

    f = gj.grad(h)
    for x in ([1.0, 2.0], [1.0, 2.0], [0.5, -1.0, 3.0], [3.0, 2.0], [0.5, -1.0, 3.0, 7.0]):
        x = np.array(x)
        np.testing.assert_allclose(f(x), dh(x), rtol=1e-13)
    (entry,) = f.cache.values()
    ((*_, (owner, kernel)),) = f.fast.values()
    assert entry.kernel is entry.full and owner is entry and kernel is entry.full


def test_hits_are_counted_and_clear_cache_empties_the_hot_path():
    f = gj.grad(lambda x: np.sum(x ** 3))
    f(np.ones(4))
    before = gj.cache_info()
    for _ in range(5):
        np.testing.assert_allclose(f(np.full(4, 2.0)), 12.0)
    after = gj.cache_info()
    assert after.hits == before.hits + 5 and after.misses == before.misses
    assert f.fast
    gj.clear_cache()
    assert not f.fast
    np.testing.assert_allclose(f(np.full(4, 2.0)), 12.0)
    assert gj.cache_info().misses == after.misses + 1


def test_numba_kernel_refuses_a_unit_axis_it_was_not_compiled_for():
    f = gj.grad(lambda x: np.sum(np.sin(x)))
    k = f.numba(np.ones(3))

    @numba.njit
    def user(x):
        return k(x)

    np.testing.assert_allclose(user(np.zeros(3)), 1.0)
    with pytest.raises(gj.GradjitError, match="axis of size 1"):
        user(np.zeros(1))
    # the kernel for that signature is another one
    np.testing.assert_allclose(f.numba(np.ones(1))(np.zeros(1)), [1.0])


def test_arguments_the_fingerprint_cannot_type_take_the_full_path():
    f = gj.grad(lambda p: np.sum(p["w"] ** 2) + p["b"] ** 2)
    p = {"w": np.arange(3.0), "b": 1.5}
    for _ in range(2):
        g = f(p)
        np.testing.assert_allclose(g["w"], 2 * p["w"])
        assert g["b"] == 3.0
    assert not f.fast  # numba cannot fingerprint a dict: every call takes the full path
    with pytest.raises(TypeError, match="cannot take an argument of type str"):
        gj.grad(lambda x: x)("a")


# ---------------------------------------------------------------------------------------------
# Small static results written into arrays allocated by the runtime (kernel_into)
# ---------------------------------------------------------------------------------------------


def rosen2(x, y):
    return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2 + y[0] * y[1] * x[1]


def rosen2_grads(x, y):
    gx = np.array([-2 * (1 - x[0]) - 400 * x[0] * (x[1] - x[0] ** 2),
                   200 * (x[1] - x[0] ** 2) + y[0] * y[1]])
    gy = np.array([y[1] * x[1], y[0] * x[1]])
    return gx, gy


def test_small_results_are_fresh_arrays_on_every_call():
    f = gj.value_and_grad(rosen2, argnums=(0, 1))
    x, y = np.array([0.3, -0.7]), np.array([1.5, 2.0])
    assert "def kernel_into(" in f.lower(x, y).source
    results = [f(x, y) for _ in range(4)]
    for v, (gx, gy) in results:
        assert type(v) is np.float64 and v == pytest.approx(rosen2(x, y), rel=1e-14)
        ex, ey = rosen2_grads(x, y)
        np.testing.assert_allclose(gx, ex, rtol=1e-14)
        np.testing.assert_allclose(gy, ey, rtol=1e-14)
    # every call hands back its own arrays: writing to one result changes no other
    ids = {id(a) for _, gs in results for a in gs}
    assert len(ids) == 2 * len(results)
    results[0][1][0][:] = 0.0
    np.testing.assert_allclose(results[1][1][0], rosen2_grads(x, y)[0])
    # then another size: the general kernel, same values
    x3 = np.array([0.3, -0.7, 5.0])
    v, (gx, gy) = f(x3, y)
    np.testing.assert_allclose(gx, np.append(rosen2_grads(x, y)[0], 0.0), rtol=1e-14)


def test_small_hessian_and_float32_results_through_kernel_into():
    h = gj.hessian(lambda x: x[0] ** 3 * x[1] + np.sin(x[1]))
    for dt, tol in ((np.float64, 1e-13), (np.float32, 1e-5)):
        x = np.array([0.5, 1.25], dt)
        for _ in range(3):
            H = h(x)
            assert H.dtype == dt and H.shape == (2, 2)
            a, b = float(x[0]), float(x[1])
            want = [[6 * a * b, 3 * a ** 2], [3 * a ** 2, -np.sin(b)]]
            np.testing.assert_allclose(H, want, rtol=tol)


def test_vjp_in_a_loop_reuses_its_kernels_and_dropped_transforms_are_freed():
    import gc
    import weakref

    def f(x):
        return np.sin(x) * 2

    x = np.linspace(0.0, 1.0, 5)
    gj.vjp(f, x)[1](np.ones(5))
    before = gj.cache_info()
    for _ in range(5):
        out, back = gj.vjp(f, x)
        (g,) = back(np.ones(5))
        np.testing.assert_allclose(out, 2 * np.sin(x))
        np.testing.assert_allclose(g, 2 * np.cos(x))
    after = gj.cache_info()
    assert (after.misses, after.traces) == (before.misses, before.traces)
    assert after.hits == before.hits + 10  # forward and backward, from memory
    t = gj.grad(lambda v: np.sum(v ** 2))
    np.testing.assert_allclose(t(x), 2 * x)
    ref = weakref.ref(t)
    del t
    gc.collect()
    assert ref() is None


ARG_KINDS = {
    "py float": lambda r: float(r),
    "np.float64": lambda r: np.float64(r),
    "np.float32": lambda r: np.float32(r),
    "py int": lambda r: int(r * 10),
    "0-d f64": lambda r: np.array(r),
    "f32[3]": lambda r: np.full(3, r, np.float32),
    "f64[2,3] F": lambda r: np.asfortranarray(np.full((2, 3), r)),
    "f64[1,3]": lambda r: np.full((1, 3), r),
}


def scale_shift(a, s):
    return a * s + 1


scale_shift_jit = gj.jit(scale_shift)


@given(st.lists(st.tuples(st.sampled_from(sorted(ARG_KINDS)), st.sampled_from(sorted(ARG_KINDS)),
                          st.floats(0.5, 2.0)), min_size=2, max_size=5))
@example([("f32[3]", "py float", 1.0), ("f32[3]", "np.float64", 1.0), ("f64[1,3]", "py int", 1.0),
          ("f64[2,3] F", "0-d f64", 1.5), ("f64[1,3]", "py int", 0.5)])
def test_any_sequence_of_argument_kinds_gives_numpys_values_and_dtypes(calls):
    # the same transform across calls: the hot path set up by one kind must never serve another
    for ka, ks, r in calls:
        a, s = ARG_KINDS[ka](r), ARG_KINDS[ks](r + 1)
        got, want = scale_shift_jit(a, s), scale_shift(a, s)
        assert np.shape(got) == np.shape(want) and np.result_type(got) == np.result_type(want), \
            (ka, ks)
        np.testing.assert_allclose(got, want, rtol=1e-6)
