"""Input signatures: what a compiled kernel is specialised on.

An array's key is its dtype and rank plus which of its axes have size 1 (broadcasting
depends on those); other sizes are symbolic, so a new length never recompiles. Layout is
left to numba's own dispatcher, which specialises the same generated function per layout.
"""

from __future__ import annotations

import numpy as np

from ..compiler.avals import SCALARS as _SCALARS
from ..compiler.avals import aval_for
from ..errors import GradjitError
from .device import device_key, is_device_array


def arg_key(x):
    """The cache key of one leaf; cheap, it runs on every call."""
    t = type(x)
    if t is np.ndarray:
        s = x.shape
        return (x.dtype, x.ndim, tuple(d == 1 for d in s) if 1 in s else None)
    if t in _SCALARS:
        return t
    if isinstance(x, np.generic):
        return x.dtype
    if is_device_array(x):  # its own key: never the entry of a numpy array of its dtype
        return device_key(x)
    if isinstance(x, np.ndarray):
        return arg_key(np.asarray(x))
    raise TypeError(f"gradjit cannot take an argument of type {t.__name__}")


def tree_key(args, static, leaf_key=None):
    """(key, leaves) of a call with pytrees or static arguments: per argument its (hashable)
    static value, or its tree structure and the keys of its leaves (``leaf_key``, default
    ``arg_key``)."""
    from ..compiler import pytree
    leaf_key = leaf_key or arg_key
    leaves, parts = [], []
    for k, a in enumerate(args):
        if k in static:
            parts.append(("static", hashable(a)))
            continue
        ls, tree = pytree.flatten(a)
        leaves.extend(ls)
        parts.append((tree, tuple(map(leaf_key, ls))))
    return tuple(parts), leaves


def hashable(a):
    """A static argument, which keys a cache: it must hash."""
    try:
        hash(a)
    except TypeError:
        raise GradjitError(f"static arguments must be hashable, got {type(a).__name__}") from None
    return a


def prepare(x):
    """The value handed to the kernel for a leaf (0-d arrays become numpy scalars)."""
    if type(x) is np.ndarray and x.ndim == 0:
        return x[()]
    return x


_PARSE = {"float64": np.float64, "float32": np.float32, "int64": np.int64, "int32": np.int32,
          "bool": np.bool_, "f8": np.float64, "f4": np.float32, "i8": np.int64, "i4": np.int32,
          "float": float, "int": int}


def examples_from_signature(text):
    """Example arguments for a numba-style signature string, e.g. ``"float64[:], float64"``
    or ``"float32[:, :], int64[:], float"`` (used by the command line)."""
    out = []
    for part in _split(text):
        part = part.strip()
        if not part:
            continue
        name, _, dims = part.partition("[")
        name = name.strip()
        if name not in _PARSE:
            raise GradjitError(f"unknown type '{name}' in signature '{text}'")
        t = _PARSE[name]
        if not dims:
            out.append(t(1.5) if t in (float, np.float64, np.float32) else t(2))
            continue
        rank = dims.rstrip("] ").count(":")
        if rank == 0:
            raise GradjitError(f"cannot read the array type '{part}' (write e.g. float64[:, :])")
        out.append(np.linspace(0.5, 1.5, 3 ** rank).reshape((3,) * rank).astype(t))
    return tuple(out)


def _split(text):
    depth, cur, parts = 0, "", []
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return parts


def describe(leaves):
    """A human-readable signature, e.g. ``float64[:], float64``."""
    parts = []
    for x in leaves:
        a = aval_for(x)
        parts.append(a.dtype + ("[" + ", ".join(":" if d != 1 else "1" for d in a.shape) + "]"
                                if a.shape else ""))
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------
# Tokens: plain-data descriptions of values for the disk cache's manifests
# ---------------------------------------------------------------------------------------------


class Unstorable(Exception):
    """A value the disk cache cannot describe in plain data: no manifest is written for the
    trace that read it (every new process then traces it again)."""


def leaf_token(x):
    """What a trace sees of an argument leaf (or a captured array): its Python type, dtype,
    weak typing and which axes have size 1, as plain data."""
    a = aval_for(x)
    return (type(x).__name__, a.dtype, a.weak, tuple(1 if d == 1 else -1 for d in a.shape))


_PLAIN = (bool, int, float, complex, str, bytes, type(None))
# Extra token rules, by type (the runtime registers its transform objects here).
TOKENS: dict = {}
LIBRARIES = ("numpy", "scipy", "gradjit", "numba", "math", "builtins", "functools", "operator")


