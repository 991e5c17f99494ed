"""Start-up: `import gradjit`, cold first call, warm-from-disk first call, warm call.

    python benchmarks/coldstart.py [--repeats N] [--only W2,W4]     (prints the table)

Child:  python benchmarks/coldstart.py CONTESTANT GROUP [N]   (prints one JSON line)
Parent: `cold_start(contestant, group)` runs the child with GRADJIT_DISABLE_CACHE=1 and a
        private, empty GRADJIT_CACHE_DIR, so no disk cache hides the compile (the
        "Cold compile" table of benchmarks/run.py); `startup(group)` runs gradjit children
        against one private cache directory: the first, on the empty directory, compiles
        (cold first call) and fills it; the next ones are new processes that find the
        kernel on disk (warm-from-disk first call: no tracing, no numba compilation).

"import" is the framework's import (numba, jax, gradjit; numpy is already imported);
"first" is everything after it: defining the transform and the first call. "call" is the
median of later calls in the same process (warm in-process). The cold table uses small
inputs (so "first" is compile time, not compute); `startup` uses the sizes below, so its
first calls include one evaluation (W4: X of 10^6 x 16).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONTESTANTS = ("gradjit", "numba", "jax")
GROUPS = ("W2", "W4")
STARTUP_N = {"W2": 0, "W4": 10**6}  # rows of X for W4
CALLS = 15  # in-process calls timed after the first


def _child(contestant, group, n=None):
    sys.path.insert(0, str(ROOT))
    import numpy as np

    from benchmarks import workloads as wk

    n = int(n) if n else 1000
    fn, args, argnums, expected, kernel = {
        "W2": (wk.himmelblau, (wk.himmelblau_input(),), 0, wk.himmelblau_grad, "himmelblau_grad"),
        "W4": (wk.mse, wk.linear_inputs(n), (0, 1), wk.mse_grad, "mse_grad"),
    }[group]

    t0 = time.perf_counter()
    if contestant == "gradjit":
        import gradjit as gj
    elif contestant == "numba":
        import numba  # noqa: F401
    elif contestant == "jax":
        import jax

        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp

        from benchmarks.peers import with_numpy

        args = tuple(jnp.asarray(a) for a in args)
    t1 = time.perf_counter()
    c1 = time.process_time()

    if contestant == "gradjit":
        f = gj.grad(fn, argnums=argnums)
    elif contestant == "numba":
        from benchmarks import handwritten as hw

        f = getattr(hw, kernel)
    elif contestant == "jax":
        g = jax.jit(jax.grad(with_numpy(fn, jnp), argnums))

        def f(*a):
            return jax.block_until_ready(g(*a))
    out = f(*args)
    t2 = time.perf_counter()
    c2 = time.process_time()
    t3 = t2
    if contestant == "gradjit" and gj.cache_info().tier0_calls:
        # numpy answered (tiered execution): call until the compiled kernel does
        while not gj.cache_info().tier_switches:
            f(*args)
            time.sleep(0.001)
        t3 = time.perf_counter()

    calls = []
    for _ in range(CALLS):
        t = time.perf_counter()
        f(*args)
        calls.append(time.perf_counter() - t)

    from benchmarks.harness import mismatch

    np_args = tuple(np.asarray(a) for a in args)
    res = {"import": t1 - t0, "first": t2 - t1, "first_cpu": c2 - c1, "kernel": t3 - t1,
           "call": sorted(calls)[len(calls) // 2],
           "wrong": mismatch(out, expected(*np_args))}
    if contestant == "gradjit":
        info = gj.cache_info()
        res.update(compiles=info.compiles, traces=info.traces, numba=("numba" in sys.modules))
    print(json.dumps(res))


def _run_child(contestant, group, env, n=None, timeout=600):
    # Python's own bytecode cache as in a normal install (a setting that disables it would
    # charge every process the compilation of gradjit's and the workloads' modules).
    env = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    argv = [sys.executable, __file__, contestant, group] + ([str(n)] if n else [])
    p = subprocess.run(argv, check=False, env=env, capture_output=True, text=True,
                       timeout=timeout)
    if p.returncode != 0:
        lines = (p.stderr or p.stdout).strip().splitlines() or [f"exit {p.returncode}"]
        raise RuntimeError(lines[-1])
    r = json.loads(p.stdout.strip().splitlines()[-1])
    if r["wrong"]:
        raise RuntimeError(f"wrong gradient: {r['wrong']}")
    return r


def _median(runs, key):
    return sorted(r[key] for r in runs)[len(runs) // 2]


def cold_start(contestant, group, repeats=1, timeout=600):
    """Median {"import": s, "first": s} over `repeats` fresh processes; raises on failure."""
    runs = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as cache_dir:
            env = dict(os.environ, GRADJIT_DISABLE_CACHE="1", GRADJIT_CACHE_DIR=cache_dir)
            runs.append(_run_child(contestant, group, env, timeout=timeout))
    return {k: _median(runs, k) for k in ("import", "first")}


def startup(group, repeats=3, timeout=600):
    """gradjit's start-up figures for ``group`` (medians over ``repeats`` processes each):
    import, cold first call (empty disk cache), warm-from-disk first call in a new process,
    warm in-process call. Raises if a warm process traced or compiled anything."""
    n = STARTUP_N[group] or None
    cold, warm = [], []
    with tempfile.TemporaryDirectory() as root:
        env = dict(os.environ, GRADJIT_CACHE_DIR=os.path.join(root, "pyc"))
        _run_child("gradjit", group, env, None, timeout)  # writes Python's .pyc files
        for k in range(repeats):
            env = dict(os.environ, GRADJIT_CACHE_DIR=os.path.join(root, f"cold{k}"))
            env.pop("GRADJIT_DISABLE_CACHE", None)
            cold.append(_run_child("gradjit", group, env, n, timeout))
        for _ in range(repeats):  # the last cold process filled cold{repeats-1}
            warm.append(_run_child("gradjit", group, env, n, timeout))
    if any(r["compiles"] or r["traces"] for r in warm):
        raise RuntimeError(f"a warm process traced or compiled: {warm}")
    return {"import": _median(cold + warm, "import"), "cold": _median(cold, "first"),
            "cold_kernel": _median(cold, "kernel"),
            "warm": _median(warm, "first"), "call": _median(warm, "call"),
            "cold_cpu": _median(cold, "first_cpu"), "warm_cpu": _median(warm, "first_cpu")}


def _fmt(s):
    if s < 1e-3:
        return f"{s * 1e6:8.1f} us"
    return f"{s * 1e3:8.1f} ms" if s < 1 else f"{s:8.2f} s "


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="processes per figure (median)")
    ap.add_argument("--only", help="comma-separated groups (W2, W4)")
    opts = ap.parse_args(argv)
    groups = [g for g in GROUPS if not opts.only or g in opts.only.split(",")]
    print(f"gradjit start-up (median of {opts.repeats} processes each; numpy imported first)")
    head = ("workload", "import gradjit", "cold first call", "cold: kernel serves",
            "warm-from-disk first", "warm call")
    print("  ".join(f"{h:>20}" for h in head))
    for g in groups:
        r = startup(g, opts.repeats)
        label = g + (f" (X {STARTUP_N[g]:.0e} x 16)" if STARTUP_N[g] else "")
        print("  ".join(f"{c:>20}" for c in (label, _fmt(r["import"]), _fmt(r["cold"]),
                                             _fmt(r["cold_kernel"]), _fmt(r["warm"]),
                                             _fmt(r["call"]))))
        print("  ".join(f"{c:>20}" for c in ("  (CPU time)", "", _fmt(r["cold_cpu"]), "",
                                             _fmt(r["warm_cpu"]), "")))
    print("first calls are after `import gradjit`; warm-from-disk: a new process whose kernel "
          "is in the disk cache (no tracing, no numba compilation). CPU time: of the process "
          "(all threads), less sensitive than wall time to a loaded machine. 'kernel serves': "
          "define -> the first call answered by the compiled kernel (tiered execution answers "
          "the first calls by numpy; the same as the first call with GRADJIT_TIERED=0)")


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] in CONTESTANTS:
        _child(*sys.argv[1:4])
    else:
        main()
