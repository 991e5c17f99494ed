"""``Lowered``: a function traced, transformed, optimised and emitted for one signature,
and compiled (or loaded from the disk cache) into an Entry."""

from __future__ import annotations

import hashlib
import os
import sys
import time

from ..compiler import passes, pytree
from ..compiler.codegen.backend import backend_for
from ..compiler.ir import verify
from ..compiler.transforms import assembler, trace, transform_spec
from ..errors import GradjitError
from . import device, manifests
from .entry import make_cuda_entry, make_entry
from .loader import (capi_needed, entry_point, load_source, numba_compile, numba_load,
                     out_examples, preload_capi, versions)
from .signature import describe, prepare
from .state import DEBUG, disk_cache, stats


def static_args(tf, args):
    """The static arguments by position. One past the arguments given is an error: ignored,
    it would leave the argument meant to be static traced."""
    for k in tf.static_argnums:
        if k >= len(args):
            raise GradjitError(f"static_argnums={tf.static_argnums!r} does not fit the "
                               f"{len(args)} arguments given")
    return {k: args[k] for k in tf.static_argnums}


UNSET = object()


class Lowered:
    """A traced and transformed function for one signature: IR, optimised IR and source."""

    def __init__(self, tf, args, fkey=UNSET):
        self.tf = tf
        static = static_args(tf, args)
        leaves = [x for k, a in enumerate(args) if k not in static
                  for x in pytree.flatten(a)[0]]
        self.target = resolve_target(tf, leaves)
        # the manifest key is taken before tracing: what the trace then reads is recorded
        # (none for CUDA: dispatch._compile_with_manifests)
        self.fkey = None if self.target == "cuda" else \
            manifests.function_key(tf, args) if fkey is UNSET else fkey
        if self.target == "cuda":
            device.cuda()  # no numba-cuda, or no GPU and no simulator: say so before tracing
            args = _host_views(args, static)  # tracing sees numpy stand-ins of device arrays
            static = static_args(tf, args)
            leaves = [device.host_view(x) for x in leaves]
        stats.traces += 1
        self.traced = trace(tf.fun, args, static)
        kind = tf.kind
        self.leaves = leaves
        self.signature = describe(self.leaves)
        what = f"{kind} of {self.traced.qualname} ({self.traced.loc})"
        graph, self.spec = transform_spec(tf, self.traced, args, static)
        self.assemble = assembler(self.spec)
        if DEBUG >= 3:
            verify(graph)
        self.transformed = graph
        self.optimized = passes.optimize(graph)
        if DEBUG >= 2:
            print(f"[gradjit] {kind} {self.traced.qualname}:\n{self.optimized}", file=sys.stderr)
        self.backend = backend_for(self.target)
        self.source = self.backend.emit_source(self.optimized, what, self.target)

    def compile_kernel(self, kernel, outs=(), hit=False):
        """Compile (or load from numba's cache) for the argument types of this signature now,
        so that errors surface here and ahead-of-time ``warm`` stores object code. ``hit``:
        the module came from the disk cache (a background compile's, another process's), so
        its object code is expected there: loaded without numba's full target refresh."""
        load = numba_load if hit else numba_compile
        load(kernel, self.kernel_args() + list(outs), self.what)

    @property
    def traced_ir(self):
        return str(self.traced.graph)

    @property
    def optimized_ir(self):
        return str(self.optimized)

    def dot(self):
        from ..compiler.graphviz import to_dot
        return to_dot(self.optimized)

    def cache_meta(self):
        """The disk-cache metadata of this kernel (also written by a background compile)."""
        meta = {"qualname": self.traced.qualname, "file": self.traced.loc.rsplit(":", 1)[0],
                "line": int(self.traced.loc.rsplit(":", 1)[1]) if ":" in self.traced.loc else 0,
                "transform": self.tf.kind, "signature": self.signature, "target": self.target,
                "created": time.time()}
        if self.target == "cuda":
            meta["capability"] = device.capability()
        return meta

    def kernel_args(self):
        """The values the kernel is compiled for: the leaves, then the captured arrays."""
        return [prepare(x) for x in self.leaves] + [c.value for c in self.traced.captures]

    def what(self):
        return f"{self.tf.kind} of {self.traced.qualname} ({self.traced.loc}) [{self.signature}]"

    def compile(self):
        extra = device.versions() if self.target == "cuda" else ""
        key = hashlib.sha256((self.source + versions() + extra).encode()).hexdigest()
        meta = self.cache_meta()
        t0 = time.perf_counter()
        try:
            mod, hit = load_source(self.source, key, meta)
        except GradjitError:
            raise
        except Exception as e:  # noqa: BLE001 - numba-cuda at import: one line, never a traceback
            if self.target != "cuda":
                raise
            raise GradjitError(f"internal error: the CUDA module of {self.tf.kind} of "
                               f"{self.traced.qualname} ({self.traced.loc}) failed to load: "
                               f"{type(e).__name__}: {e}") from None
        if self.target != "cuda":  # (numba-cuda compiles a kernel at its first launch)
            preload_capi(capi_needed(self.source))
            self.compile_kernel(entry_point(mod), out_examples(mod), hit)
        dc = disk_cache()
        if dc is not None and dc.enabled:
            dc.seal(key)  # record numba's object code so later processes can trust it
            if self.fkey:
                manifests.write_manifest(dc, self, key)
        if not hit:
            stats.compiles += 1
        if DEBUG >= 1:
            print(f"[gradjit] {'disk hit' if hit else 'compile'} {self.tf.kind} "
                  f"{self.traced.qualname} [{self.signature}] {time.perf_counter() - t0:.3f}s",
                  file=sys.stderr)
        if self.target == "cuda":
            e = make_cuda_entry(mod, self.traced.captures, self.traced.guards, self.leaves,
                                self.assemble, lambda: f"{self.tf.kind} of {self.traced.qualname}"
                                f" ({self.traced.loc}) [{self.signature}]")
        else:
            e = make_entry(mod, self.traced.captures, self.traced.guards, self.leaves,
                           [(a.dtype, a.ndim) for a in self.result_avals()], self.assemble)
        e.graph = self.optimized
        e.source = self.source
        e.traced = self.traced.graph
        e.optimized = self.optimized
        return e

    def result_avals(self):
        """Avals of what the kernel returns (a bare value when there is one result)."""
        return [a.aval for a in self.optimized.outputs]


TARGETS = ("auto", "cpu", "parallel", "cuda")


def resolve_target(tf, leaves=()):
    """The target of a call: the transform's, or for "auto" ``GRADJIT_TARGET`` if set, else
    "cuda" when an argument is a device array and "cpu" otherwise."""
    target = tf.target
    if target == "auto":
        target = os.environ.get("GRADJIT_TARGET", "").strip().lower() or "auto"
        if target not in TARGETS:
            raise GradjitError(f"GRADJIT_TARGET={target!r} is not a target: use one of "
                               f"{', '.join(TARGETS)}")
    on_device = any(map(device.is_device_array, leaves))
    if target == "auto":
        target = "cuda" if on_device else "cpu"
    if on_device and target != "cuda":
        raise GradjitError(f"CUDA device arrays were passed to a function compiled for "
                           f"target={target!r}: use target='cuda' or 'auto' (or copy them to "
                           "the host first)")
    return target


def _host_views(args, static):
    """``args`` with every device-array leaf replaced by its numpy stand-in."""
    out = []
    for k, a in enumerate(args):
        if k in static:
            out.append(a)
            continue
        leaves, tree = pytree.flatten(a)
        out.append(pytree.unflatten(tree, [device.host_view(x) for x in leaves]))
    return tuple(out)