def value_token(v, _depth=0):
    """A plain-data description of a value read by a trace, equal exactly when a trace
    would bake in the same thing: numbers by type and repr, arrays by content hash,
    functions by their source. Raises Unstorable for anything else."""
    import types

    t = type(v)
    if _depth > 20:
        raise Unstorable("value nested too deeply")
    if t in _PLAIN:
        return (t.__name__, repr(v))
    if isinstance(v, np.generic):
        return ("np", v.dtype.str, v.tobytes().hex())
    if t is np.ndarray:
        if v.dtype.hasobject:
            raise Unstorable("object array")
        import hashlib

        data = np.ascontiguousarray(v).tobytes()
        return ("nd", v.dtype.str, v.shape, hashlib.sha256(data).hexdigest())
    if t in (tuple, list):
        return (t.__name__, tuple(value_token(x, _depth + 1) for x in v))
    if t is dict:
        items = [(value_token(k, _depth + 1), value_token(x, _depth + 1)) for k, x in v.items()]
        return ("dict", tuple(sorted(items, key=repr)))
    rule = TOKENS.get(t)
    if rule is not None:
        return rule(v)
    if isinstance(v, types.ModuleType):
        return ("module", v.__name__)
    if isinstance(v, np.ufunc):
        return ("ufunc", v.__name__)
    if isinstance(v, types.FunctionType):
        return function_token(v)
    # Classes and other callables run as plain Python during the trace: only library ones
    # (their versions are in the key), not code of the user's that could change unseen.
    if callable(v) and _library(v):
        return ("lib", v.__module__, getattr(v, "__qualname__", repr(v)))
    raise Unstorable(f"a value of type {t.__name__}")


def _library(v):
    mod = getattr(v, "__module__", None)
    return isinstance(mod, str) and mod.split(".")[0] in LIBRARIES


def function_token(fn):
    """A Python function by where it is, its compiled code and its defaults. Its source
    text itself is checked by the manifest (every inlined function's text, at its line)."""
    if _library(fn):
        return ("lib", fn.__module__, fn.__qualname__)
    return ("fn", fn.__module__, fn.__qualname__, code_digest(fn.__code__),
            value_token(fn.__defaults__), value_token(fn.__kwdefaults__))


def code_digest(code):
    """sha256 of a code object's content (bytecode, names, constants, nested code): equal
    for the same source text, cheap (no file is read)."""
    import hashlib

    h = hashlib.sha256()

    def walk(c):
        h.update(c.co_code)
        h.update(repr((c.co_filename, c.co_qualname if hasattr(c, "co_qualname") else c.co_name,
                       c.co_firstlineno, c.co_names, c.co_varnames, c.co_freevars,
                       c.co_cellvars, c.co_argcount, c.co_posonlyargcount,
                       c.co_kwonlyargcount, c.co_flags)).encode())
        # where it is defined, column included: equal code at two places is two functions
        h.update(repr(next((p for p in c.co_positions() if None not in p and (p[1], p[3]) > (p[0], p[2])),
                           None)).encode())
        for k in c.co_consts:
            if hasattr(k, "co_code"):
                walk(k)
            else:
                h.update(repr((type(k).__name__, k)).encode())
    walk(code)
    return h.hexdigest()


def encode_tree(tree):
    """A pytree structure (compiler.pytree) as plain data; ``decode_tree`` inverts it."""
    from ..compiler.pytree import LEAF

    if tree is LEAF:
        return "*"
    if tree is None:
        return None
    kind = tree[0]
    if kind is dict:
        for k in tree[1]:
            value_token(k)  # keys must be plain data
        return ("d", tree[1], tuple(encode_tree(c) for c in tree[2]))
    if kind is tuple or kind is list:
        return ("t" if kind is tuple else "l", tuple(encode_tree(c) for c in tree[1]))
    raise Unstorable(f"a pytree node of type {getattr(kind, '__name__', kind)}")


def decode_tree(enc):
    from ..compiler.pytree import LEAF

    if enc == "*":
        return LEAF
    if enc is None:
        return None
    if enc[0] == "d":
        return (dict, tuple(enc[1]), tuple(decode_tree(c) for c in enc[2]))
    return (tuple if enc[0] == "t" else list, tuple(decode_tree(c) for c in enc[1]))
