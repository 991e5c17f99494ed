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


def at(loc, msg):
    """Prefix ``msg`` with the user's ``file:line`` when known."""
    return f"{loc}: {msg}" if loc else msg
