"""The example scripts, each run as `python examples/NAME.py` in its own process (through
`examples/run_all.py`, as `make demo` runs them), with their figures in a temporary folder;
and the two ways a figure can go: written to $GRADJIT_FIGURES, or skipped with a message
without matplotlib.
"""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(REPO, "examples")


def run(args, **env):
    proc = subprocess.run([sys.executable, *args], cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=300,
                          env={**os.environ, **env})
    return proc.returncode, proc.stdout


def test_every_example_script_passes(tmp_path):
    # run_all.py: each script in its own process, then the seed table; -q prints failures only
    rc, out = run([os.path.join(EXAMPLES, "run_all.py"), "-q"], GRADJIT_FIGURES=str(tmp_path),
                  GRADJIT_EXAMPLES_QUICK="1")
    assert rc == 0, out
    assert "FAIL" not in out and "failed" not in out, out


def test_example_writes_its_figure(tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("scipy")
    rc, out = run([os.path.join(EXAMPLES, "trig_fit.py")], GRADJIT_FIGURES=str(tmp_path))
    assert rc == 0, out
    assert (tmp_path / "trig_fit.png").stat().st_size > 1000


def test_example_without_matplotlib_skips_the_plot(tmp_path):
    pytest.importorskip("scipy")
    script = os.path.join(EXAMPLES, "trig_fit.py")
    code = ("import runpy, sys; sys.modules['matplotlib'] = None; "
            f"sys.path.insert(0, {EXAMPLES!r}); runpy.run_path({script!r}, run_name='__main__')")
    rc, out = run(["-c", code], GRADJIT_FIGURES=str(tmp_path))
    assert rc == 0, out
    assert "plot skipped (pip install gradjit[examples])" in out
    assert not (tmp_path / "trig_fit.png").exists()


def test_a_mismatch_exits_non_zero():
    code = (f"import sys; sys.path.insert(0, {EXAMPLES!r}); from _check import check; "
            "check('right', 1.0, 1.0); check('wrong', 2.0, 3.0); print('not reached')")
    rc, out = run(["-c", code])
    assert rc == 1, out
    assert "FAIL: wrong" in out and "not reached" not in out


def test_run_all_lists_every_script():
    sys.path.insert(0, EXAMPLES)
    try:
        import run_all
    finally:
        sys.path.remove(EXAMPLES)
    names = run_all.scripts()
    assert names[:len(run_all.SCRIPTS)] == run_all.SCRIPTS
    assert all(os.path.exists(os.path.join(EXAMPLES, n + ".py")) for n in names)
