"""The numba internals gradjit uses are checked against numba's version in one place
(gradjit/runtime/numba_internals.py): present on this numba, refused with a clear error on an
untested one, and avoidable (GRADJIT_NUMBA_INTERNALS=off) with the same results."""

import ast
import os
import pathlib
import subprocess
import sys
import textwrap

import numba
import pytest

from gradjit.runtime import numba_internals as NI

PKG = pathlib.Path(__file__).resolve().parent.parent / "gradjit"


def test_this_numba_is_in_the_tested_range_and_has_every_internal():
    # a numba upgrade that drops or moves one of them fails here, not in users' hot paths
    assert NI.TESTED[0] <= NI._version_tuple(numba.__version__) <= NI.TESTED[1]
    for name, probe in NI._probes():
        assert probe(), name
    assert NI.enabled() is True
    assert NI.fingerprint_function()((1.0,)) == NI.fingerprint_function()((2.0,))


def test_versions_are_read_as_major_minor():
    assert NI._version_tuple("0.68.1") == (0, 68)
    assert NI._version_tuple("0.70.0rc1") == (0, 70)
    assert NI._version_tuple("1.0") == (1, 0)


def test_pyproject_pins_numba_to_the_tested_range():
    text = (PKG.parent / "pyproject.toml").read_text()
    lo, hi = NI.TESTED
    assert f'"numba>={lo[0]}.{lo[1]},<{hi[0]}.{hi[1] + 1}"' in text


def test_internals_are_touched_only_in_their_module():
    """numba._dispatcher, overloads[...] and the target refresh appear nowhere else."""
    marks = ("_dispatcher", ".overloads", "rtsys", "global_compiler_lock", ".refresh")
    offenders = []
    for path in sorted(PKG.rglob("*.py")):
        if path.name == "numba_internals.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            text = ast.unparse(node) if isinstance(node, (ast.Attribute, ast.ImportFrom)) else ""
            if isinstance(node, ast.ImportFrom):
                text = f"{node.module}." + ",".join(a.name for a in node.names)
            if any(m in text for m in marks):
                offenders.append(f"{path.relative_to(PKG)}:{node.lineno}: {text}")
    assert offenders == []


PROGRAM = textwrap.dedent('''
    import numpy as np
    import gradjit as gj

    def f(x):
        return np.sum(np.sin(x) * x)

    g = gj.grad(f)
    x = np.linspace(0.1, 2.0, 7)
    want = np.sin(x) + x * np.cos(x)
    for _ in range(3):
        assert np.allclose(g(x), want, rtol=1e-12), g(x)
    print("fast", len(g.fast))
''')


def run(tmp_path, env, prelude=""):
    script = tmp_path / "prog.py"
    script.write_text(prelude + PROGRAM)
    env = {**os.environ, "GRADJIT_CACHE_DIR": str(tmp_path / "cache"), **env}
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env=env, timeout=300)


def test_internals_off_gives_the_same_results_without_the_hot_path(tmp_path):
    r = run(tmp_path, {NI.ENV: "off"})
    assert r.returncode == 0, r.stderr
    assert "fast 0" in r.stdout  # every call went through numba's own dispatcher


def test_an_untested_numba_version_is_refused_with_a_clear_error(tmp_path):
    r = run(tmp_path, {}, prelude="import numba\nnumba.__version__ = '0.99.0'\n")
    assert r.returncode != 0
    assert "numba 0.99.0 is outside the versions" in r.stderr
    assert f"{NI.ENV}=off" in r.stderr


@pytest.mark.parametrize("setting", ["off", "0"])
def test_the_off_switch_accepts_its_spellings(monkeypatch, setting):
    monkeypatch.setenv(NI.ENV, setting)
    NI.enabled.cache_clear()
    try:
        assert NI.enabled() is False
        with pytest.raises(NotImplementedError):
            NI.fingerprint_function()((1.0,))
        probe = object()
        assert NI.compiled_for(probe, (1.0,)) is probe
    finally:
        monkeypatch.delenv(NI.ENV)
        NI.enabled.cache_clear()
