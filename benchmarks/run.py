"""Benchmark gradjit against hand-written numba and peer frameworks.

    python benchmarks/run.py [--quick] [--only W1,W3a,...] [--no-cold]

`make bench` runs it with the intended environment (see the Makefile). Prints the machine,
then per workload the median time per call of each contestant and its ratio to the
hand-written numba kernel, in sections: core (W*: gradients of straight-line numpy), control
flow (L*: element loops, loops carrying state, a whole descent loop) and higher order (J*:
batched Jacobians, Hessians, a gradient called from the user's numba code); then the
gradient/forward ratios and the cold compile times.
"""

import os

# Single-threaded BLAS/OpenMP unless the caller chose otherwise: the baseline kernels are
# single-threaded, and multi-core runs are explicit columns (gradjit-par, numba-par).
# Must happen before numpy is imported.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import atexit
import ctypes
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# A private gradjit disk cache: warm timings do not depend on where a kernel came from, but
# a stale entry written by an older build of the compiler would be benchmarked (and
# checked) instead of the compiler in this tree.
if "GRADJIT_CACHE_DIR" not in os.environ:
    os.environ["GRADJIT_CACHE_DIR"] = tempfile.mkdtemp(prefix="gradjit-bench-")
    atexit.register(shutil.rmtree, os.environ["GRADJIT_CACHE_DIR"], ignore_errors=True)

import numba
import numpy as np

from benchmarks import coldstart, peers, report, suite
from benchmarks.harness import Cell, Errors, fmt_ratio, fmt_time, measure, mismatch, table

# ---------------------------------------------------------------------------------------
# Machine description
# ---------------------------------------------------------------------------------------


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def blas_threads():
    """Threads of each OpenBLAS loaded in this process (numpy's, scipy's, ...)."""
    found = []
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({ln.split()[-1] for ln in f if "openblas" in ln.lower() and ".so" in ln})
    except OSError:
        return "unknown"
    for path in paths:
        lib = ctypes.CDLL(path)
        for sym in (
            "scipy_openblas_get_num_threads64_",
            "openblas_get_num_threads64_",
            "openblas_get_num_threads",
        ):
            if hasattr(lib, sym):
                found.append(f"{getattr(lib, sym)()} ({Path(path).name})")
                break
    return ", ".join(found) or "unknown"


