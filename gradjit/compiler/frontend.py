"""Front end: a staging interpreter over the user's source.

The function's AST is walked with an environment mapping names to *static* Python values
(shapes' ranks, constants, modules, functions) or *dynamic* ``Tracer`` values. Expressions
with only static inputs are evaluated by Python at once; any other emits IR through the
numpy table (``numpy_api``) and the Tracer's operators. Control flow is taken from the
source structurally (``control.py``): a static test picks its branch at compile time; a
dynamic one becomes a structured region. User helpers and lambdas are interpreted in turn
(inlined). Arrays read from globals or closures become extra inputs of the graph, passed at
every call, never baked in; scalars read from them are baked in and guarded.
"""

from __future__ import annotations

import ast
import builtins
import linecache
import math
import operator
import types
from dataclasses import dataclass, field

import numpy as np

from ..errors import GradjitError, TraceError, at
from . import numpy_api
from . import primitives as P
from .tracing import Tracer, location

# ---------------------------------------------------------------------------------------------
# Reading the user's source
# ---------------------------------------------------------------------------------------------

_file_asts = {}


def _file_ast(filename):
    if filename not in _file_asts:
        lines = linecache.getlines(filename)
        if not lines:
            _file_asts[filename] = None
        else:
            try:
                _file_asts[filename] = (ast.parse("".join(lines), filename), "".join(lines))
            except SyntaxError:
                _file_asts[filename] = None
    return _file_asts[filename]


_fn_nodes = {}


def function_node(fn):
    """(FunctionDef | Lambda node, file text) of a Python function, found in its file."""
    code = fn.__code__
    if code in _fn_nodes:
        return _fn_nodes[code]
    parsed = _file_ast(code.co_filename)
    if parsed is None:
        raise TraceError(f"cannot read the source of {fn.__qualname__} (defined in "
                         f"{code.co_filename}); gradjit compiles functions defined in files")
    tree, text = parsed
    line = code.co_firstlineno
    cands = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == code.co_name:
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            if line in (first, node.lineno):
                cands.append(node)
        elif isinstance(node, ast.Lambda) and code.co_name == "<lambda>" and node.lineno <= line <= (node.end_lineno or line):
            cands.append(node)
    if len(cands) > 1 and code.co_name == "<lambda>":
        pos = [(p[0], p[2]) for p in code.co_positions() if p[0] is not None and p[2] is not None]
        if pos:
            first = min(pos)
            inside = [c for c in cands if (c.body.lineno, c.body.col_offset) <= first
                      <= (c.body.end_lineno, c.body.end_col_offset)]
            cands = sorted(inside, key=lambda c: -(c.col_offset + 1000 * c.lineno)) or cands
            # a lambda's body must use exactly its own argument names
            names = code.co_varnames[: code.co_argcount]
            named = [c for c in cands if tuple(a.arg for a in c.args.args) == names]
            cands = named or cands
    if not cands:
        raise TraceError(f"cannot find the source of {fn.__qualname__} in {code.co_filename}")
    if isinstance(cands[0], ast.AsyncFunctionDef):
        raise TraceError(f"{code.co_filename}:{line}: async functions cannot be traced")
    _fn_nodes[code] = (cands[0], text)
    return _fn_nodes[code]


# ---------------------------------------------------------------------------------------------
# Values the interpreter creates
# ---------------------------------------------------------------------------------------------


@dataclass
class StagedFunction:
    """A def or lambda met inside traced code: interpreted when called."""

    node: object
    frame: object
    name: str

    def __call__(self, *a, **k):  # called by Python code that is not traced (static use)
        raise TraceError(f"{self.name} cannot be called outside the traced function")


class _Signal(Exception):
    pass


class _Return(_Signal):
    def __init__(self, value):
        self.value = value


class _Break(_Signal):
    pass


class _Continue(_Signal):
    pass


@dataclass
class Frame:
    fn_name: str
    filename: str
    globals: dict
    closure: dict
    locals: dict = field(default_factory=dict)
    parent: "Frame | None" = None  # for defs nested in traced code


