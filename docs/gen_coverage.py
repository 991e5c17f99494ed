"""The "Supported numpy" page: what a traced function may call, from the code's own tables
(``gradjit.compiler.numpy_api.FUNCTIONS``/``METHODS``, the front end's ``math``, builtins and
allocation tables, ``gradjit.compiler.primitives.ALL``), so the page never drifts from the code.

Each entry is traced on small sample arguments (float vectors, or square matrices where a
vector does not fit) and its graph classified:

- **yes**: the output depends differentiably on a float input;
- **zero**: only through piecewise-constant primitives (``zero_grad``: floor, sign, ...);
- **no**: an integer or boolean result, or one that does not depend on the input values.

docs/hooks.py adds ``render()`` to every build as the generated page ``coverage.md`` (nothing is
written into docs/); ``python docs/gen_coverage.py [PATH]`` writes it to docs/coverage.md
(git-ignored) or PATH, to read it without building.
"""

from __future__ import annotations

import inspect
import os
import sys

import numpy as np

from gradjit.compiler import frontend
from gradjit.compiler import numpy_api as A
from gradjit.compiler import primitives as P
from gradjit.compiler.avals import aval_for
from gradjit.compiler.ir import Var
from gradjit.compiler.tracing import Tracer, building

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "coverage.md")

V, M = np.linspace(0.1, 0.3, 3), np.eye(3) + 0.1  # sample vector and (square) matrix

# entries whose arguments are not all arrays: name -> (args with "v"/"m" for traced values)
SAMPLES = {
    "scipy.special.xlogy": ("v", "v"), "scipy.special.xlog1py": ("v", "v"),
    "np.reshape": ("v", (3, 1)), "np.broadcast_to": ("v", (2, 3)),
    "np.expand_dims": ("v", 0), "np.swapaxes": ("m", 0, 1), "np.moveaxis": ("m", 0, 1),
    "np.roll": ("v", 1), "np.split": ("v", 3), "np.concatenate": (["v", "v"],),
    "np.stack": (["v", "v"],), "np.hstack": (["v", "v"],), "np.vstack": (["v", "v"],),
    "np.array": (["s", "s"],), "np.zeros": ((3,),), "np.ones": ((3,),), "np.full": ((3,), "s"),
    "np.arange": (3,), "np.einsum": ("i,i->", "v", "v"), "np.tensordot": ("m", "m"),
    "np.linalg.matrix_power": ("m", 2), "np.where": ("b", "v", "v"),
    "np.clip": ("v", 0.0, 1.0), "np.power": ("v", "v"), "np.full_like": ("v", 2.0),
    "math.pow": ("s", "s"), "math.atan2": ("s", "s"), "math.hypot": ("s", "s"),
    ".reshape": ("v", 3, 1), ".dot": ("v", "v"), ".clip": ("v", 0.0, 1.0),
    ".astype": ("v", np.float32), ".__getitem__": ("v", 0), ".transpose": ("m",),
    "divmod": ("v", "v"), "pow": ("v", "v"), "sum": (["v", "v"],), "min": ("v", "v"),
    "max": ("v", "v"), "np.column_stack": (["v", "v"],), "np.row_stack": (["v", "v"],),
    "np.repeat": ("v", 2), ".repeat": ("v", 2), "np.average": ("m", 0, "v"),
}
FIXED = {"gj.stop_gradient": "stop", "print": "n/a", "divmod": "n/a", "range": "n/a",
         "isinstance": "n/a"}
