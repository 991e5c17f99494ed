"""The benchmark suite: which workloads run, and which contestants run them.

To add a workload, append a `Workload` to `WORKLOADS` (its numpy function and analytic
result in `workloads.py`, its numba kernel in `handwritten.py`, its torch spelling in
`peers.TORCH_FUNCTIONS`, or for a control-flow / higher-order workload the peers' spellings
in `peers.SPECIAL`). To add a contestant, add a factory to `CONTESTANTS`: it takes the case
and its arguments and returns a zero-argument thunk computing the result once (or a
`Scaled` one), or raises `NotApplicable`.
"""

from collections.abc import Callable
from dataclasses import dataclass

from benchmarks import handwritten as hw
from benchmarks import peers
from benchmarks import workloads as wk


class NotApplicable(Exception):
    """The contestant has nothing to run for this case (shown as "-")."""


@dataclass(frozen=True)
class Scaled:
    """A contestant too slow for the full problem: timed on `args` (the same workload with
    `factor` times fewer steps) and its time multiplied by `factor` (the cost is linear in
    the steps). Checked against the reference for `args`."""

    thunk: Callable
    args: tuple
    factor: int


# What gradjit computes for a workload of each kind (gradjit imported only when used).
KINDS = ("grad", "jacobian", "jit", "vmap_jacobian", "hessian", "numba_leapfrog")

SECTIONS = {"W": "core", "L": "control flow", "J": "higher order"}


@dataclass(frozen=True)
class Workload:
    group: str  # what `--only` selects: "W1", "W3a", ...
    title: str
    fn: Callable  # the plain numpy function every autodiff contestant transforms
    make_args: Callable  # size -> argument tuple (size is None for fixed-size workloads)
    numpy_grad: Callable  # the result in numpy (a gradient, or what `kind` computes): the
    #                       `numpy` contestant and the reference every contestant is checked against
    numba_grad: Callable  # the hand-written numba kernel for it: the baseline of every ratio
    argnums: int | tuple = 0
    sizes: tuple = (None,)
    quick_sizes: tuple = (None,)
    # Set: also time the forward pass (gradient/forward ratio table).
    numba_forward: Callable | None = None
    numpy_forward: Callable | None = None  # the forward reference, when `fn` is a slow loop
    # Set: at the largest size, also run gradjit target="parallel" and this prange kernel.
    numba_parallel: Callable | None = None
    kind: str = "grad"  # one of KINDS
    size_name: str = "n"  # in the row label: "n=1e7", "steps=1e5", "d=100"
    time_numpy: bool = True  # False: the numpy reference is a Python loop, not a contestant
    scaled: tuple = ()  # (contestant, factor): timed on size // factor, see `Scaled`
    per_call: int = 1  # times are divided by this (J4: per leapfrog step, not per trajectory)
    rtol: float = 1e-6

    @property
    def section(self):
        return SECTIONS[self.group[0]]


@dataclass(frozen=True)
class Case:
    """One row: a workload at one size."""

    workload: Workload
    size: int | None
    parallel: bool

    @property
    def label(self):
        if self.size is None:
            return self.workload.group
        k = len(str(self.size)) - 1
        n = f"1e{k}" if self.size == 10**k and k > 2 else str(self.size)
        return f"{self.workload.group} {self.workload.size_name}={n}"

    def args(self):
        return self.workload.make_args(self.size)


