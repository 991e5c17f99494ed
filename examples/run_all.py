"""Run every example script, then the table of seed workloads; exit non-zero if any failed.

Each script runs in its own process, exactly as ``python examples/NAME.py`` would (its
output is shown under its name; ``-q`` shows only failures). Figures go to
``examples/figures/`` (or ``$GRADJIT_FIGURES``). Scripts run at their quick size
(``GRADJIT_EXAMPLES_QUICK=1`` unless set otherwise): dask_logistic.py's default data set is
26 GB, and each pass over it takes minutes here.

    make demo        # or: .venv/bin/python examples/run_all.py [-q] [NAME ...]
"""

import glob
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

# in tutorial order; every other examples/*.py is listed after these
SCRIPTS = ["simple_gradients", "vector_functions", "losses", "chain_rule", "detach",
           "control_flow", "local_arrays", "higher_order", "batched_jacobian", "himmelblau",
           "training", "trig_fit", "newton_cg", "hmc", "gpu_jacobian", "dask_logistic"]
NOT_SCRIPTS = {"run_all", "seeds"}   # seeds.py is the workload table's module


def scripts():
    found = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(HERE, "*.py"))}
    found = {n for n in found if not n.startswith("_") and n not in NOT_SCRIPTS}
    return [n for n in SCRIPTS if n in found] + sorted(found - set(SCRIPTS))


def banner(title):
    return f"\n{'#' * 8} {title} {'#' * max(4, 70 - len(title))}"


def run_script(name, quiet):
    t = time.perf_counter()
    env = {"GRADJIT_EXAMPLES_QUICK": "1", **os.environ}  # an explicit setting wins
    proc = subprocess.run([sys.executable, os.path.join(HERE, name + ".py")],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    dt = time.perf_counter() - t
    if not quiet or proc.returncode:
        print(banner(name + ".py"))
        print(proc.stdout.rstrip())
    return proc.returncode, dt


# --- the seed workloads: (what gradjit computed, what a reader should expect) ----------------
def close(a, b):
    if isinstance(a, tuple):
        return all(close(x, y) for x, y in zip(a, b))
    return np.allclose(a, b, rtol=1e-4, atol=1e-4)


def show(v):
    if isinstance(v, tuple):
        return "(" + ", ".join(show(x) for x in v) + ")"
    return np.array2string(np.asarray(v), precision=4, suppress_small=True, threshold=8,
                           max_line_width=60).replace("\n", " ")


def seed_table():
    import control_flow
    import local_arrays
    import seeds

    import gradjit as gj
    workloads = seeds.ALL + control_flow.ALL + local_arrays.ALL
    failed = 0
    for fn in workloads:
        t = time.perf_counter()
        got, want = fn()
        dt = time.perf_counter() - t
        ok = close(got, want)
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {fn.__name__:<24} {dt:6.2f}s  gradjit: {show(got)}")
        if not ok:
            print(f"{'':36}expected: {show(want)}")
    info = gj.cache_info()
    print(f"\n{len(workloads) - failed} of {len(workloads)} workloads match; kernels compiled: "
          f"{info.compiles}, loaded from disk: {info.disk_hits}, cache hits: {info.hits}")
    return failed


def main(argv):
    quiet = "-q" in argv
    names = [a for a in argv if not a.startswith("-")] or scripts()
    t0 = time.perf_counter()
    results = [(name, *run_script(name, quiet)) for name in names]

    print(banner("seed workloads"))
    t = time.perf_counter()
    try:
        table_failed = seed_table()
    except Exception as e:  # a crash in the table is a failure, reported like the others
        print(f"FAIL the seed workload table raised {type(e).__name__}: {e}")
        table_failed = 1
    results.append(("seed workload table", 1 if table_failed else 0, time.perf_counter() - t))

    print(banner("summary"))
    for name, rc, dt in results:
        print(f"  {'ok  ' if rc == 0 else 'FAIL'} {name:<24} {dt:6.1f}s")
    failed = [name for name, rc, _ in results if rc]
    from _plot import FIGURES
    print(f"\n{len(results) - len(failed)} of {len(results)} passed in "
          f"{time.perf_counter() - t0:.0f}s; figures in {os.path.relpath(FIGURES)}/")
    if failed:
        print("failed: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
