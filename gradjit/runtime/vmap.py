"""``gj.vmap``'s function object: ``fun`` mapped over axes of its arguments. The batching
itself is a graph transform of the compiler (compiler/batching.py)."""

from __future__ import annotations

import numpy as np

from ..compiler.batching import vmap_call
from ..errors import TraceError


class Batched:
    """``fun`` mapped over axes of its arguments; traced code calls it through ``_gj_inline``,
    and ``gj.vmap`` compiles it as a ``Transformed`` of kind ``"vmap"``."""

    def __init__(self, fun, in_axes=0, out_axes=0):
        if not callable(fun):
            raise TypeError(f"gradjit transforms take a function, not {type(fun).__name__}")
        if isinstance(in_axes, list):
            in_axes = tuple(in_axes)
        for what, spec in (("in_axes", in_axes), ("out_axes", out_axes)):
            if not (spec is None or isinstance(spec, (int, np.integer, tuple, list, dict))) \
                    or isinstance(spec, bool):
                raise TypeError(f"vmap {what} must be an int, None, or a tuple of them, not "
                                f"{type(spec).__name__}")
        self.fun = fun
        self.in_axes = in_axes
        self.out_axes = out_axes
        self.__name__ = getattr(fun, "__name__", "vmapped")
        self.__qualname__ = getattr(fun, "__qualname__", self.__name__)
        self.__module__ = getattr(fun, "__module__", None)
        self.__doc__ = getattr(fun, "__doc__", None)
        code = getattr(fun, "__code__", None) or getattr(getattr(fun, "fun", None), "__code__", None)
        if code is not None:
            self.__code__ = code

    def __repr__(self):
        return f"<vmap of {self.__qualname__}>"

    def __call__(self, *args):
        if getattr(self, "_compiled", None) is None:
            from .dispatch import Transformed
            self._compiled = Transformed(self, "vmap")
        return self._compiled(*args)

    def _gj_inline(self, interp, args, kwargs):
        if kwargs:
            raise TraceError(f"{interp.loc}: keyword arguments to a gradjit transform are not supported")
        return vmap_call(self.fun, args, self.in_axes, self.out_axes, interp)
