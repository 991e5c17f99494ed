"""The benchmark suite: which workloads run, and which contestants run them.

To add a workload, append a `Workload` to `WORKLOADS` (its numpy function and analytic
gradient in `workloads.py`, its numba kernel in `handwritten.py`, its torch spelling in
`peers.TORCH_FUNCTIONS`). To add a contestant, add a factory to `CONTESTANTS`: it takes the
workload and its arguments and returns a zero-argument thunk computing one gradient, or
raises `NotApplicable`.
"""

from collections.abc import Callable
from dataclasses import dataclass

from benchmarks import handwritten as hw
from benchmarks import peers
from benchmarks import workloads as wk


class NotApplicable(Exception):
    """The contestant has nothing to run for this case (shown as "-")."""


@dataclass(frozen=True)
class Workload:
    group: str  # what `--only` selects: "W1", "W3a", ...
    title: str
    fn: Callable  # the plain numpy function every autodiff contestant differentiates
    make_args: Callable  # size -> argument tuple (size is None for fixed-size workloads)
    numpy_grad: Callable  # analytic gradient in numpy: the `numpy` contestant and reference
    numba_grad: Callable  # hand-written numba kernel: the baseline of every ratio
    argnums: int | tuple = 0
    sizes: tuple = (None,)
    quick_sizes: tuple = (None,)
    # Set: also time the forward pass (gradient/forward ratio table).
    numba_forward: Callable | None = None
    # Set: at the largest size, also run gradjit target="parallel" and this prange kernel.
    numba_parallel: Callable | None = None


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
        n = f"1e{k}" if self.size == 10**k else str(self.size)
        return f"{self.workload.group} n={n}"

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


def _gradjit_grad(case, args, target=None):
    import gradjit as gj

    options = {} if target is None else {"target": target}
    g = gj.grad(case.workload.fn, argnums=case.workload.argnums, **options)
    return lambda: g(*args)


def _gradjit_parallel(case, args):
    if not case.parallel:
        raise NotApplicable
    return _gradjit_grad(case, args, target="parallel")


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


def _peer(factory):
    return lambda case, args: factory(case.workload, args)


CONTESTANTS = {
    "gradjit": _gradjit_grad,
    "gradjit-par": _gradjit_parallel,
    "numba": _fixed("numba_grad"),
    "numba-par": _numba_parallel,
    "numpy": _fixed("numpy_grad"),
    "jax": _peer(peers.jax_grad),
    "autograd": _peer(peers.autograd_grad),
    "torch": _peer(peers.torch_grad),
}
BASELINE = "numba"


def _gradjit_forward(case, args):
    import gradjit as gj

    f = gj.jit(case.workload.fn)
    return lambda: f(*args)


def _numba_forward(case, args):
    f = case.workload.numba_forward
    return lambda: f(*args)


# Forward passes, timed alongside the gradients for the gradient/forward ratio.
FORWARD = {
    "gradjit": _gradjit_forward,
    "numba": _numba_forward,
    "numpy": _fixed("fn"),
    "jax": _peer(peers.jax_forward),
}


def reference(case, args, forward=False):
    """The expected result: the numpy function, or its analytic gradient."""
    wl = case.workload
    return (wl.fn if forward else wl.numpy_grad)(*args)