def source_tree():
    """The commit benchmarked, and whether the tree has uncommitted changes."""
    try:
        git = ["git", "-C", str(ROOT)]
        head = subprocess.run(
            git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            git + ["status", "--porcelain", "--", "gradjit"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return head + (" + uncommitted changes under gradjit/" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def load_note(own=0.0):
    """The 1-minute load average, with a warning when other work competes for the cores
    (`own`: the share of the load that is this benchmark itself)."""
    load = os.getloadavg()[0]
    busy = load - own > 0.5 * len(os.sched_getaffinity(0))
    return f"{load:.2f}" + (
        "  WARNING: other processes are competing for the cores; timings are inflated and noisy"
        if busy
        else ""
    )


def print_header(quick):
    from benchmarks import handwritten as hw

    hw.poly_sum_grad_par(np.zeros(4))  # starts numba's thread pool, so its layer is known
    blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    versions = [f"{m} {peers.version(m) or 'n/a'}" for m in ("jax", "autograd", "torch")]
    tunables = os.environ.get("GLIBC_TUNABLES")
    print("gradjit benchmarks" + (" (--quick: small sizes, few samples)" if quick else ""))
    print(
        f"  cpu      {cpu_model()}, {os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable)"
    )
    print(
        f"  python   {platform.python_version()}, numpy {np.__version__}, "
        f"numba {numba.__version__}, {', '.join(versions)}"
    )
    print(f"  blas     {blas['name']} {blas.get('version', '')}, threads: {blas_threads()}")
    print(f"  gradjit  tree {source_tree()}; disk cache {os.environ['GRADJIT_CACHE_DIR']}")
    print(
        f"  numba    parallel: {numba.get_num_threads()} threads "
        f"({numba.threading_layer()} layer), SVML: {numba.config.USING_SVML}; "
        "torch: 1 thread; jax: XLA defaults"
    )
    if tunables:
        print(f"  malloc   GLIBC_TUNABLES={tunables}")
        print(
            "           (as `make bench` sets it: freed memory stays in the process, so a "
            "fresh output array costs no page faults)"
        )
    else:
        print(
            "  malloc   GLIBC_TUNABLES unset: every large fresh output is mmap'ed and "
            "page-faulted anew;"
        )
        print("           contestants returning big arrays look slower. `make bench` sets it.")
    print(
        "  timing   median per call; contestants interleaved (random order each round) "
        "after warm-up; results checked against numpy"
    )
    from benchmarks.handwritten import FASTMATH, PARALLEL_FASTMATH
    print(f"  flags    hand-written numba compiled as gradjit's kernels are: error_model='numpy', "
          f"fastmath={sorted(FASTMATH)} ({sorted(PARALLEL_FASTMATH)} with parallel=True),")
    print("           + reassoc/nsz on the sums written as loops (gradjit reassociates its "
          "accumulators); outputs: each contestant allocates its own result")
    print(f"  load     {load_note()}")
    print()


# ---------------------------------------------------------------------------------------
# Running the cases
# ---------------------------------------------------------------------------------------


def prepare(factories, case, args, forward, errors):
    """Build, warm up and check each contestant: {name: thunk} plus {name: Cell} notes, and
    {name: factor} for the `suite.Scaled` ones."""
    thunks, notes, factors = {}, {}, {}
    expected = suite.reference(case, args, forward)
    for name, factory in factories.items():
        try:
            thunk = factory(case, args)
            want = expected
            if isinstance(thunk, suite.Scaled):
                want = suite.reference(case, thunk.args, forward)
                factors[name] = thunk.factor
                thunk = thunk.thunk
            result = thunk()  # first call: compiles
            thunk()
        except peers.Unavailable as e:
            notes[name] = Cell(note=errors.note("n/a", str(e)) if str(e) else "n/a")
            continue
        except suite.NotApplicable:
            notes[name] = Cell(note="-")
            continue
        except Exception as e:  # noqa: BLE001 - gradjit is allowed to fail, per cell
            notes[name] = Cell(note=errors.note("error", e))
            continue
        wrong = mismatch(result, want, rtol=case.workload.rtol)
        if wrong:
            notes[name] = Cell(note=errors.note("wrong", f"{name} {case.label}: {wrong}"))
            continue
        thunks[name] = thunk
    return thunks, notes, factors


def run_case(case, quick, errors):
    """Cells for the contestants and, if the workload has one, the forward pass. Times are
    per `per_call` unit (J4: per leapfrog step); a scaled contestant's cell is marked "~"."""
    args = case.args()
    thunks, cells, factors = prepare(suite.CONTESTANTS, case, args, False, errors)
    fwd_cells = {}
    if case.workload.numba_forward is not None:
        fthunks, fwd_cells, _ = prepare(suite.FORWARD, case, args, True, errors)
        thunks.update({("fwd", n): t for n, t in fthunks.items()})
    budget, min_samples = (1.0, 3) if quick else (10.0, 9)
    for key, t in measure(thunks, budget, min_samples=min_samples).items():
        if isinstance(t, Exception):
            cell = Cell(note=errors.note("error", t))
        else:
            cell = Cell(
                seconds=t.seconds * factors.get(key, 1) / case.workload.per_call,
                cores=t.cores,
                note="~" if key in factors else "",
            )
        if isinstance(key, tuple):
            fwd_cells[key[1]] = cell
        else:
            cells[key] = cell
    return cells, fwd_cells


def cold_rows(groups, repeats, errors, rep=None):
    rows = []
    for group in groups:
        for contestant in coldstart.CONTESTANTS:
            print(f"  cold {group} {contestant} ...", file=sys.stderr, flush=True)
            try:
                r = coldstart.cold_start(contestant, group, repeats=repeats)
                rows.append([group, contestant, fmt_time(r["first"]), fmt_time(r["import"])])
                if rep is not None:
                    rep.add_cold(group, contestant, r["first"])
            except Exception as e:  # noqa: BLE001 - shown as a numbered note
                rows.append([group, contestant, errors.note("error", str(e)), ""])
    return rows


def startup_rows(groups, repeats, errors):
    rows = []
    for group in groups:
        print(f"  start-up {group} ...", file=sys.stderr, flush=True)
        try:
            r = coldstart.startup(group, repeats=repeats)
            label = group + (f" X {coldstart.STARTUP_N[group]:.0e}x16" if coldstart.STARTUP_N[group]
                             else "")
            rows.append([label, fmt_time(r["import"]), fmt_time(r["cold"]), fmt_time(r["warm"]),
                         fmt_time(r["warm_cpu"]), fmt_time(r["call"])])
        except Exception as e:  # noqa: BLE001 - shown as a numbered note
            rows.append([group, errors.note("error", str(e)), "", "", "", ""])
    return rows


def tape_bytes(lowered, steps):
    """Bytes of loop tape in a gradjit kernel, from its optimized IR: every `tape_new` holds one
    value of its element shape per iteration, and a counted loop allocates its tapes for the
    trip count up front (so `steps` iterations need exactly this)."""
    from gradjit.compiler.ir import subgraphs

    total, todo = 0, [lowered.optimized]
    while todo:
        graph = todo.pop()
        for eqn in graph.eqns:
            todo.extend(subgraphs(eqn))
            if eqn.prim.name == "tape_new":
                aval = eqn.outputs[0].aval
                elem = np.dtype(aval.dtype.removeprefix("tape:")).itemsize
                if not all(isinstance(d, int) for d in aval.shape):
                    raise ValueError("a taped value's shape depends on the inputs")
                total += elem * int(np.prod(aval.shape))
    return total * steps


def tape_note(case):
    """The tape memory of gradjit's L2 kernel, as a line for under the table."""
    try:
        import gradjit as gj

        args = case.args()
        low = gj.jacobian(case.workload.fn, argnums=case.workload.argnums).lower(*args)
        nbytes = tape_bytes(low, args[-1])
    except Exception as e:  # noqa: BLE001 - a note, not a result
        return f"{case.label}: gradjit tape size unknown ({type(e).__name__}: {e})"
    return (
        f"{case.label}: gradjit tapes {nbytes / 2**20:.2f} MiB (from the IR: taped values x "
        f"steps x itemsize); the hand-written adjoint stores 2 x steps x 8 B = "
        f"{16 * args[-1] / 2**20:.2f} MiB"
    )


MULTICORE = 1.3  # CPU time / wall time above which a cell is marked as multi-core


def fmt_cell(cell, base=None):
    if cell.seconds is None:
        return cell.note
    text = cell.note + fmt_time(cell.seconds) + ("*" if cell.cores > MULTICORE else " ")
    if base is None or base.seconds is None:
        return text
    return f"{text} {fmt_ratio(cell.seconds / base.seconds):>5}"


def guard_table(quick):
    """The cost of freshness: W2's gradient with its three constants in the source, against
    the same constants read through ``self`` (re-read and compared at every call)."""
    import gradjit as gj
    from benchmarks import workloads as wk

    x = wk.himmelblau_input()
    plain, guarded = gj.grad(wk.himmelblau), gj.grad(wk.HimmelblauModel().loss)
    np.testing.assert_allclose(guarded(x), plain(x), rtol=1e-12)
    cells = measure({"plain": lambda: plain(x), "guarded": lambda: guarded(x)},
                    0.3 if quick else 3.0)
    rows = [[name, fmt_time(c.seconds) if isinstance(c, Cell) else repr(c)]
            for name, c in cells.items()]
    if all(isinstance(c, Cell) for c in cells.values()):
        extra = (cells["guarded"].seconds - cells["plain"].seconds) * 1e6
        rows.append(["difference", f"{extra:+.3f} us"])
    return ("Guarded reads: W2 gradient, constants in the source vs three read through self "
            "(budget: +0.3 us)\n" + table(["W2", "median per call"], rows))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, few samples (smoke run)")
    ap.add_argument("--only", help="comma-separated workload groups, e.g. W1,W3a")
    ap.add_argument("--no-cold", action="store_true", help="skip the cold-compile table")
    ap.add_argument("--out", metavar="DIR",
                    help="also write DIR/results.md and the figures (report.py); make bench "
                         "writes benchmarks/results/")
    opts = ap.parse_args(argv if argv is not None else sys.argv[1:])
    rep = None
    if opts.out:
        rep = report.Report(opts.out, argv if argv is not None else sys.argv[1:])
        sys.stdout = report.Tee(sys.stdout)
    try:
        _run(opts, ap, rep)
    finally:
        if rep is not None:
            text, sys.stdout = sys.stdout.kept.getvalue(), sys.stdout.stream
            rep.write(text)


def _sweep(rep, quick, errors):
    """The sizes of the elementwise-scaling figure (not printed: the table has two of them)."""
    wl = next(w for w in suite.WORKLOADS if w.group == report.SWEEP_GROUP)
    for size in report.QUICK_SWEEP_SIZES if quick else report.SWEEP_SIZES:
        print(f"  sweep {wl.group} n={size:.0e} ...", file=sys.stderr, flush=True)
        cells, _ = run_case(suite.Case(wl, size, False), quick, errors)
        rep.sweep[size] = {n: c.seconds for n, c in cells.items() if c.seconds is not None}


def _run(opts, ap, rep):
    only = set(opts.only.split(",")) if opts.only else None
    known = {wl.group for wl in suite.WORKLOADS}
    if only and not only <= known:
        ap.error(f"unknown workload(s) {sorted(only - known)}; known: {sorted(known)}")

    print_header(opts.quick)
    # Steady-state timings: every contestant's kernel from its first call (tier 0, numpy answers
    # while gradjit's kernel compiles, belongs to the first-call tables, whose fresh processes
    # get the user's setting back).
    user_tiered = os.environ.get("GRADJIT_TIERED")
    os.environ["GRADJIT_TIERED"] = "0"
    errors = Errors()
    names = list(suite.CONTESTANTS)
    grad_rows, fwd_rows, section = [], [], None
    for case in suite.cases(opts.quick, only):
        print(f"  running {case.label} ...", file=sys.stderr, flush=True)
        if case.workload.section != section:
            section = case.workload.section
            grad_rows.append([f"-- {section}"] + [""] * len(names))
        cells, fwd = run_case(case, opts.quick, errors)
        if rep is not None:
            rep.add_case(case, cells)
        base = cells.get(suite.BASELINE)
        grad_rows.append([case.label] + [fmt_cell(cells[n], base) for n in names])
        for name, fcell in fwd.items():
            if fcell.note == "-":
                continue
            g = cells.get(name)
            ratio = (
                ""
                if g is None or g.seconds is None or fcell.seconds is None
                else fmt_ratio(g.seconds / fcell.seconds)
            )
            fwd_rows.append([case.label, name, fmt_cell(fcell), fmt_cell(g) if g else "-", ratio])

    print(
        "Median time per call (per step for J4), and ratio to hand-written numba "
        f"({suite.BASELINE} = 1x)"
    )
    print(table(["workload"] + names, grad_rows))
    print()
    for wl in suite.WORKLOADS:
        if not only or wl.group in only:
            print(f"  {wl.group:4} {wl.title}")
    print(
        '  -par: multi-core (gradjit target="parallel", numba prange), largest size only;'
        f" *: used more than one core (CPU time / wall time > {MULTICORE})"
    )
    print(
        "  jax: jax.jit(jax.grad) for W*; lax.fori_loop for L* (jit(jacrev) for L2); "
        "vmap(jacfwd) for J1, jax.hessian for J2-J3; jax-rev: vmap(jacrev) for J1"
    )
    print(
        "  torch: torch.func.vmap(jacrev) for J1, torch.autograd.functional.hessian/jacobian "
        "for J2-J3/L2"
    )
    scaled = sorted(
        {
            (wl.group, f)
            for wl in suite.WORKLOADS
            for _, f in wl.scaled
            if not only or wl.group in only
        }
    )
    if scaled:
        print(
            "  ~: an eager Python loop timed on fewer steps and scaled up linearly ("
            + ", ".join(f"{g}: 1/{f} of the steps" for g, f in scaled)
            + ")"
        )
    tapes = [tape_note(c) for c in suite.cases(opts.quick, only) if c.workload.group == "L2"]
    for note in filter(None, tapes):
        print(f"  {note}")
    if fwd_rows:
        print()
        print("Cheap gradient: gradient time / forward time (target for gradjit: <= 3x)")
        print(table(["workload", "contestant", "forward", "gradient", "grad/fwd"], fwd_rows))

    if not only or "W2" in only:
        print()
        print(guard_table(opts.quick))

    if user_tiered is None:
        os.environ.pop("GRADJIT_TIERED")
    else:
        os.environ["GRADJIT_TIERED"] = user_tiered
    groups = [g for g in coldstart.GROUPS if not only or g in only]
    if groups and not opts.no_cold:
        print()
        print(
            "Cold compile: define -> first gradient in a fresh process (small inputs, "
            "GRADJIT_DISABLE_CACHE=1); framework import time separate"
        )
        print(
            table(
                ["workload", "contestant", "first gradient", "import"],
                cold_rows(groups, 1 if opts.quick else 3, errors, rep),
            )
        )

        print()
        print("Start-up (gradjit): import, cold first call on an empty disk cache, warm-from-disk "
              "first call in a new process (no tracing, no numba compilation), warm call")
        print(table(["workload", "import gradjit", "cold first", "warm-from-disk first",
                     "(CPU time)", "warm call"],
                    startup_rows(groups, 1 if opts.quick else 3, errors)))

    os.environ["GRADJIT_TIERED"] = "0"
    if rep is not None and (not only or report.SWEEP_GROUP in only):
        _sweep(rep, opts.quick, errors)

    print()
    print(f"Load average at the end (this run adds ~1): {load_note(own=1.0)}")
    if errors.messages:
        print("Notes:")
        errors.print()


if __name__ == "__main__":
    main()