@dataclass
class Capture:
    """A global/closure value read by the trace: arrays become inputs, the rest is guarded."""

    kind: str  # "global" | "cell"
    where: object  # globals dict or cell
    name: str
    value: object

    def get(self):
        if self.kind == "global":
            return self.where[self.name]
        return self.where.cell_contents


# Modules whose functions are never interpreted (they are looked up in the numpy table or run
# as static Python when their arguments are static).
_LIBRARY_PREFIXES = ("numpy", "scipy", "gradjit", "numba", "math", "builtins", "functools",
                     "operator")

_MATH = {math.sin: P.sin, math.cos: P.cos, math.tan: P.tan, math.exp: P.exp, math.log: P.log,
         math.sqrt: P.sqrt, math.tanh: P.tanh, math.sinh: P.sinh, math.cosh: P.cosh,
         math.atan: P.arctan, math.asin: P.arcsin, math.acos: P.arccos,
         math.expm1: P.expm1, math.log1p: P.log1p, math.atan2: P.arctan2, math.fabs: P.absolute,
         math.floor: P.floor, math.ceil: P.ceil, math.pow: P.power, math.hypot: numpy_api.hypot}

_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
           ast.Pow: operator.pow, ast.MatMult: operator.matmul, ast.BitAnd: operator.and_,
           ast.BitOr: operator.or_, ast.BitXor: operator.xor, ast.LShift: operator.lshift,
           ast.RShift: operator.rshift}
_UNOPS = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Invert: operator.invert}
_CMPOPS = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
           ast.Gt: operator.gt, ast.GtE: operator.ge, ast.Is: operator.is_,
           ast.IsNot: operator.is_not, ast.In: lambda a, b: a in b,
           ast.NotIn: lambda a, b: a not in b}


def has_tracer(x):
    if isinstance(x, Tracer):
        return True
    if isinstance(x, (list, tuple)):
        return any(has_tracer(v) for v in x)
    if isinstance(x, dict):
        return any(has_tracer(v) for v in x.values())
    return False


# ---------------------------------------------------------------------------------------------
# The interpreter
# ---------------------------------------------------------------------------------------------


