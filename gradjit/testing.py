"""Test helpers: gradients against finite differences, compiled results against numpy and
against the IR's reference evaluator (``compiler/reference.py``).

    from gradjit.testing import check_grads
    check_grads(f, (x, w), order=1)

``check_grads`` follows autograd's and JAX's: for random directions ``v`` it compares the
reverse-mode directional derivative ``<grad f(x), v>`` with the central difference
``(f(x + eps v) - f(x - eps v)) / (2 eps)``. The finite differences are always taken in
float64 with plain numpy (``f`` is a plain numpy function), so float32 gradients are checked
against an accurate reference with a float32 tolerance. ``order=2`` checks the gradient of
the directional derivative ``x -> <grad f(x), v>`` the same way (``gj.grad`` of a function
that calls ``gj.grad``).
"""

from __future__ import annotations

import numpy as np

from .compiler import pytree

__all__ = [
    "assert_grads_close",
    "check_grads",
    "check_jit",
    "default_tolerance",
    "numerical_directional",
    "reference_outputs",
    "reference_transform",
]

_TOL = {  # dtype -> (atol, rtol) of a directional derivative against central differences
    "float64": (1e-7, 1e-5),
    "float32": (2e-4, 2e-3),
}


def default_tolerance(dtype):
    return _TOL.get(np.dtype(dtype).name, _TOL["float64"])


def _is_float_leaf(x):
    if isinstance(x, bool):
        return False
    if isinstance(x, float):
        return True
    return np.asarray(x).dtype.kind == "f"


def _leaf_dtype(x):
    if isinstance(x, float):
        return "float64"
    return np.asarray(x).dtype.name


def _to64(x):
    """A leaf as float64 for finite differences (Python floats stay floats, ints stay)."""
    if isinstance(x, (bool, int, float)) or not _is_float_leaf(x):
        return x
    a = np.asarray(x, dtype=np.float64)
    return a if np.ndim(x) else a[()] if not isinstance(x, np.ndarray) else a


def _direction(x, rng):
    shape = np.shape(x)
    v = rng.standard_normal(shape)
    return v if shape else float(v)


def _shift(x, v, eps):
    if isinstance(x, float):
        return x + eps * v
    return np.asarray(x, dtype=np.float64) + eps * np.asarray(v)


def _tree_shift(args, argnums, dirs, eps):
    out = list(args)
    for n, d in zip(argnums, dirs):
        leaves, tree = pytree.flatten(args[n])
        out[n] = pytree.unflatten(tree, [_shift(_to64(x), v, eps) for x, v in zip(leaves, d)])
    return out


def _as64_args(args, argnums):
    out = list(args)
    for n in argnums:
        leaves, tree = pytree.flatten(args[n])
        out[n] = pytree.unflatten(tree, [_to64(x) for x in leaves])
    return out


def numerical_directional(f, args, argnums, dirs, eps):
    """Central difference of ``f`` along ``dirs`` (one list of leaf directions per argnum)."""
    plus = f(*_tree_shift(args, argnums, dirs, eps))
    minus = f(*_tree_shift(args, argnums, dirs, -eps))
    return (np.float64(plus) - np.float64(minus)) / (2 * eps)


def _float_argnums(args):
    nums = []
    for k, a in enumerate(args):
        leaves, _ = pytree.flatten(a)
        if leaves and all(_is_float_leaf(x) for x in leaves):
            nums.append(k)
    return tuple(nums)


def assert_grads_close(f, args, argnums, grads, atol, rtol, eps=1e-5, rng=None, n_dirs=2,
                       what="reverse mode"):
    """Assert that ``grads`` (one pytree per entry of ``argnums``) are the gradient of the
    scalar function ``f`` at ``args``, along ``n_dirs`` random directions."""
    rng = np.random.default_rng(0) if rng is None else rng
    leaves_per = [pytree.flatten(args[n])[0] for n in argnums]
    for _ in range(n_dirs):
        dirs = [[_direction(x, rng) for x in ls] for ls in leaves_per]
        ad = 0.0
        scale = 0.0
        for g, d in zip(grads, dirs):
            for gx, v in zip(pytree.flatten(g)[0], d):
                prod = np.asarray(gx, dtype=np.float64) * np.asarray(v)
                ad += float(np.sum(prod))
                scale += float(np.sum(np.abs(prod)))
        fd = float(numerical_directional(f, _as64_args(args, argnums), argnums, dirs, eps))
        if not abs(ad - fd) <= atol + rtol * max(scale, abs(fd)):
            raise AssertionError(
                f"gradient check failed: {what} gives {ad!r} along a random direction, "
                f"central differences {fd!r} (|diff| {abs(ad - fd):.3g} > atol {atol} + "
                f"rtol {rtol} * {max(scale, abs(fd)):.3g})")


