"""The pipeline runs one way: the compiler is a library that knows nothing of the runtime
(caches, dispatch, numba loading), so a second backend or runner can use it as it is."""

import ast
import pathlib

import pytest

PKG = pathlib.Path(__file__).resolve().parent.parent / "gradjit"


def imported_modules(path, text=None):
    """Every module (or module attribute) ``path`` imports, anywhere in it (also inside
    functions), as an absolute dotted name."""
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    package = parts[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text() if text is None else text, str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = list(package[:len(package) - node.level + 1]) if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            out += [(f"{mod}.{a.name}", node.lineno) for a in node.names]
    return out


COMPILER = sorted((PKG / "compiler").rglob("*.py"))


def test_the_scan_sees_upward_imports():
    """The checker itself: relative, absolute and function-local imports are all seen."""
    probe = PKG / "compiler" / "codegen" / "probe.py"
    text = ("from ...runtime import dispatch\nimport gradjit.runtime.cli\n"
            "def f():\n    from ..frontend import Interpreter\n")
    assert [m for m, _ in imported_modules(probe, text)] == [
        "gradjit.runtime.dispatch", "gradjit.runtime.cli", "gradjit.compiler.frontend.Interpreter"]


@pytest.mark.parametrize("path", COMPILER, ids=lambda p: str(p.relative_to(PKG)))
def test_the_compiler_never_imports_the_runtime(path):
    bad = [f"{path.relative_to(PKG.parent)}:{line}: imports {mod}"
           for mod, line in imported_modules(path)
           if mod.startswith(("gradjit.runtime", "gradjit.api")) or mod == "gradjit"]
    assert not bad, "\n".join(bad)


def test_two_threads_trace_different_functions_at_once():
    """Tracing keeps no state outside the interpreter and the per-thread builder stack: two
    threads tracing (and compiling) different functions at once each get their own result."""
    import threading

    import numpy as np

    import gradjit as gj
    from gradjit.compiler.transforms import trace

    def f(x):
        s = 0.0
        for i in range(x.shape[0]):
            s = s + np.sin(x[i]) * x[i]
        return s

    def g(x):
        return np.sum(np.exp(x) - x ** 3)

    x = np.linspace(0.1, 1.0, 5)
    barrier, results, errors = threading.Barrier(2), {}, []

    def work(name, fn, want):
        try:
            barrier.wait()
            for _ in range(20):  # interleaved traces
                assert len(trace(fn, (x,)).graph.eqns) > 0
            results[name] = gj.grad(fn)(x)
            np.testing.assert_allclose(results[name], want, rtol=1e-12)
        except Exception as e:  # noqa: BLE001 - reported by the main thread
            errors.append((name, e))

    threads = [threading.Thread(target=work, args=("f", f, np.cos(x) * x + np.sin(x))),
               threading.Thread(target=work, args=("g", g, np.exp(x) - 3 * x ** 2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert set(results) == {"f", "g"}