WORKLOADS = [
    Workload(
        "W1",
        "d/dx (x**2 + x**3 + 5) at a float",
        wk.poly,
        lambda n: (wk.poly_input(),),
        wk.poly_grad,
        hw.poly_grad,
    ),
    Workload(
        "W2",
        "Himmelblau gradient at a 2-vector",
        wk.himmelblau,
        lambda n: (wk.himmelblau_input(),),
        wk.himmelblau_grad,
        hw.himmelblau_grad,
    ),
    Workload(
        "W3a",
        "grad of np.sum(x**2 + x**3 + 5)",
        wk.poly_sum,
        lambda n: (wk.vector_input(n),),
        wk.poly_sum_grad,
        hw.poly_sum_grad,
        sizes=(10**6, 10**7),
        quick_sizes=(10**5, 10**6),
        numba_forward=hw.poly_sum,
        numba_parallel=hw.poly_sum_grad_par,
    ),
    Workload(
        "W3b",
        "grad of np.sum(np.sin(x) * np.exp(-x * x))",
        wk.sin_exp_sum,
        lambda n: (wk.vector_input(n),),
        wk.sin_exp_sum_grad,
        hw.sin_exp_sum_grad,
        sizes=(10**6, 10**7),
        quick_sizes=(10**5, 10**6),
        numba_forward=hw.sin_exp_sum,
        numba_parallel=hw.sin_exp_sum_grad_par,
    ),
    Workload(
        "W4",
        "linear-model MSE, grad w.r.t. (w, b), X: n x 16",
        wk.mse,
        wk.linear_inputs,
        wk.mse_grad,
        hw.mse_grad,
        argnums=(0, 1),
        sizes=(10**6,),
        quick_sizes=(10**5,),
        numba_forward=hw.mse,
    ),
    Workload(
        "W5",
        "softmax cross-entropy, grad w.r.t. W (32 x 10), X: n x 32",
        wk.softmax_xent,
        wk.softmax_inputs,
        wk.softmax_xent_grad,
        hw.softmax_xent_grad,
        sizes=(10**5,),
        quick_sizes=(10**4,),
    ),
    # -- control flow ----------------------------------------------------------------------
    Workload(
        "L1",
        "grad of the `energy` element loop: s += (x[i+1]-x[i])**2 + cos(x[i])",
        wk.energy,
        lambda n: (wk.vector_input(n),),
        wk.energy_grad,
        hw.energy_grad,
        sizes=(10**7,),
        quick_sizes=(10**5,),
        numba_forward=hw.energy,
        numpy_forward=wk.energy_numpy,
    ),
    Workload(
        "L2",
        "Euler-integrated Lotka-Volterra, d(final state)/d(4 parameters): a loop carrying (u, v)",
        wk.lotka_volterra,
        wk.lotka_volterra_inputs,
        wk.lotka_volterra_jacobian,
        hw.lotka_volterra_jacobian,
        kind="jacobian",
        size_name="steps",
        sizes=(10**5,),
        quick_sizes=(10**4,),
        time_numpy=False,
        scaled=(("autograd", 1000), ("torch", 1000)),
    ),
    Workload(
        "L3",
        "Himmelblau gradient descent, lr=0.001, as one call (gj.jit; jax: lax.fori_loop)",
        wk.descend,
        wk.descend_inputs,
        wk.descend_reference,
        hw.descend,
        kind="jit",
        size_name="steps",
        sizes=(30000,),
        quick_sizes=(30000,),
        time_numpy=False,
        scaled=(("autograd", 100), ("torch", 100)),
    ),
    # -- higher order ----------------------------------------------------------------------
    Workload(
        "J1",
        "batched 3x3 Jacobians of [x^3-y^2, y^2+z^2, z^3-x^2] at N points: vmap(jacobian)",
        wk.cubic_map,
        wk.points,
        wk.cubic_map_jacobians,
        hw.cubic_map_jacobians,
        kind="vmap_jacobian",
        size_name="N",
        sizes=(1000, 10**6),
        quick_sizes=(1000, 10**5),
        numba_parallel=hw.cubic_map_jacobians_par,
    ),
    Workload(
        "J2",
        "Hessian of f(x, w) = (x + 5w)^2 + sin(x w), one 2x2 per call",
        wk.two_param,
        wk.two_param_input,
        wk.two_param_hessian,
        hw.two_param_hessian,
        kind="hessian",
    ),
    Workload(
        "J3",
        "Hessian of the log-density -x.A.x/2 - sum(x^4)/4 in d dimensions",
        wk.log_density,
        wk.log_density_inputs,
        wk.log_density_hessian,
        hw.log_density_hessian,
        kind="hessian",
        size_name="d",
        sizes=(100,),
        quick_sizes=(100,),
    ),
    Workload(
        "J4",
        f"leapfrog (HMC) trajectory in the user's @njit loop calling the gradient of the J3 "
        f"log-density; time per step ({wk.HMC_STEPS} steps per call)",
        wk.log_density,
        wk.leapfrog_inputs,
        wk.leapfrog_reference,
        hw.leapfrog,
        kind="numba_leapfrog",
        size_name="d",
        sizes=(2, 100),
        quick_sizes=(2, 100),
        time_numpy=False,
        per_call=wk.HMC_STEPS,
    ),
]


def cases(quick=False, only=None):
    for wl in WORKLOADS:
        if only and wl.group not in only:
            continue
        sizes = wl.quick_sizes if quick else wl.sizes
        for size in sizes:
            yield Case(wl, size, wl.numba_parallel is not None and size == max(sizes))


