"""The benchmark baselines are right: every hand-written numba kernel in
benchmarks/handwritten.py agrees with the numpy analytic result, which in turn agrees with
central differences of the plain workload function (or, where that is not a derivative, a
closed form). Small inputs, nothing is timed. These hold whatever state the compiler is in.

Apart from those, every contestant of the control-flow and higher-order workloads (gradjit
and the peers' own spellings included) runs once at a small size through the benchmark's own
check against the reference, and the tape size the benchmark reports is read from the IR."""

import numpy as np
import pytest

from benchmarks import harness
from benchmarks import workloads as wk
from benchmarks.suite import WORKLOADS, Case

# Small sizes; L2 and L3 keep enough steps that their 1/1000 and 1/100 scaled peers still
# take a few.
SMALL = {
    "W3a": 50,
    "W3b": 50,
    "W4": 40,
    "W5": 30,
    "L1": 50,
    "L2": 3000,
    "L3": 500,
    "J1": 20,
    "J3": 6,
    "J4": 3,
}
GRADS = [wl for wl in WORKLOADS if wl.kind == "grad"]


def small_case(wl):
    return Case(wl, SMALL.get(wl.group), parallel=wl.numba_parallel is not None)


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


@pytest.mark.parametrize("wl", GRADS, ids=lambda wl: wl.group)
def test_numpy_gradient_matches_finite_differences(wl):
    args = small_case(wl).args()
    fd = central_differences(wl.fn, args, argnums(wl))
    got = wl.numpy_grad(*args)
    assert_close(got if isinstance(wl.argnums, tuple) else (got,), fd, rtol=1e-6)


@pytest.mark.parametrize("wl", WORKLOADS, ids=lambda wl: wl.group)
def test_numba_result_matches_numpy(wl):
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


def jacobian_by_differences(fn, x, h=1e-6):
    """d fn(x) / dx by central differences, shape fn(x).shape + x.shape."""
    x = np.asarray(x, dtype=np.float64)
    cols = []
    for idx in np.ndindex(x.shape):
        step = h * max(1.0, abs(x[idx]))
        hi, lo = x.copy(), x.copy()
        hi[idx] += step
        lo[idx] -= step
        cols.append((np.asarray(fn(hi)) - np.asarray(fn(lo))) / (2 * step))
    out = np.stack(cols, axis=-1)
    return out.reshape(out.shape[:-1] + x.shape)


def test_lotka_volterra_sensitivity_matches_finite_differences():
    p, y0, dt, steps = small_case(WORKLOADS_BY_GROUP["L2"]).args()
    fd = jacobian_by_differences(lambda q: wk.lotka_volterra(q, y0, dt, steps), p)
    assert_close(wk.lotka_volterra_jacobian(p, y0, dt, steps), fd, rtol=1e-6)


def test_descent_reference_converges_to_the_minimum():
    # lr = 0.001 from (0, 0): Himmelblau's minimum at (3, 2), as in the control-flow issue
    x = wk.descend_reference(*wk.descend_inputs(30000))
    np.testing.assert_allclose(x, [3.0, 2.0], atol=1e-4)


def test_batched_jacobians_match_finite_differences():
    (P,) = small_case(WORKLOADS_BY_GROUP["J1"]).args()
    fd = np.stack([jacobian_by_differences(wk.cubic_map, p) for p in P])
    assert_close(wk.cubic_map_jacobians(P), fd, rtol=1e-6)


@pytest.mark.parametrize("group", ["J2", "J3"])
def test_hessians_match_finite_differences(group):
    wl = WORKLOADS_BY_GROUP[group]
    x, *rest = small_case(wl).args()

    # Hessian = Jacobian of the gradient; the gradient itself by central differences
    def grad(y):
        return jacobian_by_differences(lambda z: wl.fn(z, *rest), y, h=1e-5)

    assert_close(wl.numpy_grad(x, *rest), jacobian_by_differences(grad, x, h=1e-4), rtol=1e-5)


def test_leapfrog_reference_uses_the_gradient_and_conserves_energy():
    x, p, A, eps, steps = small_case(WORKLOADS_BY_GROUP["J4"]).args()
    fd = jacobian_by_differences(lambda z: wk.log_density(z, A), x)
    assert_close(wk.log_density_grad(x, A), fd, rtol=1e-6)
    x1, p1 = wk.leapfrog_reference(x, p, A, eps, steps)
    assert np.abs(x1 - x).max() > 0.1  # it moved
    # leapfrog keeps the Hamiltonian to O(eps^2)
    h0 = -wk.log_density(x, A) + 0.5 * p @ p
    h1 = -wk.log_density(x1, A) + 0.5 * p1 @ p1
    assert abs(h1 - h0) < 10 * eps**2 * abs(h0)


WORKLOADS_BY_GROUP = {wl.group: wl for wl in WORKLOADS}


@pytest.mark.parametrize(
    "wl", [wl for wl in WORKLOADS if wl.group[0] in "LJ"], ids=lambda wl: wl.group
)
def test_every_contestant_agrees_at_a_small_size(wl):
    """gradjit, the hand-written kernels and the peers' own spellings, through the same
    build-and-check step as `make bench` (a contestant that is wrong or fails shows there as
    wrong[k] / error[k] instead of a time)."""
    from benchmarks import run, suite

    case = small_case(wl)
    errors = harness.Errors()
    thunks, notes, _ = run.prepare(suite.CONTESTANTS, case, case.args(), False, errors)
    assert {"gradjit", "numba"} <= set(thunks), (notes, errors.messages)
    for name, cell in notes.items():
        assert cell.note == "-" or cell.note.startswith("n/a"), (name, cell.note, errors.messages)
    if wl.numba_parallel is not None:
        assert {"gradjit-par", "numba-par"} <= set(thunks)


def test_l2_tape_size_is_read_from_the_ir():
    import gradjit as gj
    from benchmarks import run

    p, y0, dt, steps = small_case(WORKLOADS_BY_GROUP["L2"]).args()
    low = gj.jacobian(wk.lotka_volterra).lower(p, y0, dt, steps)
    # at most the two carried states per step are taped (8 bytes each); something is
    nbytes = run.tape_bytes(low, steps)
    assert 0 < nbytes <= 2 * 8 * steps


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


def test_report_writes_the_table_and_its_figures(tmp_path):
    from benchmarks import report, suite
    from benchmarks.harness import Cell
    rep = report.Report(str(tmp_path), ["--only", "W1"])
    w1 = next(w for w in suite.WORKLOADS if w.group == "W1")
    rep.add_case(suite.Case(w1, None, False),
                 {"gradjit": Cell(3e-7), "numba": Cell(1e-7), "jax": Cell(note="n/a")})
    rep.sweep = {10**3: {"gradjit": 2e-6, "numba": 1e-6}, 10**4: {"gradjit": 2e-5}}
    rep.add_cold("W2", "gradjit", 0.9)
    rep.add_cold("W2", "jax", 0.07)
    rep.write("the printed tables\n")
    text = (tmp_path / "results.md").read_text()
    assert "the printed tables" in text and "--only W1" in text
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    for name in ("elementwise_scaling.png", "overhead.png", "first_result.png"):
        assert (tmp_path / name).stat().st_size > 1000
        assert f"![{name}]({name})" in text
