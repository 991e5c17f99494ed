"""Timing and tables, independent of what is being timed.

`measure` times a set of zero-argument thunks *interleaved*: each round calls every
contestant once, in a fresh random order, so slow drifts of the machine (frequency, other
processes, memory state) hit all contestants alike. (A fixed or rotating order is not
enough: on a loaded machine, which contestant follows which was seen to skew results by
30%, consistently in favour of one position.) Fast thunks are called k times per sample so
that one sample lasts about 5 ms, with k from the fastest of five calls. Each sample starts
with one untimed call. Both because the contestant that ran before leaves cold caches and,
for XLA, threads spinning on the other core: a cost paid once per sample, which weighs k
times less in a sample of k calls. With k from a single (slow) call, a kernel got k=2 and
its byte-identical twin k=6, and measured 1.4x the twin. The result is the median per call, plus the
CPU time per wall time of the contestant run alone (about 1 when single-threaded; jax uses
every core for large elementwise ops and cannot be limited to one except by CPU affinity).
"""

import gc
import random
import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Cell:
    """One table cell: a time per call, or a note ("n/a", "-", "error[2]", ...)."""

    seconds: float | None = None
    note: str = ""
    cores: float = 1.0  # CPU time / wall time while it ran


@dataclass
class Errors:
    """Error messages, numbered once each, printed under the tables."""

    messages: list = field(default_factory=list)

    def note(self, kind, exc):
        """The cell text for an exception (or a message string): "error[3]"."""
        msg = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        msg = (msg.strip().splitlines() or ["?"])[0][:300]
        if msg not in self.messages:
            self.messages.append(msg)
        return f"{kind}[{self.messages.index(msg) + 1}]"

    def print(self):
        for i, msg in enumerate(self.messages, 1):
            print(f"  [{i}] {msg}")


def as_numpy(x):
    """Any contestant's result (float, ndarray, jax/torch array, tuple) as numpy."""
    if isinstance(x, (tuple, list)):
        return tuple(as_numpy(v) for v in x)
    if hasattr(x, "detach"):  # torch
        x = x.detach().numpy()
    return np.asarray(x, dtype=np.float64)


def mismatch(result, expected, rtol=1e-6):
    """None if `result` matches `expected`, else a short description."""
    got, want = as_numpy(result), as_numpy(expected)
    if not isinstance(want, tuple):
        got, want = (got,), (want,)
    if not isinstance(got, tuple) or len(got) != len(want):
        return f"result structure {type(result).__name__} != expected"
    for g, w in zip(got, want):
        if g.shape != w.shape:
            return f"shape {g.shape} != {w.shape}"
        atol = rtol * max(1.0, float(np.max(np.abs(w), initial=0.0)))
        if not np.allclose(g, w, rtol=rtol, atol=atol):
            return f"max abs error {np.max(np.abs(g - w)):.3g}"
    return None


def _time_calls(thunk, k):
    """(wall, cpu) seconds of k calls."""
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(k):
        thunk()
    t1, c1 = time.perf_counter(), time.process_time()
    return t1 - t0, c1 - c0


def measure(thunks, budget_s, min_samples=5, max_samples=200, sample_s=5e-3):
    """Median seconds per call of each (already warmed-up) thunk, timed round-robin.

    Returns {name: Cell or the exception it raised}. The number of rounds is what fits in
    `budget_s`, clamped to [min_samples, max_samples].
    """
    rng = random.Random(0)
    out = {}
    reps = {}
    for name, thunk in thunks.items():
        try:
            t = min(_time_calls(thunk, 1)[0] for _ in range(5))
            # Calls per sample: enough that one sample lasts about sample_s.
            reps[name] = k = max(1, min(100_000, int(sample_s / max(t, 1e-8))))
            out[name] = [_time_calls(thunk, k)]
        except Exception as e:  # noqa: BLE001 - a failing contestant becomes a table cell
            out[name] = e
    live = [n for n in thunks if not isinstance(out[n], Exception)]
    per_round = sum(out[n][0][0] * (reps[n] + 1) / reps[n] for n in live) or 1e-3

    # Cores used, measured apart from the interleaved samples: process CPU time counts every
    # thread, and a thread pool that spins after its work (XLA's does) would otherwise be
    # charged to whichever contestant runs next.
    cores = {}
    for name in live:
        time.sleep(0.05)
        per_call = out[name][0][0] / reps[name]
        try:
            wall, cpu = _time_calls(thunks[name], max(1, int(0.05 / per_call)))
            cores[name] = cpu / wall
        except Exception as e:  # noqa: BLE001
            out[name] = e
    rounds = int(min(max_samples, max(min_samples, budget_s / per_round)))

    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        order = list(live)
        for _ in range(rounds):
            rng.shuffle(order)
            for name in order:
                if isinstance(out[name], Exception):
                    continue
                try:
                    thunks[name]()  # untimed: see the module's docstring
                    out[name].append(_time_calls(thunks[name], reps[name]))
                except Exception as e:  # noqa: BLE001
                    out[name] = e
    finally:
        if gc_was_enabled:
            gc.enable()
    result = {}
    for name, v in out.items():
        if isinstance(v, Exception):
            result[name] = v
            continue
        wall = [w for w, _ in v[1:] or v]  # the calibration sample is not counted
        result[name] = Cell(seconds=float(np.median(wall)) / reps[name], cores=cores[name])
    return result


# ---------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------


def fmt_time(s):
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)):
        if s >= scale or unit == "ns":
            v = s / scale
            return f"{v:.3g} {unit}" if v < 100 else f"{v:.0f} {unit}"


def fmt_ratio(r):
    return f"{r:.2g}x" if r < 10 else f"{r:.0f}x"


def table(header, rows):
    """A plain-text table; the first column is left-aligned, the rest right-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(r):
        cells = [str(r[0]).ljust(widths[0])]
        cells += [str(c).rjust(w) for c, w in zip(r[1:], widths[1:])]
        return "  ".join(cells).rstrip()

    rule = "-" * len(line(header))
    return "\n".join([line(header), rule, *map(line, rows)])
