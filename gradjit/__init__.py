"""gradjit: gradients of plain numpy functions, compiled with numba.

    import numpy as np, gradjit as gj

    @gj.grad
    def f(x):
        return np.sum(x**2 + x**3 + 5)
"""

__version__ = "0.1.0"

from .errors import GradjitError, IndexOutOfBounds, ShapeError, TraceError  # noqa: E402
from .runtime.check import CheckFailed, config  # noqa: E402
from .compiler.custom import custom_vjp  # noqa: E402
from .compiler.checkpoint import checkpoint  # noqa: E402
from .api import (  # noqa: E402
    cache_info, clear_cache, grad, hessian, jacfwd, jacobian, jit, jvp, stop_gradient,
    value_and_grad, vjp, vmap,
)

__all__ = ["grad", "value_and_grad", "vjp", "jit", "jacobian", "hessian", "vmap", "stop_gradient",
           "custom_vjp", "jvp", "jacfwd", "checkpoint",
           "cache_info", "clear_cache", "config", "CheckFailed", "GradjitError", "TraceError", "ShapeError", "IndexOutOfBounds",
           "__version__"]
