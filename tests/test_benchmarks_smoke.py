"""The benchmark baselines are right: every hand-written numba kernel in
benchmarks/handwritten.py agrees with the numpy analytic gradient, which in turn agrees with
central differences of the plain workload function. Small inputs, nothing is timed, and
gradjit is not imported (these must hold whatever state the compiler is in)."""

import numpy as np
import pytest

from benchmarks import harness
from benchmarks.suite import WORKLOADS, Case

SMALL = {"W3a": 50, "W3b": 50, "W4": 40, "W5": 30}


def small_case(wl):
    return Case(wl, SMALL.get(wl.group), parallel=True)


def argnums(wl):
    return wl.argnums if isinstance(wl.argnums, tuple) else (wl.argnums,)


def central_differences(fn, args, wrt, h=1e-6):
    """Gradient of the scalar fn w.r.t. args[i] for i in wrt, by central differences."""
    grads = []
    for i in wrt:
        x = np.array(args[i], dtype=np.float64)
        g = np.empty_like(x)
        for idx in np.ndindex(x.shape):
            step = h * max(1.0, abs(x[idx]))
            hi, lo = x.copy(), x.copy()
            hi[idx] += step
            lo[idx] -= step
            f_hi = fn(*args[:i], hi if hi.ndim else float(hi), *args[i + 1 :])
            f_lo = fn(*args[:i], lo if lo.ndim else float(lo), *args[i + 1 :])
            g[idx] = (f_hi - f_lo) / (2 * step)
        grads.append(g)
    return tuple(grads)


def assert_close(got, want, rtol=1e-9):
    problem = harness.mismatch(got, want, rtol=rtol)
    assert problem is None, problem


@pytest.mark.parametrize("wl", WORKLOADS, ids=lambda wl: wl.group)
def test_numpy_gradient_matches_finite_differences(wl):
    args = small_case(wl).args()
    fd = central_differences(wl.fn, args, argnums(wl))
    got = wl.numpy_grad(*args)
    assert_close(got if isinstance(wl.argnums, tuple) else (got,), fd, rtol=1e-6)


@pytest.mark.parametrize("wl", WORKLOADS, ids=lambda wl: wl.group)
def test_numba_gradient_matches_numpy(wl):
    args = small_case(wl).args()
    expected = wl.numpy_grad(*args)
    assert_close(wl.numba_grad(*args), expected)
    if wl.numba_parallel is not None:
        assert_close(wl.numba_parallel(*args), expected)


@pytest.mark.parametrize(
    "wl", [w for w in WORKLOADS if w.numba_forward is not None], ids=lambda wl: wl.group
)
def test_numba_forward_matches_numpy(wl):
    args = small_case(wl).args()
    assert_close(wl.numba_forward(*args), wl.fn(*args))


def test_kernels_do_not_mutate_inputs():
    for wl in WORKLOADS:
        args = small_case(wl).args()
        before = [np.copy(a) for a in args]
        wl.numba_grad(*args)
        for a, b in zip(args, before):
            np.testing.assert_array_equal(a, b, err_msg=wl.group)


def test_mismatch_reports_shape_and_value_errors():
    assert harness.mismatch((np.ones(3), 1.0), (np.ones(3), 1.0)) is None
    assert "shape" in harness.mismatch(np.ones(3), np.ones(4))
    assert "error" in harness.mismatch(np.ones(3), np.ones(3) + 1e-3)
    assert "structure" in harness.mismatch(np.ones(3), (np.ones(3), 1.0))


def test_formatting():
    assert harness.fmt_time(1.5e-3) == "1.5 ms"
    assert harness.fmt_time(123e-9) == "123 ns"
    assert harness.fmt_ratio(0.5) == "0.5x"
    lines = harness.table(["a", "b"], [["x", "1"], ["yy", "22"]]).splitlines()
    assert lines[0] == "a    b" and lines[-1] == "yy  22"