# ---------------------------------------------------------------------------------------
# Contestants: name -> factory(case, args) -> thunk
# ---------------------------------------------------------------------------------------


def _gradjit_transform(wl, target=None):
    """What gradjit compiles for a workload of this kind (not for numba_leapfrog)."""
    import gradjit as gj

    opts = {} if target is None else {"target": target}
    if wl.kind == "grad":
        return gj.grad(wl.fn, argnums=wl.argnums, **opts)
    if wl.kind == "jacobian":
        return gj.jacobian(wl.fn, argnums=wl.argnums, **opts)
    if wl.kind == "hessian":
        return gj.hessian(wl.fn, argnums=wl.argnums, **opts)
    if wl.kind == "jit":
        return gj.jit(wl.fn, **opts)
    if wl.kind == "vmap_jacobian":
        return gj.vmap(gj.jacobian(wl.fn), **opts)
    raise ValueError(wl.kind)


def _gradjit(case, args, target=None):
    wl = case.workload
    if wl.kind == "numba_leapfrog":
        import gradjit as gj

        # The user's @njit loop calls gradjit's kernel for the gradient of the log-density.
        x, _, A, _, _ = args
        leapfrog = hw.make_leapfrog(gj.grad(wl.fn).numba(x, A))
        return lambda: leapfrog(*args)
    f = _gradjit_transform(wl, target)
    return lambda: f(*args)


def _gradjit_parallel(case, args):
    if not case.parallel:
        raise NotApplicable
    return _gradjit(case, args, target="parallel")


def _numba_parallel(case, args):
    if not case.parallel:
        raise NotApplicable
    kernel = case.workload.numba_parallel
    return lambda: kernel(*args)


def _fixed(attr):
    def factory(case, args):
        f = getattr(case.workload, attr)
        return lambda: f(*args)

    return factory


def _numpy(case, args):
    if not case.workload.time_numpy:
        raise NotApplicable
    return _fixed("numpy_grad")(case, args)


def _peer(name, grad_factory=None):
    """A peer framework: its generic gradient for "grad" workloads, its own spelling from
    `peers.SPECIAL` for the others ("-" where it has none)."""

    def factory(case, args):
        wl = case.workload
        if wl.kind == "numba_leapfrog":  # the user's numba code calling a gradient: no peer
            raise NotApplicable
        if wl.kind == "grad" and not peers.has_special(name, wl.fn):
            if grad_factory is None:
                raise NotApplicable
            return grad_factory(wl, args)
        factor = dict(wl.scaled).get(name)
        small = args if factor is None else wl.make_args(case.size // factor)
        try:
            thunk = peers.special(name, wl.fn, small)
        except LookupError:
            raise NotApplicable from None
        return thunk if factor is None else Scaled(thunk, small, factor)

    return factory


CONTESTANTS = {
    "gradjit": _gradjit,
    "gradjit-par": _gradjit_parallel,
    "numba": _fixed("numba_grad"),
    "numba-par": _numba_parallel,
    "numpy": _numpy,
    "jax": _peer("jax", peers.jax_grad),
    "jax-rev": _peer("jax-rev"),
    "autograd": _peer("autograd", peers.autograd_grad),
    "torch": _peer("torch", peers.torch_grad),
}
BASELINE = "numba"


def _gradjit_forward(case, args):
    import gradjit as gj

    f = gj.jit(case.workload.fn)
    return lambda: f(*args)


def _numba_forward(case, args):
    f = case.workload.numba_forward
    return lambda: f(*args)


def _numpy_forward(case, args):
    wl = case.workload
    if wl.numpy_forward is not None:  # `fn` itself is a Python loop over the elements
        return lambda: wl.numpy_forward(*args)
    if wl.kind != "grad":
        raise NotApplicable
    return _fixed("fn")(case, args)


def _jax_forward(case, args):
    if case.workload.kind != "grad" or peers.has_special("jax", case.workload.fn):
        raise NotApplicable  # a Python loop: jax.jit would unroll it
    return peers.jax_forward(case.workload, args)


# Forward passes, timed alongside the gradients for the gradient/forward ratio.
FORWARD = {
    "gradjit": _gradjit_forward,
    "numba": _numba_forward,
    "numpy": _numpy_forward,
    "jax": _jax_forward,
}


def reference(case, args, forward=False):
    """The expected result: the numpy function, or its analytic gradient (Jacobian, ...)."""
    wl = case.workload
    if forward:
        return (wl.numpy_forward or wl.fn)(*args)
    return wl.numpy_grad(*args)