class Interpreter:
    """Stages one call of a user function (and everything it calls) into the current builder."""

    MAX_UNROLL = 64  # static loops longer than this are kept as loops, not unrolled

    def __init__(self):
        self.captures = {}  # id(value) or (kind, where, name) -> Capture
        self.captured_inputs = []  # (Capture, Tracer): arrays passed at every call
        self.guards = []  # Captures of baked values, re-checked at every call
        self.sources = {}  # (file, line) -> (qualname, source text) of every function inlined
        self.depth = 0
        self.frame = None
        self.loc = None

    # -- entry points --------------------------------------------------------------------------

    def call(self, fn, args, kwargs=None):
        """Interpret ``fn(*args, **kwargs)`` and return its (pytree) result."""
        kwargs = kwargs or {}
        if isinstance(fn, StagedFunction):
            return self._call_node(fn.node, fn.frame, fn.name, args, kwargs)
        if isinstance(fn, types.MethodType):
            return self.call(fn.__func__, (fn.__self__,) + tuple(args), kwargs)
        if isinstance(fn, _functools_partial):
            return self.call(fn.func, tuple(fn.args) + tuple(args), {**fn.keywords, **kwargs})
        if not isinstance(fn, types.FunctionType):
            return self._call_opaque(fn, args, kwargs)
        node, text = function_node(fn)
        code = fn.__code__
        closure = {}
        if fn.__closure__:
            closure = dict(zip(code.co_freevars, fn.__closure__))
        frame = Frame(fn.__qualname__, code.co_filename, fn.__globals__, closure)
        key = (code.co_filename, node.lineno)
        if key not in self.sources:
            seg = ast.get_source_segment(text, node) or ""
            self.sources[key] = (fn.__qualname__, seg)
        if fn.__defaults__ or fn.__kwdefaults__:
            frame.defaults = (fn.__defaults__ or (), fn.__kwdefaults__ or {})
        return self._call_node(node, frame, fn.__qualname__, args, kwargs)

    def _call_node(self, node, frame, name, args, kwargs):
        self.depth += 1
        if self.depth > 200:
            raise TraceError(at(self.loc, f"{name}: recursion is not supported in traced functions"))
        new = Frame(name, frame.filename, frame.globals, frame.closure,
                    parent=frame if frame.locals or frame.parent else None)
        if hasattr(frame, "defaults"):
            new.defaults = frame.defaults
        self._bind_args(node, new, args, kwargs)
        saved = self.frame
        self.frame = new
        try:
            if isinstance(node, ast.Lambda):
                return self.expr(node.body)
            try:
                self.block(node.body)
            except _Return as r:
                return r.value
            return None
        finally:
            self.frame = saved
            self.depth -= 1

    def _bind_args(self, node, frame, args, kwargs):
        a = node.args
        params = [p.arg for p in a.posonlyargs + a.args]
        n_def = len(a.defaults)
        defaults = {}
        if hasattr(frame, "defaults"):
            pos_defaults, kw_defaults = frame.defaults
            for p, d in zip(params[len(params) - len(pos_defaults):], pos_defaults):
                defaults[p] = d
            defaults.update(kw_defaults)
        elif n_def:
            for p, d in zip(params[len(params) - n_def:], a.defaults):
                defaults[p] = self.expr(d)
        loc = frame.locals
        if len(args) > len(params) and not a.vararg:
            raise TraceError(at(self.loc, f"{frame.fn_name}() takes {len(params)} positional "
                                f"arguments but {len(args)} were given"))
        for p, v in zip(params, args):
            loc[p] = v
        if a.vararg:
            loc[a.vararg.arg] = tuple(args[len(params):])
        extra = {}
        for k, v in kwargs.items():
            if k in params or k in [p.arg for p in a.kwonlyargs]:
                loc[k] = v
            elif a.kwarg:
                extra[k] = v
            else:
                raise TraceError(at(self.loc, f"{frame.fn_name}() got an unexpected keyword argument '{k}'"))
        if a.kwarg:
            loc[a.kwarg.arg] = extra
        for p in params + [p.arg for p in a.kwonlyargs]:
            if p not in loc:
                if p in defaults:
                    loc[p] = defaults[p]
                else:
                    kwd = {k.arg: d for k, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None}
                    if p in kwd:
                        loc[p] = self.expr(kwd[p])
                    else:
                        raise TraceError(at(self.loc, f"{frame.fn_name}() missing argument '{p}'"))

    # -- locations and errors ------------------------------------------------------------------

    def where(self, node):
        return f"{self.frame.filename}:{getattr(node, 'lineno', '?')}"

    def fail(self, node, msg):
        raise TraceError(at(self.where(node), f"in {self.frame.fn_name}: {msg}"))

    # -- statements ----------------------------------------------------------------------------

    def block(self, stmts):
        for s in stmts:
            self.stmt(s)

    def stmt(self, node):
        self.loc = self.where(node)
        handler = getattr(self, "stmt_" + type(node).__name__, None)
        if handler is None:
            self.fail(node, f"the statement '{_describe(node)}' is not supported in traced functions")
        with location(self.loc):
            try:
                handler(node)
            except (_Signal, GradjitError):
                raise
            except RecursionError:
                raise
            except Exception as e:  # a user's own error while tracing, or an unexpected one
                raise TraceError(at(self.loc, f"in {self.frame.fn_name}: {type(e).__name__}: {e}")) from e

    def stmt_Expr(self, node):
        self.expr(node.value)

    def stmt_Pass(self, node):
        pass

    def stmt_Return(self, node):
        raise _Return(None if node.value is None else self.expr(node.value))

    def stmt_Assign(self, node):
        value = self.expr(node.value)
        for t in node.targets:
            self.assign(t, value)

    def stmt_AnnAssign(self, node):
        if node.value is not None:
            self.assign(node.target, self.expr(node.value))

    def stmt_AugAssign(self, node):
        op = _BINOPS[type(node.op)]
        if isinstance(node.target, ast.Name):
            self.assign(node.target, op(self.load(node.target.id, node), self.expr(node.value)))
        elif isinstance(node.target, ast.Subscript):
            obj = self.expr(node.target.value)
            idx = self.expr(node.target.slice)
            self.store_item(node.target, obj, idx, op(self.getitem(obj, idx), self.expr(node.value)))
        else:
            self.fail(node, "augmented assignment to an attribute is not supported")

    def assign(self, target, value):
        if isinstance(target, ast.Name):
            self.frame.locals[target.id] = value
        elif isinstance(target, (ast.Tuple, ast.List)):
            if isinstance(value, Tracer):
                n = value.shape[0] if value.ndim else None
                if not isinstance(n, int):
                    self.fail(target, "cannot unpack a traced array whose length is only known at run time")
                value = [value[k] for k in range(n)]
            vals = list(value)
            star = [k for k, e in enumerate(target.elts) if isinstance(e, ast.Starred)]
            if star:
                k = star[0]
                n_after = len(target.elts) - k - 1
                vals = vals[:k] + [list(vals[k:len(vals) - n_after])] + vals[len(vals) - n_after:]
                target_elts = [e.value if isinstance(e, ast.Starred) else e for e in target.elts]
            else:
                target_elts = target.elts
            if len(vals) != len(target_elts):
                self.fail(target, f"cannot unpack {len(vals)} values into {len(target_elts)} names")
            for t, v in zip(target_elts, vals):
                self.assign(t, v)
        elif isinstance(target, ast.Subscript):
            obj = self.expr(target.value)
            self.store_item(target, obj, self.expr(target.slice), value)
        elif isinstance(target, ast.Attribute):
            self.fail(target, "assigning to an attribute is not supported in traced functions")
        else:
            self.fail(target, f"cannot assign to {_describe(target)}")

    def store_item(self, node, obj, idx, value):
        if isinstance(obj, (list, dict)) and not isinstance(idx, Tracer):
            obj[idx] = value
            return
        if isinstance(obj, Tracer) or isinstance(obj, np.ndarray):
            self.fail(node, "writing into an array (x[i] = ...) is not supported here; build "
                      "the result with np.where, np.concatenate or np.stack")
        self.fail(node, f"item assignment into a {type(obj).__name__} is not supported")

    def stmt_If(self, node):
        test = self.expr(node.test)
        if not isinstance(test, Tracer):
            self.block(node.body if test else node.orelse)
            return
        self.fail(node, "an if statement whose condition depends on argument values is not "
                  "supported yet (use np.where)")

    def stmt_For(self, node):
        it = self.expr(node.iter)
        if isinstance(it, Tracer):
            self.fail(node, "iterating over a traced array is not supported; loop over range(x.shape[0])")
        if isinstance(it, range) or isinstance(it, (list, tuple, dict, zip, enumerate)) or hasattr(it, "__iter__"):
            items = list(it)
            if len(items) > self.MAX_UNROLL and isinstance(it, range):
                self.fail(node, f"a loop of {len(items)} iterations would be unrolled; "
                          "loops are compiled as loops once control flow support lands")
            for v in items:
                self.assign(node.target, v)
                try:
                    self.block(node.body)
                except _Break:
                    break
                except _Continue:
                    continue
            else:
                self.block(node.orelse)
            return
        self.fail(node, f"cannot iterate over {type(it).__name__}")

    def stmt_While(self, node):
        count = 0
        while True:
            test = self.expr(node.test)
            if isinstance(test, Tracer):
                self.fail(node, "a while loop whose condition depends on argument values is "
                          "not supported yet")
            if not test:
                self.block(node.orelse)
                return
            count += 1
            if count > 10000:
                self.fail(node, "a while loop with a static condition ran 10000 times while tracing")
            try:
                self.block(node.body)
            except _Break:
                return
            except _Continue:
                continue

    def stmt_Break(self, node):
        raise _Break()

    def stmt_Continue(self, node):
        raise _Continue()

    def stmt_FunctionDef(self, node):
        if node.decorator_list:
            self.fail(node, "decorated functions defined inside a traced function are not supported")
        defaults = tuple(self.expr(d) for d in node.args.defaults)
        frame = self.frame
        f = StagedFunction(node, frame, f"{frame.fn_name}.{node.name}")
        if defaults:
            f.frame = _FrameWithDefaults(frame, defaults)
        self.frame.locals[node.name] = f

    def stmt_Assert(self, node):
        test = self.expr(node.test)
        if isinstance(test, Tracer):
            return  # run-time asserts are dropped (as with python -O)
        if not test:
            msg = self.expr(node.msg) if node.msg else "assertion failed"
            self.fail(node, f"AssertionError: {msg}")

    def stmt_Raise(self, node):
        exc = self.expr(node.exc) if node.exc else None
        self.fail(node, f"the function raises {exc!r}")

    def stmt_Global(self, node):
        self.fail(node, "'global' statements are not supported in traced functions")

    def stmt_Nonlocal(self, node):
        self.fail(node, "'nonlocal' statements are not supported in traced functions")

    # -- expressions ---------------------------------------------------------------------------

    def expr(self, node):
        handler = getattr(self, "expr_" + type(node).__name__, None)
        if handler is None:
            self.fail(node, f"the expression '{_describe(node)}' is not supported in traced functions")
        return handler(node)

    def expr_Constant(self, node):
        return node.value

    def expr_Name(self, node):
        return self.load(node.id, node)

    def load(self, name, node):
        f = self.frame
        while f is not None:
            if name in f.locals:
                return f.locals[name]
            if name in f.closure:
                cell = f.closure[name]
                try:
                    value = cell.cell_contents
                except ValueError:
                    self.fail(node, f"free variable '{name}' is not yet bound")
                return self.captured("cell", cell, name, value)
            f = f.parent
        f = self.frame
        if name in f.globals:
            return self.captured("global", f.globals, name, f.globals[name])
        if hasattr(builtins, name):
            return getattr(builtins, name)
        self.fail(node, f"name '{name}' is not defined")

    def captured(self, kind, where, name, value):
        """A value read from a closure or the module: arrays become inputs of the graph."""
        if isinstance(value, (types.ModuleType, type)) or value is None:
            return value
        key = (kind, id(where), name)
        if key in self.captures:
            return self.captures[key][1]
        cap = Capture(kind, where, name, value)
        if isinstance(value, np.ndarray) and value.ndim > 0:
            from ..runtime.signature import aval_for  # the runtime decides how args are typed
            if value.dtype.kind not in "biuf":
                raise TraceError(at(self.loc, f"global array '{name}' has unsupported dtype {value.dtype}"))
            t = Tracer(P.Var(aval_for(value)))
            self.captured_inputs.append((cap, t))
            self.captures[key] = (cap, t)
            return t
        if isinstance(value, (list, tuple, dict)) and has_array(value):
            raise TraceError(at(self.loc, f"'{name}' is a container of arrays read from outside "
                                "the function: pass it as an argument"))
        self.guards.append(cap)
        self.captures[key] = (cap, value)
        return value

    def expr_Attribute(self, node):
        obj = self.expr(node.value)
        try:
            return getattr(obj, node.attr)
        except AttributeError:
            if isinstance(obj, Tracer):
                self.fail(node, f"arrays in traced functions have no attribute '{node.attr}' "
                          "(not supported)")
            raise

    def expr_Subscript(self, node):
        return self.getitem(self.expr(node.value), self.expr(node.slice))

    def getitem(self, obj, idx):
        if isinstance(obj, np.ndarray) and has_tracer(idx):
            obj = P.lift(obj)
        return obj[idx]

    def expr_Slice(self, node):
        return slice(*(None if p is None else self.expr(p) for p in (node.lower, node.upper, node.step)))

    def expr_Tuple(self, node):
        return tuple(self._elts(node.elts))

    def expr_List(self, node):
        return list(self._elts(node.elts))

    def expr_Set(self, node):
        return set(self._elts(node.elts))

    def _elts(self, elts):
        out = []
        for e in elts:
            if isinstance(e, ast.Starred):
                out.extend(self.expr(e.value))
            else:
                out.append(self.expr(e))
        return out

    def expr_Dict(self, node):
        d = {}
        for k, v in zip(node.keys, node.values):
            if k is None:
                d.update(self.expr(v))
            else:
                d[self.expr(k)] = self.expr(v)
        return d

    def expr_BinOp(self, node):
        a, b = self.expr(node.left), self.expr(node.right)
        if isinstance(a, np.ndarray) and isinstance(b, Tracer):
            a = P.lift(a)
        return _BINOPS[type(node.op)](a, b)

    def expr_UnaryOp(self, node):
        v = self.expr(node.operand)
        if isinstance(node.op, ast.Not):
            return P.logical_not(v) if isinstance(v, Tracer) else (not v)
        return _UNOPS[type(node.op)](v)

    def expr_Compare(self, node):
        left = self.expr(node.left)
        result = True
        for op, right_node in zip(node.ops, node.comparators):
            right = self.expr(right_node)
            r = _CMPOPS[type(op)](left, right)
            result = r if result is True else (P.logical_and(result, r) if has_tracer([result, r])
                                                else (result and r))
            if result is False:
                return False
            left = right
        return result

    def expr_BoolOp(self, node):
        is_and = isinstance(node.op, ast.And)
        acc = self.expr(node.values[0])
        for v in node.values[1:]:
            if not isinstance(acc, Tracer):
                if (is_and and not acc) or (not is_and and acc):
                    return acc
                acc = self.expr(v)
                continue
            rhs = self.expr(v)
            acc = (P.logical_and if is_and else P.logical_or)(acc, rhs)
        return acc

    def expr_IfExp(self, node):
        test = self.expr(node.test)
        if not isinstance(test, Tracer):
            return self.expr(node.body if test else node.orelse)
        return P.select(test, self.expr(node.body), self.expr(node.orelse))

    def expr_Lambda(self, node):
        return StagedFunction(node, self.frame, f"{self.frame.fn_name}.<lambda>")

    def expr_JoinedStr(self, node):
        parts = []
        for v in node.values:
            if isinstance(v, ast.Constant):
                parts.append(str(v.value))
            else:
                parts.append(format(self.expr(v.value)))
        return "".join(parts)

    def expr_NamedExpr(self, node):
        v = self.expr(node.value)
        self.assign(node.target, v)
        return v

    def _comprehension(self, node, make):
        out = []

        def gen(k):
            if k == len(node.generators):
                out.append(make())
                return
            g = node.generators[k]
            it = self.expr(g.iter)
            if isinstance(it, Tracer):
                self.fail(node, "a comprehension over a traced array is not supported")
            for v in it:
                self.assign(g.target, v)
                if all(self._static_test(c) for c in g.ifs):
                    gen(k + 1)
        gen(0)
        return out

    def _static_test(self, c):
        t = self.expr(c)
        if isinstance(t, Tracer):
            self.fail(c, "a comprehension condition that depends on argument values is not supported")
        return t

    def expr_ListComp(self, node):
        return self._comprehension(node, lambda: self.expr(node.elt))

    def expr_GeneratorExp(self, node):
        return iter(self._comprehension(node, lambda: self.expr(node.elt)))

    def expr_DictComp(self, node):
        return dict(self._comprehension(node, lambda: (self.expr(node.key), self.expr(node.value))))

    def expr_Call(self, node):
        fn = self.expr(node.func)
        args = []
        for a in node.args:
            if isinstance(a, ast.Starred):
                args.extend(self.expr(a.value))
            else:
                args.append(self.expr(a))
        kwargs = {}
        for k in node.keywords:
            if k.arg is None:
                kwargs.update(self.expr(k.value))
            else:
                kwargs[k.arg] = self.expr(k.value)
        self.loc = self.where(node)
        with location(self.loc):
            return self.apply(fn, args, kwargs, node)

    def apply(self, fn, args, kwargs, node):
        """Call ``fn``: numpy table, gradjit transform, builtins, or interpret the user's code."""
        impl = numpy_api.lookup(fn)
        if impl is not None:
            if not has_tracer([args, kwargs]):
                return fn(*args, **kwargs)
            return impl(*args, **kwargs)
        inline = getattr(fn, "_gj_inline", None)
        if inline is not None:
            return inline(self, args, kwargs)
        if fn in _BUILTINS:
            return _BUILTINS[fn](self, node, *args, **kwargs)
        if isinstance(fn, StagedFunction):
            return self.call(fn, args, kwargs)
        if isinstance(fn, types.MethodType) and isinstance(fn.__self__, Tracer):
            return fn(*args, **kwargs)
        if isinstance(fn, types.FunctionType) and not _is_library(fn):
            return self.call(fn, args, kwargs)
        if isinstance(fn, types.FunctionType) and getattr(fn, "__module__", "") == "gradjit.compiler.numpy_api":
            return fn(*args, **kwargs)
        try:
            mfn = _MATH.get(fn)
        except TypeError:
            mfn = None
        if mfn is not None and has_tracer(args):
            return mfn(*args)
        if not has_tracer([args, kwargs]):
            return fn(*args, **kwargs)
        name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
        mod = getattr(fn, "__module__", None)
        full = f"{mod}.{name}" if mod and mod != "builtins" else name
        if mod == "numpy" or (mod or "").startswith("numpy"):
            full = "np." + name
        self.fail(node, f"{full}() is not supported on traced values")

    def _call_opaque(self, fn, args, kwargs):
        if not has_tracer([args, kwargs]):
            return fn(*args, **kwargs)
        raise TraceError(at(self.loc, f"cannot trace a call to {fn!r}"))

    def expr_Await(self, node):
        self.fail(node, "await is not supported")

    def expr_Yield(self, node):
        self.fail(node, "generators (yield) are not supported in traced functions")

    expr_YieldFrom = expr_Yield


