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
import copy
import functools
import linecache
import math
import operator
import os
import threading
import types
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from ..errors import GradjitError, TraceError, at
from . import aliasing
from . import control as C
from . import effects as E
from . import library as L
from . import normalize, numpy_api, pytree
from . import primitives as P
from . import tracing as _tracing
from .avals import aval_for
from .tracing import Tracer, location

# ---------------------------------------------------------------------------------------------
# Reading the user's source
# ---------------------------------------------------------------------------------------------

class _LRU:
    """A small thread-safe least-recently-used map (traces may run in several threads)."""

    def __init__(self, size):
        self.size, self.items, self.lock = size, OrderedDict(), threading.Lock()

    def get(self, key, default=None):
        with self.lock:
            if key not in self.items:
                return default
            self.items.move_to_end(key)
            return self.items[key]

    def put(self, key, value):
        with self.lock:
            self.items[key] = value
            self.items.move_to_end(key)
            while len(self.items) > self.size:
                self.items.popitem(last=False)

    def pop(self, key):
        with self.lock:
            return self.items.pop(key, None)


# Parsed source files: filename -> (parsed (tree, text) or None, the one before the file was
# last edited, (mtime, size) it was read at). Bounded because a long session (a notebook, a
# server reloading modules) may trace functions from any number of files; a whole module's AST
# is large, and a file evicted is only parsed again when one of its functions is next looked up.
_file_asts = _LRU(64)


def _file_ast(filename):
    try:  # a file edited since it was read (a reloaded module) is parsed again
        st = os.stat(filename)
        stamp = (st.st_mtime_ns, st.st_size)
    except OSError:
        stamp = None
    entry = _file_asts.get(filename)
    if entry is not None and entry[2] == stamp:
        return entry[0]
    prev = None
    if entry is not None:
        linecache.checkcache(filename)
        prev = entry[0]  # functions compiled before the edit live here
    lines = linecache.getlines(filename)
    parsed = None
    if lines:
        try:
            parsed = (ast.parse("".join(lines), filename), "".join(lines))
        except SyntaxError:
            parsed = None
    _file_asts.put(filename, (parsed, prev, stamp))
    return parsed


def _previous_ast(filename):
    entry = _file_asts.get(filename)
    return entry[1] if entry else None


class NoSource(TraceError):
    """A function whose source cannot be read (``exec``, ``python -c``, the prompt)."""


# Each function's node, by the identity of its code object (two functions of different files
# can have equal code objects), with the code object kept so that its id is not reused.
# Bounded because functions made at run time (exec, closures of reloaded modules) each bring
# a code object; a function evicted is looked up in its file's AST again.
_fn_nodes = _LRU(1024)


def function_node(fn):
    """(FunctionDef | Lambda node, file text) of a Python function, found in its file."""
    code = fn.__code__
    hit = _fn_nodes.get(id(code))
    if hit is not None and hit[0] is code:
        return hit[1]
    parsed = _file_ast(code.co_filename)
    if parsed is None:
        raise NoSource(f"cannot read the source of {fn.__qualname__} (defined in "
                       f"{code.co_filename}); gradjit compiles functions defined in files")
    prev = _previous_ast(code.co_filename)
    for tree, text in [parsed] + ([prev] if prev else []):
        found = _find_function(fn, tree)
        if found is not None:
            _fn_nodes.put(id(code), (code, (found, text)))
            return found, text
    raise TraceError(f"cannot find the source of {fn.__qualname__} in {code.co_filename}")


# A function's body with its early exits made flag variables (normalize.py), by node identity.
# Bounded as ``_fn_nodes`` is, and for the same reason; defs nested in traced code are
# normalised when called, each once.
_normalized = functools.lru_cache(maxsize=1024)(normalize.normalize)


def _find_function(fn, tree):
    code = fn.__code__
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
        # Several lambdas on these lines: the one whose body spans every source position of
        # this code object (RESUME and the like carry empty spans), innermost first.
        spans = [(p[0], p[2], p[1], p[3]) for p in code.co_positions()
                 if None not in p and (p[0], p[2]) != (p[1], p[3])]
        if spans:
            lo, hi = min((a, b) for a, b, _, _ in spans), max((c, d) for _, _, c, d in spans)
            inside = [c for c in cands if (c.body.lineno, c.body.col_offset) <= lo
                      and hi <= (c.body.end_lineno, c.body.end_col_offset)]
            cands = sorted(inside, key=lambda c: (-c.lineno, -c.col_offset)) or cands
        # a lambda's body must use exactly its own argument names
        names = code.co_varnames[: code.co_argcount]
        named = [c for c in cands if tuple(a.arg for a in c.args.args) == names]
        cands = named or cands
    if not cands:
        return None
    if isinstance(cands[0], ast.AsyncFunctionDef):
        raise TraceError(f"{code.co_filename}:{line}: async functions cannot be traced")
    return cands[0]


# ---------------------------------------------------------------------------------------------
# Values the interpreter creates
# ---------------------------------------------------------------------------------------------


@dataclass(eq=False)
class StagedFunction:
    """A def or lambda met inside traced code: interpreted when called."""

    node: object
    frame: object
    name: str

    def __call__(self, *a, **k):  # called by Python code that is not traced (static use)
        raise TraceError(f"{self.name} cannot be called outside the traced function")


# -- control flow helpers (see Interpreter.stmt_If) -----------------------------------------------

_MISSING = object()
_ANY = object()  # effects: a container changed as a whole


class _Undefined:
    """The value of a name unbound on some path (bound in one branch only, or first bound in a
    loop whose trip count is known only at run time): reading it is an error. ``whole``: the
    message says it all (else it follows the name)."""

    __slots__ = ("msg", "whole")

    def __init__(self, msg, whole=False):
        self.msg = msg
        self.whole = whole


class _NeedRetval(Exception):
    """A loop body returned a value that the loop does not carry yet (see ``_dyn_loop``)."""

    def __init__(self, value):
        self.value = value


@dataclass
class DynRange:
    """``range(...)`` with bounds known only at run time: a `for` over it is a loop in the IR."""

    start: object
    stop: object
    step: object

    def __iter__(self):
        raise TraceError(at(None, "a range whose bounds are known only at run time can only be "
                            "looped over with `for`"))


class DynIter:
    """``enumerate``/``zip``/``reversed`` over a traced array whose length is known only at
    run time: a `for` over it is a loop in the IR (``elem(i)``: the i-th item)."""

    def __init__(self, n, elem, what):
        self.n, self.elem, self.what = n, elem, what

    def __iter__(self):
        raise TraceError(at(None, f"{self.what}() over a traced array whose length is known only "
                            "at run time can only be looped over with `for`"))


class _Names:
    """Error-message names of a cond's values (filled by ``_merge_envs``)."""

    def __init__(self, retval=None):
        self.names = []
        self.retval = retval

    def __call__(self, k):
        if k >= len(self.names):
            return "a value of this if"
        shown = self.names[k]
        return "the return value" if shown == _shown(self.retval, self.retval) else f"'{shown}'"


_NO_LOOP_INFO = normalize.LoopInfo()


def _loop_info(node):
    """What normalize.py noted on a loop (nothing, for a loop it left as it was)."""
    return getattr(node, "gj_loop", None) or _NO_LOOP_INFO


def _flatten(x):
    """(leaves, structure) of tuples/lists nesting values."""
    if isinstance(x, (tuple, list)):
        leaves, trees = [], []
        for v in x:
            lv, t = _flatten(v)
            leaves += lv
            trees.append(t)
        return leaves, (type(x) is list, tuple(trees))
    return [x], None


def _unflatten(tree, it):
    if tree is None:
        return next(it)
    is_list, subs = tree
    vals = [_unflatten(t, it) for t in subs]
    return vals if is_list else tuple(vals)


def _is_value(x):
    return C._is_leaf_value(x)


def _zeros_like(v):
    leaves, tree = _flatten(v)
    out = [P.zeros(x.shape, x.dtype.name) if isinstance(x, Tracer) and x.ndim
           else (P.cast(0, x.dtype.name) if isinstance(x, Tracer)
                 else (type(x)(0) if C._is_leaf_value(x) else x)) for x in leaves]
    return _unflatten(tree, iter(out))


def _and(a, b):
    if a is True:
        return b
    if b is True:
        return a
    if a is False or b is False:
        return False
    return P.logical_and(a, b)


def _shown(name, retval):
    """A local's name as error messages show it."""
    return "return value" if retval is not None and name == retval else name


