"""Tiered execution (runtime/tiered.py): numpy answers a new function's first calls while a
background process compiles its kernel, then calls switch to the kernel.

conftest.py turns tiering off for the rest of the suite; every test here turns it on, in a
fresh disk-cache directory (so nothing is found by a manifest: each function is traced).
"""

from __future__ import annotations

import os
import signal
import sys
import time

import numpy as np
import pytest

import gradjit as gj
from gradjit.runtime import background, state, tier0, tiered

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples"))
import control_flow as cf  # noqa: E402
import seeds  # noqa: E402

WAIT = 120  # seconds: a background compile that takes longer is a failure, never a hang


@pytest.fixture
def tiers(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADJIT_TIERED", "1")
    monkeypatch.setenv("GRADJIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("GRADJIT_BACKGROUND_TIMEOUT", str(WAIT))
    state.reset_disk_cache()
    yield monkeypatch
    background.kill_all_now()
    state.reset_disk_cache()


@pytest.fixture
def no_background(tiers):
    """Tier 0 answers every call (no kernel ever comes)."""
    tiers.setattr(background, "start", lambda low, dc: None)
    return tiers


def info():
    return gj.cache_info()


def until_switch(f, *args):
    """Call ``f`` until the kernel answers; returns the number of calls."""
    before = info().tier_switches
    end = time.monotonic() + WAIT
    n = 0
    while info().tier_switches == before:
        assert time.monotonic() < end, "the kernel never came"
        f(*args)
        n += 1
        time.sleep(0.002)
    return n


def same(a, b, rtol=1e-12):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            same(a[k], b[k], rtol)
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            same(x, y, rtol)
    else:
        assert np.asarray(a).dtype == np.asarray(b).dtype
        np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-13)


# ---------------------------------------------------------------------------------------------
# Tier 0 agrees with the kernel
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", seeds.ALL, ids=lambda s: s.__name__)
def test_tier0_equals_kernel_on_seed_workloads(seed, no_background):
    before = info().tier0_calls
    numpy_result = seed()[0]
    assert info().tier0_calls > before
    no_background.setenv("GRADJIT_TIERED", "0")
    calls = info().tier0_calls
    kernel_result = seed()[0]
    assert info().tier0_calls == calls
    # BFGS takes a data-dependent path: rounding differences move its end point a little
    same(numpy_result, kernel_result, rtol=1e-7 if seed is seeds.trig_fit else 1e-12)


def hessian_through_loop(x):
    for _ in range(3):
        x = np.sin(x) * 1.5
    return np.sum(x ** 2)


CONTROL = [
    (lambda a: cf.tutorial(a).sum(), [np.float64(-1.57), np.array([[0.3, -0.2], [1.0, 2.0]])]),
    (cf.energy, [np.linspace(-1.0, 1.0, 200)]),
    (cf.newton_sqrt, [np.float64(2.0), np.float64(1e4)]),
    (cf.first_positive_run, [np.array([1.0, 3.0, 0.5, -1.0, 2.0])]),
]


@pytest.mark.parametrize("k", range(len(CONTROL) + 1))
def test_tier0_equals_kernel_on_control_flow(k, no_background):
    if k < len(CONTROL):
        fn, inputs = CONTROL[k]
        make = gj.grad
    else:
        fn, inputs, make = hessian_through_loop, [np.array([0.3, -0.7, 1.1])], gj.hessian
    numpy_results = [make(fn)(x) for x in inputs]
    assert info().tier0_calls >= len(inputs)
    no_background.setenv("GRADJIT_TIERED", "0")
    for x, got in zip(inputs, numpy_results):
        same(got, make(fn)(x))


def test_tier0_raises_the_kernels_errors(no_background):
    f = gj.grad(lambda x: x[3] ** 2)
    with pytest.raises(gj.IndexOutOfBounds):
        f(np.ones(2))


# ---------------------------------------------------------------------------------------------
# The switch, the off switch and compile()
# ---------------------------------------------------------------------------------------------


def rosen(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)


def test_calls_switch_to_the_kernel(tiers):
    f = gj.grad(rosen)
    x = np.linspace(-1, 1, 7)
    before = info()
    first = f(x)
    assert info().tier0_calls == before.tier0_calls + 1
    until_switch(f, x)
    after = info()
    assert after.background_compiles == before.background_compiles + 1
    assert after.compiles == before.compiles  # compiled by the child, loaded here
    same(first, f(x))
    assert f.fast  # the hot path runs the kernel now: no tier 0 left
    f(x)
    assert info().tier0_calls == after.tier0_calls


def test_tiered_off_never_uses_tier0(tiers):
    tiers.setenv("GRADJIT_TIERED", "0")
    before = info()
    f = gj.grad(rosen)
    f(np.linspace(-1, 1, 5))
    after = info()
    assert after.tier0_calls == before.tier0_calls
    assert after.background_compiles == before.background_compiles
    assert after.compiles == before.compiles + 1


def test_compile_blocks_then_calls_use_the_kernel(tiers):
    f = gj.grad(lambda x: np.sum(np.tanh(x) ** 3))
    x = np.linspace(-1, 1, 5)
    before = info()
    assert f.compile(x) is f
    assert info().compiles == before.compiles + 1
    f(x)
    f(x)
    assert info().tier0_calls == before.tier0_calls
    assert f.fast


def test_compile_of_a_function_in_tier0_waits_for_the_background(tiers):
    f = gj.grad(lambda x: np.sum(np.cosh(x) * x))
    x = np.linspace(-1, 1, 5)
    before = info()
    f(x)
    assert info().tier0_calls == before.tier0_calls + 1
    f.compile(x)
    after = info()
    assert after.tier_switches == before.tier_switches + 1
    assert after.background_compiles == before.background_compiles + 1
    f(x)
    assert info().tier0_calls == after.tier0_calls


# ---------------------------------------------------------------------------------------------
# The policy
# ---------------------------------------------------------------------------------------------


def descent(x):
    for _ in range(30_000):
        x = x - 0.001 * (x - 1.0)
    return np.sum(x)


def test_long_literal_loops_compile_now(tiers):
    low = gj.grad(descent).lower(np.ones(3))
    assert tier0.units(low.optimized) > tier0.UNITS
    assert "equations" in tiered._why_not(low)


def test_element_loop_over_many_items_waits_for_the_kernel(tiers):
    def total(x):
        s = 0.0
        for i in range(x.shape[0]):
            s += x[i] * x[i]
        return s

    low = gj.grad(total).lower(np.ones(4))
    plan = tier0.Plan(low.optimized)
    plan(tier0.Budget(), np.ones(4))  # a few items: tier 0
    t = time.perf_counter()
    with pytest.raises(tier0.TooCostly):  # 10^7 items: refused before the loop starts
        plan(tier0.Budget(), np.ones(10**7))
    assert time.perf_counter() - t < 2  # (the loop itself would take a minute)
    before = info()
    x = np.linspace(0, 1, 10**6)
    np.testing.assert_allclose(gj.grad(total)(x), 2 * x)
    assert info().tier0_calls == before.tier0_calls  # the kernel answered the first call


# ---------------------------------------------------------------------------------------------
# Background failures: in-process compile, a clear error, never a hang nor a half entry
# ---------------------------------------------------------------------------------------------


def test_failed_background_compile_falls_back_to_compiling_here(tiers):
    tiers.setattr(background, "_module", ["gradjit.no_such_module"])
    f = gj.grad(lambda x: np.sum(np.exp(x) * 2.5))
    x = np.linspace(0, 1, 4)
    before = info()
    f(x)
    f.compile(x)
    after = info()
    assert after.background_failures == before.background_failures + 1
    assert after.compiles == before.compiles + 1
    np.testing.assert_allclose(f(x), 2.5 * np.exp(x))


def test_failure_in_both_raises_a_gradjit_error(tiers):
    from gradjit.runtime import compiled

    tiers.setattr(background, "_module", ["gradjit.no_such_module"])

    def broken(self):
        raise gj.GradjitError("internal error: numba could not compile the kernel (test)")
    f = gj.grad(lambda x: np.sum(np.sinh(x) * 3.5))
    x = np.linspace(0, 1, 4)
    f(x)  # tier 0 answers
    tiers.setattr(compiled.Lowered, "compile", broken)
    with pytest.raises(gj.GradjitError, match="could not compile"):
        until_switch(f, x)
    with pytest.raises(gj.GradjitError, match="could not compile"):
        f(x)


def test_hung_background_compile_times_out(tiers, tmp_path):
    (tmp_path / "gj_hang.py").write_text("import time\ntime.sleep(600)\n")
    tiers.setenv("PYTHONPATH", str(tmp_path))
    tiers.setattr(background, "_module", ["gj_hang"])
    tiers.setenv("GRADJIT_BACKGROUND_TIMEOUT", "1")
    f = gj.grad(lambda x: np.sum(np.arctan(x) * 1.25))
    x = np.linspace(0, 1, 4)
    f(x)
    job = f.cache[next(iter(f.cache))].kernel.job
    t = time.monotonic()
    f.compile(x)
    assert time.monotonic() - t < WAIT
    assert job.proc.poll() is not None  # killed, not orphaned
    assert info().background_failures >= 1
    np.testing.assert_allclose(f(x), 1.25 / (1 + x * x))


def test_killed_background_compile_leaves_no_half_entry(tiers):
    f = gj.grad(lambda x: np.sum(np.log1p(x * x) * 0.75))
    x = np.linspace(0, 1, 4)
    f(x)
    job = f.cache[next(iter(f.cache))].kernel.job
    time.sleep(0.6)  # importing numba or compiling: either way mid-flight
    os.kill(job.proc.pid, signal.SIGKILL)
    f.compile(x)
    np.testing.assert_allclose(f(x), 1.5 * x / (1 + x * x))
    dc = state.disk_cache()
    assert dc.verify() == []
    assert all(e["sealed"] for e in dc.entries())
    assert not [n for n in os.listdir(os.path.join(dc.directory, "tmp")) if "request" in n]
