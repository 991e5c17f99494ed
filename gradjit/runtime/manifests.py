"""Manifests: disk-cache hits in a new process without tracing.

The disk entry's key hashes the generated source, known only after tracing. A manifest,
stored under a key computable before tracing (function, transform, options, argument
signature, versions), records what the trace depended on: the source text of every
function it inlined, the values of the globals/closure cells/attributes it guarded and how
to find them again, the arrays it reads at every call, and how to assemble the results. A
process whose checks all hold imports the entry's kernel and builds the Entry without
tracing.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time

import numpy as np

from ..compiler import frontend, pytree
from ..compiler.transforms import assembler
from ..errors import GradjitError
from .entry import make_entry
from .loader import capi_needed, entry_point, mark_used, numba_compile, numba_load, out_examples, preload_capi
from .signature import (LIBRARIES, Unstorable, decode_tree, encode_tree, leaf_token, prepare,
                        value_token)
from .state import DEBUG, disk_cache, stats


MANIFEST_FORMAT = 2


def transformed_token(tf):
    return ("tf", tf.kind, value_token(tf.argnums), bool(tf.has_aux),
            value_token(tf.static_argnums), tf.target, value_token(tf.fun))


def batched_token(b):
    return ("vmap", value_token(b.in_axes), value_token(b.out_axes), value_token(b.fun))


_env = []


def _env_token():
    """Versions and machine: a kernel is only reused where it was built for."""
    if not _env:
        import platform

        from .. import __version__
        cpu_name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        cpu_name = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
        # versions read from the installed distributions: importing numba here would cost a
        # process that answers its first calls by numpy (runtime/tiered.py) ~0.3 s
        _env.append((__version__, _PACKAGE_STAMP, dist_version("numba"), np.__version__,
                     dist_version("scipy"), sys.version, cpu_name))
    return _env[0] + (os.environ.get("GRADJIT_TARGET", ""),)


def dist_version(name):
    """The installed version of ``name`` without importing it (None if not installed): the
    ``name-VERSION.dist-info`` beside the package, else importlib.metadata (slower)."""
    import importlib.util
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    site = os.path.dirname(list(spec.submodule_search_locations)[0])
    prefix = name.lower().replace("-", "_") + "-"
    try:
        found = [d for d in os.listdir(site)
                 if d.lower().startswith(prefix) and d.endswith(".dist-info")]
    except OSError:
        found = []
    if len(found) == 1:
        return found[0][len(prefix):-len(".dist-info")]
    import importlib.metadata
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _package_stamp():
    """gradjit's own files (path, size, mtime): a manifest skips the compiler, so one
    written by other compiler code (a development tree, an upgrade without a new version
    number) must not be used."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    h = hashlib.sha256()
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if x != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                st = os.stat(os.path.join(d, name))
                h.update(f"{os.path.relpath(os.path.join(d, name), root)}:{st.st_size}:"
                         f"{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


_PACKAGE_STAMP = _package_stamp()  # at import: the code this process runs (about 1 ms)


def function_key(tf, args):
    """The manifest key of ``tf`` called on ``args``; None when the disk cache is off or
    something cannot be described as plain data (every new process then traces)."""
    if tf.kind == "vjp":
        return None
    dc = disk_cache()
    if dc is None or not dc.enabled:
        return None
    try:
        sig = []
        for k, a in enumerate(args):
            if k in tf.static_argnums:
                sig.append(("static", value_token(a)))
            else:
                leaves, tree = pytree.flatten(a)
                sig.append((encode_tree(tree), tuple(leaf_token(x) for x in leaves)))
        what = (MANIFEST_FORMAT, transformed_token(tf), tuple(sig), _env_token())
        import pickle
        return hashlib.sha256(pickle.dumps(what, protocol=4)).hexdigest()
    except (Unstorable, GradjitError, TypeError, ValueError, AttributeError):
        return None


def encode_spec(spec):
    if spec is None:
        return None
    what, tree, rest = spec[0], encode_tree(spec[1]), spec[2:]
    if what == "tree":
        return (what, tree)
    groups = tuple((encode_tree(t), n) for t, n in rest[0])
    return (what, tree, groups) + tuple(rest[1:])


def decode_spec(enc):
    if enc is None:
        return None
    what, tree, rest = enc[0], decode_tree(enc[1]), enc[2:]
    if what == "tree":
        return (what, tree)
    groups = tuple((decode_tree(t), n) for t, n in rest[0])
    return (what, tree, groups) + tuple(rest[1:])


def _file_stamp(path):
    """(size, mtime_ns, sha256, text) of a source file, read consistently."""
    st = os.stat(path)
    with open(path, "rb") as f:
        data = f.read()
    st2 = os.stat(path)
    if (st.st_size, st.st_mtime_ns) != (st2.st_size, st2.st_mtime_ns):
        raise Unstorable(f"{path} changed while being read")
    return st2.st_size, st2.st_mtime_ns, hashlib.sha256(data).hexdigest(), data.decode("utf-8")


def _segment_at(text, line, seg):
    """Whether ``seg`` (a def or lambda's source) starts on line ``line`` of ``text``."""
    lines = text.splitlines(keepends=True)
    if not 1 <= line <= len(lines):
        return False
    pos = sum(len(x) for x in lines[:line - 1])
    i = text.find(seg, pos)
    return i != -1 and i < pos + len(lines[line - 1])


def _is_wrapper(obj):
    """A transform object (``gj.grad(f)``, ``gj.vmap(f)``): its function is ``.fun``."""
    return hasattr(obj, "_gj_inline") and hasattr(obj, "fun")


def _describe_trace(low, entry_key):
    """The manifest payload of a Lowered (raises Unstorable)."""
    import types
    traced = low.traced
    if traced.effects:  # a manifest's entry would skip their replay (compiler/effects.py)
        raise Unstorable("the function changes Python state outside it")
    files, segments = {}, []
    texts = {}
    for (path, line, _col), (qualname, seg) in traced.sources.items():
        if path not in texts:
            try:
                size, mtime, digest, texts[path] = _file_stamp(path)
            except (OSError, UnicodeDecodeError):
                raise Unstorable(f"cannot read {path}") from None
            files[path] = (size, mtime, digest)
        if not _segment_at(texts[path], line, seg):  # module edited since it was imported
            raise Unstorable(f"{qualname} differs from {path}:{line}")
        segments.append((path, line, seg))

    # How to find every function whose closure cells were read, from the transform itself
    # (its .fun chain) or from globals and cells read on the way.
    known = {}  # id(function or cell) -> path

    def register(obj, path):
        if id(obj) in known:
            return
        known[id(obj)] = path
        if _is_wrapper(obj):
            register(obj.fun, ("fun", path))
        elif isinstance(obj, types.FunctionType):
            for i, cell in enumerate(obj.__closure__ or ()):
                known.setdefault(id(cell), ("cell", path, i))

    register(low.tf, ("root",))
    reads = traced.reads or []
    statics = [frontend.Capture(r[1], r[2], r[3], r[4]) for r in reads if r[0] == "cap"]
    caps = list(traced.guards) + list(traced.captures) + statics
    attrs = [r for r in reads if r[0] == "attr"]
    absent = set()
    for r in reads:
        if r[0] == "absent":
            mod = r[1].get("__name__")
            if getattr(sys.modules.get(mod), "__dict__", None) is not r[1]:
                raise Unstorable(f"builtin '{r[2]}' read from an unknown module")
            absent.add((mod, r[2]))

    def where_path(cap):
        if cap.kind == "obj":
            raise Unstorable(f"'{cap.text}' is read from an object")
        if cap.kind == "global":
            mod = cap.where.get("__name__")
            if not isinstance(mod, str) or getattr(sys.modules.get(mod), "__dict__", None) \
                    is not cap.where:
                raise Unstorable(f"global '{cap.name}' of an unknown module")
            return ("g", mod, cap.name)
        cp = known.get(id(cap.where))
        return None if cp is None else ("c", cp, cap.name)

    def obj_path(obj):
        if isinstance(obj, types.ModuleType):
            return ("mod", obj.__name__)
        return ("type", obj.__module__, obj.__qualname__)

    paths = {}
    for _ in range(len(caps) + len(attrs) + 1):  # until every cell's owner is found
        progress = False
        for cap in caps:
            if id(cap) in paths:
                continue
            p = where_path(cap)
            if p is not None:
                paths[id(cap)] = p
                progress = True
                register(cap.value, ("val", p, value_token(cap.steps)))
        for r in attrs:
            register(r[3], ("attr", obj_path(r[1]), r[2]))
        if not progress:
            break
    missing = [c.name for c in caps if id(c) not in paths]
    if missing:
        raise Unstorable(f"cannot find closure variable(s) {missing} again")

    guards = [(paths[id(c)], c.steps, c.mode, _guard_token(c.mode, c.value)) for c in traced.guards]
    statics = [(paths[id(c)], value_token(c.value)) for c in statics]
    arrays = [(paths[id(c)], c.steps, leaf_token(c.value)) for c in traced.captures]
    attr_reads = []
    for _, obj, name, value in attrs:
        if isinstance(obj, types.ModuleType) and obj.__name__.split(".")[0] in LIBRARIES \
                or isinstance(obj, type) and obj.__module__.split(".")[0] in LIBRARIES:
            continue  # library attributes: their versions are in the key
        attr_reads.append((("attr", obj_path(obj), name), value_token(value)))
    return {
        "format": MANIFEST_FORMAT, "entry": entry_key, "files": files, "segments": segments,
        "guards": guards, "statics": statics, "arrays": arrays, "attrs": attr_reads,
        "absent": sorted(absent),
        "results": [(a.dtype, a.ndim) for a in low.result_avals()],
        "spec": encode_spec(low.spec), "qualname": traced.qualname, "loc": traced.loc,
        "target": low.target, "capi": capi_needed(low.source),
        "signature": low.signature, "created": time.time(),
    }


def write_manifest(dc, low, entry_key):
    try:
        payload = _describe_trace(low, entry_key)
    except Unstorable as e:
        if DEBUG >= 1:
            print(f"[gradjit] no manifest for {low.traced.qualname}: {e}", file=sys.stderr)
        return
    dc.store_manifest(low.fkey, payload)


class Stale(Exception):
    """A manifest whose checks fail (its trace depended on something that changed)."""


def _resolve(path, tf):
    what = path[0]
    if what == "root":
        return tf
    if what == "fun":
        return _resolve(path[1], tf).fun
    if what == "cell":
        fn = _resolve(path[1], tf)
        return fn.__closure__[path[2]]
    if what == "val":
        return _capture(path[1], tf, path[2]).get()
    if what == "mod":
        mod = sys.modules.get(path[1])
        if mod is None:
            raise Stale(f"module {path[1]} is not imported")
        return mod
    if what == "type":
        obj = _resolve(("mod", path[1]), tf)
        for part in path[2].split("."):
            obj = getattr(obj, part)
        return obj
    if what == "attr":
        return getattr(_resolve(path[1], tf), path[2])
    raise Stale(f"unknown path {what}")


def _capture(path, tf, steps=()):
    """The frontend.Capture a path ("g", module, name) / ("c", cell path, name), then
    ``steps``, leads to."""
    if path[0] == "g":
        mod = _resolve(("mod", path[1]), tf)
        return frontend.Capture("global", mod.__dict__, path[2], None, tuple(steps))
    cell = _resolve(path[1], tf)
    return frontend.Capture("cell", cell, path[2], None, tuple(steps))


def _guard_token(mode, value):
    """What a manifest stores of a guarded value, to compare in a new process."""
    if mode == "type":
        return value_token(type(value))
    if mode == "shape":
        t, n = frontend.shape_of(value)
        return (t.__name__, value_token(n))
    return value_token(value)


def _guard_expected(mode, value):
    import copy
    return {"value": copy.deepcopy, "ident": lambda v: v, "type": type,
            "shape": frontend.shape_of}[mode](value)


def _check_sources(m):
    """Raise Stale unless every inlined function's text is still at its line. Returns the
    files whose stamp changed while what the trace read of them did not (or {})."""
    fresh = {}
    for path, (size, mtime, digest) in m["files"].items():
        st = os.stat(path)
        if (st.st_size, st.st_mtime_ns) == (size, mtime):
            continue
        size, mtime, new_digest, text = _file_stamp(path)
        fresh[path] = (size, mtime, new_digest)
        if new_digest == digest:
            continue
        for p, line, seg in m["segments"]:  # edited: still the same functions, same lines?
            if p == path and not _segment_at(text, line, seg):
                raise Stale(f"{path}:{line} was edited")
    return fresh


def from_manifest(tf, m, args, dc):
    """The Entry a manifest describes, if all its checks hold now; None if its entry is gone
    (the manifest is dead); raises Stale when something it depends on changed."""
    try:
        fresh = _check_sources(m)
        guards, arrays = [], []
        for path, steps, mode, token in m["guards"]:
            cap = _capture(path, tf, steps)
            cap.value = cap.get()
            if _guard_token(mode, cap.value) != token:
                raise Stale(f"{cap.text} changed")
            cap.mode, cap.expected = mode, _guard_expected(mode, cap.value)
            guards.append(cap)
        for path, token in m["statics"]:  # modules, classes, None: not re-checked per call
            if value_token(_capture(path, tf).get()) != token:
                raise Stale(f"{path[-1]} changed")
        for mod, name in m["absent"]:  # builtins: still not shadowed by a module global
            if name in _resolve(("mod", mod), tf).__dict__:
                raise Stale(f"a global '{name}' now shadows the builtin")
        for path, steps, token in m["arrays"]:
            cap = _capture(path, tf, steps)
            cap.value = cap.get()
            if type(cap.value) is not np.ndarray or leaf_token(cap.value) != token:
                raise Stale(f"{path[-1]} changed")
            arrays.append(cap)
        for path, token in m["attrs"]:
            if value_token(_resolve(path, tf)) != token:
                raise Stale(f"{path[-1]} changed")
    except Exception as e:  # noqa: BLE001 - whatever fails to check, the manifest is not used
        raise Stale(f"{type(e).__name__}: {e}") from None
    key = m["entry"]
    with dc.lock(key):
        mod = dc.load(key)
    if mod is None:
        return None
    mark_used(key)
    stats.disk_hits += 1
    stats.manifest_hits += 1
    static = set(tf.static_argnums)
    leaves = [x for k, a in enumerate(args) if k not in static for x in pytree.flatten(a)[0]]
    preload_capi(m["capi"])
    vals = [prepare(x) for x in leaves] + [c.value for c in arrays] + out_examples(mod)

    def what():
        return f"{tf.kind} of {m['qualname']} ({m['loc']}) [{m['signature']}]"
    if m.get("target") == "cpu":
        numba_load(entry_point(mod), vals, what)
    else:
        numba_compile(entry_point(mod), vals, what)
    dc.seal(key)
    if fresh:  # the files' new stamps, so that later processes need not read them again
        m["files"] = dict(m["files"], **fresh)
        m["refresh"] = True
    return make_entry(mod, arrays, guards, leaves, m["results"],
                  assembler(decode_spec(m["spec"])))
