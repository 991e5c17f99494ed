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


# ---------------------------------------------------------------------------------------------
# Primitives are declared once; no module writes into another module's namespace
# ---------------------------------------------------------------------------------------------

SOURCES = sorted(PKG.rglob("*.py"))
def _module_file(dotted):
    base = PKG.parent.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def gradjit_module_names(path, tree):
    """The names ``path`` binds to gradjit modules by importing them (``from . import ad``,
    ``from . import primitives as P``, ``import gradjit.compiler.ad``)."""
    package = path.relative_to(PKG.parent).with_suffix("").parts[:-1]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.asname or a.name.split(".")[0] for a in node.names
                         if a.name.split(".")[0] == "gradjit")
        elif isinstance(node, ast.ImportFrom):
            base = list(package[:len(package) - node.level + 1]) if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            names.update(a.asname or a.name for a in node.names
                         if mod.startswith("gradjit") and _module_file(f"{mod}.{a.name}"))
    return names


def _root(node):
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _written(target):
    """The places an assignment target writes: itself, or each element it unpacks into."""
    if isinstance(target, (ast.Tuple, ast.List)):
        for t in target.elts:
            yield from _written(t)
    elif isinstance(target, ast.Starred):
        yield from _written(target.value)
    else:
        yield target


def stores_into_modules(path, text=None):
    """Each place where ``path`` assigns (or deletes) an attribute of an imported gradjit
    module, or an item of one of its tables, or calls ``setattr`` on one; by line."""
    tree = ast.parse(path.read_text() if text is None else text, str(path))
    mods = gradjit_module_names(path, tree)
    where = str(path.relative_to(PKG.parent))
    out = []
    for node in ast.walk(tree):
        targets = (node.targets if isinstance(node, (ast.Assign, ast.Delete)) else
                   [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else [])
        for t in (x for target in targets for x in _written(target)):
            into = t if isinstance(t, ast.Attribute) else \
                t.value if isinstance(t, ast.Subscript) and isinstance(t.value, ast.Attribute) \
                else None
            if into is not None and _root(into) in mods:
                out.append((node.lineno, f"{where}:{node.lineno}: {ast.unparse(node)[:80]}"))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                node.func.id in ("setattr", "delattr") and node.args and \
                isinstance(node.args[0], ast.Name) and node.args[0].id in mods:
            out.append((node.lineno, f"{where}:{node.lineno}: {ast.unparse(node)[:80]}"))
    return [text for _, text in sorted(out)]


def primitive_probes(path, text=None):
    """Each ``hasattr(prim, ...)`` / ``getattr(prim, ...)`` on a primitive (a name ``prim`` or
    ``..._p``, or an ``.prim`` attribute): a reader should read the declared field."""
    tree = ast.parse(path.read_text() if text is None else text, str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                node.func.id in ("hasattr", "getattr") and node.args:
            obj = node.args[0]
            if (isinstance(obj, ast.Name) and (obj.id == "prim" or obj.id.endswith("_p"))) or \
                    (isinstance(obj, ast.Attribute) and obj.attr == "prim"):
                out.append((node.lineno, node.col_offset,
                            f"{path.relative_to(PKG.parent)}:{node.lineno}: {ast.unparse(node)}"))
    return [text for *_, text in sorted(out)]


def test_the_scans_see_stores_and_probes():
    """The checkers themselves, on a made-up module of the compiler."""
    probe = PKG / "compiler" / "probe.py"
    text = ("import numpy as np\nfrom . import ad, tracing as T\nfrom .ir import Var\n"
            "from ..compiler import primitives as P\n"
            "ad.ZERO_TAPE = 1\nT.lift_array.x = 2\nP.ALL['x'] = 3\nP.add_p.vjp += 4\n"
            "a, P.b = 5, 6\nsetattr(ad, 'y', 7)\ndel ad.z\n"
            "np.seterr = 8\nVar.x = 9\nd = {}\nd[1] = P.x\nad = None\nx = P.y\n"
            "def f(e, prim, add_p):\n    P.q = hasattr(e.prim, 'bind_eqn')\n"
            "    return getattr(prim, 'kind', None), getattr(add_p, 'cse'), getattr(e, 'prim')\n")
    lines = [s.split(":")[1] for s in stores_into_modules(probe, text)]
    assert lines == ["5", "6", "7", "8", "9", "10", "11", "19"], stores_into_modules(probe, text)
    assert [s.split(":")[1] for s in primitive_probes(probe, text)] == ["19", "20", "20"]


@pytest.mark.parametrize("path", SOURCES,
                         ids=lambda p: str(p.relative_to(PKG)))
def test_no_module_writes_into_another_modules_namespace(path):
    """A module may call another module's functions (a registration function, say), but never
    assigns into its namespace: who sets what is then visible where it is declared."""
    bad = stores_into_modules(path)
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("path", SOURCES,
                         ids=lambda p: str(p.relative_to(PKG)))
def test_no_reader_probes_a_primitive(path):
    """Every rule is a declared field of ``Primitive`` (None when absent): readers test
    ``prim.rule is not None`` instead of probing with ``hasattr``/``getattr``."""
    bad = primitive_probes(path)
    assert not bad, "\n".join(bad)


def test_primitives_are_immutable_and_declare_their_fields():
    """Every rule is given when a primitive is created: assigning to one afterwards, or adding
    an attribute, raises, and so does an undeclared keyword at creation."""
    import dataclasses

    from gradjit.compiler import control  # noqa: F401 - declares cond, the loops and tapes
    from gradjit.compiler import primitives as P

    names = {f.name for f in dataclasses.fields(P.Primitive)}
    assert {"vjp", "fold", "zero_grad", "cse", "par_cpu", "init", "inplace", "bind_eqn",
            "dce_rule", "eval_rule", "rebase", "vjp_fwd", "vjp_bwd"} <= names
    assert {"cond", "for", "while", "tape_new", "add", "reduce_sum"} <= set(P.ALL)
    for prim in P.ALL.values():
        for field in ("vjp", "fold", "shape_rule", "bind_eqn", "zero_grad"):
            before = getattr(prim, field)
            with pytest.raises(AttributeError):
                setattr(prim, field, lambda *a: None)
            assert getattr(prim, field) is before
        with pytest.raises(AttributeError):
            prim.undeclared_rule = None
    with pytest.raises(TypeError, match="undeclared_rule"):
        P.Primitive("probe", lambda: (), undeclared_rule=None)
    assert "probe" not in P.ALL


# ---- functions a reader can hold in their head ---------------------------------------------

MAX_LINES = 150


def test_no_function_is_longer_than_a_screenful_or_two():
    long = []
    for path in sorted(PKG.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_LINES:
                    long.append(f"{path.relative_to(PKG.parent)}:{node.lineno}: {node.name} "
                                f"is {n} lines")
    assert not long, "split these (at most %d lines):\n" % MAX_LINES + "\n".join(long)