DUNDERS = {  # operator methods shown as the Python they stand for
    "__add__": "x + y", "__radd__": "2 + x", "__sub__": "x - y", "__rsub__": "2 - x",
    "__mul__": "x * y", "__rmul__": "2 * x", "__truediv__": "x / y", "__rtruediv__": "2 / x",
    "__pow__": "x ** y", "__rpow__": "2 ** x", "__matmul__": "x @ y", "__rmatmul__": "A @ x",
    "__mod__": "x % y", "__rmod__": "2 % x", "__floordiv__": "x // y", "__rfloordiv__": "2 // x",
    "__neg__": "-x", "__pos__": "+x", "__abs__": "abs(x)", "__eq__": "x == y",
    "__ne__": "x != y", "__lt__": "x < y", "__le__": "x <= y", "__gt__": "x > y",
    "__ge__": "x >= y", "__getitem__": "x[i]", "__setitem__": "x[i] = v",
    "__and__": "a & b", "__or__": "a | b", "__invert__": "~a",
}
NOTES = {
    "__setitem__": "local arrays only (`out[i] = v`, see [Local arrays](local-arrays.md)); "
                   "not into arguments",
    "np.empty": "treated as `np.zeros`", "np.empty_like": "treated as `np.zeros_like`",
    "print": "static values only: printed once, while tracing",
    "range": "traced bounds compile to loops (see [Control flow](control-flow.md))",
    "len": "the length of the first axis", "divmod": "static values only",
    "float": "as `x.astype(np.float64)`",
    "gj.stop_gradient": "see [Transforms](transforms.md#stop_gradient)",
}


def np_name(fn):
    """``np.linalg.det``, ``np.sin``, ``gj.stop_gradient``: how a user writes ``fn``."""
    name = getattr(fn, "__name__", repr(fn))
    mod = getattr(fn, "__module__", None) or "numpy"
    if mod.startswith("gradjit"):
        return f"gj.{name}"
    if mod.startswith("numpy.linalg"):
        return f"np.linalg.{name}"
    if mod == "math":
        return f"math.{name}"
    if mod == "builtins":
        return name
    if getattr(np, name, None) is not fn and getattr(np.linalg, name, None) is not fn:
        return f"scipy.special.{name}"  # its ufuncs say nothing of their module
    return f"np.{name}"


def _value(spec, bool_ok=True):
    if spec in ("v", "m", "s", "b"):
        x = {"v": V, "m": M, "s": np.float64(0.2), "b": V > 0.2}[spec]
        return Tracer(Var(aval_for(x)))
    if isinstance(spec, list):
        return [_value(s) for s in spec]
    return spec


def _leaves(x):
    if isinstance(x, (list, tuple)):
        return [y for z in x for y in _leaves(z)]
    return [x]


def classify(fn, spec):
    """'yes', 'zero' or 'no' for ``fn`` called on ``spec``; raises if it cannot be traced."""
    with building() as b:
        args = [_value(s) for s in spec]
        out = fn(*args)
    inputs = {id(t.ivar) for t in _leaves(args) if isinstance(t, Tracer)}
    producer = {id(o): e for e in b.eqns for o in e.outputs}
    outs = [o for o in _leaves(out) if isinstance(o, Tracer)]
    if not any(np.issubdtype(np.dtype(o.ivar.aval.dtype), np.floating) for o in outs):
        return "no"
    # walk back from the float outputs along float values; stop at zero-gradient primitives
    seen, stack, zero = set(), [o.ivar for o in outs], False
    while stack:
        v = stack.pop()
        if id(v) in seen or not isinstance(v, Var):
            continue
        seen.add(id(v))
        if not np.issubdtype(np.dtype(v.aval.dtype), np.floating):
            continue
        if id(v) in inputs:
            return "yes"
        e = producer.get(id(v))
        if e is None:
            continue
        if e.prim.zero_grad or e.prim is P.stop_gradient_p:
            zero = True
            continue
        stack.extend(e.inputs)
    return "zero" if zero else "no"


def arity(fn):
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return 1
    return max(1, sum(1 for p in sig.parameters.values() if p.default is p.empty and p.kind in (
        p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)))


