"""Building IR: the ``Builder`` that collects equations, ``Tracer`` handles for dynamic values,
and ``bind``, the one door through which every primitive application enters a graph.

Everything that emits IR (the front end, adjoint rules, batching rules, inlining) calls the
same op functions in ``primitives``, which call ``bind``.
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np

from ..errors import TraceError, at
from .ir import Aval, Eqn, Graph, Lit, Var, make_params

# ---------------------------------------------------------------------------------------------
# Builder
# ---------------------------------------------------------------------------------------------


class Builder:
    def __init__(self):
        self.eqns = []
        self.producer = {}  # Var -> the Eqn that defines it (for peephole rewrites)
        self.loc = None  # the user's file:line of what is being traced now

    def new_input(self, aval):
        return Var(aval)


class _Stacks(threading.local):
    def __init__(self):
        self.builders = []  # the graphs being built by this thread, innermost last
        self.run_by_python = []  # functions with no source, run by Python on tracers (innermost last)


_local = _Stacks()  # per thread: two threads trace two functions at once, apart


def builders():
    """The graphs this thread is building, innermost last."""
    return _local.builders


def current():
    stack = _local.builders
    if not stack:
        raise TraceError("no graph is being built (an op was called outside a trace)")
    return stack[-1]


@contextlib.contextmanager
def building(builder=None):
    b = builder or Builder()
    stack = _local.builders
    stack.append(b)
    try:
        yield b
    finally:
        stack.pop()


@contextlib.contextmanager
def run_by_python(name):
    """Inside: a function with no readable source is being run by Python on tracers, so a
    conversion of a traced value (``if x > 0``, ``for`` over it) cannot be staged."""
    _local.run_by_python.append(name)
    try:
        yield
    finally:
        _local.run_by_python.pop()


def _conversion_error(msg):
    stack = _local.run_by_python
    if stack:
        msg += (f"; {stack[-1]} has no source file (defined at the prompt, by exec or python -c), "
                "so gradjit runs it on traced values like JAX does: Python loops and branches on "
                "values need the function in a file or a notebook cell (or use np.where)")
    return TraceError(at(current_loc(), msg))


@contextlib.contextmanager
def location(loc):
    """Attribute the equations emitted inside to ``loc`` (kept if ``loc`` is None)."""
    b = current()
    old = b.loc
    if loc is not None:
        b.loc = loc
    try:
        yield
    finally:
        b.loc = old


def current_loc():
    stack = _local.builders
    return stack[-1].loc if stack else None


def free_vars(builder, inputs, outputs):
    """Tracers of the values the equations in ``builder`` (and ``outputs``) read but neither
    compute nor take as ``inputs``: values of an enclosing trace that a function defined in
    traced code closes over (``lambda y: x * y`` under ``gj.grad``), in order of first use.
    A size is left out when it is a size of another such value (that value binds it)."""
    bound = set()
    for t in inputs:
        v = t.ivar if isinstance(t, Tracer) else t
        bound.add(v)
        bound.update(d for d in v.aval.shape if isinstance(d, Var))
    free = {}

    def use(a):
        if isinstance(a, Var) and a not in bound:
            free[a] = None
        for d in a.aval.shape if isinstance(a, Var) else ():
            if isinstance(d, Var) and d not in bound:
                free[d] = None
    for e in builder.eqns:
        for a in e.inputs:
            use(a)
        bound.update(e.outputs)
    for o in outputs:
        use(atom(o))
    sizes = {d for v in free for d in v.aval.shape if isinstance(d, Var)}
    return [Tracer(v) for v in free if v not in sizes]


def make_graph(inputs, outputs, builder):
    outs = tuple(atom(o) for o in outputs)
    return Graph(tuple(v.ivar if isinstance(v, Tracer) else v for v in inputs), tuple(builder.eqns), outs)


# ---------------------------------------------------------------------------------------------
# Atoms: turning Python values into IR operands
# ---------------------------------------------------------------------------------------------


def is_static_scalar(x):
    return isinstance(x, (bool, int, float, np.bool_, np.integer, np.floating)) and not isinstance(
        x, Tracer
    )


def lit_aval(x):
    """The aval of a Python/numpy scalar: Python numbers are weakly typed."""
    if isinstance(x, (bool, np.bool_)):
        return Aval("bool")
    if isinstance(x, int):
        return Aval("int64", (), True)
    if isinstance(x, float):
        return Aval("float64", (), True)
    return Aval(np.dtype(type(x)).name)


def atom(x):
    """Var/Lit for a Tracer or static scalar."""
    if isinstance(x, Tracer):
        return x.ivar
    if isinstance(x, (Var, Lit)):
        return x
    if is_static_scalar(x):
        return Lit(x.item() if isinstance(x, np.generic) else x, lit_aval(x))
    if isinstance(x, (np.ndarray, list)):
        # a constant of the graph (``const_p``, declared with the other primitives, which
        # import this module)
        from .primitives import lift
        return atom(lift(x))
    raise TraceError(at(current_loc(), f"cannot use a value of type {type(x).__name__} here"))


def aval_of(x):
    if isinstance(x, Tracer):
        return x.ivar.aval
    if isinstance(x, (Var, Lit)):
        return x.aval
    if isinstance(x, np.ndarray):
        return Aval(x.dtype.name, x.shape)
    return lit_aval(x)


def static_value(a):
    """The Python value of a Lit (for constant folding)."""
    return a.value if isinstance(a, Lit) else a


# ---------------------------------------------------------------------------------------------
# bind
# ---------------------------------------------------------------------------------------------


def bind(prim, *args, **params):
    """Apply ``prim`` to Tracers / static scalars: fold it when everything is known, else emit
    an equation. Returns one value, or a tuple if the primitive has several outputs."""
    ins = tuple(atom(a) for a in args)
    if prim.fold is not None:
        folded = prim.fold(*ins, **params)
        if folded is not NotImplemented:
            return folded
    if ins and prim.impl is not None and not prim.effect and all(isinstance(a, Lit) for a in ins):
        if all(not isinstance(d, Var) for a in ins for d in a.aval.shape):
            vals = prim.impl(*[a.value for a in ins], **params)
            outs = vals if prim.multiple_results else (vals,)
            avals = prim.shape_rule(*ins, **params)
            res = tuple(_const(v, av) for v, av in zip(outs, avals))
            return res if prim.multiple_results else res[0]
    avals = prim.shape_rule(*ins, **params)
    outs = tuple(Var(av) for av in avals)
    b = current()
    e = Eqn(prim, ins, make_params(params), outs, b.loc)
    b.eqns.append(e)
    for v in outs:
        b.producer[v] = e
    res = tuple(Tracer(v) for v in outs)
    return res if prim.multiple_results else (res[0] if res else None)


def _const(v, aval):
    """A folded result stays a static Python scalar, typed like the operation's output (an
    array result, as from broadcasting a literal to a static shape: a numpy constant)."""
    if aval.shape:
        return np.asarray(v, aval.dtype)
    if aval.weak:
        if aval.dtype == "bool":
            return bool(v)
        return float(v) if aval.is_float else int(v)
    return np.dtype(aval.dtype).type(v)


# ---------------------------------------------------------------------------------------------
# Tracer: a dynamic value inside a trace, with numpy's operators and ndarray methods
# ---------------------------------------------------------------------------------------------


class Tracer:
    """A handle on an IR ``Var`` that behaves like an ndarray (operators, methods, ``.shape``)."""

    __slots__ = ("ivar",)
    __array_priority__ = 1000  # numpy defers to us in `ndarray + tracer`

    def __init__(self, var):
        self.ivar = var

    @property
    def aval(self):
        return self.ivar.aval

    @property
    def dtype(self):
        return np.dtype(self.ivar.aval.dtype)

    @property
    def ndim(self):
        return self.ivar.aval.ndim

    @property
    def shape(self):
        return tuple(d if isinstance(d, int) else Tracer(d) for d in self.ivar.aval.shape)

    @property
    def size(self):
        n = 1
        for d in self.shape:
            n = n * d
        return n

    def __len__(self):
        if _local.run_by_python and self.ndim and isinstance(self.ivar.aval.shape[0], int):
            return self.ivar.aval.shape[0]
        raise _conversion_error("len() of a traced array: use x.shape[0]")

    def __bool__(self):
        raise _conversion_error("the truth value of a traced value is only known at run time "
                                "(use it in an if/while the compiler can see, or np.where)")

    def __index__(self):
        raise _conversion_error("a traced value cannot be used as a Python int here")

    def __float__(self):
        raise _conversion_error("a traced value cannot be converted to a Python float")

    __int__ = __index__

    def __iter__(self):
        if _local.run_by_python and self.ndim and isinstance(self.ivar.aval.shape[0], int):
            return iter([self[k] for k in range(self.ivar.aval.shape[0])])
        raise _conversion_error("iterating over a traced array is not supported; "
                                "loop over range(x.shape[0])")

    def __array__(self, *a, **k):
        raise TraceError(at(current_loc(), "a traced value was passed to a function gradjit "
                            "does not know (np.asarray / a non-numpy library)"))

    def __repr__(self):
        return f"Tracer({self.ivar.aval})"

    def __hash__(self):
        return id(self)


def install_methods(cls, table):
    """Give ``Tracer`` its operators and ndarray methods (from ``numpy_api``)."""
    for name, fn in table.items():
        setattr(cls, name, fn)