def check_grads(f, args, order=1, atol=None, rtol=None, eps=1e-5, argnums=None, seed=0,
                n_dirs=2, check_dtypes=True):
    """Assert that ``gj.grad(f)`` matches central finite differences at ``args``.

    ``f`` must return a scalar. ``argnums`` defaults to every argument whose leaves are all
    floats. Tolerances default by the lowest-precision dtype among the differentiated
    leaves (float32 is checked more loosely). ``order=2`` also checks second derivatives
    (the gradient of ``x -> <grad f(x), v>``)."""
    import gradjit as gj

    args = tuple(args)
    if argnums is None:
        argnums = _float_argnums(args)
    elif isinstance(argnums, int):
        argnums = (argnums,)
    argnums = tuple(argnums)
    if not argnums:
        raise ValueError("check_grads: no float argument to differentiate")
    if order not in (1, 2):
        raise ValueError("check_grads: order must be 1 or 2")
    leaves_per = [pytree.flatten(args[n])[0] for n in argnums]
    dtypes = {_leaf_dtype(x) for ls in leaves_per for x in ls}
    d_atol, d_rtol = default_tolerance("float32" if "float32" in dtypes else "float64")
    atol = d_atol if atol is None else atol
    rtol = d_rtol if rtol is None else rtol
    rng = np.random.default_rng(seed)

    grads = gj.grad(f, argnums=argnums)(*args)
    if len(grads) != len(argnums):
        raise AssertionError(f"grad returned {len(grads)} gradients for argnums={argnums}")
    for n, g, ls in zip(argnums, grads, leaves_per):
        g_leaves, g_tree = pytree.flatten(g)
        if g_tree != pytree.flatten(args[n])[1]:
            raise AssertionError(f"the gradient of argument {n} has structure {g_tree}, "
                                 f"its argument {pytree.flatten(args[n])[1]}")
        for x, gx in zip(ls, g_leaves):
            if np.shape(gx) != np.shape(x):
                raise AssertionError(f"the gradient of argument {n} has shape {np.shape(gx)}, "
                                     f"the argument {np.shape(x)}")
            if check_dtypes and isinstance(x, np.ndarray | np.generic) \
                    and np.asarray(gx).dtype != np.asarray(x).dtype:
                raise AssertionError(f"the gradient of argument {n} has dtype "
                                     f"{np.asarray(gx).dtype}, the argument {np.asarray(x).dtype}")
            if not np.all(np.isfinite(gx)):
                raise AssertionError(f"the gradient of argument {n} is not finite: {gx}")

    assert_grads_close(f, args, argnums, grads, atol=atol, rtol=rtol, eps=eps, rng=rng,
                       n_dirs=n_dirs)

    if order == 2:
        if any(len(ls) != 1 or isinstance(args[n], (tuple, list, dict))
               for n, ls in zip(argnums, leaves_per)):
            raise ValueError("check_grads(order=2) takes array or scalar arguments, not pytrees")
        gf = gj.grad(f, argnums=argnums)
        dirs = tuple(_direction(ls[0], rng) for ls in leaves_per)
        n_args = len(args)

        def directional(*a):  # x -> <grad f(x), v>, itself differentiated by gj.grad
            gs = gf(*a[:n_args])
            total = 0.0
            for k in range(len(gs)):
                total = total + np.sum(gs[k] * a[n_args + k])
            return total

        check_grads(directional, args + dirs, order=1, atol=atol * 10, rtol=rtol * 10,
                    eps=eps, argnums=argnums, seed=seed + 1, n_dirs=n_dirs,
                    check_dtypes=check_dtypes)


def check_jit(fn, args, atol=None, rtol=None):
    """Assert that ``gj.jit(fn)`` gives numpy's results (values, shapes and dtypes)."""
    import gradjit as gj

    want = fn(*args)
    got = gj.jit(fn)(*args)
    _assert_tree_close(got, want, atol, rtol, "gj.jit")
    return got


def _assert_tree_close(got, want, atol, rtol, what):
    gl, gt = pytree.flatten(got)
    wl, wt = pytree.flatten(want)
    if gt != wt:
        raise AssertionError(f"{what}: result structure {gt}, numpy's {wt}")
    for g, w in zip(gl, wl):
        w = np.asarray(w)
        g = np.asarray(g)
        dt = w.dtype.name
        a, r = default_tolerance(dt)
        a = a if atol is None else atol
        r = r if rtol is None else rtol
        if g.shape != w.shape:
            raise AssertionError(f"{what}: shape {g.shape}, numpy gives {w.shape}")
        if w.dtype.kind == "f" and g.dtype != w.dtype:
            raise AssertionError(f"{what}: dtype {g.dtype}, numpy gives {w.dtype}")
        np.testing.assert_allclose(g, w, atol=a, rtol=r, err_msg=what)


def reference_outputs(fn, args):
    """``fn`` traced and run by the reference evaluator (no compilation): a list of leaves."""
    from .compiler.reference import evaluate
    from .compiler.transforms import trace

    traced = trace(fn, tuple(args))
    leaves = [x for a in args for x in pytree.flatten(a)[0]]
    caps = [c.get() for c in traced.captures]
    outs = evaluate(traced.graph, *leaves, *caps, check=True)
    return pytree.unflatten(traced.out_tree, outs)


def reference_transform(transform, args, optimized=True):
    """The outputs of a transform (``gj.grad(f)``, ``gj.jit(f)``, ...) computed by the
    reference evaluator on its transformed (or optimised) graph: the compiled kernel's
    oracle, independent of the code generator. Returns the flat list of kernel outputs."""
    from .compiler.reference import evaluate

    low = transform.lower(*args)
    g = low.optimized if optimized else low.transformed
    leaves = [x for a in args for x in pytree.flatten(a)[0]]
    caps = [c.get() for c in low.traced.captures]
    return evaluate(g, *leaves, *caps, check=True)