def status(name, fn):
    """(status, the sample call it was traced on) or ('?', '') when no sample fits."""
    if name in FIXED:
        return FIXED[name], ()
    specs = [SAMPLES[name]] if name in SAMPLES else []
    n = arity(fn)
    specs += [("v",) * n, ("m",) * n, ("s",) * n]
    for spec in specs:
        try:
            return classify(fn, spec), spec
        except Exception:  # noqa: BLE001 - try the next sample
            continue
    return "?", ()


def rows():
    """[(section, name, status, note)] for every entry of the tables, in table order."""
    out = []
    for fn, impl in A.FUNCTIONS.items():
        name = np_name(fn)
        out.append(("numpy functions", name, status(name, impl)[0], NOTES.get(name, "")))
    for fn, target in getattr(frontend, "_ALLOCATE", {}).items():
        name = np_name(fn)
        out.append(("numpy functions", name, status(name, A.FUNCTIONS[target])[0],
                    NOTES.get(name, "")))
    for meth, impl in A.METHODS.items():
        if isinstance(impl, property):
            out.append(("array methods and operators", "x.T", status(".T", impl.fget)[0], ""))
            continue
        shown = DUNDERS.get(meth, f"x.{meth}()")
        if meth == "__setitem__":
            out.append(("array methods and operators", shown, "yes", NOTES[meth]))
            continue
        out.append(("array methods and operators", shown, status("." + meth, impl)[0],
                    NOTES.get(meth, "")))
    for fn, op in getattr(frontend, "_MATH", {}).items():
        name = np_name(fn)
        out.append(("`math` module", name, status(name, op)[0], ""))
    for fn, impl in getattr(frontend, "_BUILTINS", {}).items():
        name = getattr(fn, "__name__", repr(fn))
        call = (lambda impl: lambda *a: impl(None, None, *a))(impl)  # (interp, node, *args)
        out.append(("Python builtins", f"{name}()", status(name, call)[0], NOTES.get(name, "")))
    return out


LEGEND = {"yes": "yes", "stop": "no: blocks the gradient, by design", "n/a": "n/a",
          "zero": "zero (piecewise constant)", "no": "no (integer, boolean or constant result)",
          "?": "traced (see its notes)"}


def render():
    lines = [
        "# Supported numpy", "",
        "<!-- generated by docs/gen_coverage.py from gradjit.compiler.numpy_api; do not edit -->",
        "",
        "Generated from gradjit's own tables at every docs build, so it lists exactly what this "
        "version traces. **Differentiable**: *yes*, a gradient flows through it; *zero*, its "
        "derivative is zero almost everywhere (as in numpy's central differences); *no*, its "
        "result is an integer, a boolean or a constant. Anything not listed raises "
        "`gj.TraceError` naming your `file.py:line` (see [Troubleshooting](troubleshooting.md)).",
        "",
        f"The IR has {len(P.ALL)} primitives (`gradjit.compiler.primitives.ALL`); every entry "
        "below is a composition of them.", "",
    ]
    section = None
    for sec, name, st, note in rows():
        if sec != section:
            lines += ["", f"## {sec[0].upper() + sec[1:]}", "",
                      "| call | differentiable | notes |", "| --- | --- | --- |"]
            section = sec
        name = name.replace("|", "\\|")  # a table cell
        lines.append(f"| `{name}` | {LEGEND[st]} | {note} |")
    lines += ["", "## Primitives", "", "| primitive | kind | adjoint |", "| --- | --- | --- |"]
    for name, prim in sorted(P.ALL.items()):
        adj = "zero" if prim.zero_grad else ("yes" if prim.vjp is not None or
                                            prim.vjp_bwd is not None else "none")
        lines.append(f"| `{name}` | {prim.kind} | {adj} |")
    return "\n".join(lines) + "\n"


def main(path=OUT):
    text = render()
    old = open(path).read() if os.path.exists(path) else None
    if text != old:  # unchanged: leave the file alone (mkdocs serve watches it)
        with open(path, "w") as f:
            f.write(text)
    return path


if __name__ == "__main__":
    print(main(*sys.argv[1:]))
