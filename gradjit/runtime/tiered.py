"""Tiered execution: a new (function, signature) answers by numpy first, by its kernel as
soon as a background process has compiled it.

On a miss that needs a compile (no manifest), the lowered function's optimised IR becomes a
tier-0 plan (runtime/tier0.py) and a child process compiles the kernel into the disk cache
(runtime/background.py). The Entry put in the transform's cache runs the plan; at each call
a thread of the caller's process waits for the child and loads its kernel as a disk-cache
hit; the next call ``adopt``s the compiled entry (one ``Event.is_set`` per tier-0 call tells),
so later calls take the hot path with no trace of tier 0. A child that failed (or timed out)
makes the caller compile itself, which raises the GradjitError a foreground compile raises.

The policy keeps numpy away from the functions it would run slowly (the kernel still arrives
later than a foreground compile would deliver it: the child pays its own start and numba
import):

- no tier 0 when the graph's equations, counting loops whose trip counts are literals with
  those counts, exceed ``tier0.UNITS`` (a jit descent loop of 30,000 steps): compiled now;
- a tier-0 call charges a budget as its loops start (trip count x body size) and run (time):
  a loop over 10^7 elements, or any call whose loops would take over ``tier0.SECONDS``, stops
  and the entry waits for the kernel from then on;
- no tier 0 without a usable disk cache, under GRADJIT_CHECK, for CUDA, inside
  ``transformed.compile(...)`` and with ``GRADJIT_TIERED=0``.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager

from ..errors import GradjitError
from . import background, tier0
from .check import options
from .entry import make_tier0_entry
from .state import DEBUG, disk_cache, stats

_local = threading.local()


def enabled():
    return os.environ.get("GRADJIT_TIERED", "1").strip().lower() not in ("0", "false", "no",
                                                                       "off")


@contextmanager
def blocking():
    """Within: new entries are compiled kernels (``transformed.compile``)."""
    _local.depth = getattr(_local, "depth", 0) + 1
    try:
        yield
    finally:
        _local.depth -= 1


def _log(text):
    if DEBUG >= 1:
        print(f"[gradjit] {text}", file=sys.stderr)


def _why_not(low):
    """Why ``low`` is compiled now rather than answered by tier 0 (None: tier 0 it is)."""
    if not enabled():
        return "GRADJIT_TIERED=0"
    if getattr(_local, "depth", 0):
        return "compile() asked for the kernel"
    if options.check:
        return "GRADJIT_CHECK"
    if low.target not in ("cpu", "parallel"):
        return f"target {low.target}"
    dc = disk_cache()
    if dc is None or not dc.enabled:
        return "no usable disk cache"
    n = tier0.units(low.optimized)
    if n > tier0.UNITS:
        return f"its loops run {n} equations or more per call"
    return None


def entry(low, finish):
    """The Entry of a freshly lowered function: tier 0 while a background process compiles
    the kernel, or the kernel compiled now. ``finish(entry)``: what the caller does to every
    entry it gets (the replay of Python side effects)."""
    why = _why_not(low)
    plan = None
    if why is None:
        try:
            plan = tier0.Plan(low.optimized)
        except tier0.Unsupported as e:
            why = str(e)
    if why is not None:
        _log(f"{low.what()}: compiled now ({why})")
        return finish(low.compile())
    runner = Tier0(low, plan, finish)
    e = finish(make_tier0_entry(runner, low.traced.captures, low.traced.guards,
                                [(a.dtype, a.ndim) for a in low.result_avals()], low.assemble))
    runner.entry = e
    runner.launch()
    return e


def wait(entry):
    """Make ``entry`` run its kernel now (a tier-0 one waits for, or compiles, it)."""
    runner = entry.kernel
    if isinstance(runner, Tier0):
        runner.switch("compile() asked for the kernel")


class Tier0:
    """Called like a kernel: answers by the plan until the kernel is ready, then switches."""

    def __init__(self, low, plan, finish):
        self.low, self.plan, self.finish = low, plan, finish
        self.entry = None
        self.job = None
        self.next_launch = 0.0
        self.waiting = None  # why calls wait for the kernel instead of tier 0
        self.error = None
        self.calls = 0
        self.started = time.perf_counter()
        self.lock = threading.Lock()
        self.answered = threading.Event()  # a first call was answered by tier 0
        self.loaded = threading.Event()  # the loader thread is done (kernel or not)
        self.kernel_entry = self.load_error = None

    def launch(self):
        """Start the background compile (when fewer than the limit run: else later), and a
        thread that loads its result."""
        now = time.perf_counter()
        if now < self.next_launch:
            return
        self.next_launch = now + background.POLL
        self.job = background.start(self.low, disk_cache())
        if self.job is not None:
            _log(f"{self.low.what()}: tier 0 (numpy) while a background process compiles")
            threading.Thread(target=self._load, name="gradjit-load", daemon=True).start()

    def _load(self):
        """(A thread) Import numba while the child compiles, then load its kernel as a disk
        hit: the caller's thread only adopts the entry, it never pauses for the load. The
        import waits for a first answer by tier 0, whose time it would otherwise share."""
        try:
            self.answered.wait(1.0)
            from .loader import versions
            versions()  # numba and the kernels' helpers
            self.job.wait()
            if self.job.ok:
                stats.background_compiles += 1
                self.kernel_entry = self.finish(self.low.compile())
        except BaseException as e:  # noqa: BLE001 - raised in the caller's thread at the switch
            self.load_error = e
        finally:
            self.loaded.set()

    def __call__(self, *vals):
        if self.waiting is None and self.error is None:
            if self.job is None:
                self.launch()
            elif self.loaded.is_set():
                return self.switch("the background compile finished")(*vals)
            try:
                out = self.plan.run(tier0.Budget(), *vals)
            except tier0.TooCostly:
                self.waiting = "tier 0 would take too long"
            else:
                stats.tier0_calls += 1
                self.calls += 1
                self.answered.set()
                return out[0] if len(out) == 1 else out
        return self.switch(self.waiting or "")(*vals)

    def switch(self, why):
        """Wait for the background compile (or compile here), adopt the compiled entry;
        returns the kernel to call."""
        with self.lock:
            if self.entry.kernel is not self:  # another thread switched meanwhile
                return self.entry.kernel
            if self.error is not None:
                raise self.error
            job = self.job
            t0 = time.perf_counter()
            real = None
            if job is not None:
                self.answered.set()
                self.loaded.wait()  # (the child's time is bounded by job.wait's timeout)
                real = self.kernel_entry
                if isinstance(self.load_error, GradjitError):
                    self.error = self.load_error
                    raise self.error
                if not job.ok:
                    stats.background_failures += 1
                    _log(f"{self.low.what()}: the background compile failed ({job.error}); "
                         "compiling here")
            if real is None:
                try:
                    real = self.finish(self.low.compile())
                except GradjitError as e:
                    self.error = e  # every later call raises it too, as a foreground compile would
                    raise
            self.entry.adopt(real)
            stats.tier_switches += 1
            _log(f"{self.low.what()}: switched to the kernel ({why}) after {self.calls} tier-0 "
                 f"calls, {time.perf_counter() - self.started:.3f}s after tracing "
                 f"(this call waited {time.perf_counter() - t0:.3f}s)")
            return self.entry.kernel
