"""Helpers that generated CPU kernels call by name (``from gradjit.kernels.cpu import *``)."""

import ctypes
import ctypes.util
import math

import llvmlite.binding as llb
import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

_NONE = -(2 ** 62)  # an omitted slice bound (see primitives.slicelen_p)


@numba.njit(cache=True)
def gj_slicelen(n, start, stop, step):
    """len(range(n)[start:stop:step]) with Python's clamping rules."""
    if step > 0:
        lo = 0 if start == _NONE else (start + n if start < 0 else start)
        hi = n if stop == _NONE else (stop + n if stop < 0 else stop)
        lo = min(max(lo, 0), n)
        hi = min(max(hi, 0), n)
        return max(0, (hi - lo + step - 1) // step)
    lo = n - 1 if start == _NONE else (start + n if start < 0 else start)
    hi = -1 if stop == _NONE else (stop + n if stop < 0 else stop)
    lo = min(max(lo, -1), n - 1)
    hi = min(max(hi, -1), n - 1)
    return max(0, (lo - hi - step - 1) // (-step))


@numba.njit(cache=True)
def gj_cumsum_last(x, reverse):
    """Running sums along the last axis of ``x`` (from the end when ``reverse``): a new array."""
    a = np.ascontiguousarray(x)
    n = a.shape[-1]
    m = a.size // n if n > 0 else 0
    flat = a.reshape((m, n))
    out = np.empty((m, n), a.dtype)
    for i in range(m):
        if n == 0:
            continue
        if reverse:
            acc = flat[i, n - 1]
            out[i, n - 1] = acc
            for j in range(n - 2, -1, -1):
                acc += flat[i, j]
                out[i, j] = acc
        else:
            acc = flat[i, 0]
            out[i, 0] = acc
            for j in range(1, n):
                acc += flat[i, j]
                out[i, j] = acc
    return out.reshape(a.shape)


@numba.njit(cache=True)
def gj_shares(a, b):
    """Whether the memory spans of arrays ``a`` and ``b`` overlap (conservative for strided
    views: spans may overlap where elements do not). Kernels ask before writing into a buffer
    in place that another live value may still be, depending on the run: a loop's result is
    its initial value itself when it runs zero times."""
    if a.size == 0 or b.size == 0:
        return False
    lo_a = hi_a = a.ctypes.data
    for k in range(a.ndim):
        d = (a.shape[k] - 1) * a.strides[k]
        if d < 0:
            lo_a += d
        else:
            hi_a += d
    lo_b = hi_b = b.ctypes.data
    for k in range(b.ndim):
        d = (b.shape[k] - 1) * b.strides[k]
        if d < 0:
            lo_b += d
        else:
            hi_b += d
    return lo_a < hi_b + b.itemsize and lo_b < hi_a + a.itemsize


# Tapes, (buffer, count) tuples, in parallel kernels: numba's array analysis mistakes a tuple
# built in the kernel for a shape, so these build them.

@numba.njit(cache=True)
def gj_tape_at(t, n):
    """The tape ``t`` with ``n`` values."""
    return (t[0], n)


@numba.njit(cache=True)
def gj_tape_room(t):
    """The tape ``t``, its buffer doubled if full."""
    if t[1] < t[0].shape[0]:
        return t
    return (np.concatenate((t[0], t[0])), t[1])


# =============================================================================================
# exp, sin and cos that LLVM can vectorise inside the generated elementwise loops
# =============================================================================================
# numba without SVML lowers np.exp/np.sin to scalar libm calls, and a call stops the loop
# vectoriser; these are branch-free (selects; sin/cos branch only to their libm fallback), so a
# loop calling them runs 4 lanes at a time on AVX2 (gradient of sum(sin(x)*exp(-x*x)): ~5x).
# They are compiled with their own fastmath={'contract'} and inlined by LLVM (forceinline), so
# a kernel's flags never touch them (target='parallel' has 'reassoc'): the rounding trick and
# the double-double reduction below need exact IEEE order.
#
# Accuracy (float64), against glibc through numpy: at most 1 ulp apart in every sample we ran
# (millions, whole range); tests/test_fast_math.py asserts <= 2 ulp and the special values.
#   gj_exp: all x; exp(x) = inf above 709.78, gradual underflow to subnormals and 0
#           below -708.4 / -745.13 (one rounding), nan -> nan, exp(+-0) = 1, exp(-inf) = 0.
#           x = k ln2 + r (Cody-Waite, ln2 in two parts), Taylor degree 13 on |r| <= ln2/2,
#           2^k as two exponent-field bit patterns (so k may reach -1076..1039 without overflow).
#   gj_sin, gj_cos: for |x| <= TRIG_BOUND = 2^19 pi/2 (~823550): x = n pi/2 + (y0 + y1)
#           with pi/2 in 4 parts (fdlibm's __ieee754_rem_pio2 medium case, done unconditionally,
#           error terms by TwoSum), then fdlibm's __kernel_sin/__kernel_cos on the quadrant.
#           sin(+-0) = +-0; inf, nan -> nan. For |x| > TRIG_BOUND the element goes to libm's
#           sin/cos (correctly reduced), through a masked vector variant (see _libm_fallback), so
#           a loop still vectorises and only the lanes past the bound make scalar calls.
#   float32 arguments are computed in float64 and rounded once.

@intrinsic
def _bits(typingctx, x):
    """The IEEE bit pattern of a float64, as int64."""
    def cg(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(64))
    return types.int64(types.float64), cg


@intrinsic
def _from_bits(typingctx, i):
    """The float64 with bit pattern ``i``."""
    def cg(context, builder, sig, args):
        return builder.bitcast(args[0], ir.DoubleType())
    return types.float64(types.int64), cg


@intrinsic
def _like(typingctx, x, r):
    """``r`` (float64) converted to the type of ``x``: helpers return their argument's type."""
    def cg(context, builder, sig, args):
        return context.cast(builder, args[1], sig.args[1], sig.return_type)
    return x(x, r), cg


# libm's sin/cos under private names (so LLVM does not treat them as the library functions,
# which it knows and may transform). The call site names masked vector variants (LLVM's VFABI
# attribute): in a vectorised loop the vectoriser calls <N x double> gj_libm_sin_mN(x, mask),
# which calls libm only for the lanes whose mask is set, i.e. the |x| > TRIG_BOUND ones.
def _libm_address(name):
    """The address of the C library's ``name``, or None where it cannot be found."""
    for lib in (None, ctypes.util.find_library("m"), ctypes.util.find_library("c"), "msvcrt"):
        try:  # first the process's own symbols: python and numpy link libm already
            fn = getattr(ctypes.CDLL(lib), name)
        except (AttributeError, OSError, TypeError):
            continue
        return ctypes.cast(fn, ctypes.c_void_p).value
    return None


_LIBM = {name: _libm_address(name) for name in ("sin", "cos")}
for _name, _addr in _LIBM.items():
    if _addr is not None:
        llb.add_symbol("gj_libm_" + _name, _addr)


def _vector_widths():
    """Lane counts the vectoriser may pick for float64 on this host (others still work: it
    then calls the scalar function lane by lane); each extra variant costs compile time."""
    features = llb.get_host_cpu_features()
    if features.get("avx512f"):
        return (4, 8)
    return (4,) if features.get("avx") else (2,)


_WIDTHS = _vector_widths()


def _scalar_decl(module, name):
    fn = module.globals.get(name)
    if fn is None:
        fn = ir.Function(module, ir.FunctionType(ir.DoubleType(), [ir.DoubleType()]), name)
        fn.attributes.add("nounwind")
        fn.attributes.add("readnone")  # no errno use: lets the vectoriser predicate the call
    return fn


def _define_variants(module, name):
    """The masked vector variants of ``name`` in ``module``: <w x double> f(x, <w x i1> mask)
    calls ``name`` for the lanes whose mask is set. Kept alive through llvm.used (nothing
    references them before the vectoriser runs)."""
    if module.globals.get(f"{name}_m{_WIDTHS[0]}") is not None:
        return
    scalar = _scalar_decl(module, name)
    keep = []
    for w in _WIDTHS:
        vt, mt = ir.VectorType(ir.DoubleType(), w), ir.VectorType(ir.IntType(1), w)
        vf = ir.Function(module, ir.FunctionType(vt, [vt, mt]), f"{name}_m{w}")
        vf.linkage = "linkonce_odr"
        b = ir.IRBuilder(vf.append_basic_block("entry"))
        acc = vf.args[0]
        for i in range(w):
            lane = ir.Constant(ir.IntType(32), i)
            before = b.block
            with b.if_then(b.extract_element(vf.args[1], lane), likely=False):
                y = b.call(scalar, [b.extract_element(vf.args[0], lane)])
                new, then = b.insert_element(acc, y, lane), b.block
            phi = b.phi(vt)
            phi.add_incoming(acc, before)
            phi.add_incoming(new, then)
            acc = phi
        b.ret(acc)
        keep.append(vf)
    if module.globals.get("llvm.used") is not None:  # one already (llvmlite can't extend it)
        for vf in keep:
            vf.linkage = "weak_odr"  # never discarded, merged across modules
        return
    i8p = ir.IntType(8).as_pointer()
    used = ir.GlobalVariable(module, ir.ArrayType(i8p, len(keep)), "llvm.used")
    used.linkage = "appending"
    used.section = "llvm.metadata"
    used.initializer = ir.Constant(used.type.pointee, [vf.bitcast(i8p) for vf in keep])


def _libm_fallback(name):
    @intrinsic
    def call(typingctx, x):
        def cg(context, builder, sig, args):
            module = builder.module
            _define_variants(module, name)
            c = builder.call(_scalar_decl(module, name), args)
            abi = ",".join(f"_ZGV_LLVM_M{w}v_{name}({name}_m{w})" for w in _WIDTHS)
            set.add(c.attributes, f'"vector-function-abi-variant"="{abi}"')  # a string attribute
            return c
        return types.float64(types.float64), cg
    return call


_libm_sin = _libm_fallback("gj_libm_sin")
_libm_cos = _libm_fallback("gj_libm_cos")

_fast = dict(cache=True, fastmath={"contract"}, forceinline=True)
_MAGIC = 6755399441055744.0  # 1.5 * 2^52: adding it rounds to an integer held in the low bits
_LOG2E = 1.4426950408889634
_LN2HI = 0.6931471803691238  # 0x3fe62e42fee00000: 32 bits, so k * _LN2HI is exact
_LN2LO = 1.9082149292705877e-10
_E = tuple(1.0 / math.factorial(i) for i in range(14))
_INVPIO2 = 0.6366197723675814
_PIO2_1 = 1.5707963267341256  # pi/2 = _PIO2_1 + _PIO2_2 + _PIO2_3 + _PIO2_3T; the first three
_PIO2_2 = 6.077100506303966e-11  # have 33 bits, so n * _PIO2_k is exact for |n| < 2^20
_PIO2_3 = 2.0222662487111665e-21
_PIO2_3T = 8.4784276603689e-32
TRIG_BOUND = 2.0 ** 19 * (math.pi / 2)
_S1, _S2, _S3, _S4, _S5, _S6 = (  # fdlibm k_sin.c
    -1.66666666666666324348e-01, 8.33333333332248946124e-03, -1.98412698298579493134e-04,
    2.75573137070700676789e-06, -2.50507602534068634195e-08, 1.58969099521155010221e-10)
_C1, _C2, _C3, _C4, _C5, _C6 = (  # fdlibm k_cos.c
    4.16666666666666019037e-02, -1.38888888888741095749e-03, 2.48015872894767294178e-05,
    -2.75573143513906633035e-07, 2.08757232129817482790e-09, -1.13596475577881948265e-11)


@numba.njit(inline="always", fastmath={"contract"})  # gj_sin/gj_cos's flags
def _trig64(x, shift):
    """sin(x) (shift 0) or cos(x) = sin(x + pi/2) (shift 1) for |x| <= TRIG_BOUND."""
    t = x * _INVPIO2 + _MAGIC
    n = t - _MAGIC
    quadrant = (_bits(t) + shift) & 3
    a = x - n * _PIO2_1  # exact
    w = n * _PIO2_2
    b = a - w
    bb = b - a
    e2 = (a - (b - bb)) + (-w - bb)  # TwoSum: a - w == b + e2 exactly
    w = n * _PIO2_3
    c = b - w
    cc = c - b
    e3 = (b - (c - cc)) + (-w - cc)
    lo = (e2 + e3) - n * _PIO2_3T
    y0 = c + lo  # x - n pi/2 == y0 + y1 (to ~2^-100 relative)
    y1 = (c - y0) + lo
    z = y0 * y0
    v = z * y0
    rs = _S2 + z * (_S3 + z * (_S4 + z * (_S5 + z * _S6)))
    s = y0 - ((z * (0.5 * y1 - v * rs) - y1) - v * _S1)
    zz = z * z
    rc = z * (_C1 + z * (_C2 + z * _C3)) + zz * zz * (_C4 + z * (_C5 + z * _C6))
    hz = 0.5 * z
    w1 = 1.0 - hz
    co = w1 + (((1.0 - w1) - hz) + (z * rc - y0 * y1))
    res = co if (quadrant & 1) != 0 else s
    return -res if (quadrant & 2) != 0 else res


@numba.njit(**_fast)
def gj_exp(x0):
    """exp(x), vectorisable (see the accuracy notes above)."""
    x = np.float64(x0)
    xc = x if x > -750.0 else -750.0  # nan -> -750 here; restored at the end
    xc = xc if xc < 720.0 else 720.0
    t = xc * _LOG2E + _MAGIC
    kf = t - _MAGIC
    k = _bits(t) - _bits(_MAGIC)
    r = (xc - kf * _LN2HI) - kf * _LN2LO
    q = _E[13]
    q = q * r + _E[12]
    q = q * r + _E[11]
    q = q * r + _E[10]
    q = q * r + _E[9]
    q = q * r + _E[8]
    q = q * r + _E[7]
    q = q * r + _E[6]
    q = q * r + _E[5]
    q = q * r + _E[4]
    q = q * r + _E[3]
    q = q * r + _E[2]
    p = 1.0 + (r + (r * r) * q)
    k1 = k >> 1  # 2^k = 2^k1 * 2^k2, both normal: one rounding into subnormals, inf past 2^1024
    y = p * _from_bits((k1 + 1023) << 52) * _from_bits((k - k1 + 1023) << 52)
    return _like(x0, y if x == x else x)


if None in _LIBM.values():  # no libm to send |x| > TRIG_BOUND to: numba's own sin/cos
    @numba.njit(cache=True)
    def gj_sin(x):
        return np.sin(x)

    @numba.njit(cache=True)
    def gj_cos(x):
        return np.cos(x)


@numba.njit(**_fast)
def _gj_sin(x):
    """sin(x), vectorisable for |x| <= TRIG_BOUND, libm beyond."""
    xd = np.float64(x)
    if abs(xd) > TRIG_BOUND:  # inf too (libm: nan); nan takes the fast path (nan)
        return _like(x, _libm_sin(xd))
    r = _trig64(xd, 0)
    return _like(x, xd if xd == 0.0 else r)  # sin(-0) = -0


@numba.njit(**_fast)
def _gj_cos(x):
    """cos(x), vectorisable for |x| <= TRIG_BOUND, libm beyond."""
    xd = np.float64(x)
    if abs(xd) > TRIG_BOUND:
        return _like(x, _libm_cos(xd))
    return _like(x, _trig64(xd, 1))


if None not in _LIBM.values():
    gj_sin, gj_cos = _gj_sin, _gj_cos


# =============================================================================================
# numpy's NaN and signed-zero rules for maxima, minima, sign and mod
# =============================================================================================
# numba's own max/min/np.maximum/np.sign/np.mod differ from numpy at NaN or -0.0. These are
# numpy's loops written out (selects once inlined, so loops still vectorise), compiled with
# IEEE flags of their own like the helpers above. Ties (-0.0 and 0.0) return the second operand,
# as numpy's array loops do (np.maximum(-0.0, 0.0) is 0.0; numpy's scalar fmax returns the first).
# fastmath=False explicitly: a helper without the option inherits its caller's flags.
_ieee = dict(cache=True, error_model="numpy", fastmath=False, forceinline=True)


@numba.njit(**_ieee)
def gj_maximum(a, b):
    """np.maximum: NaN if either is NaN."""
    return a if a > b or a != a else b


@numba.njit(**_ieee)
def gj_minimum(a, b):
    """np.minimum: NaN if either is NaN."""
    return a if a < b or a != a else b


@numba.njit(**_ieee)
def gj_fmax(a, b):
    """np.fmax: a NaN operand is ignored (NaN only if both are)."""
    return a if a > b or b != b else b


@numba.njit(**_ieee)
def gj_fmin(a, b):
    """np.fmin: a NaN operand is ignored (NaN only if both are)."""
    return a if a < b or b != b else b


def _acc_step(float_op, int_op):
    """``acc op x``, a step of a reduction (an intrinsic): ``float_op(builder, x, y)`` for
    floats, ``int_op(builder, x, y, signed)`` for integers, on the operands' common type."""
    @intrinsic
    def step(typingctx, a, b):
        t = typingctx.unify_types(a, b)
        if not isinstance(t, (types.Float, types.Integer)):
            return None

        def cg(context, builder, sig, args):
            x, y = (context.cast(builder, v, ty, t) for v, ty in zip(args, sig.args))
            if isinstance(t, types.Float):
                return float_op(builder, x, y)
            return int_op(builder, x, y, t.signed)
        return t(a, b), cg
    return step


def _llvm(name):
    def op(builder, x, y):
        fnty = ir.FunctionType(x.type, [x.type, x.type])
        return builder.call(builder.module.declare_intrinsic(name, [x.type], fnty), [x, y])
    return op


def _pick(pred):
    def op(builder, x, y, signed):
        cmp = builder.icmp_signed if signed else builder.icmp_unsigned
        return builder.select(cmp(pred, x, y), x, y)
    return op


# Sums and products: the kernels are compiled without 'reassoc' (it lets LLVM regroup any
# expression: (a*b)/c overflows where a*(b/c) does not), so the accumulating instruction alone
# carries it, which is what lets the vectoriser reorder a reduction.
_REASSOC = ("reassoc", "contract")
gj_acc_add = _acc_step(lambda b, x, y: b.fadd(x, y, flags=_REASSOC), lambda b, x, y, s: b.add(x, y))
gj_acc_mul = _acc_step(lambda b, x, y: b.fmul(x, y, flags=_REASSOC), lambda b, x, y, s: b.mul(x, y))
# Maxima and minima: LLVM's maximum/minimum propagate NaN (and order -0.0 below 0.0 whatever
# the order of the elements; numpy's answer there depends on its loop), maxnum/minnum skip
# it; the vectoriser reduces either several lanes at a time (a NaN-propagating compare and
# select chain it cannot: ~8x slower).
gj_acc_max = _acc_step(_llvm("llvm.maximum"), _pick(">"))
gj_acc_min = _acc_step(_llvm("llvm.minimum"), _pick("<"))
gj_acc_fmax = _acc_step(_llvm("llvm.maxnum"), _pick(">"))
gj_acc_fmin = _acc_step(_llvm("llvm.minnum"), _pick("<"))


@numba.njit(**_ieee)
def gj_sign(x):
    """np.sign: sign(-0.0) is 0.0 (numba's is -0.0), sign(nan) is nan; x's type."""
    return _like(x, 1.0 if x > 0 else (-1.0 if x < 0 else (0.0 if x == 0 else np.float64(x))))


@numba.njit(**_ieee)
def gj_mod(a, b):
    """np.mod: a zero result takes the divisor's sign (numba's is always +0.0)."""
    r = np.mod(a, b)
    return r if r != 0 else abs(r) * np.sign(b)

@numba.njit(**_ieee)
def gj_erf(x):
    return _like(x, math.erf(x))


@numba.njit(**_ieee)
def gj_lgamma(x):
    """scipy.special.gammaln: log |Gamma(x)|, inf at the poles."""
    if x == -math.inf:
        return x
    if abs(x) < 2.2250738585072014e-308 or x < 0 and x == math.floor(x):
        return _like(x, math.inf)
    return _like(x, math.lgamma(x))


@numba.njit(cache=True, error_model="numpy")
def _psi(x, order):
    """digamma (order 0) or trigamma (order 1): recurrence to x >= 6, asymptotic series,
    reflection below 0 (as primitives._psi_np)."""
    if x == 0:  # scipy: psi(+0.0) = -inf, psi(-0.0) = inf
        return -math.copysign(math.inf, x) if order == 0 else math.inf
    if x < 0 and x == math.floor(x):
        return math.nan
    z = 1.0 - x if x < 0 else x
    acc = 0.0
    while z < 6:
        acc += -1.0 / z if order == 0 else 1.0 / (z * z)
        z += 1.0
    f = 1.0 / (z * z)
    if order == 0:
        acc += math.log(z) - 0.5 / z - f * (1 / 12 - f * (1 / 120 - f * (1 / 252 - f * (
            1 / 240 - f / 132))))
        return acc - math.pi / math.tan(math.pi * x) if x < 0 else acc
    acc += 1 / z + f / 2 + f / z * (1 / 6 - f * (1 / 30 - f * (1 / 42 - f / 30)))
    return (math.pi / math.sin(math.pi * x)) ** 2 - acc if x < 0 else acc


@numba.njit(**_ieee)
def gj_digamma(x):
    return _like(x, _psi(np.float64(x), 0))


@numba.njit(**_ieee)
def gj_trigamma(x):
    return _like(x, _psi(np.float64(x), 1))


@numba.njit(cache=True)
def gj_argsort_last(x):
    """The stable sorting permutation along the last axis of ``x`` (NaN last): a new array."""
    a = np.ascontiguousarray(x)
    n = a.shape[-1]
    m = a.size // n if n > 0 else 0
    flat = a.reshape((m, n))
    out = np.empty((m, n), np.int64)
    for i in range(m):
        out[i, :] = np.argsort(flat[i], kind="mergesort")
    return out.reshape(a.shape)


__all__ = ["gj_acc_add", "gj_acc_fmax", "gj_acc_fmin", "gj_acc_max", "gj_acc_min",
           "gj_acc_mul", "gj_argsort_last", "gj_cos", "gj_digamma", "gj_erf", "gj_lgamma",
           "gj_trigamma", "gj_cumsum_last", "gj_exp", "gj_fmax", "gj_fmin", "gj_maximum",
           "gj_minimum", "gj_mod", "gj_shares", "gj_sign", "gj_sin", "gj_slicelen", "gj_tape_at",
           "gj_tape_room"]