def _merge_envs(before, a, b, where, retval=None, fn_name=""):
    """Line up the locals after the two branches of an `if` (see ``control.cond``): the names
    either branch rebinds become the cond's values. ``retval``: the name of the function's
    return value (normalize.py), which the path that did not return leaves unbound: that
    side is filled with zeros (the flag that says which side returned is joined too)."""
    names = []
    for env in (a, b):
        for n, v in env.items():
            if n not in names and (n not in before or v is not before[n]):
                names.append(n)
    for n in before:
        if n not in names and (n not in a or n not in b):
            names.append(n)
    ta, tb, plan = [], [], []
    for n in names:
        x, y = a.get(n, _MISSING), b.get(n, _MISSING)
        if n == retval:
            undefined = _retval_undefined(x, y, fn_name)
            if undefined is not None:
                plan.append((n, undefined, 0))
                continue
            if x is _MISSING or y is _MISSING:
                v = y if x is _MISSING else x
                lv, tree = _flatten(v)
                fill = [None if _is_value(z) else z for z in lv]
                plan.append((n, tree, len(lv)))
                ta += lv if x is not _MISSING else fill
                tb += lv if y is not _MISSING else fill
                continue
        if x is _MISSING or y is _MISSING or isinstance(x, _Undefined) or isinstance(y, _Undefined):
            plan.append((n, _Undefined(f"is bound in only one branch of the if at {where} (or "
                                       "in neither); bind it before the if or in both branches"), 0))
            continue
        (lx, tx), (ly, ty) = _flatten(x), _flatten(y)
        if tx != ty or any(not (_is_value(p) and _is_value(q)) and p is not q
                           for p, q in zip(lx, ly)):
            plan.append((n, _Undefined(f"holds different kinds of values after the two branches "
                                       f"of the if at {where}"), 0))
            continue
        plan.append((n, tx, len(lx)))
        ta += lx
        tb += ly
    leaf_names = [_shown(n, retval) for n, t, c in plan for _ in range(c)]

    def finish(vals):
        env = dict(before)
        it = iter(vals)
        for n, tree, c in plan:
            env[n] = tree if isinstance(tree, _Undefined) else _unflatten(tree, it)
        return env
    return ta, tb, finish, leaf_names


def _retval_undefined(x, y, fn_name):
    """The return value after an if where one side returned None (reached the end of the
    function) and the other a value: an error where it is returned. None: no error."""
    for v in (x, y):
        if isinstance(v, _Undefined):
            return v
    if x is not _MISSING and y is not _MISSING and (x is None) != (y is None):
        return _Undefined(f"{fn_name} returns a value on some paths and reaches its end "
                          "(returning None) on others", whole=True)
    return None


