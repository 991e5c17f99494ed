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


# =======================================================================================
# Control flow and higher order (L*, J*): each peer's own spelling, keyed by contestant and
# workload function name. A factory takes the numpy arguments and returns a thunk. Python
# loops of scalar steps cannot be jitted by jax (it would unroll them), so its versions use
# `lax.fori_loop`; torch and autograd run the loop eagerly, as their users do.
# =======================================================================================


def _jax_energy(args):
    jax, jnp = _import("jax")

    def energy(x):
        def body(i, s):
            d = x[i + 1] - x[i]
            return s + d * d + jnp.cos(x[i])

        # A static trip count: reverse mode turns the loop into a scan that stores its carry.
        return jax.lax.fori_loop(0, x.shape[0] - 1, body, 0.0)

    g = jax.jit(jax.grad(energy))
    x = jnp.asarray(args[0])
    return lambda: jax.block_until_ready(g(x))


def _jax_lotka_volterra(args):
    jax, jnp = _import("jax")
    p, y0, dt, steps = args

    def final_state(p, y0, dt):
        def body(_, y):
            u, v = y
            return (u + dt * (p[0] * u - p[1] * u * v), v + dt * (p[2] * u * v - p[3] * v))

        return jnp.stack(jax.lax.fori_loop(0, steps, body, (y0[0], y0[1])))

    jac = jax.jit(jax.jacrev(final_state))
    jp, jy0 = jnp.asarray(p), jnp.asarray(y0)
    return lambda: jax.block_until_ready(jac(jp, jy0, dt))


def _jax_descend(args):
    jax, jnp = _import("jax")
    from benchmarks.workloads import himmelblau

    grad = jax.grad(with_numpy(himmelblau, jnp))

    @jax.jit
    def descend(x, lr, steps):
        return jax.lax.fori_loop(0, steps, lambda _, x: x - lr * grad(x), x)

    x, lr, steps = args
    jx = jnp.asarray(x)
    return lambda: jax.block_until_ready(descend(jx, lr, steps))


def _jax_transform(make):
    """A factory for jax.jit(make(jax, f)) of the workload function f, named by `fn_name`."""

    def factory(fn, args):
        jax, jnp = _import("jax")
        g = jax.jit(make(jax, with_numpy(fn, jnp)))
        jargs = tuple(jnp.asarray(a) for a in args)
        return lambda: jax.block_until_ready(g(*jargs))

    return factory


def _autograd_transform(make):
    def factory(fn, args):
        autograd, anp = _import("autograd")
        g = make(autograd, with_numpy(fn, anp))
        return lambda: g(*args)

    return factory


def _autograd_descend(args):
    autograd, anp = _import("autograd")
    from benchmarks.workloads import himmelblau

    grad = autograd.grad(with_numpy(himmelblau, anp))
    x0, lr, steps = args

    def descend():
        x = x0
        for _ in range(steps):
            x = x - lr * grad(x)
        return x

    return descend


def _torch_lotka_volterra(args):
    (torch,) = _import("torch")
    p, y0, dt, steps = args

    def final_state(p):
        u, v = torch.tensor(y0[0], dtype=torch.float64), torch.tensor(y0[1], dtype=torch.float64)
        for _ in range(steps):
            u, v = u + dt * (p[0] * u - p[1] * u * v), v + dt * (p[2] * u * v - p[3] * v)
        return torch.stack([u, v])

    tp = torch.tensor(p, dtype=torch.float64)
    return lambda: torch.autograd.functional.jacobian(final_state, tp)


def _torch_descend(args):
    (torch,) = _import("torch")
    x0, lr, steps = args

    def descend():
        x = torch.tensor(x0, dtype=torch.float64)
        for _ in range(steps):
            x.requires_grad_(True)
            (g,) = torch.autograd.grad(_torch_himmelblau(torch, x), x)
            x = (x - lr * g).detach()
        return x

    return descend


def _torch_cubic_map(p):
    import torch

    x, y, z = p[0], p[1], p[2]
    return torch.stack([x**3 - y**2, y**2 + z**2, z**3 - x**2])


def _torch_vmap_jacrev(args):
    (torch,) = _import("torch")
    f = torch.func.vmap(torch.func.jacrev(_torch_cubic_map))
    P = torch.tensor(args[0], dtype=torch.float64)
    return lambda: f(P)


def _torch_two_param(p):
    import torch

    return (p[0] + 5 * p[1]) ** 2 + torch.sin(p[0] * p[1])


def _torch_hessian_two_param(args):
    (torch,) = _import("torch")
    p = torch.tensor(args[0], dtype=torch.float64)
    return lambda: torch.autograd.functional.hessian(_torch_two_param, p)


def _torch_hessian_log_density(args):
    (torch,) = _import("torch")
    x, A = (torch.tensor(a, dtype=torch.float64) for a in args)

    def log_density(x):
        return -0.5 * x @ A @ x - 0.25 * torch.sum(x**4)

    return lambda: torch.autograd.functional.hessian(log_density, x)


def _fn_agnostic(factory):
    return lambda fn, args: factory(args)


# contestant -> {workload function name -> factory(fn, args) -> thunk}
SPECIAL = {
    "jax": {
        "energy": _fn_agnostic(_jax_energy),
        "lotka_volterra": _fn_agnostic(_jax_lotka_volterra),
        "descend": _fn_agnostic(_jax_descend),
        "cubic_map": _jax_transform(lambda jax, f: jax.vmap(jax.jacfwd(f))),
        "two_param": _jax_transform(lambda jax, f: jax.hessian(f)),
        "log_density": _jax_transform(lambda jax, f: jax.hessian(f)),
    },
    "jax-rev": {
        "cubic_map": _jax_transform(lambda jax, f: jax.vmap(jax.jacrev(f))),
    },
    "autograd": {
        "lotka_volterra": _autograd_transform(lambda ag, f: ag.jacobian(f)),
        "descend": _fn_agnostic(_autograd_descend),
        "two_param": _autograd_transform(lambda ag, f: ag.hessian(f)),
        "log_density": _autograd_transform(lambda ag, f: ag.hessian(f)),
    },
    "torch": {
        "lotka_volterra": _fn_agnostic(_torch_lotka_volterra),
        "descend": _fn_agnostic(_torch_descend),
        "cubic_map": _fn_agnostic(_torch_vmap_jacrev),
        "two_param": _fn_agnostic(_torch_hessian_two_param),
        "log_density": _fn_agnostic(_torch_hessian_log_density),
    },
}

# Workloads a peer cannot express at all (shown as "n/a", with the reason in the notes).
CANNOT = {
    ("autograd", "energy"): "autograd cannot run L1: each x[i] in a Python loop adds an "
    "n-vector in the backward pass (quadratic in n)",
    ("torch", "energy"): "torch cannot run L1: each x[i] in a Python loop adds an n-vector "
    "in the backward pass (quadratic in n)",
}


def has_special(contestant, fn):
    """Whether the peer has its own spelling of (or cannot express) this workload."""
    key = (contestant, fn.__name__)
    return key in CANNOT or fn.__name__ in SPECIAL.get(contestant, {})


def special(contestant, fn, args):
    """The thunk of `contestant` for a control-flow / higher-order workload."""
    reason = CANNOT.get((contestant, fn.__name__))
    if reason:
        raise Unavailable(reason)
    factory = SPECIAL.get(contestant, {}).get(fn.__name__)
    if factory is None:
        raise LookupError(fn.__name__)
    return factory(fn, args)
