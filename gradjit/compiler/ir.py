"""The SSA IR: abstract values, variables, literals, equations and graphs.

A ``Graph`` is a flat tuple of equations in topological order; structured control flow is an
equation whose params hold sub-graphs (an ``if`` yielding values, a loop with carried
values), so passes that do not care about regions treat it like any other equation.

Shapes are symbolic: each dimension is either an ``int`` (statically known, e.g. the 1s that
broadcasting depends on) or a ``Var`` of type int64 holding the size at run time. The sizes of
a graph's array inputs are bound implicitly on entry (they are the inputs' ``.shape``).

Names are never stored: printing and code generation number variables in order of
appearance, so one graph always gives the same text.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

# ---------------------------------------------------------------------------------------------
# Abstract values
# ---------------------------------------------------------------------------------------------

_SHORT = {"float64": "f64", "float32": "f32", "int64": "i64", "int32": "i32", "bool": "bool"}


@dataclass(frozen=True, slots=True)
class Aval:
    """dtype name, shape (ints and int64 ``Var`` sizes), and whether the dtype is weak (a Python
    scalar, which adopts the dtype of the array it meets, as in JAX)."""

    dtype: str
    shape: tuple = ()
    weak: bool = False

    @property
    def ndim(self):
        return len(self.shape)

    @property
    def is_float(self):
        return self.dtype.startswith("float")

    @property
    def is_diff(self):
        """Carries a cotangent: a float value, or a tape of floats (whose cotangent is a tape
        of the pushed values' cotangents, popped in the opposite order)."""
        return self.dtype.startswith(("float", "tape:float"))

    def update(self, **kw):
        d = {"dtype": self.dtype, "shape": self.shape, "weak": self.weak}
        d.update(kw)
        return Aval(**d)


@dataclass(frozen=True, slots=True, eq=False)
class Var:
    """An SSA value; compared and hashed by identity."""

    aval: Aval

    def __repr__(self):
        return f"Var<{self.aval.dtype}{list(self.aval.shape)}@{id(self) % 10000}>"


@dataclass(frozen=True, slots=True)
class Lit:
    """A literal scalar (Python number) of a given dtype."""

    value: object
    aval: Aval

    def __repr__(self):
        return repr(self.value)


ScalarInt = Aval("int64")


def is_dim(d):
    return isinstance(d, Var) or isinstance(d, int)


# ---------------------------------------------------------------------------------------------
# Equations and graphs
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class Eqn:
    prim: object  # a primitives.Primitive
    inputs: tuple  # of Var | Lit
    params: tuple  # sorted (name, value) pairs, hashable
    outputs: tuple  # of Var
    loc: str | None = None  # the user's "file.py:line"

    @property
    def p(self):
        return dict(self.params)

    def replace(self, **kw):
        d = {s: getattr(self, s) for s in ("prim", "inputs", "params", "outputs", "loc")}
        d.update(kw)
        return Eqn(**d)


def make_params(kw):
    return tuple(sorted(kw.items()))


@dataclass(frozen=True, slots=True, eq=False)
class Graph:
    inputs: tuple  # of Var
    eqns: tuple  # of Eqn
    outputs: tuple  # of Var | Lit
    meta: dict = field(default_factory=dict, compare=False)  # e.g. source locations for errors

    def replace(self, **kw):
        d = {s: getattr(self, s) for s in ("inputs", "eqns", "outputs", "meta")}
        d.update(kw)
        return Graph(**d)

    def input_dims(self):
        """The size variables bound implicitly by the inputs' shapes: {Var: (input index, axis)}."""
        dims = {}
        for k, v in enumerate(self.inputs):
            for ax, d in enumerate(v.aval.shape):
                if isinstance(d, Var) and d not in dims:
                    dims[d] = (k, ax)
        return dims

    def __str__(self):
        return pretty(self)

    def key(self):
        """A structural hash: prims, params, avals and topology; stable across processes."""
        return hashlib.sha256(pretty(self, locs=False).encode()).hexdigest()


def subgraphs(eqn):
    """Sub-graphs held by a structured equation's params (empty for plain primitives)."""
    out = []
    for _, v in eqn.params:
        if isinstance(v, Graph):
            out.append(v)
        elif isinstance(v, tuple):
            out.extend(g for g in v if isinstance(g, Graph))
    return out


# ---------------------------------------------------------------------------------------------
# Printing
# ---------------------------------------------------------------------------------------------


class Namer:
    """Deterministic names in order of first appearance: v0, v1, ..."""

    def __init__(self, prefix="v"):
        self.names = {}
        self.prefix = prefix

    def __call__(self, v):
        if isinstance(v, Lit):
            return fmt_lit(v)
        n = self.names.get(v)
        if n is None:
            n = self.names[v] = f"{self.prefix}{len(self.names)}"
        return n


def fmt_lit(lit):
    v = lit.value
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, float) or lit.aval.is_float:
        return repr(float(v))
    return repr(int(v))


