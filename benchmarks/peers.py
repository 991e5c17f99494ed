"""Peer frameworks: jax, autograd and torch, each imported only when installed.

Every factory takes a Workload and its numpy arguments and returns a zero-argument thunk
that computes the gradient once (everything that can be prepared once, is: jitting,
converting inputs). A factory raises `Unavailable` when its framework is not importable,
which the table shows as "n/a".
"""

import functools
import types

import numpy as np


class Unavailable(Exception):
    """This contestant does not apply (framework missing, no kernel for this workload)."""


@functools.cache
def _import(name):
    try:
        if name == "jax":
            import jax

            jax.config.update("jax_enable_x64", True)
            import jax.numpy as jnp

            return jax, jnp
        if name == "autograd":
            import autograd
            import autograd.numpy as anp

            return autograd, anp
        if name == "torch":
            import torch

            torch.set_num_threads(1)
            return (torch,)
    except ImportError as e:
        raise Unavailable(f"{name} not installed") from e
    raise ValueError(name)


def version(name):
    """The installed version of a peer, or None."""
    try:
        _import(name)
    except Unavailable:
        return None
    from importlib.metadata import version as dist_version

    return dist_version(name)


def with_numpy(fn, module):
    """`fn` with its global `np` rebound to `module` (jax.numpy, autograd.numpy), so the
    peers differentiate literally the same source that gradjit gets."""
    glb = dict(fn.__globals__, np=module)
    return types.FunctionType(fn.__code__, glb, fn.__name__, fn.__defaults__, fn.__closure__)


def _argnums(wl):
    return wl.argnums if isinstance(wl.argnums, tuple) else (wl.argnums,)


# ---------------------------------------------------------------------------------------
# jax: jax.jit(jax.grad(f)), inputs converted to device arrays once
# ---------------------------------------------------------------------------------------


def jax_grad(wl, args):
    jax, jnp = _import("jax")
    g = jax.jit(jax.grad(with_numpy(wl.fn, jnp), argnums=wl.argnums))
    jargs = tuple(jnp.asarray(a) for a in args)
    return lambda: jax.block_until_ready(g(*jargs))


def jax_forward(wl, args):
    jax, jnp = _import("jax")
    f = jax.jit(with_numpy(wl.fn, jnp))
    jargs = tuple(jnp.asarray(a) for a in args)
    return lambda: jax.block_until_ready(f(*jargs))


# ---------------------------------------------------------------------------------------
# autograd: traced eagerly on every call, as autograd always is
# ---------------------------------------------------------------------------------------


def autograd_grad(wl, args):
    autograd, anp = _import("autograd")
    g = autograd.grad(with_numpy(wl.fn, anp), argnum=wl.argnums)
    return lambda: g(*args)


# ---------------------------------------------------------------------------------------
# torch: eager autograd on CPU, one thread, float64 leaves created once
# ---------------------------------------------------------------------------------------


def _torch_poly(torch, x):
    return x**2 + x**3 + 5


def _torch_himmelblau(torch, x):
    return (x[0] ** 2 + x[1] - 11) ** 2 + (x[0] + x[1] ** 2 - 7) ** 2


def _torch_poly_sum(torch, x):
    return torch.sum(x**2 + x**3 + 5)


def _torch_sin_exp_sum(torch, x):
    return torch.sum(torch.sin(x) * torch.exp(-x * x))


def _torch_mse(torch, w, b, X, y):
    return torch.mean((X @ w + b - y) ** 2)


def _torch_softmax_xent(torch, W, X, y):
    z = X @ W
    m = torch.amax(z, dim=1, keepdim=True)
    logp = z - m - torch.log(torch.sum(torch.exp(z - m), dim=1, keepdim=True))
    return -torch.mean(logp[torch.arange(X.shape[0]), y])


# Keyed by the workload function's name: the torch spelling of the same computation.
TORCH_FUNCTIONS = {
    "poly": _torch_poly,
    "himmelblau": _torch_himmelblau,
    "poly_sum": _torch_poly_sum,
    "sin_exp_sum": _torch_sin_exp_sum,
    "mse": _torch_mse,
    "softmax_xent": _torch_softmax_xent,
}


def torch_grad(wl, args):
    (torch,) = _import("torch")
    f = TORCH_FUNCTIONS.get(wl.fn.__name__)
    if f is None:
        raise Unavailable(f"no torch version of {wl.fn.__name__}")
    wrt = _argnums(wl)
    targs = [
        torch.tensor(a, dtype=torch.float64, requires_grad=i in wrt)
        if i in wrt or np.asarray(a).dtype.kind == "f"
        else torch.from_numpy(np.asarray(a))
        for i, a in enumerate(args)
    ]
    leaves = [targs[i] for i in wrt]

    def thunk():
        grads = torch.autograd.grad(f(torch, *targs), leaves)
        return grads if isinstance(wl.argnums, tuple) else grads[0]

    return thunk
