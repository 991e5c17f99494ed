"""GRADJIT_CHECK / gj.config(check=True): every compiled call is also checked against the
reference evaluator on a fresh trace, and the trace's forward values against plain Python."""

import os
import subprocess
import sys
import types

import numpy as np
import pytest

import gradjit as gj
from gradjit.compiler import frontend

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
X = np.array([0.5, -1.0, 2.0])


@pytest.fixture
def checking():
    gj.config(check=True)
    yield
    gj.config(check=False)


def test_seed_workloads_pass_under_check_mode(checking):
    sys.path.insert(0, os.path.join(REPO, "examples"))
    try:
        import seeds
    finally:
        sys.path.pop(0)
    for workload in seeds.ALL:
        got, want = workload()
        for g, w in zip(*(gj_flat(v) for v in (got, want))):
            # (a fit ends near the expected value; the check itself raises on any disagreement)
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=workload.__name__)


def gj_flat(v):
    from gradjit.compiler import pytree
    return pytree.flatten(v)[0]


def test_a_wrong_kernel_result_is_caught(checking):
    g = gj.grad(lambda x: np.sum(np.sin(x) * x))
    np.testing.assert_allclose(g(X), np.cos(X) * X + np.sin(X))
    entry = next(iter(g.cache.values()))
    entry.post = lambda out: out * 1.5  # what a lowering bug would do
    with pytest.raises(gj.CheckFailed, match="reference evaluator"):
        g(X)


def test_a_stale_trace_is_caught(checking, monkeypatch):
    m = types.SimpleNamespace(b=1.0)
    g = gj.jit(lambda x: m.b * np.sum(x))
    assert g(X) == pytest.approx(np.sum(X))
    monkeypatch.setattr(frontend.Capture, "holds", lambda self, new: True)  # guards that lie
    m.b = 3.0
    with pytest.raises(gj.CheckFailed):
        g(X)


def test_check_mode_from_the_environment(tmp_path):
    script = tmp_path / "checked.py"
    script.write_text("import numpy as np, gradjit as gj\n"
                      "g = gj.grad(lambda x: np.sum(x ** 3))\n"
                      "print(g(np.array([1.0, 2.0])).tolist(), gj.config().check)\n")
    env = dict(os.environ, GRADJIT_CHECK="1", GRADJIT_DISABLE_CACHE="1")
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                         timeout=300, cwd=REPO, check=True)
    assert out.stdout.split() == ["[3.0,", "12.0]", "True"]


def test_unknown_option_is_refused():
    with pytest.raises(TypeError, match="unknown gradjit option"):
        gj.config(chekc=True)


def _sin_twice(x):
    return np.sin(x) * 2.0


def test_vmap_under_check_mode_is_checked_against_the_reference_evaluator(checking):
    # (vmap's function object calls the transform itself: no plain-Python rerun, no recursion)
    xs = np.linspace(-1, 1, 6).reshape(2, 3)
    np.testing.assert_allclose(gj.vmap(_sin_twice)(xs), np.sin(xs) * 2.0, rtol=1e-12)
    np.testing.assert_allclose(gj.vmap(gj.grad(lambda x: np.sum(_sin_twice(x))))(xs),
                               np.cos(xs) * 2.0, rtol=1e-12)
