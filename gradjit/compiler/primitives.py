"""Every primitive of the IR, one stanza each: the ``Primitive`` object, its shape rule, its
numpy evaluation (the reference semantics), its adjoint rule, its scalar lowering for the
fused-loop backends, and the op function that front end and adjoint rules call to emit it.

Rule contracts
--------------
- ``shape_rule(*inputs, **params) -> tuple[Aval]``: inputs are ``Var``/``Lit`` atoms.
- ``impl(*values, **params)``: numpy evaluation; used by constant folding and the reference
  evaluator (``reference.py``), which is the test oracle.
- ``vjp(ct, ins, outs, **params) -> tuple``: one cotangent (or ``None`` for zero) per input.
  ``ct`` is the output cotangent (a tuple for multi-output primitives); ``ins``/``outs`` are
  Tracers or static scalars. The cotangent returned for an input may be any shape that
  broadcasts to that input's shape; the AD driver sums broadcast axes away where needed.
  Rules emit IR by calling the op functions below, so adjoints are differentiable again.
- ``jvp(tangents, ins, outs, **params) -> output tangent`` (a tuple for multi-output
  primitives): forward mode; ``tangents`` has one entry per input, ``None`` for zero, and each
  is full-shaped. The result may be ``None`` (zero) or anything broadcasting to the output.
- ``kind``: ``"elementwise"`` (fusable into loops; ``cpu``/``cuda`` are scalar expression
  templates over the operands), ``"reduce"`` (accumulated inside a loop), ``"index"``
  (elementwise over its output, reading whole arrays), or ``"array"`` (its own statement,
  lowered by a function in the backend module).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass

import numpy as np

from ..errors import ShapeError, TraceError, at
from .ir import Aval, Lit, Var
from .tracing import Tracer, aval_of, bind, current_loc, is_static_scalar


@dataclass(frozen=True, eq=False, repr=False)
class Primitive:
    """One IR operation and all its rules (see the module docstring), declared once: every
    field is given when the primitive is created and none can be assigned afterwards (an
    unknown keyword is a ``TypeError``). Compared and hashed by identity: tables are keyed by
    the object. Readers test a rule with ``prim.rule is not None``, never with ``hasattr``."""

    name: str
    shape_rule: Callable  # (*inputs, **params) -> tuple[Aval]
    _: KW_ONLY
    # -- every primitive ----------------------------------------------------------------------
    impl: Callable | None = None  # numpy evaluation: folding and the reference evaluator
    vjp: Callable | None = None  # adjoint rule; None: not differentiable (an error in AD)
    jvp: Callable | None = None  # tangent rule (forward mode, forward.py); None: an error there
    fold: Callable | None = None  # construction rewrite in ``bind``: a value or NotImplemented
    effect: bool = False  # run-time checks: DCE keeps it, ``bind`` never evaluates it
    multiple_results: bool = False  # returns a tuple of outputs
    cse: bool = True  # False: two equal equations stay two (``tape_new``: each tape distinct)
    zero_grad: bool = False  # derivative zero almost everywhere (sign, floor, ...): vjp gives None
    # -- lowering -----------------------------------------------------------------------------
    kind: str = "array"  # "elementwise", "reduce", "index", "scatter", "iota", "check", "array"
    cpu: str | Callable | None = None  # CPU template: str.format text or (args, params) -> text
    cuda: str | Callable | None = None  # the same for CUDA
    par_cpu: str | None = None  # reduce: the accumulation numba's prange recognises (parallel)
    init: float | int | None = None  # reduce: the accumulator's starting value
    inplace: int | None = None  # index of the input the result may overwrite (slice_set, ...)
    whole_inputs: tuple = ()  # index kind: inputs read as whole arrays, not elementwise
    float_only: bool = False  # elementwise unary: the op function converts ints to float first
    # -- structured control flow (control.py): rules over the whole equation ------------------
    regions: tuple = ()  # loops: the params holding the regions, in order
    n_range: int = 0  # loops: leading range operands (start, stop, step for ``for``)
    n_index: int = 0  # loops: leading index formals of the body
    bind_eqn: Callable | None = None  # (eqn, args) -> outs: re-emit on new operands (replay)
    dce_rule: Callable | None = None  # (eqn, used outputs) -> pruned eqn or None (DCE)
    eval_rule: Callable | None = None  # like ``impl`` for the reference evaluator; preferred
    rebase: Callable | None = None  # (eqn, output k, acc) -> eqn computing acc + output k
    vjp_fwd: Callable | None = None  # (eqn, args, active mask) -> (outs, residuals): AD forward
    vjp_bwd: Callable | None = None  # (cts, ins, outs, residuals, **params) -> input cotangents
    # (eqn, args, tangents) -> (outs, out tangents): forward mode emitting values and tangents
    # as one equation (a loop carries each tangent with its value); preferred over ``jvp``
    jvp_eqn: Callable | None = None
    # eqn -> Graph: until lowering it stands for that graph on its first inputs (custom_vjp's
    # forward function); the optimiser inlines it and batching batches the graph
    expand: Callable | None = None

    def __repr__(self):
        return f"{self.name}_p"


ALL = {}  # name -> Primitive, for inventories and tests


def primitive(name, shape_rule, **kw):
    """A new ``Primitive`` (``kw``: its fields), registered in ``ALL``."""
    p = Primitive(name, shape_rule, **kw)
    ALL[name] = p
    return p


# =============================================================================================
# Shapes, dtypes, broadcasting
# =============================================================================================


def shape_of(x):
    return aval_of(x).shape


def ndim(x):
    return len(shape_of(x))


def dtype_of(x):
    return aval_of(x).dtype


def same_dim(a, b):
    return a is b if isinstance(a, Var) or isinstance(b, Var) else a == b


def same_shape(s, t):
    return len(s) == len(t) and all(same_dim(a, b) for a, b in zip(s, t))


def fmt_shape(s):
    return "(" + ", ".join(str(d) if isinstance(d, int) else "?" for d in s) + (",)" if len(s) == 1 else ")")


def broadcast_shapes(*shapes):
    """numpy broadcasting on symbolic shapes; prefers static sizes. No checks (see ``broadcast``)."""
    r = max((len(s) for s in shapes), default=0)
    out = []
    for ax in range(r):
        dims = [s[ax - r + len(s)] for s in shapes if ax - r + len(s) >= 0]
        non1 = [d for d in dims if not (isinstance(d, int) and d == 1)]
        ints = [d for d in non1 if isinstance(d, int)]
        out.append(ints[0] if ints else (non1[0] if non1 else 1))
    return tuple(out)


def broadcast(*xs):
    """Check that operands broadcast (statically where sizes are known, else by an emitted
    run-time check naming the user's line) and return the result shape."""
    shapes = [shape_of(x) for x in xs]
    out = broadcast_shapes(*shapes)
    r = len(out)
    for s in shapes:
        for k, d in enumerate(s):
            o = out[k + r - len(s)]
            if (isinstance(d, int) and d == 1) or same_dim(d, o):
                continue
            if isinstance(d, int) and isinstance(o, int):
                raise ShapeError(at(current_loc(), "operands could not be broadcast together "
                                    f"with shapes {', '.join(fmt_shape(s) for s in shapes)}"))
            msg = at(current_loc(), "operands could not be broadcast together: shapes "
                     f"{' and '.join(fmt_shape(s) for s in shapes)} differ in a size only known at run time")
            check_eq(d, o, msg)
    return out


_KIND_ORDER = {"bool": 0, "int": 1, "float": 2}


def _kind(dt):
    return "bool" if dt == "bool" else ("float" if dt.startswith("float") else "int")


def result_dtype(*xs):
    """numpy promotion where Python scalars are weak (they take the array's dtype)."""
    avals = [aval_of(x) for x in xs]
    strong = [a.dtype for a in avals if not a.weak]
    weak = [a.dtype for a in avals if a.weak]
    dt = np.result_type(*strong).name if strong else None
    for w in weak:
        if dt is None or _KIND_ORDER[_kind(w)] > _KIND_ORDER[_kind(dt)]:
            dt = w if dt is None or _kind(w) != "float" else "float64"
    return dt, not strong


def cast(x, dtype, weak=False):
    """``x`` as ``dtype``: Python scalars and Lits become typed literals, tracers are converted."""
    if isinstance(x, Tracer):
        if x.aval.dtype == dtype:
            return x
        return bind(convert_p, x, dtype=dtype)
    v = x.value if isinstance(x, Lit) else x
    if isinstance(v, np.ndarray):
        return v.astype(dtype)
    v = np.dtype(dtype).type(v)
    if weak:
        return bool(v) if dtype == "bool" else (float(v) if dtype.startswith("float") else int(v))
    return v


def promote(*xs, to_float=False):
    dt, weak = result_dtype(*xs)
    if to_float and not dt.startswith("float"):
        dt = "float64"
    return [cast(x, dt, weak) for x in xs], dt


def _ew_shape(out_dtype=None):
    def rule(*ins, **_):
        strong = [a.aval.dtype for a in ins if not a.aval.weak]  # weak scalars adopt it
        dt = out_dtype or (strong[0] if strong else ins[0].aval.dtype)
        weak = all(a.aval.weak for a in ins) and out_dtype is None
        return (Aval(dt, broadcast_shapes(*[a.aval.shape for a in ins]), weak),)
    return rule


def _to_static(x):
    return x.value if isinstance(x, Lit) else x


# =============================================================================================
# Elementwise primitives
# =============================================================================================

def _linear_jvp(vjp):
    """The tangent rule of an elementwise primitive from its adjoint: its derivative is
    diagonal, so input ``k``'s share of the tangent is its cotangent for the cotangent ``t_k``
    (dead shares of the other inputs are dropped by DCE)."""
    def jvp(ts, ins, outs, **params):
        total = None
        for k, t in enumerate(ts):
            d = None if t is None else vjp(t, ins, outs, **params)[k]
            if d is not None:
                total = d if total is None else add(total, d)
        return total
    return jvp


def _no_tangent(ts, ins, outs, **params):
    """Integer or boolean results, or a zero derivative: no tangent."""
    return None


def _tadd(a, b):
    """The sum of two tangents, either of which may be None (zero)."""
    return b if a is None else a if b is None else add(a, b)


def _unary(name, impl, deriv, cpu, cuda=None, float_only=True, **kw):
    """Register an elementwise unary primitive whose adjoint is ``ct * deriv(x, y)`` (or, with
    ``deriv=None``, the ``vjp`` among ``kw``, the primitive's other fields)."""
    if deriv is not None:
        kw["vjp"] = lambda ct, ins, outs: (mul(ct, deriv(ins[0], outs[0])),)
    kw.setdefault("jvp", _linear_jvp(kw["vjp"]))
    kw.setdefault("shape_rule", _ew_shape())
    p = primitive(name, impl=impl, kind="elementwise", cpu=cpu, cuda=cuda or cpu,
                  float_only=float_only, **kw)

    def op(x):
        if float_only:
            (x,), _ = promote(x, to_float=True)
        return bind(p, x)
    op.__name__ = name
    return p, op


# ---- algebraic identities, applied as equations are built (x+0, x*1, x*0, --x) -------------


def _lit_is(a, v):
    return isinstance(a, Lit) and not isinstance(a.value, bool) and a.value == v


def _passes_through(keep, out):
    """``keep`` already has the result's aval ``out``, so the equation can be dropped."""
    return (isinstance(keep, Var) and keep.aval.dtype == out.dtype
            and same_shape(keep.aval.shape, out.shape))


_arith_shape = _ew_shape()  # the shape rule of add, sub, mul and div


def _identity_fold(unit, absorbing=None, left_unit=True):
    """The fold of add, sub, mul or div: ``x op unit -> x`` (also ``unit op x`` when
    ``left_unit``), and an integer ``x op absorbing -> 0``."""
    def fold(a, b, **_):
        out = _arith_shape(a, b)[0]
        for keep, other, ok in ((a, b, True), (b, a, left_unit)):
            if ok and _lit_is(other, unit) and _passes_through(keep, out):
                return Tracer(keep)
        if absorbing is not None and _kind(out.dtype) != "float":  # nan * 0 is nan: ints only
            for keep, other in ((a, b), (b, a)):
                if _lit_is(other, absorbing) and isinstance(keep, Var):
                    return full(out.shape, 0, out.dtype) if out.shape else NotImplemented
        return NotImplemented
    return fold


def _producer(v):
    from .tracing import current
    return current().producer.get(v) if isinstance(v, Var) else None


def _neg_fold(x):
    e = _producer(x)
    if e is not None and e.prim is neg_p:
        return Tracer(e.inputs[0])
    return NotImplemented


_add_identity = _identity_fold(0)


def _add_fold(a, b, **_):
    """x + 0 -> x, and adding a scattered contribution into a dense value updates it in
    place: add(g, slice_add(zeros, v)) -> slice_add(g, v) (gradients of indexed reads)."""
    for dense, sparse in ((a, b), (b, a)):
        e = _producer(sparse)
        if e is not None and e.prim in (slice_add_p, scatter_add_p) and isinstance(dense, Var) \
                and dense.aval.dtype == sparse.aval.dtype \
                and same_shape(dense.aval.shape, sparse.aval.shape) and _is_zeros(e.inputs[0]):
            return bind(e.prim, Tracer(dense), *[_tr(x) for x in e.inputs[1:]], **e.p)
    return _add_identity(a, b)


def _tr(a):
    return Tracer(a) if isinstance(a, Var) else a


def _is_zeros(v):
    e = _producer(v)
    return e is not None and e.prim is full_p and _lit_is(e.inputs[0], 0)


# ---- the unary primitives --------------------------------------------------------------------


neg_p, neg = _unary("neg", np.negative, None, "(-{0})", float_only=False,
                    vjp=lambda ct, ins, outs: (neg(ct),), fold=_neg_fold)
sin_p, sin = _unary("sin", np.sin, lambda x, y: cos(x), "gj_sin({0})", "math.sin({0})")
cos_p, cos = _unary("cos", np.cos, lambda x, y: neg(sin(x)), "gj_cos({0})", "math.cos({0})")
tan_p, tan = _unary("tan", np.tan, lambda x, y: add(1.0, mul(y, y)), "np.tan({0})", "math.tan({0})")
exp_p, exp = _unary("exp", np.exp, lambda x, y: y, "gj_exp({0})", "math.exp({0})")
expm1_p, expm1 = _unary("expm1", np.expm1, lambda x, y: add(y, 1.0), "np.expm1({0})", "math.expm1({0})")
log_p, log = _unary("log", np.log, lambda x, y: reciprocal(x), "np.log({0})", "math.log({0})")
log1p_p, log1p = _unary("log1p", np.log1p, lambda x, y: reciprocal(add(x, 1.0)), "np.log1p({0})",
                        "math.log1p({0})")
sqrt_p, sqrt = _unary("sqrt", np.sqrt, lambda x, y: div(0.5, y), "np.sqrt({0})", "math.sqrt({0})")
tanh_p, tanh = _unary("tanh", np.tanh, lambda x, y: sub(1.0, mul(y, y)), "np.tanh({0})",
                      "math.tanh({0})")
sinh_p, sinh = _unary("sinh", np.sinh, lambda x, y: cosh(x), "np.sinh({0})", "math.sinh({0})")
cosh_p, cosh = _unary("cosh", np.cosh, lambda x, y: sinh(x), "np.cosh({0})", "math.cosh({0})")
arcsin_p, arcsin = _unary("arcsin", np.arcsin, lambda x, y: rsqrt(sub(1.0, mul(x, x))),
                          "np.arcsin({0})", "math.asin({0})")
arccos_p, arccos = _unary("arccos", np.arccos, lambda x, y: neg(rsqrt(sub(1.0, mul(x, x)))),
                          "np.arccos({0})", "math.acos({0})")
arctan_p, arctan = _unary("arctan", np.arctan, lambda x, y: reciprocal(add(1.0, mul(x, x))),
                          "np.arctan({0})", "math.atan({0})")
arcsinh_p, arcsinh = _unary("arcsinh", np.arcsinh, lambda x, y: rsqrt(add(mul(x, x), 1.0)),
                            "np.arcsinh({0})", "math.asinh({0})")
arccosh_p, arccosh = _unary("arccosh", np.arccosh, lambda x, y: rsqrt(sub(mul(x, x), 1.0)),
                            "np.arccosh({0})", "math.acosh({0})")
arctanh_p, arctanh = _unary("arctanh", np.arctanh, lambda x, y: reciprocal(sub(1.0, mul(x, x))),
                            "np.arctanh({0})", "math.atanh({0})")
abs_p, absolute = _unary("abs", np.abs, lambda x, y: sign(x), "abs({0})", float_only=False)
# Non-differentiable (zero derivative almost everywhere): no adjoint contribution.
_no_vjp = lambda ct, ins, outs: (None,)  # noqa: E731
sign_p, sign = _unary("sign", np.sign, None, "gj_sign({0})", "(({0} > 0) - ({0} < 0))",
                      float_only=False, vjp=_no_vjp, zero_grad=True)
floor_p, floor = _unary("floor", np.floor, None, "np.floor({0})", "math.floor({0})",
                        vjp=_no_vjp, zero_grad=True)
ceil_p, ceil = _unary("ceil", np.ceil, None, "np.ceil({0})", "math.ceil({0})", vjp=_no_vjp,
                      zero_grad=True)
round_p, rint = _unary("round", np.rint, None, "np.rint({0})", "round({0})", vjp=_no_vjp,
                       zero_grad=True)
not_p, logical_not = _unary("not", np.logical_not, None, "(not {0})", float_only=False,
                            vjp=_no_vjp,
                            shape_rule=_ew_shape("bool"))  # np.logical_not(1.5) is False, not 0.0


def _psi_np(x, order):
    """digamma (order 0) or trigamma (order 1) in numpy: recurrence up to x >= 6, then the
    asymptotic series; reflection below 0 (the reference semantics of the kernels' helpers)."""
    x = np.asarray(x)
    dt = x.dtype if x.dtype.kind == "f" else np.float64
    x = x.astype(np.float64)
    neg = x < 0
    z = np.where(neg, 1.0 - x, x)
    acc = np.zeros_like(z)
    for _ in range(6):
        small = z < 6
        zs = np.where(small, z, 1.0)
        acc = acc + np.where(small, -1.0 / zs if order == 0 else 1.0 / (zs * zs), 0.0)
        z = np.where(small, z + 1.0, z)
    f = 1.0 / (z * z)
    if order == 0:
        acc = acc + np.log(z) - 0.5 / z - f * (1 / 12 - f * (1 / 120 - f * (1 / 252 - f * (
            1 / 240 - f / 132))))
        refl = acc - np.pi / np.tan(np.pi * x)
    else:
        acc = acc + 1 / z + f / 2 + f / z * (1 / 6 - f * (1 / 30 - f * (1 / 42 - f / 30)))
        refl = (np.pi / np.sin(np.pi * x)) ** 2 - acc
    out = np.where(neg, refl, acc)
    out = np.where((x < 0) & (x == np.floor(x)), np.nan, out)
    if order == 0:  # scipy: psi(+0.0) = -inf, psi(-0.0) = inf
        out = np.where(x == 0, -np.copysign(np.inf, x), out)
    else:
        out = np.where(x == 0, np.inf, out)
    return out.astype(dt)[()] if out.ndim == 0 else out.astype(dt)


def _math_impl(f):
    """A scalar ``math`` function as numpy semantics (elementwise, the argument's float type)."""
    def impl(x):
        x = np.asarray(x)
        dt = x.dtype if x.dtype.kind == "f" else np.float64
        out = np.frompyfunc(lambda v: f(float(v)), 1, 1)(x)
        return np.asarray(out, dtype=dt)[()] if x.ndim == 0 else np.asarray(out, dtype=dt)
    return impl


def _lgamma(v):
    """scipy's gammaln: inf at the poles and for subnormal arguments, -inf at -inf."""
    if v == -math.inf:
        return v
    if abs(v) < 2.2250738585072014e-308:
        return math.inf
    try:
        return math.lgamma(v)
    except ValueError:  # a pole
        return math.inf


def _no_third(ct, ins, outs):
    raise TraceError(at(current_loc(), "derivatives of trigamma (third derivatives of "
                        "gammaln) are not supported"))


# scipy.special's erf and gammaln (numba has math.erf/math.lgamma) and the derivatives of gammaln
erf_p, erf = _unary("erf", _math_impl(math.erf),
                    lambda x, y: mul(2.0 / math.sqrt(math.pi), exp(neg(mul(x, x)))),
                    "gj_erf({0})", "math.erf({0})")
trigamma_p, trigamma = _unary("trigamma", lambda x: _psi_np(x, 1), None, "gj_trigamma({0})",
                              vjp=_no_third)
digamma_p, digamma = _unary("digamma", lambda x: _psi_np(x, 0), lambda x, y: trigamma(x),
                            "gj_digamma({0})")
gammaln_p, gammaln = _unary("gammaln", _math_impl(_lgamma), lambda x, y: digamma(x),
                            "gj_lgamma({0})", "math.lgamma({0})")


def reciprocal(x):
    return div(1.0, x)


def rsqrt(x):
    return div(1.0, sqrt(x))


def square(x):
    return mul(x, x)


def _binary(name, impl, cpu, vjp=None, cuda=None, out_dtype=None, to_float=False, **kw):
    """Register an elementwise binary primitive (``kw``: its other fields); the op function
    promotes and broadcasts."""
    kw.setdefault("shape_rule", _ew_shape(out_dtype))
    kw.setdefault("jvp", _linear_jvp(vjp))
    p = primitive(name, impl=impl, vjp=vjp, kind="elementwise", cpu=cpu, cuda=cuda or cpu, **kw)

    def op(a, b):
        (a, b), _ = promote(a, b, to_float=to_float)
        broadcast(a, b)
        return bind(p, a, b)
    op.__name__ = name
    return p, op


add_p, add = _binary("add", np.add, "({0} + {1})", lambda ct, ins, outs: (ct, ct),
                     fold=_add_fold)
sub_p, sub = _binary("sub", np.subtract, "({0} - {1})", lambda ct, ins, outs: (ct, neg(ct)),
                     fold=_identity_fold(0, left_unit=False))
mul_p, mul = _binary("mul", np.multiply, "({0} * {1})",
                     lambda ct, ins, outs: (mul(ct, ins[1]), mul(ins[0], ct)),
                     fold=_identity_fold(1, absorbing=0))
div_p, div = _binary("div", np.true_divide, "({0} / {1})",
                     lambda ct, ins, outs: (div(ct, ins[1]), neg(mul(ct, div(outs[0], ins[1])))),
                     to_float=True, fold=_identity_fold(1, left_unit=False))


def _minmax_vjp(ct, ins, outs):
    """Each operand's derivative: 1 where the result is that operand (for fmax/fmin the
    non-NaN one), 1/2 at a tie (max(x, x) has derivative 1, as in JAX), else 0; NaN where the
    result is NaN (for maximum, either operand NaN): central differences of numpy see NaN
    there whatever the step, and a NaN value should not get a silent 0 gradient."""
    y = outs[0]
    other = select(eq(y, y), 0.0, math.nan)
    hx, hy = (eq(a, y) for a in ins)
    return (mul(ct, select(hx, select(hy, 0.5, 1.0), other)),
            mul(ct, select(hy, select(hx, 0.5, 1.0), other)))


# numpy's NaN rules (kernels/cpu.py): maximum/minimum propagate NaN, fmax/fmin ignore it.
max_p, maximum = _binary("max", np.maximum, "gj_maximum({0}, {1})", _minmax_vjp,
                         cuda="max({0}, {1})")
min_p, minimum = _binary("min", np.minimum, "gj_minimum({0}, {1})", _minmax_vjp,
                         cuda="min({0}, {1})")
fmax_p, fmax = _binary("fmax", np.fmax, "gj_fmax({0}, {1})", _minmax_vjp)
fmin_p, fmin = _binary("fmin", np.fmin, "gj_fmin({0}, {1})", _minmax_vjp)


def _pow_vjp(ct, ins, outs):
    x, y = ins
    dx = mul(ct, mul(y, power(x, sub(y, 1))))
    # d/dy x**y = log(x) x**y; where x == 0 the limit is 0 (avoid 0 * -inf).
    dy = None if is_static_scalar(y) else mul(ct, select(eq(x, 0.0), 0.0, mul(log(select(eq(x, 0.0), 1.0, x)), outs[0])))
    return dx, dy


# ``x ** int``: the integer exponent literal keeps the base's dtype.
pow_p, _pow = _binary(
    "pow", np.power, "({0} ** {1})", _pow_vjp,
    shape_rule=lambda x, y: (Aval(x.aval.dtype, broadcast_shapes(x.aval.shape, y.aval.shape),
                                  x.aval.weak and y.aval.weak),))


def power(x, y):
    # An integral exponent stays an integer literal: numba emits multiplications (powi).
    if is_static_scalar(y) and float(y).is_integer() and not isinstance(y, bool):
        if y == 1:
            return x
        if y == 0:  # 1 even for x = nan or inf (numpy): not x * 0 + 1
            return full(shape_of(x), 1, dtype_of(x)) if isinstance(x, Tracer) else x ** 0
        (xx,), dt = promote(x)
        if not dt.startswith("float") and y < 0:
            (xx,), dt = promote(x, to_float=True)
        lit = Lit(int(y), Aval("int64", (), True))
        return bind(pow_p, xx, lit)
    return _pow(x, y)


def _atan2_vjp(ct, ins, outs):
    y, x = ins
    r2 = add(mul(x, x), mul(y, y))
    return mul(ct, div(x, r2)), mul(ct, neg(div(y, r2)))


atan2_p, arctan2 = _binary("atan2", np.arctan2, "np.arctan2({0}, {1})", _atan2_vjp,
                           cuda="math.atan2({0}, {1})", to_float=True)
# libm's hypot: no overflow of a*a + b*b, and hypot(inf, nan) = inf as in numpy
hypot_p, hypot = _binary("hypot", np.hypot, "np.hypot({0}, {1})",
                         lambda ct, ins, outs: (mul(ct, div(ins[0], outs[0])),
                                                mul(ct, div(ins[1], outs[0]))),
                         cuda="math.hypot({0}, {1})", to_float=True)
mod_p, mod = _binary("mod", np.mod, "gj_mod({0}, {1})",
                     lambda ct, ins, outs: (ct, None if is_static_scalar(ins[1]) else
                                            neg(mul(ct, floor(div(ins[0], ins[1]))))))
floordiv_p, floor_divide = _binary("floordiv", np.floor_divide, "({0} // {1})",
                                   lambda ct, ins, outs: (None, None))

# Comparisons and logic: boolean results, no derivative.
_cmp_vjp = lambda ct, ins, outs: (None, None)  # noqa: E731
eq_p, eq = _binary("eq", np.equal, "({0} == {1})", _cmp_vjp, out_dtype="bool")
ne_p, ne = _binary("ne", np.not_equal, "({0} != {1})", _cmp_vjp, out_dtype="bool")
lt_p, lt = _binary("lt", np.less, "({0} < {1})", _cmp_vjp, out_dtype="bool")
le_p, le = _binary("le", np.less_equal, "({0} <= {1})", _cmp_vjp, out_dtype="bool")
gt_p, gt = _binary("gt", np.greater, "({0} > {1})", _cmp_vjp, out_dtype="bool")
ge_p, ge = _binary("ge", np.greater_equal, "({0} >= {1})", _cmp_vjp, out_dtype="bool")
and_p, logical_and = _binary("and", np.logical_and, "({0} and {1})", _cmp_vjp, out_dtype="bool")
or_p, logical_or = _binary("or", np.logical_or, "({0} or {1})", _cmp_vjp, out_dtype="bool")


def _select_shape(c, a, b):
    return (Aval(b.aval.dtype if a.aval.weak else a.aval.dtype, broadcast_shapes(c.aval.shape, a.aval.shape, b.aval.shape),
                 a.aval.weak and b.aval.weak),)


select_p = primitive(
    "select", _select_shape, impl=np.where, kind="elementwise",
    cpu="({1} if {0} else {2})",
    vjp=lambda ct, ins, outs: (None, select(ins[0], ct, 0.0), select(ins[0], 0.0, ct)),
    jvp=lambda ts, ins, outs: select(ins[0], 0.0 if ts[1] is None else ts[1],
                                     0.0 if ts[2] is None else ts[2]))


def select(c, a, b):
    """``np.where(c, a, b)``."""
    (a, b), _ = promote(a, b)
    if is_static_scalar(c):
        return a if c else b
    broadcast(c, a, b)
    return bind(select_p, c, a, b)


def _convert_vjp(ct, ins, outs, dtype):
    src = dtype_of(ins[0])
    return (cast(ct, src) if src.startswith("float") and isinstance(ct, Tracer) else
            (ct if src.startswith("float") else None),)


convert_p = primitive(
    "convert", lambda x, dtype: (Aval(dtype, x.aval.shape),),
    fold=lambda x, dtype: Tracer(x) if isinstance(x, Var) and x.aval.dtype == dtype else NotImplemented,
    impl=lambda x, dtype: np.asarray(x).astype(dtype), vjp=_convert_vjp, kind="elementwise",
    jvp=lambda ts, ins, outs, dtype: ts[0] if dtype.startswith("float") else None,
    cpu=lambda args, p: f"np.{p['dtype']}({args[0]})")


def astype(x, dtype):
    dtype = np.dtype(dtype).name
    if isinstance(x, Tracer):
        return cast(x, dtype)
    return np.asarray(x).astype(dtype)[()]


stop_gradient_p = primitive(
    "stop_gradient", _ew_shape(), impl=lambda x: x, kind="elementwise", cpu="{0}",
    vjp=lambda ct, ins, outs: (None,), jvp=_no_tangent)


def stop_gradient(x):
    return bind(stop_gradient_p, x) if isinstance(x, Tracer) else x


# An identity that CSE never merges (``cse=False``): gj.checkpoint's backward pass recomputes
# its region from these copies of the region's inputs, so that the optimiser cannot fold the
# recomputation back into the forward values (which would then live until the backward pass).
recompute_p = primitive(
    "recompute", _ew_shape(), impl=lambda x: x, kind="elementwise", cpu="{0}", cuda="{0}",
    cse=False, vjp=lambda ct, ins, outs: (ct,), jvp=lambda ts, ins, outs: ts[0])


def _broadcast_to_shape(x, *dims, shape):
    return (Aval(x.aval.dtype, _fill_dims(shape, dims), x.aval.weak),)


def _fill_dims(template, dims):
    """Shape from a template whose ``None`` entries are taken, in order, from ``dims``."""
    it = iter(dims)
    return tuple(next(it) if d is None else d for d in template)


def _split_dims(shape):
    """(template, dynamic dims) for a symbolic shape: sizes known at run time become inputs."""
    return tuple(None if isinstance(d, Var) else d for d in shape), tuple(
        Tracer(d) for d in shape if isinstance(d, Var))


broadcast_to_p = primitive(
    "broadcast_to", _broadcast_to_shape, kind="elementwise", cpu="{0}",
    impl=lambda x, *dims, shape: np.broadcast_to(x, _fill_dims(shape, dims)).copy(),
    vjp=lambda ct, ins, outs, shape: (ct,) + (None,) * (len(ins) - 1),
    jvp=lambda ts, ins, outs, shape: ts[0])  # broadcast by the forward driver


def broadcast_to(x, shape):
    shape = tuple(_dim_atom(d) for d in shape)
    xs = shape_of(x)
    if same_shape(xs, shape):
        return x
    if is_static_scalar(x) and not any(isinstance(d, Var) for d in shape):
        return np.full(shape, x)
    tmp = Aval("bool", shape)
    broadcast(x, _Shaped(tmp))
    template, dims = _split_dims(shape)
    return bind(broadcast_to_p, x, *dims, shape=template)


class _Shaped:
    """A shape-only stand-in used for broadcast checks."""

    def __init__(self, aval):
        self.aval = aval


def dim(d):
    """A size for the op functions: a Tracer for a size variable, else the int."""
    return Tracer(d) if isinstance(d, Var) else d


def _dim_atom(d):
    if isinstance(d, Tracer):
        return d.ivar
    if isinstance(d, (int, np.integer)):
        return int(d)
    if isinstance(d, Var):
        return d
    raise TraceError(at(current_loc(), f"a size must be an int, not {type(d).__name__}"))


# =============================================================================================
# Reductions (accumulated inside fused loops)
# =============================================================================================


def _reduce_shape(x, axes):
    return (Aval(x.aval.dtype, tuple(d for k, d in enumerate(x.aval.shape) if k not in axes)),)


def _expand_back(y, x, axes):
    """Reinsert reduced axes as size 1, so that ``y`` broadcasts against ``x``."""
    if ndim(y) == 0:
        return y  # a scalar broadcasts as it is
    shape = list(shape_of(y))
    for a in sorted(axes):
        shape.insert(a, 1)
    return reshape(y, tuple(shape))


def _sum_vjp(ct, ins, outs, axes):
    return (_expand_back(ct, ins[0], axes),)


def _max_vjp(ct, ins, outs, axes):
    x, y = ins[0], _expand_back(outs[0], ins[0], axes)
    mask = convert(eq(x, y), dtype_of(x))
    count = _expand_back(reduce_sum(mask, axes), x, axes)
    return (mul(_expand_back(ct, x, axes), div(mask, count)),)


def _prod_vjp(ct, ins, outs, axes):
    # d prod / d x_i is the product of the other elements. ``prod / x_i`` is that product
    # only where x_i != 0: with one zero in a reduced slice, its element gets the product
    # of the non-zeros and the others 0; with two or more zeros everything is 0.
    x = ins[0]
    is0 = eq(x, 0.0)
    safe = select(is0, 1.0, x)
    n0 = _expand_back(reduce_sum(convert(is0, "int64"), axes), x, axes)
    p_nz = _expand_back(reduce_prod(safe, axes), x, axes)
    d = select(eq(n0, 0), div(p_nz, safe), select(logical_and(eq(n0, 1), is0), p_nz, 0.0))
    return (mul(_expand_back(ct, x, axes), d),)


def _reduce_jvp(vjp):
    """A reduction's tangent: the tangent weighted by the adjoint's weights (the adjoint of a
    cotangent of 1), summed over the reduced axes."""
    return lambda ts, ins, outs, axes: reduce_sum(
        mul(ts[0], vjp(1.0, ins, outs, axes)[0]), axes)


def _sum_scatter_fold(x, axes):
    """Summing away the columns of a one-per-row scatter into zeros gives the scattered
    values: ``sum(scatter_add(zeros, v, arange(n), j), axis=1) == v`` (also under a ``neg``).
    This is the row sum of the cotangent of ``logp[np.arange(n), y]`` in a softmax loss;
    without the rule it is a dense zero matrix, a scatter and a pass over them. Indices are
    in bounds: the gather they come from checks them."""
    sign, e = 1, _producer(x)
    if e is not None and e.prim is neg_p:
        sign, e = -1, _producer(e.inputs[0])
    if e is None or e.prim is not scatter_add_p or not _is_zeros(e.inputs[0]):
        return NotImplemented
    acc, v, idx = e.inputs[0], e.inputs[1], e.inputs[2:]
    rows = _producer(idx[0]) if isinstance(idx[0], Var) else None
    if rows is None or rows.prim is not iota_p or len(idx) < 2 or \
            axes != tuple(range(1, len(idx))) or \
            not all(isinstance(i, Var) and i.aval.ndim == 1 for i in idx) or \
            not same_dim(idx[0].aval.shape[0], acc.aval.shape[0]) or \
            not same_shape(v.aval.shape, (acc.aval.shape[0],) + acc.aval.shape[len(idx):]):
        return NotImplemented
    return _tr(v) if sign == 1 else neg(_tr(v))


# Sums and products accumulate through helpers whose one instruction may be reassociated (the
# kernels' own flags do not allow it: kernels/cpu.py). ``par_cpu``: the form numba's prange
# recognises as a reduction, used by target='parallel' (whose kernels allow reassociation).
reduce_sum_p = primitive("reduce_sum", _reduce_shape, impl=lambda x, axes: np.sum(x, axis=axes),
                         vjp=_sum_vjp, fold=_sum_scatter_fold, kind="reduce", init=0,
                         jvp=lambda ts, ins, outs, axes: reduce_sum(ts[0], axes),
                         cpu="gj_acc_add({acc}, {0})", par_cpu="{acc} + {0}")


def _from_init(ufunc, init):
    """The reference semantics of a reduction starting from ``init``, as the kernels do (an
    integer dtype's extreme value for +-inf, as ``codegen.cpu.lit_text`` writes it)."""
    def impl(x, axes):
        x = np.asarray(x)
        v = init
        if x.dtype.kind in "iu" and math.isinf(v):
            v = np.iinfo(x.dtype).min if v < 0 else np.iinfo(x.dtype).max
        return ufunc.reduce(x, axis=axes, initial=v)
    return impl


# max/min propagate NaN; fmax/fmin (np.nanmax/np.nanmin) skip it, and start from NaN so that
# an all-NaN slice stays NaN (float only). ``init`` is what an empty slice would give: the
# numpy functions check that none is (``check_nonempty``); internal uses rely on it.
# _max_vjp at NaN: no element equals a NaN result, so mask / count = 0/0 makes the slice's
# gradient NaN (what central differences of numpy give); fmax's NaN elements get 0.
reduce_max_p = primitive("reduce_max", _reduce_shape, impl=_from_init(np.maximum, -math.inf),
                         vjp=_max_vjp, jvp=_reduce_jvp(_max_vjp), kind="reduce", init=-math.inf,
                         cpu="gj_acc_max({acc}, {0})")
reduce_min_p = primitive("reduce_min", _reduce_shape, impl=_from_init(np.minimum, math.inf),
                         vjp=_max_vjp, jvp=_reduce_jvp(_max_vjp), kind="reduce", init=math.inf,
                         cpu="gj_acc_min({acc}, {0})")
reduce_fmax_p = primitive("reduce_fmax", _reduce_shape, impl=_from_init(np.fmax, math.nan),
                          vjp=_max_vjp, jvp=_reduce_jvp(_max_vjp), kind="reduce",
                          init=math.nan, cpu="gj_acc_fmax({acc}, {0})")
reduce_fmin_p = primitive("reduce_fmin", _reduce_shape, impl=_from_init(np.fmin, math.nan),
                          vjp=_max_vjp, jvp=_reduce_jvp(_max_vjp), kind="reduce",
                          init=math.nan, cpu="gj_acc_fmin({acc}, {0})")
reduce_prod_p = primitive("reduce_prod", _reduce_shape,
                          impl=lambda x, axes: np.prod(x, axis=axes), vjp=_prod_vjp,
                          jvp=_reduce_jvp(_prod_vjp),
                          kind="reduce", init=1, cpu="gj_acc_mul({acc}, {0})")


def norm_axes(axis, nd):
    if axis is None:
        return tuple(range(nd))
    axes = axis if isinstance(axis, (tuple, list)) else (axis,)
    out = []
    for a in axes:
        if isinstance(a, Tracer):
            raise TraceError(at(current_loc(), "a reduction axis must be known at compile time"))
        a = int(a)
        if not -nd <= a < nd:
            raise TraceError(at(current_loc(), f"axis {a} is out of bounds for an array of rank {nd}"))
        out.append(a % nd)
    return tuple(sorted(set(out)))


def _reducer(prim, bool_to_int=True):
    def op(x, axis=None, keepdims=False):
        axes = norm_axes(axis, ndim(x))
        if dtype_of(x) == "bool" and bool_to_int:
            x = cast(x, "int64")
        if is_static_scalar(x) or not axes:
            y = x
        else:
            y = bind(prim, x, axes=axes)
        if keepdims and axes:
            y = _expand_back(y, x, axes) if ndim(y) else reshape(y, (1,) * ndim(x))
        return y
    return op


reduce_sum = _reducer(reduce_sum_p)


reduce_max = _reducer(reduce_max_p)
reduce_min = _reducer(reduce_min_p)
reduce_prod = _reducer(reduce_prod_p)
_reduce_fmax, _reduce_fmin = _reducer(reduce_fmax_p), _reducer(reduce_fmin_p)


def reduce_fmax(x, axis=None, keepdims=False):
    """``np.nanmax``: the max of the non-NaN elements (NaN where all are NaN)."""
    return (_reduce_fmax if _kind(dtype_of(x)) == "float" else reduce_max)(x, axis, keepdims)


def reduce_fmin(x, axis=None, keepdims=False):
    return (_reduce_fmin if _kind(dtype_of(x)) == "float" else reduce_min)(x, axis, keepdims)


def check_nonzero(n, msg):
    """A ``ShapeError`` (a ``ValueError``) if the size ``n`` is 0: now, or in the kernel where
    ``n`` is only known then."""
    if isinstance(n, Tracer):
        check_eq(eq(n, 0), False, msg)
    elif n == 0:
        raise ShapeError(msg)


def check_nonempty(x, axis, msg):
    """numpy's max/min (argmax, nanmax, ...) of an empty slice raise: no identity."""
    check_nonzero(size_of(x, norm_axes(axis, ndim(x))), at(current_loc(), msg))


def size_of(x, axes):
    n = 1
    shp = shape_of(x)
    for a in axes:
        d = shp[a]
        n = mul(n, Tracer(d)) if isinstance(d, Var) else n * d
    return n


# =============================================================================================
# Integer/size arithmetic helpers
# =============================================================================================


def convert(x, dtype):
    return cast(x, dtype)


def _check_fold(a, b, msg):
    av, bv = _to_static(a), _to_static(b)
    if a is b or (not isinstance(av, Var) and not isinstance(bv, Var) and av == bv):
        return None
    if isinstance(av, (int, np.integer)) and isinstance(bv, (int, np.integer)):
        raise ShapeError(msg)
    return NotImplemented


check_eq_p = primitive(
    "check_eq", lambda a, b, msg: (), effect=True, kind="check", cpu=None, impl=None,
    fold=_check_fold, vjp=lambda ct, ins, outs, msg: (None, None), jvp=_no_tangent)


def _check_index_fold(i, n, msg):
    iv, nv = _to_static(i), _to_static(n)
    if isinstance(iv, (int, np.integer)) and isinstance(nv, (int, np.integer)):
        if not -nv <= iv < nv:
            raise TraceError(msg)
        return None
    return NotImplemented


check_index_p = primitive(
    "check_index", lambda i, n, msg: (), effect=True, kind="check", cpu=None, impl=None,
    fold=_check_index_fold, vjp=lambda ct, ins, outs, msg: (None, None), jvp=_no_tangent)


def check_index(i, n, msg):
    """A run-time check that index ``i`` lies in ``[-n, n)``; raises ``IndexOutOfBounds(msg)``
    in the kernel (numba does not check indices, and a write out of bounds corrupts memory)."""
    bind(check_index_p, i if not isinstance(i, Var) else Tracer(i),
         dim(n), msg=msg)


def _bounds_checked(i, n, k):
    """Emit the run-time bounds check of index ``i`` into an axis ``k`` of size ``n`` unless
    both are known now (then the caller has checked already)."""
    if isinstance(i, Tracer) or isinstance(n, Var):
        check_index(i, n, at(current_loc(), f"index out of bounds for axis {k} (an index or a "
                                            "size known only at run time)"))


def check_eq(a, b, msg):
    """A run-time check that two sizes agree; raises ``ShapeError(msg)`` in the kernel."""
    bind(check_eq_p, a if not isinstance(a, Var) else Tracer(a),
         b if not isinstance(b, Var) else Tracer(b), msg=msg)


# =============================================================================================
# Structural primitives (views, copies, data movement)
# =============================================================================================


def _reshape_shape(x, *dims, shape):
    return (Aval(x.aval.dtype, _fill_dims(shape, dims), x.aval.weak),)


def _reshape_fold(x, *dims, shape):
    e = _producer(x)  # reshape(reshape(y)) -> reshape(y), and back to y's own shape -> y
    if e is not None and e.prim is reshape_p:
        y = e.inputs[0]
        new = _fill_dims(shape, dims)
        if same_shape(y.aval.shape, new):
            return Tracer(y)
        return bind(reshape_p, Tracer(y), *[_tr(d) for d in dims], shape=shape)
    return NotImplemented


reshape_p = primitive(
    "reshape", _reshape_shape, fold=_reshape_fold,
    impl=lambda x, *dims, shape: np.reshape(x, _fill_dims(shape, dims)),
    vjp=lambda ct, ins, outs, shape: (reshape(ct, shape_of(ins[0])),) + (None,) * (len(ins) - 1),
    jvp=lambda ts, ins, outs, shape: bind(reshape_p, ts[0], *ins[1:], shape=shape))


def reshape(x, shape):
    """``x.reshape(shape)`` with -1 and symbolic sizes; unit-axis changes stay cheap views."""
    if isinstance(shape, (int, Tracer, Var)):
        shape = (shape,)
    shape = [_dim_atom(d) for d in shape]
    if is_static_scalar(x):
        if any(isinstance(d, Var) for d in shape):
            return broadcast_to(x, [d if d != -1 else 1 for d in shape])
        return np.reshape(x, [int(d) for d in shape])
    if -1 in [d for d in shape if isinstance(d, int)]:
        k = [i for i, d in enumerate(shape) if isinstance(d, int) and d == -1][0]
        total = size_of(x, range(ndim(x)))
        known = 1
        for i, d in enumerate(shape):
            if i != k:
                known = mul(known, Tracer(d)) if isinstance(d, Var) else known * d
        n = floor_divide(total, known)
        shape[k] = n.ivar if isinstance(n, Tracer) else int(n)
    shape = tuple(shape)
    if same_shape(shape, shape_of(x)):
        return x
    template, dims = _split_dims(shape)
    return bind(reshape_p, x, *dims, shape=template)


def _transpose_shape(x, perm):
    return (Aval(x.aval.dtype, tuple(x.aval.shape[p] for p in perm), x.aval.weak),)


transpose_p = primitive(
    "transpose", _transpose_shape, impl=lambda x, perm: np.transpose(x, perm),
    vjp=lambda ct, ins, outs, perm: (transpose(ct, tuple(np.argsort(perm).tolist())),),
    jvp=lambda ts, ins, outs, perm: bind(transpose_p, ts[0], perm=perm))


def transpose(x, axes=None):
    nd = ndim(x)
    perm = tuple(reversed(range(nd))) if axes is None else tuple(int(a) % nd for a in axes)
    if perm == tuple(range(nd)) or is_static_scalar(x):
        return x
    return bind(transpose_p, x, perm=perm)


# Basic indexing. ``spec`` has one entry per input axis: ("i", k) an integer index or
# ("s", start, stop, step) a slice (start/stop None when omitted); "?" stands for a value known
# only at run time, taken in order from the dynamic inputs. ``sizes`` gives the output sizes,
# "?" again for run-time sizes, which follow the index values among the inputs.

DYN = "?"


def _split_dyn(spec, sizes, dyn):
    n_vals = sum(1 for s in spec for v in s[1:] if v == DYN)
    return dyn[:n_vals], dyn[n_vals:]


def _spec_values(spec, vals):
    it = iter(vals)
    return [(s[0],) + tuple(next(it) if v == DYN else v for v in s[1:]) for s in spec]


def _slice_shape(x, *dyn, spec, sizes):
    _, size_in = _split_dyn(spec, sizes, dyn)
    return (Aval(x.aval.dtype, _fill_dims(tuple(None if s == DYN else s for s in sizes), size_in),
                 x.aval.weak),)


def _py_index(spec_vals):
    return tuple(int(v[1]) if v[0] == "i" else slice(*v[1:]) for v in spec_vals)


def _slice_impl(x, *dyn, spec, sizes):
    vals, _ = _split_dyn(spec, sizes, dyn)
    return np.array(np.asarray(x)[_py_index(_spec_values(spec, vals))])


def _read_back_fold(x, *dyn, spec, sizes):
    """``y[idx]`` right after ``y = x with y[idx] = v`` is ``v``: no need to keep ``y``'s
    elements around (an adjoint reading them back would otherwise hold a copy of the array)."""
    e = _producer(x)
    if e is None or e.prim is not slice_set_p or e.p["spec"] != spec or e.p["sizes"] != sizes:
        return NotImplemented
    same = all(a is b or (isinstance(a, Lit) and isinstance(b, Lit) and a.value == b.value)
               for a, b in zip(e.inputs[2:], dyn))
    v = e.inputs[1]
    if not same or len(e.inputs) - 2 != len(dyn) or DYN in sizes or v.aval.shape != tuple(sizes):
        return NotImplemented
    if isinstance(v, Lit):
        return cast(v.value, x.aval.dtype)
    return Tracer(v) if v.aval.dtype == x.aval.dtype else cast(Tracer(v), x.aval.dtype)


slice_p = primitive(
    "slice", _slice_shape, impl=_slice_impl, fold=_read_back_fold,
    vjp=lambda ct, ins, outs, spec, sizes: (
        slice_add(zeros(shape_of(ins[0]), dtype_of(ins[0])), ct, ins[1:], spec, sizes),
    ) + (None,) * (len(ins) - 1),
    jvp=lambda ts, ins, outs, spec, sizes: bind(slice_p, ts[0], *ins[1:], spec=spec, sizes=sizes))


def _slice_add_impl(acc, v, *dyn, spec, sizes):
    vals, _ = _split_dyn(spec, sizes, dyn)
    out = np.array(acc, copy=True)
    out[_py_index(_spec_values(spec, vals))] += v
    return out


# ``acc`` with ``v`` added into ``acc[spec]``: the adjoint of basic indexing. Lowered in place
# when ``acc`` is not used afterwards (the usual case: a gradient being accumulated).
slice_add_p = primitive(
    "slice_add", lambda acc, v, *dyn, spec, sizes: (acc.aval,), impl=_slice_add_impl, inplace=0,
    vjp=lambda ct, ins, outs, spec, sizes: (
        ct, bind(slice_p, ct, *ins[2:], spec=spec, sizes=sizes)) + (None,) * (len(ins) - 2),
    jvp=lambda ts, ins, outs, **p: _indexed_add_jvp(slice_add_p, ts, ins, p))


def _indexed_add_jvp(prim, ts, ins, params):
    """The tangent of ``acc`` with ``v`` added at indices: the same addition of tangents."""
    ta, tv = ts[0], ts[1]
    if tv is None:
        return ta
    acc = ta if ta is not None else zeros(shape_of(ins[0]), dtype_of(ins[0]))
    return bind(prim, acc, cast(tv, dtype_of(acc)), *ins[2:], **params)


def slice_add(acc, v, dyn, spec, sizes):
    sub = _slice_shape(Lit(0, aval_of(acc)), *[_dyn_atom(d) for d in dyn], spec=spec, sizes=sizes)
    v = broadcast_to(cast(v, dtype_of(acc)), sub[0].shape)
    return bind(slice_add_p, acc, v, *dyn, spec=spec, sizes=sizes)


def _dyn_atom(d):
    if isinstance(d, Tracer):
        return d.ivar
    return d if isinstance(d, (Var, Lit)) else Lit(int(d), Aval("int64", (), True))


_NONE = -(2 ** 62)  # an omitted slice bound among slicelen's operands


def _none(v):
    return None if v == _NONE else v


slicelen_p = primitive(
    "slicelen", lambda n, start, stop, step: (Aval("int64"),),
    impl=lambda n, start, stop, step: len(range(*slice(_none(start), _none(stop), step).indices(int(n)))),
    kind="elementwise", cpu="gj_slicelen({0}, {1}, {2}, {3})",
    vjp=lambda ct, ins, outs: (None,) * 4, jvp=_no_tangent)


def _slice_spec(x, idx):
    """``(spec, dynamic values, sizes, dynamic sizes)`` of ``slice_p``/``slice_set_p`` for basic
    indices ``idx`` (ints and slices, one per axis of ``x``); run-time indices are checked."""
    spec, vals, sizes, size_in = [], [], [], []
    for k, (i, n) in enumerate(zip(idx, shape_of(x))):
        if _is_int(i):
            if isinstance(i, Tracer):
                spec.append(("i", DYN))
                vals.append(cast(i, "int64"))
            else:
                i = int(i)
                if isinstance(n, int) and not -n <= i < n:
                    raise TraceError(at(current_loc(), f"index {i} is out of bounds for axis {k} "
                                        f"with size {n}"))
                spec.append(("i", i))
            _bounds_checked(vals[-1] if isinstance(i, Tracer) else i, n, k)
            continue
        if not isinstance(i, slice):
            raise TraceError(at(current_loc(), f"unsupported index of type {type(i).__name__}"))
        if isinstance(i.step, Tracer):
            raise TraceError(at(current_loc(), "a slice step must be known at compile time"))
        step = 1 if i.step is None else int(i.step)
        if step == 0:
            raise TraceError(at(current_loc(), "slice step cannot be zero"))
        bounds = []
        for b in (i.start, i.stop):
            if isinstance(b, Tracer):
                bounds.append(DYN)
                vals.append(cast(b, "int64"))
            else:
                bounds.append(None if b is None else int(b))
        spec.append(("s", bounds[0], bounds[1], step))
        if i.start is None and i.stop is None and step == 1:
            length = n
        else:
            lo = _NONE if i.start is None else i.start
            hi = _NONE if i.stop is None else i.stop
            length = bind(slicelen_p, dim(n), lo, hi, step)
        if isinstance(length, Tracer):
            length = length.ivar
        if isinstance(length, Var):
            sizes.append(DYN)
            size_in.append(Tracer(length))
        else:
            sizes.append(int(length))
    return tuple(spec), vals, tuple(sizes), size_in


def index(x, idx):
    """``x[idx]`` for ints, slices, None/newaxis, Ellipsis, tuples and integer arrays."""
    if not isinstance(idx, tuple):
        idx = (idx,)
    if any(_is_array_index(i) for i in idx):
        return gather(x, idx)
    nd = ndim(x)
    is_ell = [i is Ellipsis for i in idx]
    n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
    if sum(is_ell) > 1:
        raise TraceError(at(current_loc(), "an index can only have a single ellipsis ('...')"))
    if any(is_ell):
        k = is_ell.index(True)
        idx = idx[:k] + (slice(None),) * max(nd - n_real, 0) + idx[k + 1:]
        n_real = max(n_real, nd)
    if n_real > nd:
        raise TraceError(at(current_loc(), f"too many indices ({n_real}) for an array of rank {nd}"))
    idx = idx + (slice(None),) * (nd - n_real)
    new_axes, real, out_rank = [], [], 0
    for i in idx:
        if i is None:
            new_axes.append(out_rank)
            out_rank += 1
        else:
            real.append(i)
            out_rank += 0 if _is_int(i) else 1
    spec, vals, sizes, size_in = _slice_spec(x, real)
    if all(s == ("s", None, None, 1) for s in spec):
        y = x
    else:
        y = bind(slice_p, x, *vals, *size_in, spec=spec, sizes=sizes)
    if new_axes:
        shape = list(shape_of(y))
        for a in new_axes:
            shape.insert(a, 1)
        y = reshape(y, tuple(shape))
    return y


def _is_int(i):
    if isinstance(i, Tracer):
        return i.ndim == 0 and not i.dtype.kind == "f"
    return isinstance(i, (int, np.integer)) and not isinstance(i, bool)


def _is_array_index(i):
    if isinstance(i, Tracer):
        return i.ndim > 0
    return isinstance(i, (np.ndarray, list))


# Integer-array ("advanced") indexing over the leading axes: out[k...] = x[i0[k...], i1[k...], :...]

def _gather_shape(x, *idx):
    ishape = broadcast_shapes(*[i.aval.shape for i in idx])
    return (Aval(x.aval.dtype, ishape + x.aval.shape[len(idx):], x.aval.weak),)


gather_p = primitive(
    "gather", _gather_shape, impl=lambda x, *idx: np.asarray(x)[tuple(idx)],
    kind="index", cpu="{x}[{idx}]", whole_inputs=(0,),
    vjp=lambda ct, ins, outs: (scatter_add(zeros(shape_of(ins[0]), dtype_of(ins[0])), ct,
                                           ins[1:]),) + (None,) * (len(ins) - 1),
    jvp=lambda ts, ins, outs: bind(gather_p, ts[0], *ins[1:]))


def _scatter_add_shape(acc, v, *idx):
    return (acc.aval,)


def _scatter_add_impl(acc, v, *idx):
    out = np.array(acc, copy=True)
    np.add.at(out, tuple(idx), v)
    return out


scatter_add_p = primitive(
    "scatter_add", _scatter_add_shape, impl=_scatter_add_impl, kind="scatter", inplace=0,
    vjp=lambda ct, ins, outs: (ct, gather(ct, tuple(ins[2:]))) + (None,) * (len(ins) - 2),
    jvp=lambda ts, ins, outs: _indexed_add_jvp(scatter_add_p, ts, ins, {}))


def gather(x, idx):
    if not isinstance(x, Tracer):
        raise TraceError(at(current_loc(), "integer-array indexing of a constant is not supported"))
    arrs = []
    for i in idx:
        if isinstance(i, slice) and i == slice(None):
            break
        if isinstance(i, list):
            i = np.asarray(i)
        if isinstance(i, np.ndarray):
            if i.dtype.kind not in "iu":
                raise TraceError(at(current_loc(), "boolean-mask indexing is not supported "
                                    "(its result has a data-dependent shape); use np.where"))
            i = lift(i)  # a constant index array (np.arange(5), a label array read from outside)
        if isinstance(i, Tracer) and i.dtype.kind == "b":
            raise TraceError(at(current_loc(), "boolean-mask indexing is not supported (its "
                                "result has a data-dependent shape); use np.where"))
        if not (isinstance(i, Tracer) and i.dtype.kind in "iu"):
            raise TraceError(at(current_loc(), "integer-array indexing must use integer arrays on "
                                "the leading axes (mixing them with slices is not supported)"))
        arrs.append(i)
    rest = idx[len(arrs):]
    if any(not (isinstance(r, slice) and r == slice(None)) for r in rest):
        raise TraceError(at(current_loc(), "integer-array indexing followed by slices is not supported"))
    arrs = [cast(a, "int64") for a in arrs]
    broadcast(*arrs)
    for k, a in enumerate(arrs):
        _indices_checked(a, shape_of(x)[k], k)
    return bind(gather_p, x, *arrs)


def _indices_checked(a, n, k):
    """A run-time check of an index array into an axis of size ``n`` (numba reads outside the
    array silently; the adjoint's scatter uses the same indices): the largest of ``i`` (i >= 0)
    and ``-i - 1`` (i < 0) must be below ``n``. ``np.arange(n)`` itself needs no check."""
    e = _producer(a.ivar)
    if e is not None and e.prim is iota_p and ndim(a) == 1 and \
            same_dim(shape_of(a)[0], n):
        return
    if not ndim(a):
        return _bounds_checked(a, n, k)
    m = reduce_max(select(lt(a, 0), sub(neg(a), 1), a), tuple(range(ndim(a))))  # empty: iinfo.min
    bad = select(lt(m, dim(n)), 0, 1)  # 0 or 1: no size that vmap could map
    check_index(bad, 1, at(current_loc(), f"integer-array index out of bounds for axis {k}"))


def scatter_add(acc, v, idx):
    return bind(scatter_add_p, acc, cast(v, dtype_of(acc)), *idx)


def _iota_shape(n, dtype):
    return (Aval(dtype, (n if isinstance(n, Var) else _to_static(n),)),)


iota_p = primitive("iota", _iota_shape, impl=lambda n, dtype: np.arange(n, dtype=dtype),
                   kind="iota", cpu="{i}", vjp=lambda ct, ins, outs, dtype: (None,),
                   jvp=_no_tangent)


def arange(n, dtype="int64"):
    if isinstance(n, (int, np.integer)):
        return np.arange(int(n), dtype=dtype)
    return bind(iota_p, cast(n, "int64"), dtype=dtype)


def _full_shape(value, *dims, shape, dtype):
    return (Aval(dtype, _fill_dims(shape, dims)),)


full_p = primitive(
    "full", _full_shape, kind="elementwise", cpu="{0}",
    impl=lambda value, *dims, shape, dtype: np.full(_fill_dims(shape, dims), value, dtype=dtype),
    vjp=lambda ct, ins, outs, shape, dtype: (None,) * len(ins),
    jvp=lambda ts, ins, outs, shape, dtype: ts[0])  # the filled value's, broadcast


def full(shape, value, dtype="float64"):
    shape = tuple(_dim_atom(d) for d in shape)
    template, dims = _split_dims(shape)
    return bind(full_p, cast(value, dtype), *dims, shape=template, dtype=dtype)


def zeros(shape, dtype="float64"):
    return full(shape, 0, dtype)


def _concat_vjp(ct, ins, outs, axis, size=None):
    res, start = [], 0
    nd = ndim(ct)
    for x in ins[: len(ins) - (1 if size is not None else 0)]:
        n = shape_of(x)[axis]
        n = dim(n)
        stop = add(start, n)
        sl = (slice(None),) * axis + (slice(start, stop),) + (slice(None),) * (nd - axis - 1)
        res.append(index(ct, sl))
        start = stop
    return tuple(res) + ((None,) if size is not None else ())


def _concat_shape(*xs, axis, dynamic):
    if dynamic:
        size, xs = xs[-1], xs[:-1]
    shape = list(xs[0].aval.shape)
    shape[axis] = size if dynamic else sum(x.aval.shape[axis] for x in xs)
    return (Aval(xs[0].aval.dtype, tuple(shape)),)


concat_p = primitive(
    "concatenate", _concat_shape,
    impl=lambda *xs, axis, dynamic: np.concatenate(xs[:-1] if dynamic else xs, axis=axis),
    vjp=lambda ct, ins, outs, axis, dynamic: _concat_vjp(ct, ins, outs, axis, 1 if dynamic else None),
    jvp=lambda ts, ins, outs, axis, dynamic: bind(
        concat_p, *[zeros(shape_of(x), dtype_of(x)) if t is None else t for x, t in
                    zip(ins[:len(ins) - dynamic], ts)], *ins[len(ins) - dynamic:],
        axis=axis, dynamic=dynamic))


def concatenate(xs, axis=0):
    xs = list(xs)
    (*xs,), dt = promote(*xs)
    nd = max(ndim(x) for x in xs)
    if nd == 0:
        raise TraceError(at(current_loc(), "zero-dimensional arrays cannot be concatenated"))
    axis = int(axis) % nd
    xs = [x if isinstance(x, Tracer) else cast(np.asarray(x), dt) for x in xs]
    if not all(isinstance(x, Tracer) for x in xs):
        raise TraceError(at(current_loc(), "concatenating constant arrays with traced ones: "
                            "pass the constant as an argument"))
    base = shape_of(xs[0])
    for x in xs[1:]:
        s = shape_of(x)
        if len(s) != len(base):
            raise ShapeError(at(current_loc(), "all the input arrays must have the same number of dimensions"))
        for k in range(len(s)):
            if k != axis and not same_dim(s[k], base[k]):
                if isinstance(s[k], int) and isinstance(base[k], int):
                    raise ShapeError(at(current_loc(), f"concatenate: sizes differ on axis {k}: "
                                        f"{fmt_shape(base)} and {fmt_shape(s)}"))
                check_eq(s[k], base[k], at(current_loc(), "concatenate: sizes differ at run time"))
    dynamic = any(isinstance(shape_of(x)[axis], Var) for x in xs)
    if dynamic:
        total = 0
        for x in xs:
            d = shape_of(x)[axis]
            total = add(total, dim(d))
        return bind(concat_p, *xs, total, axis=axis, dynamic=True)
    return bind(concat_p, *xs, axis=axis, dynamic=False)


# =============================================================================================
# Linear algebra
# =============================================================================================


def _matmul_shape(a, b):
    sa, sb = a.aval.shape, b.aval.shape
    out = sa[:-1] + sb[1:] if len(sb) == 2 else sa[:-1]
    if len(sa) == 1:
        out = sb[1:] if len(sb) == 2 else ()
    return (Aval(a.aval.dtype, tuple(out)),)


def _matmul_vjp(ct, ins, outs):
    a, b = ins
    ra, rb = ndim(a), ndim(b)
    if ra == 2 and rb == 2:
        return matmul(ct, transpose(b)), matmul(transpose(a), ct)
    if ra == 2 and rb == 1:
        return outer(ct, b), matmul(transpose(a), ct)
    if ra == 1 and rb == 2:
        return matmul(b, ct), outer(a, ct)
    return mul(ct, b), mul(ct, a)


matmul_p = primitive("matmul", _matmul_shape, impl=np.matmul, vjp=_matmul_vjp,
                     jvp=lambda ts, ins, outs: _tadd(
                         None if ts[0] is None else matmul(ts[0], ins[1]),
                         None if ts[1] is None else matmul(ins[0], ts[1])))


def matmul(a, b):
    """``a @ b`` for operands of rank 1 or 2 (BLAS through ``np.dot``)."""
    (a, b), _ = promote(a, b, to_float=True)
    ra, rb = ndim(a), ndim(b)
    if ra == 0 or rb == 0:
        raise TraceError(at(current_loc(), "matmul: operands must have rank >= 1 (use *)"))
    if ra > 2 or rb > 2:
        return _batched_matmul(a, b)
    ka = shape_of(a)[-1]
    kb = shape_of(b)[0]
    if not same_dim(ka, kb):
        if isinstance(ka, int) and isinstance(kb, int):
            raise ShapeError(at(current_loc(), f"matmul: shapes {fmt_shape(shape_of(a))} and "
                                f"{fmt_shape(shape_of(b))} are not aligned ({ka} != {kb})"))
        check_eq(ka, kb, at(current_loc(), f"matmul: shapes {fmt_shape(shape_of(a))} and "
                            f"{fmt_shape(shape_of(b))} are not aligned"))
    if not isinstance(a, Tracer) or not isinstance(b, Tracer):
        if not isinstance(a, Tracer) and not isinstance(b, Tracer):
            return np.matmul(a, b)
        # a small constant (e.g. a cotangent that folded to constants) joins the graph
        a, b = (x if isinstance(x, Tracer) else lift(x) for x in (a, b))
    return bind(matmul_p, a, b)


def _batched_matmul(a, b):
    """``a @ b`` with a rank > 2 operand: numpy's stacks of matrices with broadcast batch axes,
    as a broadcast product summed over the contracted axis (one fused loop, no BLAS)."""
    sa0, sb0 = shape_of(a), shape_of(b)
    vec_a, vec_b = ndim(a) == 1, ndim(b) == 1
    if vec_a:
        a = reshape(a, (1,) + sa0)
    if vec_b:
        b = reshape(b, sb0 + (1,))
    sa, sb = shape_of(a), shape_of(b)
    ka, kb = sa[-1], sb[-2]
    msg = f"matmul: shapes {fmt_shape(sa0)} and {fmt_shape(sb0)} are not aligned"
    if not same_dim(ka, kb):
        if isinstance(ka, int) and isinstance(kb, int):
            raise ShapeError(at(current_loc(), f"{msg} ({ka} != {kb})"))
        check_eq(ka, kb, at(current_loc(), msg))
    ba, bb = sa[:-2], sb[:-2]
    r = max(len(ba), len(bb))
    for k in range(r):
        da = ba[k - r + len(ba)] if k - r + len(ba) >= 0 else 1
        db = bb[k - r + len(bb)] if k - r + len(bb) >= 0 else 1
        if isinstance(da, int) and isinstance(db, int) and 1 not in (da, db) and da != db:
            raise ShapeError(at(current_loc(), f"matmul: the batch axes of {fmt_shape(sa0)} and "
                                f"{fmt_shape(sb0)} do not broadcast"))
    a4 = reshape(a, sa + (1,))  # (..., n, k, 1)
    b4 = reshape(b, sb[:-2] + (1,) + sb[-2:])  # (..., 1, k, m)
    y = reduce_sum(mul(a4, b4), -2)  # (..., n, m)
    if vec_a:
        s = shape_of(y)
        y = reshape(y, s[:-2] + s[-1:])
    if vec_b:
        y = reshape(y, shape_of(y)[:-1])
    return y


def outer(a, b):
    a = reshape(a, (size_of(a, range(ndim(a))),)) if ndim(a) != 1 else a
    b = reshape(b, (size_of(b, range(ndim(b))),)) if ndim(b) != 1 else b
    return mul(reshape(a, (shape_of(a)[0], 1)), b)


# ---- det, inv, solve: LAPACK through numba's np.linalg (square matrices, no batching) --------


def _square_shape(a):
    return (Aval(a.aval.dtype, a.aval.shape),)


def _linalg_cpu(fn):
    return lambda args, p: f"np.linalg.{fn}({', '.join(f'np.ascontiguousarray({a})' for a in args)})"


# d det(A) = det(A) inv(A)^T
det_p = primitive("det", lambda a: (Aval(a.aval.dtype, ()),), impl=np.linalg.det,
                  cpu=_linalg_cpu("det"),
                  vjp=lambda ct, ins, outs: (mul(ct, mul(outs[0], transpose(inv(ins[0])))),),
                  jvp=lambda ts, ins, outs: mul(outs[0], reduce_sum(
                      mul(transpose(inv(ins[0])), ts[0]), (0, 1))))

# d inv(A) = -inv(A)^T ct inv(A)^T
inv_p = primitive("inv", _square_shape, impl=np.linalg.inv, cpu=_linalg_cpu("inv"),
                  vjp=lambda ct, ins, outs: (
                      neg(matmul(matmul(transpose(outs[0]), ct), transpose(outs[0]))),),
                  jvp=lambda ts, ins, outs: neg(matmul(matmul(outs[0], ts[0]), outs[0])))


def _solve_vjp(ct, ins, outs):
    a, _ = ins
    x = outs[0]
    gb = solve(transpose(a), ct)
    ga = neg(outer(gb, x) if ndim(x) == 1 else matmul(gb, transpose(x)))
    return ga, gb


def _solve_jvp(ts, ins, outs):
    """d(A^-1 b) = A^-1 (db - dA x)."""
    ta, rhs = ts
    if ta is not None:
        ax = matmul(ta, outs[0])
        rhs = neg(ax) if rhs is None else sub(rhs, ax)
    return solve(ins[0], rhs)


solve_p = primitive("solve", lambda a, b: (Aval(a.aval.dtype, b.aval.shape),),
                    impl=np.linalg.solve, vjp=_solve_vjp, jvp=_solve_jvp,
                    cpu=_linalg_cpu("solve"))


def _lower_weights(a, diag_w, lower_w):
    """The (n, n) matrix with ``lower_w`` below the diagonal, ``diag_w`` on it, 0 above."""
    n = shape_of(a)[0]
    i = arange(Tracer(n) if isinstance(n, Var) else n)
    i = i if isinstance(i, Tracer) else lift(i)
    r, c = reshape(i, (n, 1)), reshape(i, (1, n))
    return select(gt(r, c), lower_w, select(eq(r, c), diag_w, 0.0))


def _cholesky_vjp(ct, ins, outs):
    """Murray (2016): with Phi(X) the lower triangle of X with half its diagonal,
    S = L^-T Phi(L^T ct) L^-1, symmetrised. numpy reads only A's lower triangle, so an entry
    below the diagonal stands for two entries of the symmetric matrix: 2 S there, S on the
    diagonal, 0 above (what central differences of any A see)."""
    L = outs[0]
    Li = inv(L)
    phi = mul(matmul(transpose(L), ct), _lower_weights(L, 0.5, 1.0))
    S = matmul(matmul(transpose(Li), phi), Li)
    return (mul(add(S, transpose(S)), _lower_weights(L, 0.5, 1.0)),)


def _cholesky_jvp(ts, ins, outs):
    """dL = L Phi(L^-1 dA L^-T), Phi the lower triangle with half its diagonal; numpy reads
    only A's lower triangle, so dA stands for its symmetric completion."""
    L, dA = outs[0], ts[0]
    S = add(mul(dA, _lower_weights(L, 1.0, 1.0)), transpose(mul(dA, _lower_weights(L, 0.0, 1.0))))
    Li = inv(L)
    return matmul(L, mul(matmul(matmul(Li, S), transpose(Li)), _lower_weights(L, 0.5, 1.0)))


cholesky_p = primitive("cholesky", _square_shape, impl=np.linalg.cholesky,
                       vjp=_cholesky_vjp, jvp=_cholesky_jvp, cpu=_linalg_cpu("cholesky"))


def _square_operand(fn, a):
    (a,), _ = promote(a, to_float=True)
    s = shape_of(a)
    if len(s) != 2:
        raise TraceError(at(current_loc(), f"np.linalg.{fn} of an array of rank {len(s)} is not "
                            "supported (only a single square matrix)"))
    if not same_dim(s[0], s[1]):
        msg = f"np.linalg.{fn}: the matrix must be square, not {fmt_shape(s)}"
        if isinstance(s[0], int) and isinstance(s[1], int):
            raise ShapeError(at(current_loc(), msg))
        check_eq(s[0], s[1], at(current_loc(), msg))
    if not isinstance(a, Tracer):
        raise TraceError(at(current_loc(), f"np.linalg.{fn} of a constant array: pass it as an argument"))
    return a


def det(a):
    return bind(det_p, _square_operand("det", a))


def inv(a):
    return bind(inv_p, _square_operand("inv", a))


def cholesky(a):
    return bind(cholesky_p, _square_operand("cholesky", a))


def solve(a, b):
    (a, b), _ = promote(a, b, to_float=True)
    a = _square_operand("solve", a)
    if ndim(b) not in (1, 2):
        raise TraceError(at(current_loc(), "np.linalg.solve: b must have rank 1 or 2"))
    n, nb = shape_of(a)[0], shape_of(b)[0]
    if not same_dim(n, nb):
        msg = (f"np.linalg.solve: shapes {fmt_shape(shape_of(a))} and {fmt_shape(shape_of(b))} "
               "do not match")
        if isinstance(n, int) and isinstance(nb, int):
            raise ShapeError(at(current_loc(), msg))
        check_eq(n, nb, at(current_loc(), msg))
    if not isinstance(b, Tracer):  # a right-hand side built while tracing (np.ones(n))
        b = lift(b)
    return bind(solve_p, a, b)


# =============================================================================================
# Scans
# =============================================================================================


def _cumsum_impl(x, axis, reverse):
    if reverse:
        return np.flip(np.cumsum(np.flip(x, axis), axis), axis)
    return np.cumsum(x, axis)


def _cumsum_cpu(args, p):
    """A call of the helper kernel ``gj_cumsum_last`` (kernels/cpu.py), which scans the last
    axis; another axis is moved last and back."""
    axis, nd, rev = p["axis"], p["ndim"], p["reverse"]
    if axis == nd - 1:
        return f"gj_cumsum_last({args[0]}, {rev})"
    perm = tuple(k for k in range(nd) if k != axis) + (axis,)
    back = tuple(np.argsort(perm).tolist())
    return f"np.transpose(gj_cumsum_last(np.transpose({args[0]}, {perm!r}), {rev}), {back!r})"


# Running sum along ``axis`` (from the end when ``reverse``); its adjoint is the running sum
# of the cotangent the other way.
cumsum_p = primitive("cumsum", lambda x, axis, ndim, reverse: (x.aval.update(weak=False),),
                     impl=lambda x, axis, ndim, reverse: _cumsum_impl(x, axis, reverse),
                     cpu=_cumsum_cpu,
                     vjp=lambda ct, ins, outs, axis, ndim, reverse: (
                         bind(cumsum_p, ct, axis=axis, ndim=ndim, reverse=not reverse),),
                     jvp=lambda ts, ins, outs, axis, ndim, reverse: bind(
                         cumsum_p, ts[0], axis=axis, ndim=ndim, reverse=reverse))


def cumsum(x, axis=None, reverse=False):
    """``np.cumsum(x, axis)``: ``axis=None`` scans the flattened array."""
    if is_static_scalar(x):
        return np.cumsum(x, axis)
    if dtype_of(x) == "bool" or (dtype_of(x).startswith("int") and dtype_of(x) != "int64"):
        x = cast(x, "int64")
    if axis is None:
        x = reshape(x, (-1,))
        axis = 0
    nd = ndim(x)
    if nd == 0:
        raise TraceError(at(current_loc(), "np.cumsum of a 0-d array needs axis=None"))
    if isinstance(axis, Tracer):
        raise TraceError(at(current_loc(), "np.cumsum: the axis must be known at compile time"))
    if not -nd <= int(axis) < nd:
        raise TraceError(at(current_loc(), f"np.cumsum: axis {axis} is out of bounds for an array "
                            f"of rank {nd}"))
    return bind(cumsum_p, x, axis=int(axis) % nd, ndim=nd, reverse=bool(reverse))


def _argsort_cpu(args, p):
    """``gj_argsort_last`` (kernels/cpu.py) sorts along the last axis; another axis is moved
    last and back."""
    axis, nd = p["axis"], p["ndim"]
    if axis == nd - 1:
        return f"gj_argsort_last({args[0]})"
    perm = tuple(k for k in range(nd) if k != axis) + (axis,)
    back = tuple(np.argsort(perm).tolist())
    return f"np.transpose(gj_argsort_last(np.transpose({args[0]}, {perm!r})), {back!r})"


# The permutation that sorts along ``axis`` (stable; NaN last, as numpy). An integer result:
# np.sort gathers with it, so sort's adjoint is the permutation's scatter.
argsort_p = primitive("argsort", lambda x, axis, ndim: (Aval("int64", x.aval.shape),),
                      impl=lambda x, axis, ndim: np.argsort(x, axis=axis, kind="stable"),
                      cpu=_argsort_cpu, vjp=lambda ct, ins, outs, axis, ndim: (None,),
                      jvp=_no_tangent)


def argsort(x, axis=-1):
    nd = ndim(x)
    if nd == 0 or isinstance(axis, Tracer) or not -nd <= int(axis) < nd:
        raise TraceError(at(current_loc(), f"np.argsort: axis {axis!r} does not fit an array of "
                            f"rank {nd}"))
    return bind(argsort_p, x, axis=int(axis) % nd, ndim=nd)


# =============================================================================================
# Constant arrays (small numpy arrays computed at trace time)
# =============================================================================================


class ConstArray:
    """A static array as a hashable param: compared by dtype, shape and content."""

    __slots__ = ("array", "_key")

    def __init__(self, array):
        # a private copy, read-only so that the graph's constant cannot change under it (the
        # caller's array is never re-flagged)
        self.array = np.array(array, order="C", copy=True)
        self.array.flags.writeable = False
        self._key = (self.array.dtype.str, self.array.shape, self.array.tobytes())

    def __eq__(self, other):
        return isinstance(other, ConstArray) and self._key == other._key

    def __hash__(self):
        return hash(self._key)

    def __repr__(self):
        return f"array({np.array2string(self.array, separator=',', threshold=8)})"


const_p = primitive("const", lambda value: (Aval(value.array.dtype.name, value.array.shape),),
                    impl=lambda value: value.array, vjp=lambda ct, ins, outs, value: (),
                    jvp=_no_tangent)


def lift(x):
    """A numpy array met by a traced operation becomes a constant of the graph."""
    x = np.asarray(x)
    if x.ndim == 0:
        return x[()]
    if x.size > 4096:
        raise TraceError(at(current_loc(), f"a constant array of {x.size} elements was built "
                            "while tracing: pass it as an argument instead"))
    if x.dtype.kind not in "biuf":
        raise TraceError(at(current_loc(), f"arrays of dtype {x.dtype} are not supported"))
    return bind(const_p, value=ConstArray(x))


# =============================================================================================
# Writing into a local array: ``y = x`` with ``y[spec] = v`` (a pure value; the front end
# rebinds the written name). The same ``spec``/``sizes`` as ``slice``; ``v`` has the written
# region's shape, or is rank 0 (filled in). Lowered in place when ``x`` is not read afterwards
# (codegen decides).
# =============================================================================================


def _slice_set_impl(x, v, *dyn, spec, sizes):
    vals, _ = _split_dyn(spec, sizes, dyn)
    out = np.array(x, copy=True)
    out[_py_index(_spec_values(spec, vals))] = v
    return out


def _slice_set_vjp(ct, ins, outs, spec, sizes):
    dyn = ins[2:]
    ct_v = bind(slice_p, ct, *dyn, spec=spec, sizes=sizes)  # read before ct is overwritten
    # a rank-0 fill is broadcast by the write itself (no array of zeros)
    ct_x = bind(slice_set_p, ct, cast(0, dtype_of(ct)), *dyn, spec=spec, sizes=sizes)
    return (ct_x, ct_v) + (None,) * len(dyn)


def _slice_set_jvp(ts, ins, outs, spec, sizes):
    """The tangent of ``x`` with ``x[idx] = v``: the tangent of ``x`` with that of ``v``
    written there."""
    tx = ts[0] if ts[0] is not None else zeros(shape_of(ins[0]), dtype_of(outs[0]))
    tv = ts[1] if ts[1] is not None else cast(0, dtype_of(outs[0]))
    return bind(slice_set_p, tx, cast(tv, dtype_of(outs[0])), *ins[2:], spec=spec, sizes=sizes)


slice_set_p = primitive("slice_set", lambda x, v, *dyn, spec, sizes: (x.aval.update(weak=False),),
                        impl=_slice_set_impl, vjp=_slice_set_vjp, jvp=_slice_set_jvp, inplace=0)


def write_spec(x, idx):
    """(spec, dynamic values, sizes, size inputs) of ``x[idx] = ...``: ints and slices (static
    or traced bounds), Ellipsis; the layout ``slice`` uses."""
    if not isinstance(idx, tuple):
        idx = (idx,)
    if any(_is_array_index(i) for i in idx) or any(i is None for i in idx):
        raise TraceError(at(current_loc(), "writing into an array supports integer and slice "
                            "indices only (x[i] = v, x[i, j] = v, x[a:b] = v)"))
    nd = ndim(x)
    if sum(i is Ellipsis for i in idx) > 1:
        raise TraceError(at(current_loc(), "an index can only have a single ellipsis ('...')"))
    if Ellipsis in [i for i in idx if not isinstance(i, Tracer)]:
        k = next(j for j, i in enumerate(idx) if i is Ellipsis)
        idx = idx[:k] + (slice(None),) * (nd - len(idx) + 1) + idx[k + 1:]
    if len(idx) > nd:
        raise TraceError(at(current_loc(), f"too many indices ({len(idx)}) for an array of "
                            f"rank {nd}"))
    idx = idx + (slice(None),) * (nd - len(idx))
    return _slice_spec(x, idx)


def index_update(x, idx, v):
    """``x`` with ``x[idx] = v`` (numpy's assignment semantics: ``v`` cast to x's dtype and
    broadcast to the region)."""
    spec, vals, sizes, size_in = write_spec(x, idx)
    region = _slice_shape(Var(aval_of(x)), *[_dyn_atom(d) for d in vals + size_in],
                          spec=spec, sizes=sizes)[0].shape
    v = cast(v, dtype_of(x))
    vs = shape_of(v)
    msg = at(current_loc(), f"cannot write a value of shape {fmt_shape(vs)} into a region of "
             f"shape {fmt_shape(region)}")
    if len(vs) > len(region):
        raise ShapeError(msg)
    for d, r in zip(vs[::-1], region[::-1]):
        if same_dim(d, r) or (isinstance(d, int) and d == 1):
            continue
        if isinstance(d, int) and isinstance(r, int):
            raise ShapeError(msg)
        check_eq(d, r, msg)  # sizes known at run time
    # a rank-0 value is broadcast by the write itself; sizes checked equal need nothing
    if vs and (len(vs) < len(region) or any(isinstance(d, int) and d == 1 and not same_dim(d, r)
                                            for d, r in zip(vs[::-1], region[::-1]))):
        v = broadcast_to(v, region)
    return bind(slice_set_p, x, v, *vals, *size_in, spec=spec, sizes=sizes)