def _assigned_names(nodes):
    """Names a statement list binds (in order), not looking into nested scopes."""
    out = []

    def visit(n):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.append(n.name)
            return
        if isinstance(n, (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            return
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store) and n.id not in out:
            out.append(n.id)
        for c in ast.iter_child_nodes(n):
            visit(c)
    for n in nodes:
        visit(n)
    return out


def _mutated_containers(nodes, env):
    """Names of Python lists/dicts/sets in ``env`` that ``nodes`` change in place."""
    out = []
    for n in nodes:
        for x in ast.walk(n):
            target = None
            if isinstance(x, ast.Call) and isinstance(x.func, ast.Attribute) and x.func.attr in (
                    "append", "extend", "insert", "pop", "remove", "clear", "update", "add",
                    "setdefault", "popitem", "discard", "sort", "reverse"):
                target = x.func.value
            elif isinstance(x, ast.Subscript) and isinstance(x.ctx, (ast.Store, ast.Del)):
                target = x.value
            if isinstance(target, ast.Name) and isinstance(env.get(target.id), (list, dict, set)):
                out.append(target.id)
    return out


def _stored_names(nodes):
    """(name, statement) for each `name[...] = ...` (or `+=`, `name[i][j] = ...`) in ``nodes``,
    not looking into nested scopes."""
    out = []

    def root(t):
        while isinstance(t, ast.Subscript):
            t = t.value
        return t.id if isinstance(t, ast.Name) else None

    def targets(t):
        if isinstance(t, (ast.Tuple, ast.List)):
            return [x for e in t.elts
                    for x in targets(e.value if isinstance(e, ast.Starred) else e)]
        return [t] if isinstance(t, ast.Subscript) else []

    def visit(n):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            return
        ts = n.targets if isinstance(n, ast.Assign) else (
            [n.target] if isinstance(n, (ast.AugAssign, ast.AnnAssign)) else [])
        for t in ts:
            for sub in targets(t):
                r = root(sub)
                if r is not None and r not in [x for x, _ in out]:
                    out.append((r, n))
        for c in ast.iter_child_nodes(n):
            visit(c)
    for n in nodes:
        visit(n)
    return out


def _is_view_of(v, obj):
    """``v`` is (a view of a view of ...) a view of the array ``obj`` (numpy aliasing)."""
    if isinstance(v, np.ndarray) and isinstance(obj, np.ndarray):
        return v is not obj and v.ndim > 0 and np.shares_memory(v, obj)
    if not (isinstance(v, Tracer) and isinstance(obj, Tracer)) or v.ndim == 0:
        return False
    x = v.ivar
    while True:
        e = _producer_anywhere(x)
        if e is None or e.prim not in _VIEW_PRIMS[:3]:
            return False
        x = e.inputs[0]
        if x is obj.ivar:
            return True


def _producer_anywhere(v):
    """The equation that made ``v``, in any graph being built."""
    for b in reversed(_tracing.builders()):
        e = b.producer.get(v)
        if e is not None:
            return e
    return None


_VIEW_PRIMS = (P.slice_p, P.reshape_p, P.transpose_p, P.broadcast_to_p)


@dataclass
class Frame:
    fn_name: str
    filename: str
    globals: dict
    closure: dict
    locals: dict = field(default_factory=dict)
    parent: "Frame | None" = None  # for defs nested in traced code
    inputs: list = field(default_factory=list)  # the arrays it was called with: never written
    retval: str | None = None  # the name of the return value (normalize.py), if it has one
    result: object = None  # the value of the function's (last statement's) return


@dataclass(eq=False)
class Capture:
    """A value the trace read from outside its arguments, as an access path: a root (a module
    global, a closure cell, or the object of a bound method) and then attribute and item
    steps (``cfg.inner.scale``, ``COEF[1]``, ``self.W``). Arrays become kernel inputs read
    through the path at every call; anything else is guarded: compared at every call,
    according to ``mode``, with what the trace saw (``expected``)."""

    kind: str  # "global" | "cell" | "obj"
    where: object  # globals dict, cell, or the root object
    name: str
    value: object
    steps: tuple = ()  # ("attr", name) | ("item", key), applied in order after the root
    mode: str = "value"  # guard: "value" (type and ==), "ident" (is), "type", "shape"
    expected: object = None

    def get(self):
        v = self.where[self.name] if self.kind == "global" else \
            self.where.cell_contents if self.kind == "cell" else self.where
        for op, k in self.steps:
            v = getattr(v, k) if op == "attr" else v[k]
        return v

    def child(self, op, key, value):
        return Capture(self.kind, self.where, self.name, value, self.steps + ((op, key),))

    @property
    def text(self):
        """The path as the user would write it: ``cfg.alpha``, ``COEF[1]``."""
        return self.name + "".join(f".{k}" if op == "attr" else f"[{k!r}]" for op, k in self.steps)

    def holds(self, new):
        """Whether a guard still holds for ``new``, the value now at the path."""
        return _GUARD_TESTS[self.mode](new, self.expected)


def _same(new, old):
    if type(new) is not type(old):
        return False
    if new is old:
        return True
    try:
        r = new == old
        r = bool(r) if not isinstance(r, np.ndarray) else bool(r.all())
    except Exception:  # noqa: BLE001 - incomparable: not the same value
        return False
    return r or (isinstance(old, float) and old != old and new != new)  # NaN is NaN


def shape_of(v):
    """What a container's guard compares: its type, and its length or keys."""
    return (type(v), tuple(v) if isinstance(v, dict) else len(v))


_GUARD_TESTS = {
    "value": _same,
    "ident": lambda new, old: new is old,
    "type": lambda new, old: type(new) is old,
    "shape": lambda new, old: isinstance(new, (list, tuple, dict)) and shape_of(new) == old,
}

_PLAIN = (int, float, complex, bool, str, bytes, np.generic, type(None))


def _plain_data(v, depth=0):
    """Scalars and (small, nested) containers of them: guarded as one value."""
    if isinstance(v, _PLAIN) or isinstance(v, np.ndarray) and v.ndim == 0:
        return True
    if depth < 4 and type(v) in (list, tuple):
        return all(_plain_data(x, depth + 1) for x in v)
    if depth < 4 and type(v) is dict:
        return all(_plain_data(k, depth + 1) and _plain_data(x, depth + 1) for k, x in v.items())
    return False


# Modules whose functions are never interpreted (they are looked up in the numpy table or run
# as static Python when their arguments are static).
_LIBRARY_PREFIXES = ("numpy", "scipy", "gradjit", "numba", "math", "builtins", "functools",
                     "operator")

# Libraries whose Python functions are never inlined: numpy's are the numpy table's (or
# unsupported), gradjit's and numba's are not user-level numpy code.
_NOT_INLINED = ("numpy", "gradjit", "numba")

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

    def __init__(self, reads=None):
        # Static reads the in-memory cache does not guard but the disk cache must re-check in
        # a new process (a module or class bound to a name, an attribute of a user module or
        # class): ``("cap", kind, where, name, value)`` / ``("attr", obj, name, value)`` /
        # ``("absent", globals, name)`` (a builtin found because the module has no such
        # global), appended to ``reads`` (shared with the traces of transforms used inside;
        # None: not recorded). Nothing is kept outside the interpreter: threads trace apart.
        self.reads = reads
        self.captures = {}  # id(value) or (kind, where, name) -> Capture
        self.captured_inputs = []  # (Capture, Tracer): arrays passed at every call
        self.guards = []  # Captures of baked values, re-checked at every call
        self.paths = {}  # id(object) -> (object, Capture): objects whose reads are paths
        self.sources = {}  # (file, line, col) -> (qualname, source text) of every function inlined
        self.depth = 0
        self.frame = None
        self.loc = None
        # arrays that loops and ifs with dynamic tests may hand back as they came (aliasing.py)
        self.aliases = aliasing.Aliases(_producer_anywhere)
        self.effects = []  # effects.Effect: changes of outside state, replayed at every call
        self.written = {}  # (id(object), attribute or _ANY) -> (object, where): changed by them
        self.outside = {}  # id(container) -> (container, Capture): containers read from outside
        self.statics = {}  # id -> static argument of the function traced (effects may change it)
        self.dynamic = 0  # > 0 while tracing a region whose running depends on traced values
        self.handling = []  # exceptions whose except clause is being traced (a bare raise)

    # -- entry points --------------------------------------------------------------------------

    def call(self, fn, args, kwargs=None):
        """Interpret ``fn(*args, **kwargs)`` and return its (pytree) result."""
        kwargs = kwargs or {}
        inline = getattr(fn, "_gj_inline", None)  # a gradjit transform: compose in the IR
        if inline is not None:
            return inline(self, args, kwargs)
        if isinstance(fn, StagedFunction):
            return self._call_node(fn.node, fn.frame, fn.name, args, kwargs)
        if isinstance(fn, types.MethodType):
            if self.depth == 0:  # the function traced is a bound method: ``self`` is a root
                self.root(fn.__self__)
            return self.call(fn.__func__, (fn.__self__,) + tuple(args), kwargs)
        if isinstance(fn, _functools_partial):
            return self.call(fn.func, tuple(fn.args) + tuple(args), {**fn.keywords, **kwargs})
        if _user_callable(fn):  # an object of the user's with __call__: its method
            return self.call(types.MethodType(type(fn).__call__, fn), args, kwargs)
        if not isinstance(fn, types.FunctionType):
            return self._call_opaque(fn, args, kwargs)
        try:
            node, text = function_node(fn)
        except NoSource:
            return self._run_by_python(fn, args, kwargs)
        code = fn.__code__
        closure = {}
        if fn.__closure__:
            closure = dict(zip(code.co_freevars, fn.__closure__))
        frame = Frame(fn.__qualname__, code.co_filename, fn.__globals__, closure)
        key = (code.co_filename, node.lineno, node.col_offset)
        if key not in self.sources:
            seg = ast.get_source_segment(text, node) or ""
            self.sources[key] = (fn.__qualname__, seg)
        if fn.__defaults__ or fn.__kwdefaults__:
            frame.defaults = (fn.__defaults__ or (), fn.__kwdefaults__ or {})
        return self._call_node(node, frame, fn.__qualname__, args, kwargs)

    def _run_by_python(self, fn, args, kwargs):
        """A function with no source: Python runs it on tracers, as JAX does (numpy calls
        reach the numpy table through the Tracer's ``__array_function__``); what it reads
        from outside is taken as it is now. Its entry in ``sources`` names no file, so no
        disk manifest is written for a trace that includes it."""
        code = fn.__code__
        self.sources.setdefault((f"<no source: {code.co_filename}>", code.co_firstlineno, 0),
                                (fn.__qualname__, ""))
        with _tracing.run_by_python(fn.__qualname__):
            try:
                return fn(*args, **kwargs)
            except GradjitError as e:
                line = _line_in(e, code)
                if line is None or getattr(e, "gj_located", False):
                    raise
                msg = str(e)  # located at the caller's line: at the line of this function
                if self.loc and msg.startswith(f"{self.loc}: "):
                    msg = msg[len(self.loc) + 2:]
                err = type(e)(at(f"{code.co_filename}:{line}", f"in {fn.__qualname__}: {msg}"))
                err.__dict__.update(e.__dict__)
                err.gj_located = True
                raise err.with_traceback(e.__traceback__) from None
            except Exception as e:  # noqa: BLE001 - the user's own error, while tracing
                line = _line_in(e, code)
                where = f"{code.co_filename}:{line}" if line else self.loc
                err = TraceError(at(where, f"in {fn.__qualname__}: {type(e).__name__}: {e}"))
                err.gj_python_exc, err.gj_dynamic = e, self.dynamic
                raise err from e

    def _call_node(self, node, frame, name, args, kwargs):
        self.depth += 1
        if self.depth > 200:
            raise TraceError(at(self.loc, f"{name}: recursion is not supported in traced functions"))
        new = Frame(name, frame.filename, frame.globals, frame.closure,
                    parent=frame if frame.locals or frame.parent else None)
        if hasattr(frame, "defaults"):
            new.defaults = frame.defaults
        self._bind_args(node, new, args, kwargs)
        new.inputs = [v for v in _flatten([list(args), list(kwargs.values())])[0]
                      if isinstance(v, (Tracer, np.ndarray))]
        saved = self.frame
        self.frame = new
        try:
            if isinstance(node, ast.Lambda):
                self.loc = self.where(node)
                with location(self.loc):
                    return self.expr(node.body)
            node = _normalized(node)  # early exits made flags: only a last statement returns
            new.retval = getattr(node, "gj_retval", None)
            self.block(node.body)
            return new.result
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
            except (_NeedRetval, GradjitError):
                raise
            except RecursionError:
                raise
            except Exception as e:  # a user's own error while tracing, or an unexpected one
                err = TraceError(at(self.loc, f"in {self.frame.fn_name}: {type(e).__name__}: {e}"))
                err.gj_python_exc, err.gj_dynamic = e, self.dynamic  # for an enclosing `try`
                raise err from e

    def stmt_Expr(self, node):
        if not self._side_effect(node):
            self.expr(node.value)

    def stmt_Pass(self, node):
        pass

    # -- side effects on outside state (effects.py) -------------------------------------------

    def _side_effect(self, node):
        """Record ``node`` as a change of Python state outside the trace (``self.nfev += 1``,
        ``log.append(k)``), replayed at every call; False when it changes only the trace's
        own values (local names, arrays, containers and objects made while tracing)."""
        bases = E.changed(node)
        if bases is None:
            return False
        objs = []
        for b in bases:
            root = E.chain_root(b)
            if root is None:
                return False
            rv, local = self._peek_name(root)
            obj = self._peek(b)
            if obj is _MISSING or isinstance(obj, (Tracer, np.ndarray, StagedFunction)) or \
                    isinstance(obj, (list, dict)) and has_tracer(obj):
                return False  # array writes and the trace's own containers: traced as values
            if local and not (self._outside(rv) or self._outside(obj)):
                return False
            objs.append(obj)
        text = _describe(node)
        if self.dynamic:
            self.fail(node, E.under_dynamic(text))
        params, binds = [], []
        for name in E.loaded_names(node):
            v, local = self._peek_name(name)
            if v is _MISSING or not local and name not in self._closure_names():
                continue  # a global (read at replay) or a name the statement binds itself
            if has_tracer(v) or isinstance(v, (_Undefined, StagedFunction, DynRange)):
                self.fail(node, E.traced_operand(text, name))
            path = self._path_of(v) if local else self._cell_of(name)
            params.append(name)
            binds.append(E.Reread(path) if path is not None else v)
        fn = E.replay_function(node, params, self.frame.filename, self.frame.globals)
        where = self.where(node)
        self.effects.append(E.Effect(fn, binds, where))
        targets = node.targets if isinstance(node, ast.Assign) else \
            [getattr(node, "target", None)]
        for obj, t in zip(objs, targets):
            attr = t.attr if isinstance(t, ast.Attribute) else _ANY
            self.written[(id(obj), attr)] = (obj, where)
            if attr is _ANY:  # its contents change at every call: guard its type only
                for cap in self.guards:
                    if cap.value is obj and cap.mode in ("value", "shape"):
                        cap.mode, cap.expected = "type", type(obj)
        return True

    def _peek_name(self, name):
        """(value, is a local) of ``name``, read without recording a guard."""
        f = self.frame
        while f is not None:
            if name in f.locals:
                return f.locals[name], True
            if name in f.closure:
                try:
                    return f.closure[name].cell_contents, False
                except ValueError:
                    return _MISSING, False
            f = f.parent
        if name in self.frame.globals:
            return self.frame.globals[name], False
        return getattr(builtins, name, _MISSING), False

    def _closure_names(self):
        names, f = set(), self.frame
        while f is not None:
            names |= set(f.closure) - set(f.locals)
            f = f.parent
        return names

    def _cell_of(self, name):
        f = self.frame
        while f is not None:
            if name in f.closure:
                cell = f.closure[name]
                return Capture("cell", cell, name, cell.cell_contents)
            f = f.parent
        return None

    def _peek(self, e):
        """The value of an attribute/item chain (``self.log``, ``cache[k]``), unguarded."""
        if isinstance(e, ast.Name):
            return self._peek_name(e.id)[0]
        obj = self._peek(e.value)
        if obj is _MISSING or isinstance(obj, Tracer):
            return _MISSING
        try:
            if isinstance(e, ast.Attribute):
                return getattr(obj, e.attr)
            k = self.expr(e.slice)
            return _MISSING if has_tracer(k) else obj[k]
        except Exception:  # noqa: BLE001 - not there: the statement is traced as written
            return _MISSING

    def _path_of(self, v):
        """The access path of an object or container read from outside the trace (None: made
        inside it, or a plain value)."""
        for table in (self.paths, self.outside):
            hit = table.get(id(v))
            if hit is not None and hit[0] is v:
                return hit[1]
        return None

    def _outside(self, v):
        """Whether ``v`` was reached from outside the trace (a path, or a static argument)."""
        return self._path_of(v) is not None or self.statics.get(id(v)) is v

    def _check_unwritten(self, obj, key, what):
        w = self.written.get((id(obj), key)) or self.written.get((id(obj), _ANY))
        if w is not None and w[0] is obj:
            raise TraceError(at(self.loc, E.read_after_write(what, w[1])))

    def stmt_Return(self, node):  # the function's last statement (normalize.py)
        self.frame.result = None if node.value is None else self.expr(node.value)

    def stmt_Assign(self, node):
        if self._side_effect(node):
            return
        value = self.expr(node.value)
        for t in node.targets:
            self.assign(t, value)

    def stmt_AnnAssign(self, node):
        if node.value is not None and not self._side_effect(node):
            self.assign(node.target, self.expr(node.value))

    def stmt_AugAssign(self, node):
        if self._side_effect(node):
            return
        op = _BINOPS[type(node.op)]
        if isinstance(node.target, ast.Name):
            self.assign(node.target, op(self.load(node.target.id, node), self.expr(node.value)))
        elif isinstance(node.target, ast.Subscript):
            obj = self.expr(node.target.value)
            idx = self.expr(node.target.slice)
            self.store_item(node.target, obj, idx, op(self.getitem(obj, idx), self.expr(node.value)))
        else:  # an attribute of an object made inside the trace: plain Python
            obj = self.expr(node.target.value)
            if isinstance(obj, Tracer):
                self.fail(node, f"arrays in traced functions have no attribute '{node.target.attr}'")
            setattr(obj, node.target.attr, op(getattr(obj, node.target.attr), self.expr(node.value)))

    def assign(self, target, value):
        if isinstance(target, ast.Name):
            self.frame.locals[target.id] = value
        elif isinstance(target, (ast.Tuple, ast.List)):
            if isinstance(value, Tracer):
                if not value.ndim:
                    self.fail(target, "cannot unpack a 0-d array")
                n = value.shape[0]
                if not isinstance(n, int):
                    # `x, y = params`: the names fix the length; the kernel checks it
                    if any(isinstance(e, ast.Starred) for e in target.elts):
                        self.fail(target, "cannot unpack a traced array whose length is only "
                                  "known at run time into a starred name")
                    k = len(target.elts)
                    P.check_eq(n, k, at(self.where(target), f"cannot unpack an array of this "
                                        f"length into {k} names"))
                    n = k
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
        elif isinstance(target, ast.Attribute):  # an object made inside the trace
            obj = self.expr(target.value)
            if isinstance(obj, Tracer):
                self.fail(target, f"cannot set the attribute '{target.attr}' of a traced array")
            setattr(obj, target.attr, value)
        else:
            self.fail(target, f"cannot assign to {_describe(target)}")

    def store_item(self, node, obj, idx, value):
        if isinstance(obj, (list, dict)) and not isinstance(idx, Tracer):
            obj[idx] = value
            return
        if not isinstance(obj, (Tracer, np.ndarray)):
            self.fail(node, f"item assignment into a {type(obj).__name__} is not supported")
        # Arrays are values in the IR: `out[i] = v` makes a new value (primitives.slice_set_p,
        # lowered in place) and rebinds the name, and every other local bound to the same array.
        base = node.value
        if isinstance(base, ast.Subscript):  # A[i][j] = v: the updated row is written back
            part = self._updated(obj, idx, value)
            self.store_item(base, self.expr(base.value), self.expr(base.slice), part)
            return
        if not isinstance(base, ast.Name):
            self.fail(node, f"writing into {_describe(base)}: only arrays bound to a local name "
                      "can be written into (out[i] = v)")
        name = base.id
        if name not in self.frame.locals:
            self.fail(node, f"writing into '{name}', an array from outside {self.frame.fn_name} "
                      "(functions must not mutate their inputs); write into a local copy")
        self._check_writable(node, name, obj)
        new = self._updated(obj, idx, value)
        loc = self.frame.locals
        for n, v in list(loc.items()):
            if v is obj:
                loc[n] = new
            elif _is_view_of(v, obj):  # numpy would show the write through the view
                loc[n] = _Undefined(f"is a view of '{name}', which was written into at "
                                    f"{self.where(node)}; index '{name}' again after the write, "
                                    "or take a copy (.copy()) before it")
            elif self.aliases.made and (c := self.aliases.shared(v, obj)) is not None:
                # the same array on some runs only (a loop that ran no times handed it back)
                loc[n] = _Undefined(aliasing.after_write(c, n, name, self.where(node)))

    def _updated(self, obj, idx, value):
        if isinstance(obj, np.ndarray):
            if not has_tracer([idx, value]):  # all static: stays a static array
                new = obj.copy()
                new[idx] = value
                return new
            if obj.size and (obj == obj.flat[0]).all():  # np.zeros(3): a fill, not a constant
                obj = P.broadcast_to(P.lift(obj.reshape(-1)[:1]), obj.shape)
            else:
                obj = P.lift(obj)
        if obj.ndim == 0:
            raise TraceError(at(self.loc, "cannot write into a 0-d array; rebind the name"))
        if numpy_api.numpy_more._is_mask(idx):  # out[x > 0] = 0: np.where
            return numpy_api.numpy_more.masked_update(obj, idx, value)
        return P.index_update(obj, idx, value)

    def _is_input(self, obj):
        if any(obj is v for v in self.frame.inputs):
            return True
        return any(obj is t for _, t in self.captured_inputs)

    def _check_writable(self, node, name, obj):
        """Arguments, arrays read from outside, and views of them must not be written into."""
        mutate = (f"'{name}' is an input of {self.frame.fn_name} and functions must not mutate "
                  f"their inputs; write into a copy ({name} = {name}.copy())")
        if self._is_input(obj):
            self.fail(node, mutate)
        if isinstance(obj, np.ndarray):
            for n, v in self.frame.locals.items():
                if isinstance(v, np.ndarray) and v is not obj and np.shares_memory(v, obj):
                    self.fail(node, f"'{name}' is a view of '{n}' (writing into it would change "
                              f"'{n}'); write into '{n}' itself")
            return
        inputs = {t.ivar: t for t in list(self.frame.inputs) + [t for _, t in self.captured_inputs]
                  if isinstance(t, Tracer)}
        local = {v.ivar: n for n, v in self.frame.locals.items()
                 if isinstance(v, Tracer) and v is not obj}
        for t in inputs.values() if self.aliases.made else ():  # an input on some runs
            c = self.aliases.shared(obj, t)
            if isinstance(c, aliasing.Construct):
                self.fail(node, aliasing.input_write(c, name, self.frame.fn_name))
        v = obj.ivar
        while True:
            e = _producer_anywhere(v)
            if e is None or e.prim not in _VIEW_PRIMS:
                return
            v = e.inputs[0]
            if v in inputs:
                self.fail(node, mutate.replace("an input", "a view of an input"))
            if v in local:
                self.fail(node, f"'{name}' is a view of '{local[v]}' (writing into it would change "
                          f"'{local[v]}'); write into '{local[v]}' itself")

    # -- control flow --------------------------------------------------------------------------
    # A static test or trip count is decided here. A dynamic one becomes a structured region
    # (control.py): both branches of an `if` are interpreted, each in a copy of the locals, and
    # the names they bind are joined by the `cond` (an SSA phi); a loop carries the names its
    # body rebinds. break/continue/return are flag variables by now (normalize.py): a flag set
    # under a dynamic test is a traced boolean like any other value, and the code after it
    # runs under `if not flag`, so the IR stays structured. The flags a loop notes as its exits
    # (``normalize.LoopInfo``) stop its unrolling once set for certain, and make a loop with a
    # trip count known only at run time a `while` that tests them.

    def stmt_If(self, node):
        test = self.expr(node.test)
        if not isinstance(test, Tracer):
            self.block(node.body if test else node.orelse)
            return
        pred = self._truth(test, node)
        self._branch(pred, lambda: self.block(node.body), lambda: self.block(node.orelse), node)

    def _truth(self, test, node):
        """A traced test as a boolean scalar."""
        if test.ndim:
            if not all(isinstance(d, int) and d == 1 for d in test.shape):
                self.fail(node, "the truth value of an array with more than one element is "
                          "ambiguous; reduce it (.sum(), np.max, ...) or use np.where")
            test = P.reshape(test, ())
        return test if test.dtype == np.bool_ else P.ne(test, 0)

    def _branch(self, pred, then_run, else_run, node):
        """Interpret ``then_run``/``else_run`` as the two regions of a ``cond`` on ``pred``."""
        before, saved_loc = self.frame.locals, self.loc
        where = self.where(node)
        retval, fn_name = self.frame.retval, self.frame.fn_name

        def arm(run):
            def fn():
                self.frame.locals = dict(before)
                run()
                return self.frame.locals
            return fn
        names = _Names(retval)
        arms = []

        def merge(a, b):
            arms[:] = [a, b]
            ta, tb, finish, names.names = _merge_envs(before, a, b, where, retval, fn_name)
            return ta, tb, finish
        self.dynamic += 1
        try:
            env = C.cond(pred, arm(then_run), arm(else_run), merge, what=names)
        finally:
            self.frame.locals, self.loc = before, saved_loc
            self.dynamic -= 1
        self.aliases.branch(arms, env, list(before.values()) + list(self.frame.inputs), where)
        self.frame.locals = env

    def _exited(self, exits):
        """Whether one of a loop's exit flags is set for certain (a break or return taken on
        every path, known while tracing): (any set for certain, any set on some runs)."""
        vals = [self.frame.locals.get(f, False) for f in exits]
        return (any(v for v in vals if not isinstance(v, Tracer)),
                any(isinstance(v, Tracer) for v in vals))

    def stmt_For(self, node):
        it = self.expr(node.iter)
        if isinstance(it, Tracer):  # rows of a traced array
            if it.ndim == 0:
                self.fail(node, "iteration over a 0-d array")
            n = it.shape[0]
            if not isinstance(n, int) or n > self.MAX_UNROLL:
                return self._dyn_loop(node, DynRange(0, n, 1), elem=lambda i: it[i])
            it = [it[k] for k in range(n)]
        if isinstance(it, DynRange):
            return self._dyn_loop(node, it)
        if isinstance(it, DynIter):
            return self._dyn_loop(node, DynRange(0, it.n, 1), elem=it.elem)
        grows = _mutated_containers(node.body, self.frame.locals)  # such loops stay unrolled
        if isinstance(it, range) and len(it) > self.MAX_UNROLL and not grows:
            return self._dyn_loop(node, DynRange(it.start, it.stop, it.step))
        if not hasattr(it, "__iter__"):
            self.fail(node, f"cannot iterate over {type(it).__name__}")
        exits = _loop_info(node).exits
        for v in list(it):  # a static iteration space: unrolled
            if self._exited(exits)[0]:
                break  # after an exit on some runs only, the body's guard makes each a cond
            self.assign(node.target, v)
            self.block(node.body)

    def stmt_While(self, node):
        info = _loop_info(node)
        test_node = info.test or node.test  # ``node.test`` also tests the exit flags
        count = 0
        while True:
            certain, dynamic = self._exited(info.exits)
            if dynamic:
                return self._dyn_loop(node)  # a dynamic break: the rest is a loop in the IR
            if certain:
                return
            test = self.expr(test_node)
            if isinstance(test, Tracer):
                return self._dyn_loop(node)
            if not test:
                return
            count += 1
            if count > 10000:
                self.fail(node, "a while loop with a static condition ran 10000 times while tracing")
            self.block(node.body)

    def _dyn_loop(self, node, rng=None, elem=None):
        """A loop whose trip count is known only at run time: the names bound before it that
        its body rebinds are carried, and so are its exit flags and the return value (a loop
        with exits is a `while`, a `for` one carrying its index). ``rng``: a `for` over a range
        (``elem(i)`` gives the target's value), else a `while`."""
        info = _loop_info(node)
        before = self.frame.locals
        where = self.where(node)
        grows = _mutated_containers(node.body, before)
        if grows:  # the body is traced more than once: Python-level effects would repeat
            self.fail(node, f"the loop changes the Python container '{grows[0]}' but runs a "
                      "number of times known only at run time; build arrays with np.zeros "
                      "and np.concatenate, or make the trip count static")
        targets = _assigned_names([node.target] + ([info.target] if info.target else [])) \
            if rng is not None else []
        assigned = _assigned_names(node.body + ([info.test or node.test] if rng is None else []))
        self._carry_written(node, before, assigned)
        retval = self.frame.retval
        fixed = set(targets) | set(info.scratch) | set(info.exits) | {retval}
        state = [n for n in assigned if n not in fixed and n in before
                 and not isinstance(before[n], _Undefined)] + list(info.exits)
        if retval in assigned and not isinstance(before.get(retval, _Undefined("")), _Undefined):
            state.append(retval)
        inits = [before.get(n, False) for n in state]  # an exit flag: false before the loop
        while True:
            try:
                env = self._dyn_loop_trace(node, rng, elem, before, state, inits)
                break
            except _NeedRetval as r:  # a return inside: carry its value from a zero start
                state, inits = state + [retval], inits + [_zeros_like(r.value)]
        for n in assigned:
            if n not in state:
                env[n] = _Undefined(f"is first bound inside the loop at {where}, which runs a "
                                    "number of times known only at run time; bind it before "
                                    "the loop")
        for n in targets:
            env[n] = _Undefined(f"is the variable of the loop at {where}, which runs a number "
                                "of times known only at run time; it has no value after the loop")
        self.frame.locals = env

    def _carry_written(self, node, before, assigned):
        """`out[i] = v` in the body rebinds `out`: it is carried (added to ``assigned``), and
        the other names of that array are not."""
        for n, store in _stored_names(node.body):
            if n in before and isinstance(before[n], (Tracer, np.ndarray)):
                self.loc = self.where(store)
                with location(self.loc):
                    self._check_writable(store, n, before[n])
                for m, v in list(before.items()):
                    if m != n and (v is before[n] or _is_view_of(v, before[n])):
                        before[m] = _Undefined(
                            f"names the same array as '{n}', which is written into in the loop "
                            f"at {self.where(store)}; use '{n}'")
                    elif m != n and self.aliases.made and \
                            (c := self.aliases.shared(v, before[n])) is not None:
                        before[m] = _Undefined(aliasing.in_loop(c, m, n, self.where(store)))
            if n not in assigned:
                assigned.append(n)

    def _dyn_loop_trace(self, node, rng, elem, before, names, inits):
        """Trace the loop's regions on the carried ``names`` (starting at ``inits``); the
        locals after it."""
        info, retval = _loop_info(node), self.frame.retval
        flat, trees = [], []
        for v in inits:
            leaves, tree = _flatten(v)
            flat += leaves
            trees.append((tree, len(leaves)))
        leaf_names = [_shown(n, retval) for n, (_, c) in zip(names, trees) for _ in range(c)]
        use_while = rng is None or bool(info.exits)
        if rng is not None and use_while:  # the index becomes a carried value
            flat = [C._int(rng.start)] + flat
            leaf_names = ["loop index"] + leaf_names

        def enter(vals):
            env = dict(before)
            it = iter(vals)
            for n, (tree, _) in zip(names, trees):
                env[n] = _unflatten(tree, it)
            self.frame.locals = env
            return env

        def body_fn(*args):
            i, vals = (args[0], args[1:]) if rng is not None else (None, args)
            env = enter(vals)
            for f in info.exits:
                env[f] = False  # an iteration starts with no exit taken (the loop's test)
            if rng is not None:
                self.assign(node.target, elem(i) if elem else i)
            self.block(node.body)
            out = self.frame.locals
            if retval is not None and retval not in names and \
                    out.get(retval, _MISSING) is not before.get(retval, _MISSING):
                raise _NeedRetval(out[retval])
            leaves = self._carried_leaves(node, names, trees, out)
            if rng is not None and use_while:
                leaves = [P.add(i, rng.step)] + leaves
            return leaves

        def cond_fn(*args):
            i, vals = (args[0], args[1:]) if rng is not None else (None, args)
            env = enter(vals)
            if rng is not None:
                step = rng.step
                if isinstance(step, Tracer):
                    ok = P.select(P.gt(step, 0), P.lt(i, rng.stop), P.gt(i, rng.stop))
                else:
                    ok = P.lt(i, rng.stop) if step > 0 else P.gt(i, rng.stop)
            else:
                t = self.expr(info.test or node.test)
                ok = self._truth(t, node) if isinstance(t, Tracer) else bool(t)
            for f in info.exits:
                v = env.get(f, False)
                ok = _and(ok, P.logical_not(v) if isinstance(v, Tracer) else (not v))
            return [ok]

        saved_loc = self.loc
        start = len(_tracing.current().eqns)
        self.dynamic += 1
        try:
            # peel: iterations that change a carried value's shape run before the loop
            if use_while:
                outs = C.while_loop(flat, cond_fn, body_fn, leaf_names, peel=2)
            else:
                outs = C.fori(C._int(rng.start), C._int(rng.stop), C._int(rng.step), flat,
                              body_fn, leaf_names, peel=2)
        finally:
            self.frame.locals, self.loc = before, saved_loc
            self.dynamic -= 1
        self.aliases.loop(_tracing.current().eqns[start:], flat, outs,
                          list(before.values()) + list(self.frame.inputs), self.where(node))
        if rng is not None and use_while:
            outs = outs[1:]
        env = dict(before)
        it = iter(outs)
        for n, (tree, _) in zip(names, trees):
            env[n] = _unflatten(tree, it)
        return env

    def _carried_leaves(self, node, names, trees, out):
        """The leaves of the carried ``names`` at the end of an iteration (locals ``out``)."""
        leaves = []
        for n, (tree, _) in zip(names, trees):
            v = out.get(n, _MISSING)
            shown = _shown(n, self.frame.retval)
            if v is _MISSING or isinstance(v, _Undefined):
                self.fail(node, f"'{shown}' is unbound at the end of the loop body")
            lv, t2 = _flatten(v)
            if t2 != tree:
                self.fail(node, f"'{shown}' changes structure inside the loop")
            leaves += lv
        return leaves

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
        if node.exc is None:
            if not self.handling:
                self.fail(node, "a bare raise outside an except clause")
            exc = self.handling[-1]
        else:
            exc = self.expr(node.exc)
            if isinstance(exc, type) and issubclass(exc, BaseException):
                exc = exc()
        err = TraceError(at(self.where(node), f"in {self.frame.fn_name}: the function raises "
                            f"{exc!r}"))
        err.gj_python_exc, err.gj_dynamic = exc, self.dynamic  # for an enclosing `try`
        raise err

    # -- try and with: run while tracing ------------------------------------------------------
    # An exception raised while tracing the body (a raise statement, Python's own on static
    # values) goes to the handlers as in Python; gradjit's errors (unsupported constructs) are
    # never caught, nor one raised under a test or loop on traced values (it would happen on
    # some runs only). Exceptions of the compiled code at run time are not seen here.

    def stmt_Try(self, node):
        dynamic, pending = self.dynamic, None
        try:
            self.block(node.body)
        except GradjitError as err:
            exc = _python_exc(err, dynamic)
            handler = None if exc is None else next(
                (h for h in node.handlers if self._handles(h, exc)), None)
            if handler is None:
                if exc is None or not node.finalbody:
                    raise
                pending = err
            else:
                pending = self._guarded(dynamic, lambda: self._handle(handler, exc))
        else:
            pending = self._guarded(dynamic, lambda: self.block(node.orelse))
        self.block(node.finalbody)
        if pending is not None:
            raise pending

    def _guarded(self, dynamic, run):
        """Run ``run``; an error an enclosing handler may take is returned, not raised."""
        try:
            run()
        except GradjitError as err:
            if _python_exc(err, dynamic) is None:
                raise
            return err
        return None

    def _handles(self, h, exc):
        if h.type is None:
            return True
        t = self.expr(h.type)
        return isinstance(exc, t)

    def _handle(self, h, exc):
        if h.name:
            self.frame.locals[h.name] = exc
        self.handling.append(exc)
        try:
            self.block(h.body)
        finally:
            self.handling.pop()
            if h.name:
                self.frame.locals.pop(h.name, None)  # as Python: unbound after the handler

    def stmt_With(self, node):
        self._with(node, list(node.items))

    def _with(self, node, items):
        """``with a, b:`` is ``with a: with b:``; each manager is a Python object entered and
        exited while tracing (np.errstate, warnings.catch_warnings, ...)."""
        if not items:
            return self.block(node.body)
        cm = self.expr(items[0].context_expr)
        kind = type(cm)
        if has_tracer(cm) or not (hasattr(kind, "__enter__") and hasattr(kind, "__exit__")):
            self.fail(node, f"'{_describe(items[0].context_expr)}' is not a context manager "
                      "gradjit can enter while tracing")
        value = kind.__enter__(cm)
        if items[0].optional_vars is not None:
            self.assign(items[0].optional_vars, value)
        dynamic = self.dynamic
        try:
            self._with(node, items[1:])
        except GradjitError as err:
            exc = _python_exc(err, dynamic)
            shown = err if exc is None else exc
            if kind.__exit__(cm, type(shown), shown, shown.__traceback__) and exc is not None:
                return None  # suppressed by the manager, as in Python
            raise
        kind.__exit__(cm, None, None, None)
        return None

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
                v = f.locals[name]
                if isinstance(v, _Undefined):  # control flow: unbound on some path
                    who = "the return value" if name == f.retval else f"'{name}'"
                    self.fail(node, v.msg if v.whole else f"{who} {v.msg}")
                return v
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
            self.record(("absent", f.globals, name))  # a global of that name would shadow it
            return getattr(builtins, name)
        self.fail(node, f"name '{name}' is not defined")

    def record(self, item):
        if self.reads is not None:
            self.reads.append(item)

    def captured(self, kind, where, name, value):
        """A value read from a closure or the module."""
        if isinstance(value, (types.ModuleType, type)) or value is None:
            self.record(("cap", kind, where, name, value))
            if not _is_library(value):  # a user module or class: its attributes are read fresh
                self.paths[id(value)] = (value, Capture(kind, where, name, value))
            return value
        return self.read(Capture(kind, where, name, value))

    def root(self, obj):
        """The object of the bound method being traced: its attributes are read fresh."""
        if not isinstance(obj, (Tracer, types.ModuleType, type)) and not _plain_data(obj) \
                and not _is_library(obj):
            self.paths.setdefault(id(obj), (obj, Capture("obj", obj, "self", obj)))

    def read(self, cap):
        """The traced value of what ``cap``'s path holds now; records how it is re-read."""
        key = (cap.kind, id(cap.where), cap.name, _hashable_steps(cap.steps))
        if key in self.captures:
            return self.captures[key][1]
        value = cap.value
        if isinstance(value, np.ndarray) and value.ndim > 0:  # any size: read at every call
            if value.dtype.kind not in "biuf":
                raise TraceError(at(self.loc, f"array '{cap.text}' has unsupported dtype {value.dtype}"))
            out = Tracer(P.Var(aval_for(value)))
            self.captured_inputs.append((cap, out))
            self.captures[key] = (cap, out)
            return out
        if _plain_data(value):
            cap.mode, cap.expected = "value", copy.deepcopy(value)
            out = value
            if type(value) in (list, dict):  # effects may change it (``log.append(k)``)
                self.outside[id(value)] = (value, cap)
        elif type(value) in (list, tuple, dict):
            # holds arrays or objects: read element by element (arrays become inputs), and
            # guard the container's length or keys
            cap.mode, cap.expected = "shape", shape_of(value)
            self.captures[key] = (cap, None)  # a cycle ends here
            items = value.items() if type(value) is dict else enumerate(value)
            got = {k: self.read(cap.child("item", k, v)) for k, v in items}
            out = got if type(value) is dict else type(value)(got.values())
            self.outside[id(value)], self.outside[id(out)] = (value, cap), (out, cap)
        elif isinstance(value, types.MethodType):
            if id(value.__self__) in self.paths:
                self.captures[key] = (cap, value)
                return value  # a method of an object already read through its path
            cap.mode, cap.expected = "value", value  # made anew at each read: compared by ==
            out = value
        elif isinstance(value, (types.FunctionType, types.BuiltinFunctionType, types.ModuleType,
                                type, np.ufunc)) or callable(value) and _is_library(type(value)):
            cap.mode, cap.expected = "ident", value
            out = value
            if isinstance(value, (types.ModuleType, type)) and not _is_library(value):
                self.paths[id(value)] = (value, cap)
        else:  # an object: its type is guarded, its attributes are read through paths
            cap.mode, cap.expected = "type", type(value)
            self.paths[id(value)] = (value, cap)
            out = value
        self.guards.append(cap)
        self.captures[key] = (cap, out)
        return out

    def read_from(self, obj, op, k, value):
        """``value`` was read as ``obj.k`` / ``obj[k]``: through a path if ``obj`` has one."""
        hit = self.paths.get(id(obj))
        if self.written:
            base = hit[1].text if hit is not None and hit[0] is obj else type(obj).__name__
            self._check_unwritten(obj, k if op == "attr" else _ANY,
                                  base + (f".{k}" if op == "attr" else f"[{k!r}]"))
        if hit is None or hit[0] is not obj:
            return value
        return self.read(hit[1].child(op, k, value))

    def recapture(self, cap):
        """A capture of a nested trace (a transform used inside): the same input here."""
        return self.read(Capture(cap.kind, cap.where, cap.name, cap.get(), cap.steps))

    def expr_Attribute(self, node):
        obj = self.expr(node.value)
        try:
            value = getattr(obj, node.attr)
            if isinstance(obj, (types.ModuleType, type)):
                self.record(("attr", obj, node.attr, value))
            return self.read_from(obj, "attr", node.attr, value) if self.paths else value
        except AttributeError:
            if isinstance(obj, Tracer):
                self.fail(node, f"arrays in traced functions have no attribute '{node.attr}' "
                          "(not supported)")
            raise

    def expr_Subscript(self, node):
        return self.getitem(self.expr(node.value), self.expr(node.slice))

    def getitem(self, obj, idx):
        if self.written and isinstance(obj, (list, dict)):
            self._check_unwritten(obj, _ANY, "a container")
        if isinstance(obj, np.ndarray) and has_tracer(idx):
            obj = P.lift(obj)
        value = obj[idx]
        if self.paths and id(obj) in self.paths and not has_tracer(idx) and _hashable(idx):
            return self.read_from(obj, "item", idx, value)
        return value

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
            if isinstance(rhs, (bool, np.bool_)) and acc.dtype == np.bool_ and bool(rhs) == is_and:
                continue  # `flag and True`, `flag or False` are the flag itself
            acc = (P.logical_and if is_and else P.logical_or)(acc, rhs)
        return acc

    def expr_IfExp(self, node):
        test = self.expr(node.test)
        if not isinstance(test, Tracer):
            return self.expr(node.body if test else node.orelse)
        if test.ndim:  # an array of conditions: elementwise, as np.where
            return P.select(test, self.expr(node.body), self.expr(node.orelse))
        # a scalar condition: only the side taken runs (so `sqrt(x) if x > 0 else 0.0` has
        # finite derivatives everywhere)
        pred = self._truth(test, node)
        arms = []

        def merge(a, b):
            arms[:] = [{"": a}, {"": b}]
            (la, ta), (lb, tb) = _flatten(a), _flatten(b)
            if ta != tb:
                self.fail(node, "the two sides of a conditional expression have different structures")
            return la, lb, lambda vals: _unflatten(ta, iter(vals))
        self.dynamic += 1
        try:
            out = C.cond(pred, lambda: self.expr(node.body), lambda: self.expr(node.orelse),
                         merge, what="the conditional expression")
        finally:
            self.dynamic -= 1
        self.aliases.branch(arms, {"": out}, list(self.frame.locals.values())
                            + list(self.frame.inputs), self.where(node))
        return out

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
            if isinstance(it, Tracer):  # rows of an array whose length is known
                it = _rows(self, node, it, "a comprehension")
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
        if _draws_random(fn):
            # run while tracing, its numbers would be compiled in and repeat at every call
            self.fail(node, f"{_describe(node.func)}() draws random numbers, which a compiled "
                      "function would draw only once, while tracing: draw them outside and "
                      "pass them as an argument")
        owner = getattr(fn, "__self__", None)
        if owner is not None and getattr(fn, "__name__", "") in E.MUTATORS and \
                isinstance(owner, (list, dict, set)) and self._outside(owner):
            self.fail(node, f"{_describe(node)} changes a container from outside the function "
                      "inside an expression; write it as a statement of its own (log.append(k)), "
                      "which is replayed at every call")
        fn = _ALLOCATE.get(_key(fn), fn)
        method = isinstance(fn, types.MethodType) and fn.__func__ in _COPY_METHODS
        if (method or (_key(fn) is np.copy and args)) and \
                isinstance(fn.__self__ if method else args[0], Tracer):
            x = fn.__self__ if method else args[0]
            y = fn(*args, **kwargs) if method else x
            return Tracer(y.ivar) if y is x else y  # a copy: a new array as far as writes go
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
        traced = has_tracer([args, kwargs])
        if traced and L.helper(fn) is not None:  # array-API plumbing: numpy itself
            return L.helper(fn)(*args, **kwargs)
        pyfn = fn.__func__ if isinstance(fn, types.MethodType) else fn
        if isinstance(pyfn, types.FunctionType) and L.installed(pyfn) and \
                (pyfn.__module__ or "").split(".")[0] not in _NOT_INLINED:
            if not traced:  # another library's code on static values: Python runs it
                return fn(*args, **kwargs)
            return self.call(fn, args, kwargs)  # pure Python: inlined like the user's
        if isinstance(fn, types.MethodType) and isinstance(fn.__func__, types.FunctionType) \
                and not _is_library(fn.__func__):
            return self.call(fn, args, kwargs)  # a method of the user's: interpreted too
        if isinstance(fn, types.FunctionType) and not _is_library(fn) or _user_callable(fn):
            return self.call(fn, args, kwargs)
        if isinstance(fn, types.FunctionType) and getattr(fn, "__module__", "") == "gradjit.compiler.numpy_api":
            return fn(*args, **kwargs)
        try:
            mfn = _MATH.get(fn)
        except TypeError:
            mfn = None
        if mfn is not None and has_tracer(args):
            return mfn(*args)
        if not has_tracer([args, kwargs]) or pytree.is_node_type(fn):  # (NamedTuple(w=x, ...))
            return fn(*args, **kwargs)
        name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
        mod = getattr(fn, "__module__", None)
        full = f"{mod}.{name}" if mod and mod != "builtins" else name
        if mod == "numpy" or (mod or "").startswith("numpy"):
            full = "np." + name
        self.fail(node, f"{full}() is not supported on traced values" + L.compiled_hint(fn))

    def _call_opaque(self, fn, args, kwargs):
        if not has_tracer([args, kwargs]):
            return fn(*args, **kwargs)
        impl = numpy_api.lookup(fn)  # a numpy function transformed itself: gj.vmap(np.sort)
        if impl is not None:
            return impl(*args, **kwargs)
        raise TraceError(at(self.loc, f"cannot trace a call to {fn!r}"))

    def expr_Await(self, node):
        self.fail(node, "await is not supported")

    def expr_Yield(self, node):
        self.fail(node, "generators (yield) are not supported in traced functions")

    expr_YieldFrom = expr_Yield


def _python_exc(err, dynamic):
    """The Python exception a gradjit error stands for, if an enclosing `try` at ``dynamic``
    may take it: a raise or Python's own error while tracing, or a shape or index error found
    while tracing (numpy's ValueError/IndexError); None for unsupported constructs."""
    exc = getattr(err, "gj_python_exc", None)
    if exc is None and isinstance(err, (ValueError, IndexError)):
        exc = err
    if exc is None or getattr(err, "gj_dynamic", dynamic) != dynamic:
        return None
    return exc


def _line_in(exc, code):
    """The line of ``code``'s file where ``exc`` was raised (innermost frame in that file)."""
    tb, line = exc.__traceback__, None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == code.co_filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


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


_functools_partial = functools.partial


def _user_callable(fn):
    """An instance of a user's class with a ``__call__`` method written in Python."""
    if isinstance(fn, (type, types.FunctionType, types.MethodType, StagedFunction)):
        return False
    call = getattr(type(fn), "__call__", None)
    return isinstance(call, types.FunctionType) and not _is_library(call)


def _key(fn):
    try:
        hash(fn)
        return fn
    except TypeError:
        return None


# np.empty's contents are unspecified: zeros are a valid choice (and lower to one fill).
_ALLOCATE = {np.empty: np.zeros, np.empty_like: np.zeros_like}
_COPY_METHODS = (numpy_api.METHODS["copy"], numpy_api.METHODS["astype"])


def _draws_random(fn):
    """A function of numpy's or Python's random number generators."""
    import random
    owner = getattr(fn, "__self__", None)
    if isinstance(owner, (np.random.RandomState, np.random.Generator, random.Random)):
        return True
    mod = getattr(fn, "__module__", None)
    return isinstance(mod, str) and mod.startswith("numpy.random") and \
        getattr(fn, "__name__", "") not in ("default_rng", "seed", "get_state", "set_state")


def _hashable_steps(steps):
    return tuple((op, k if _hashable(k) else repr(k)) for op, k in steps)


def _hashable(k):
    try:
        hash(k)
        return True
    except TypeError:
        return False


def _is_library(fn):
    mod = fn.__name__ if isinstance(fn, types.ModuleType) else getattr(fn, "__module__", None)
    mod = mod if isinstance(mod, str) else ""
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


def _rows(interp, node, x, what, n=None):
    """The items of ``x`` as Python iterates it: a traced array's rows (its length known while
    tracing, or ``n``, the length of what it is zipped with: checked in the kernel)."""
    if not isinstance(x, Tracer):
        return list(x)
    if x.ndim == 0:
        interp.fail(node, f"{what} over a 0-d array (it is not iterable)")
    m = x.shape[0]
    if not isinstance(m, int):
        if n is None:
            interp.fail(node, f"{what} over a traced array whose length is known only at run "
                        "time: loop over range(x.shape[0]) instead, or use a numpy reduction")
        P.check_eq(m, n, at(interp.loc, f"{what}: the array's length must be {n}, the length "
                            "of the other arguments"))
        m = n
    if m > 4096:
        interp.fail(node, f"{what} over {m} items would unroll {m} steps: use numpy operations")
    return [x[k] for k in range(m)]


def _dynamic_length(x):
    return isinstance(x, Tracer) and x.ndim and not isinstance(x.shape[0], int)


def _b_zip(interp, node, *its, strict=False):
    its = [it if isinstance(it, Tracer) else list(it) for it in its]
    known = [len(it) for it in its if not isinstance(it, Tracer)] + \
        [it.shape[0] for it in its if isinstance(it, Tracer) and it.ndim and
         isinstance(it.shape[0], int)]
    if not known and its and all(_dynamic_length(it) for it in its):  # a loop in the IR
        n = its[0].shape[0]
        for it in its[1:]:
            P.check_eq(it.shape[0], n, at(interp.loc, "zip(): the arrays' lengths differ"))
        return DynIter(n, lambda i: tuple(it[i] for it in its), "zip")
    n = min(known) if known else None
    return zip(*[_rows(interp, node, it, "zip()", n) for it in its])


def _b_enumerate(interp, node, it, start=0):
    if _dynamic_length(it):
        return DynIter(it.shape[0], lambda i: (P.add(i, start) if start else i, it[i]),
                       "enumerate")
    return enumerate(_rows(interp, node, it, "enumerate()"), start)


def _b_reversed(interp, node, it):
    if _dynamic_length(it):
        n = it.shape[0]
        return DynIter(n, lambda i: it[P.sub(P.sub(n, 1), i)], "reversed")
    return reversed(_rows(interp, node, it, "reversed()"))


def _b_map(interp, node, fn, *its):
    cols = zip(*[_rows(interp, node, it, "map()") for it in its])
    return iter([interp.apply(fn, list(vals), {}, node) for vals in cols])


def _b_over_rows(pyfn):
    """A builtin that consumes an iterable (enumerate, list, tuple, reversed, iter, sorted of
    static values): a traced array is given as its rows."""
    def f(interp, node, *args, **kw):
        if args and isinstance(args[0], Tracer):
            args = (_rows(interp, node, args[0], pyfn.__name__ + "()"),) + args[1:]
        return pyfn(*args, **kw)
    return f


def _b_sum(interp, node, it, start=0):
    if isinstance(it, Tracer):  # Python sums the rows: numpy's sum over the first axis
        if it.ndim == 0:
            interp.fail(node, "sum() over a 0-d array (it is not iterable)")
        return start + numpy_api.FUNCTIONS[np.sum](it, axis=0)
    return sum(it, start)


def _b_minmax(op, pyfn):
    def f(interp, node, *args, **kw):
        if len(args) == 1 and isinstance(args[0], Tracer) and not kw.get("key"):
            x = args[0]  # the largest (smallest) of a vector's items: a reduction
            if x.ndim != 1:
                interp.fail(node, f"{pyfn.__name__}() of an array of rank {x.ndim}: Python "
                            "would compare whole rows; use np.max / np.min with an axis")
            return numpy_api.FUNCTIONS[np.max if pyfn is max else np.min](x)
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
    # Static values print once, while tracing (as in JAX); traced values have no value then.
    if has_tracer([args, kw]):
        interp.fail(node, "print() of a traced value: the compiled function does not print; "
                    "print its result, or the values outside the function")
    print(*args, **kw)


def _b_isinstance(interp, node, x, types_):
    if isinstance(x, Tracer):
        return any(t is np.ndarray for t in (types_ if isinstance(types_, tuple) else (types_,)))
    return isinstance(x, types_)


def _b_range(interp, node, *args):
    if has_tracer(args):  # a trip count known at run time: a loop in the IR (stmt_For)
        if not 1 <= len(args) <= 3:
            interp.fail(node, f"range expected 1 to 3 arguments, got {len(args)}")
        start, stop, step = (0, args[0], 1) if len(args) == 1 else (tuple(args) + (1,))[:3]
        if not isinstance(step, Tracer) and step == 0:
            interp.fail(node, "range() arg 3 must not be zero")
        return DynRange(start, stop, step)
    return range(*args)


def _b_dunder(pyfn):
    """Builtins that dispatch to the Tracer's own operators (abs -> __abs__, ...)."""
    return lambda interp, node, *a, **k: pyfn(*a, **k)


_BUILTINS = {
    abs: _b_dunder(abs), sum: _b_sum, pow: _b_dunder(pow), divmod: _b_dunder(divmod),
    zip: _b_zip, map: _b_map, enumerate: _b_enumerate, list: _b_over_rows(list),
    tuple: _b_over_rows(tuple), reversed: _b_reversed, iter: _b_over_rows(iter),
    len: _b_len, float: _b_float, int: _b_int, print: _b_print, isinstance: _b_isinstance,
    min: _b_minmax(P.minimum, min), max: _b_minmax(P.maximum, max), range: _b_range,
}