def fmt_aval(aval, name):
    dims = ",".join(str(d) if isinstance(d, int) else name(d) for d in aval.shape)
    w = "~" if aval.weak else ""
    return f"{_SHORT.get(aval.dtype, aval.dtype)}{w}[{dims}]"


def fmt_param(v, name, indent, locs):
    if isinstance(v, Graph):
        return "{\n" + _pretty(v, name, indent + 4, locs) + "\n" + " " * indent + "}"
    if isinstance(v, tuple) and any(isinstance(g, Graph) for g in v):
        return "(" + ", ".join(fmt_param(g, name, indent, locs) for g in v) + ")"
    return repr(v)


def _pretty(g, name, indent, locs):
    pad = " " * indent
    for d in g.input_dims():
        name(d)
    ins = ", ".join(f"{name(v)}:{fmt_aval(v.aval, name)}" for v in g.inputs)
    lines = [f"{pad}in ({ins})"]
    for e in g.eqns:
        outs = ", ".join(f"{name(v)}:{fmt_aval(v.aval, name)}" for v in e.outputs)
        args = " ".join(name(a) for a in e.inputs)
        ps = " ".join(f"{k}={fmt_param(v, name, indent, locs)}" for k, v in e.params)
        lhs = f"{outs} = " if outs else ""
        loc = f"    # {e.loc}" if (locs and e.loc) else ""
        lines.append(f"{pad}  {lhs}{e.prim.name} {args}{' ' if ps else ''}{ps}".rstrip() + loc)
    lines.append(f"{pad}out ({', '.join(name(a) for a in g.outputs)})")
    return "\n".join(lines)


def pretty(g, locs=True):
    return _pretty(g, Namer(), 0, locs)


# ---------------------------------------------------------------------------------------------
# Verifier
# ---------------------------------------------------------------------------------------------


class IRError(AssertionError):
    pass


def verify(g, outer=()):
    """Single assignment, no unbound uses, sizes bound, output avals equal to the shape rules."""
    bound = set(outer) | set(g.inputs) | set(g.input_dims())

    def use(a, what):
        if isinstance(a, Var) and a not in bound:
            raise IRError(f"{what} uses an unbound variable {a}")

    for e in g.eqns:
        for a in e.inputs:
            use(a, e.prim.name)
            for d in a.aval.shape:
                use(d, f"{e.prim.name} (size of an input)")
        for sub in subgraphs(e):
            verify(sub, outer=bound)
        expect = e.prim.shape_rule(*e.inputs, **e.p)
        got = tuple(v.aval for v in e.outputs)
        if tuple(a.update(weak=False) for a in expect) != tuple(
            a.update(weak=False) for a in got
        ):
            raise IRError(f"{e.prim.name}: outputs {got} but the shape rule gives {expect}")
        for v in e.outputs:
            if v in bound:
                raise IRError(f"{e.prim.name} assigns {v} twice")
            bound.add(v)
    for a in g.outputs:
        use(a, "graph output")
    return g
