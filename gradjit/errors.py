"""Exceptions raised by gradjit. Every user-facing failure is a ``GradjitError``."""

import os


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


def debugging():
    """``GRADJIT_DEBUG`` set (to anything but empty or 0): show gradjit's internals."""
    return os.environ.get("GRADJIT_DEBUG", "0").strip() not in ("", "0")


def surface(e):
    """``e``, a GradjitError about to reach the user, made short: its message already names the
    user's ``file:line`` and the construct, so gradjit's own frames and the internal exceptions
    it was raised while handling are noise. ``surface(e); raise`` at a public entry point then
    shows the user's frames and the message. Under GRADJIT_DEBUG, the opposite: frames kept
    and every chained exception shown, even those raised ``from None``."""
    if debugging():
        x, seen = e, set()
        while x is not None and id(x) not in seen:
            seen.add(id(x))
            x.__suppress_context__ = False
            x = x.__cause__ or x.__context__
        return e
    e.__suppress_context__ = True  # a deliberate ``raise ... from cause`` still shows
    return e.with_traceback(None)
