"""Exceptions raised by gradjit. Every user-facing failure is a ``GradjitError``."""


class GradjitError(Exception):
    """Base class of every error gradjit raises on purpose."""


class TraceError(GradjitError):
    """An unsupported construct or operation in a traced function (names the user's file:line)."""


class ShapeError(GradjitError, ValueError):
    """Operand shapes that cannot work together (names the shapes and the user's line)."""


class IndexOutOfBounds(GradjitError, IndexError):
    """An index (known only at run time, or into an axis whose size is) outside its axis."""


class SizeFallback(GradjitError):
    """Raised by a kernel's size-specialised entry point when the arguments have other sizes:
    the runtime then switches to the general version (compiled only when first needed)."""


class UnitAxis(GradjitError, ValueError):
    """Raised by a kernel given an axis of size 1 where it was compiled for other sizes: unit
    axes are part of the signature (a 1 broadcasts), so the runtime then looks up the
    signature with that 1. numba code calling a ``.numba()`` kernel sees it."""


def at(loc, msg):
    """Prefix ``msg`` with the user's ``file:line`` when known."""
    return f"{loc}: {msg}" if loc else msg