class _FrameWithDefaults:
    def __init__(self, frame, defaults):
        self.__dict__.update(frame.__dict__)
        self.defaults = (defaults, {})


def has_array(x):
    if isinstance(x, np.ndarray):
        return x.ndim > 0
    if isinstance(x, (list, tuple)):
        return any(has_array(v) for v in x)
    if isinstance(x, dict):
        return any(has_array(v) for v in x.values())
    return False


import functools  # noqa: E402

_functools_partial = functools.partial


def _is_library(fn):
    mod = getattr(fn, "__module__", None) or ""
    return mod.split(".")[0] in _LIBRARY_PREFIXES


def _describe(node):
    try:
        text = ast.unparse(node)
    except Exception:
        text = type(node).__name__
    text = text.split("\n")[0]
    kind = {ast.Try: "try", ast.With: "with", ast.Global: "global", ast.Nonlocal: "nonlocal",
            ast.ClassDef: "class", ast.Delete: "del", ast.AsyncFor: "async for",
            ast.AsyncWith: "async with", ast.Import: "import", ast.ImportFrom: "import"}.get(type(node))
    if kind:
        return f"{kind}" + (f" ({text[:40]})" if text else "")
    return text[:60]


# -- builtins with traced arguments ---------------------------------------------------------------


def _b_len(interp, node, x):
    if isinstance(x, Tracer):
        if x.ndim == 0:
            interp.fail(node, "len() of a 0-d array")
        return x.shape[0]
    return len(x)


