"""examples/dask_logistic.py in quick mode, as a person would run it (its own process, a
LocalCluster of worker processes): it recovers the generating coefficients and exits 0,
and it exits 1 when the fit is stopped far from them. Small sizes: seconds each."""

import os
import subprocess
import sys

import pytest

pytest.importorskip("dask.array")
pytest.importorskip("distributed")
pytest.importorskip("scipy")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "examples", "dask_logistic.py")


def run(*args):
    # the kernel cache conftest chose is inherited, so workers reuse earlier compiles
    proc = subprocess.run([sys.executable, SCRIPT, *args], cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=120)
    return proc.returncode, proc.stdout


def test_quick_fit_recovers_the_coefficients():
    rc, out = run("--rows", "100000", "--workers", "2", "--chunk-rows", "25000")
    assert rc == 0, out
    assert "4 chunks of 25,000 rows" in out
    assert "CONVERGENCE" in out, out
    rows = [line.split() for line in out.splitlines() if line.strip().startswith(("w[", "int"))]
    assert [r[0] for r in rows] == [f"w[{j}]" for j in range(16)] + ["intercept"], out
    assert not any("FAIL" in r for r in rows), out
    assert "ok: every fitted coefficient within 6 standard errors" in out
    assert "peak memory: driver" in out and "per iteration" in out


def test_a_fit_far_from_the_generating_coefficients_exits_non_zero():
    # two L-BFGS-B iterations from zero leave the coefficients many standard errors off
    rc, out = run("--rows", "50000", "--workers", "1", "--maxiter", "2")
    assert rc == 1, out
    assert "FAIL: fitted coefficients are up to" in out


def test_dask_benchmark_smoke_run(tmp_path):
    # benchmarks/dask_bench.py --small: every contestant runs, agrees with in-memory gradjit,
    # and the table is printed and written (one timed round: seconds, not a measurement)
    out_file = tmp_path / "dask_bench.md"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "dask_bench.py"),
                           "--small", "--rounds", "1", "--out", str(out_file)], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout
    table = out_file.read_text()
    assert "| gradjit over Dask | 2 |" in table and "| hand-written Dask expression | 1 |" in table
    assert "| dask-glm gradient |" in table
    assert "differs from in-memory gradjit" not in table, table
