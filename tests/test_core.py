"""End-to-end checks of the pipeline: fusion shape of generated code, caching per signature,
the seed workloads, and the command line against the real compiler."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

import gradjit as gj
from gradjit.compiler.ir import verify

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples"))


def poly(x):
    return np.sum(x**2 + x**3 + 5)


def test_poly_gradient_is_one_fused_loop():
    g = gj.grad(poly)
    x = np.linspace(-1, 1, 7)
    np.testing.assert_allclose(g(x), 2 * x + 3 * x**2, atol=1e-12)
    src = g.lower(x).source
    body = src.split("def kernel", 1)[1]
    assert len(re.findall(r"^\s+for ", body, re.M)) == 1, src
    assert len(re.findall(r"= v0\[i0\]", body)) == 1, src  # x read once
    assert len(re.findall(r"np\.(empty|zeros|full)\(", body)) == 1, src  # only the gradient
    assert "reduce_sum" not in body  # the dead forward sum was removed


def test_graphs_verify():
    low = gj.value_and_grad(poly).lower(np.ones(3))
    verify(low.traced.graph)
    verify(low.optimized)
    assert "reduce_sum" in low.optimized_ir


def test_value_and_grad_fuses_value_and_gradient():
    vg = gj.value_and_grad(poly)
    x = np.linspace(-1, 1, 5)
    v, g = vg(x)
    assert np.isclose(v, poly(x))
    np.testing.assert_allclose(g, 2 * x + 3 * x**2)
    body = vg.lower(x).source.split("def kernel", 1)[1]
    assert len(re.findall(r"^\s+for ", body, re.M)) == 1


def test_new_length_does_not_recompile_new_dtype_does():
    g = gj.grad(poly)
    g(np.ones(4))
    before = gj.cache_info().compiles + gj.cache_info().disk_hits
    g(np.ones(1000))
    g(np.ones(4) * 2)
    assert gj.cache_info().compiles + gj.cache_info().disk_hits == before
    r = g(np.ones(3, dtype=np.float32))
    assert r.dtype == np.float32
    assert gj.cache_info().compiles + gj.cache_info().disk_hits == before + 1


def test_softmax_cross_entropy_closed_form():
    import seeds
    got, want = seeds.cross_entropy_gradient()
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", [f.__name__ for f in __import__("seeds").ALL])
def test_seed_workloads(name):
    import seeds
    got, want = getattr(seeds, name)()
    if isinstance(got, tuple):
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_parallel_target_matches():
    x = np.linspace(-2, 2, 1001)
    f = lambda x: np.sum(np.sin(x) * np.exp(-x * x))  # noqa: E731
    a = gj.grad(f, target="parallel")
    assert "prange" in a.lower(x).source
    np.testing.assert_allclose(a(x), gj.grad(f)(x), rtol=1e-12)


def test_run_time_size_mismatch_is_a_shape_error():
    g = gj.grad(lambda a, b: np.sum(a * b))
    with pytest.raises(gj.ShapeError) as e:
        g(np.ones(3), np.ones(4))
    assert isinstance(e.value, ValueError)
    assert "test_core.py" in str(e.value)


def _cli(*args, cwd=ROOT, env=None):
    return subprocess.run([sys.executable, "-m", "gradjit", *args], capture_output=True,
                          text=True, cwd=cwd, env={**os.environ, **(env or {})}, timeout=300)


def test_cli_warm_then_inspect(tmp_path):
    cache = str(tmp_path / "cache")
    mod = tmp_path / "model.py"
    mod.write_text("import numpy as np\n\ndef loss(w, x):\n    return np.sum((x @ w) ** 2)\n")
    r = _cli("--cache-dir", cache, "warm", "model:loss", "--transform", "grad",
             "--signature", "float64[:], float64[:, :]", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = _cli("--cache-dir", cache, "cache", "list", "--json", cwd=tmp_path)
    assert r.returncode == 0 and "loss" in r.stdout and "grad" in r.stdout
    r = _cli("--cache-dir", cache, "inspect", "model:loss", "--transform", "grad",
             "--signature", "float64[:], float64[:, :]", "--source", cwd=tmp_path)
    assert r.returncode == 0 and "@numba.njit" in r.stdout
    r = _cli("inspect", "model:nope", "--transform", "grad", "--signature", "float64[:]", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr


DATA = np.linspace(0.0, 1.0, 5)


def weighted(x):
    return np.sum(DATA * x)


def test_global_array_new_dtype_retraces():
    global DATA
    g = gj.jit(weighted)
    x = np.ones(5, np.float32)
    assert g(x).dtype == np.float64  # float64 data promotes
    old = DATA
    try:
        DATA = old.astype(np.float32)  # same argument signature, new global dtype
        r = g(x)
        assert r.dtype == np.float32 and np.isclose(r, old.sum())
    finally:
        DATA = old


def _rosenbrock_pair(params):
    x, y = params  # the length is known only at run time: the names fix it, the kernel checks
    return (1 - x) ** 2 + 2 * (y - x ** 2) ** 2


def test_unpacking_an_array_of_run_time_length_into_names():
    for p in (np.array([3.0, 2.0]), np.array([-0.5, 1.5])):
        x, y = p
        want = np.array([-8 * x * (y - x ** 2) + 2 * x - 2, 4 * (y - x ** 2)])
        np.testing.assert_allclose(gj.grad(_rosenbrock_pair)(p), want, rtol=1e-12)
        np.testing.assert_allclose(gj.hessian(_rosenbrock_pair)(p),
                                   [[2 - 8 * y + 24 * x ** 2, -8 * x], [-8 * x, 4.0]], rtol=1e-12)
    with pytest.raises(gj.ShapeError, match=r"test_core.py:\d+: cannot unpack an array of this "
                                            r"length into 2 names"):
        gj.grad(_rosenbrock_pair)(np.array([1.0, 2.0, 3.0]))