def _b_float(interp, node, x=0.0):
    return P.astype(x, "float64") if isinstance(x, Tracer) else float(x)


def _b_int(interp, node, x=0, *a):
    return P.astype(x, "int64") if isinstance(x, Tracer) else int(x, *a)


def _b_minmax(op, pyfn):
    def f(interp, node, *args, **kw):
        vals = list(args[0]) if len(args) == 1 else list(args)
        if not has_tracer(vals):
            return pyfn(*args, **kw)
        if kw:
            interp.fail(node, f"{pyfn.__name__}() with keyword arguments on traced values")
        acc = vals[0]
        for v in vals[1:]:
            acc = op(acc, v)
        return acc
    return f


def _b_print(interp, node, *args, **kw):
    if not has_tracer(args):
        print(*args, **kw)


def _b_isinstance(interp, node, x, types_):
    if isinstance(x, Tracer):
        return any(t is np.ndarray for t in (types_ if isinstance(types_, tuple) else (types_,)))
    return isinstance(x, types_)


def _b_range(interp, node, *args):
    if has_tracer(args):
        interp.fail(node, "a loop whose trip count depends on argument values is not supported yet")
    return range(*args)


_BUILTINS = {
    len: _b_len, float: _b_float, int: _b_int, print: _b_print, isinstance: _b_isinstance,
    min: _b_minmax(P.minimum, min), max: _b_minmax(P.maximum, max), range: _b_range,
}
