"""Gradients over Dask arrays: time per gradient of a logistic loss on a LocalCluster of 1
and of 2 worker processes, against in-memory gradjit and hand-written Dask gradients.

    python benchmarks/dask_bench.py [--rows 4e6] [--chunk-rows 250000] [--rounds 7]
                                    [--small] [--out FILE]

The data (rows x 16 float64 features, binary labels; 4e6 rows = 0.5 GB, so it fits in
memory) is generated per chunk from a seed on the workers and persisted there: a gradient
reads it from worker memory, as a cluster holding its data would. The same data, gathered
to this process, is the in-memory contestant's. Contestants, all computing the value and
the gradient of the same loss:

- in-memory gradjit: ``gj.value_and_grad(loss)`` on numpy arrays, in this process;
- gradjit over Dask: the same call on the persisted Dask arrays (a per-chunk kernel, partial
  sums combined in a tree), with 1 and with 2 workers (one thread each);
- hand-written Dask: ``X.T @ (sigmoid(X @ w) - y) / n`` and the loss as Dask array
  expressions, on the same cluster;
- dask-glm's hand-written gradient (``dask_glm.families.Logistic``), only if it imports.

Per cluster, every round calls each contestant once in a fresh random order (drifts of a
shared machine hit all alike); the table has medians and the ratios the issue sets goals
for: 2 workers / 1 worker (goal: >= 1.6x faster), 1 worker / in-memory (goal: <= 1.3),
hand-written / gradjit (goal: > 1), and bytes of X read per second per worker.
"""

import os

# Single-threaded BLAS (the hand-written contestants' matrix products), as in the workers,
# whose nannies set the same: one thread per worker is the unit being compared.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
# steady state: the in-memory kernel from its first call (no numpy tier 0 in the timings)
os.environ.setdefault("GRADJIT_TIERED", "0")

import argparse  # noqa: E402
import itertools  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

FEATURES = 16
SEED = 16


def loss(w, X, y):
    z = X @ w
    return np.mean(np.logaddexp(0.0, z) - y * z)


def features_block(m, i):
    """Chunk ``i`` of X: seeded by its index, so the same chunk whichever worker makes it."""
    return np.random.default_rng([SEED, i]).standard_normal((m, FEATURES))


def labels_block(X, w, i):
    p = 1.0 / (1.0 + np.exp(-(X @ w)))
    return (np.random.default_rng([SEED, i, 1]).random(len(X)) < p).astype(np.float64)


def persisted(client, rows, chunk_rows, w_true):
    """X and y as Dask arrays whose chunks are made and kept on the workers, chunk i (both
    its X and y) on worker i mod n: an even spread, as a cluster holding its data would
    have (``persist`` alone left 3/4 of the chunks on one worker)."""
    import dask.array as da
    n_full, rest = divmod(rows, chunk_rows)
    chunks = (chunk_rows,) * n_full + ((rest,) if rest else ())
    workers = sorted(client.scheduler_info()["workers"])
    fx, fy = [], []
    for i, m in enumerate(chunks):
        where = [workers[i % len(workers)]]
        fx.append(client.submit(features_block, m, i, workers=where, pure=False))
        fy.append(client.submit(labels_block, fx[-1], w_true, i, workers=where, pure=False))
    client.gather(fy[:1])  # fail early if a chunk cannot be made
    import distributed
    distributed.wait(fx + fy)
    X = da.concatenate([da.from_delayed(f, (m, FEATURES), dtype=np.float64)
                        for f, m in zip(fx, chunks)])
    y = da.concatenate([da.from_delayed(f, (m,), dtype=np.float64) for f, m in zip(fy, chunks)])
    return X, y, fx + fy


def handwritten(w, X, y):
    """The gradient as one writes it by hand with Dask arrays (as dask-glm does)."""
    import dask
    import dask.array as da
    z = X @ w
    value = da.mean(da.logaddexp(0.0, z) - y * z)
    grad = X.T @ (1.0 / (1.0 + da.exp(-z)) - y) / X.shape[0]
    return dask.compute(value, grad)


def dask_glm_contestant():
    """dask-glm's hand-written logistic loss and gradient (sums over rows, as dask-glm's
    solvers use them), or the reason there is none."""
    try:
        from dask_glm.families import Logistic
    except ImportError as e:
        return None, f"n/a ({e.name or 'dask_glm'} not installed)"

    def run(w, X, y):
        import dask
        n = X.shape[0]
        value, grad = dask.compute(Logistic.pointwise_loss(w, X, y),
                                   Logistic.pointwise_gradient(w, X, y))
        return value / n, grad / n
    return run, None


def process_cpu():
    """CPU seconds (user + system) used so far by this process: run here and on each worker."""
    import resource
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def interleaved(contestants, rounds, client):
    """{name: ([wall seconds], [CPU seconds of this process and the workers])}: each round
    calls every contestant once, in a fresh random order. CPU is read before and after each
    call, outside the timed span: on a shared machine wall time includes waiting for a core,
    CPU time does not."""
    times = {name: ([], []) for name in contestants}
    order = list(contestants)

    def cpu():
        return process_cpu() + sum(client.run(process_cpu).values())
    for _ in range(rounds):
        random.shuffle(order)
        for name in order:
            c = cpu()
            t = time.perf_counter()
            contestants[name]()
            times[name][0].append(time.perf_counter() - t)
            times[name][1].append(cpu() - c)
    return times


def check(name, got, want, notes):
    value, grad = got
    ok = np.isclose(value, want[0], rtol=1e-9) and np.allclose(grad, want[1], rtol=1e-8,
                                                               atol=1e-12)
    if not ok:
        notes.append(f"{name}: result differs from in-memory gradjit (value {value} vs "
                     f"{want[0]}, max |grad diff| {np.max(np.abs(grad - want[1])):.2e})")
    return ok


def run_cluster(n_workers, args, w, w_true, state, notes):
    """Time the contestants on a LocalCluster of ``n_workers``; returns {name: median s}."""
    import dask
    import distributed

    import gradjit as gj
    cluster = distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1,
                                       processes=True, dashboard_address=None,
                                       silence_logs=logging.ERROR)
    client = distributed.Client(cluster)
    try:
        X, y, _futures = persisted(client, args.rows, args.chunk_rows, w_true)
        held = [len(v) for v in client.has_what().values()]
        if "X" not in state:  # the same data for the in-memory contestant (once)
            state["X"], state["y"] = X.compute(), y.compute()
            state["want"] = gj.value_and_grad(loss)(w, state["X"], state["y"])
        Xm, ym = state["X"], state["y"]
        vg = gj.value_and_grad(loss)
        funs = {
            "gradjit-dask": lambda v: vg(v, X, y),
            "hand-dask": lambda v: handwritten(v, X, y),
            "in-memory": lambda v: vg(v, Xm, ym),
        }
        glm, why = dask_glm_contestant()
        if glm is not None:
            funs["dask-glm"] = lambda v: glm(v, X, y)
        else:
            state["glm_note"] = why
        # Timed calls get parameters of their own, as an optimizer's calls do: the same
        # parameters twice in a row make the same task keys, which distributed may log as
        # "Couldn't gather keys ... forgotten" (the first call's results being released)
        # and compute again.
        step = itertools.count(1)
        contestants = {k: (lambda f=f: f(w + 1e-9 * next(step))) for k, f in funs.items()}
        with dask.config.set(scheduler=client.get):
            for name, fn in funs.items():  # warm up (trace, compile) and check
                check(f"{name}, {n_workers} worker(s)", fn(w), state["want"], notes)
            times = interleaved(contestants, args.rounds, client)
        print(f"  {n_workers} worker(s): chunks held per worker {held}; " + ", ".join(
            f"{k} {np.median(v[0]):.4f}s (CPU {np.median(v[1]):.4f}s)"
            for k, v in times.items()), flush=True)
        return {k: (float(np.median(v[0])), float(np.median(v[1]))) for k, v in times.items()}
    finally:
        client.close()
        cluster.close()


def table(args, res, state, notes):
    nbytes = args.rows * FEATURES * 8
    # the in-memory contestant ran in both sessions: the median of its two medians
    mem = tuple(float(np.median([res[1]["in-memory"][j], res[2]["in-memory"][j]]))
                for j in (0, 1))

    def row(label, tc, workers, ratio=""):
        if tc is None:
            return f"| {label} | {workers} | n/a | n/a | n/a | {ratio} |"
        t, c = tc
        per_worker = nbytes / t / workers / 1e9
        return (f"| {label} | {workers} | {t * 1e3:.1f} ms | {c * 1e3:.1f} ms | "
                f"{per_worker:.2f} GB/s | {ratio} |")

    g1, g2 = res[1]["gradjit-dask"][0], res[2]["gradjit-dask"][0]
    h1, h2 = res[1]["hand-dask"][0], res[2]["hand-dask"][0]
    glm1 = res[1]["dask-glm"][0] if "dask-glm" in res[1] else None
    glm2 = res[2]["dask-glm"][0] if "dask-glm" in res[2] else None
    glm_note = state.get("glm_note", "")
    cores = os.cpu_count()
    try:
        load = ", load average %.2f %.2f %.2f before the run" % state["load"]
    except KeyError:
        load = ""
    lines = [
        f"Logistic loss value and gradient, X of {args.rows:,} x {FEATURES} float64 "
        f"({nbytes / 1e9:.2f} GB) in chunks of {args.chunk_rows:,} rows, persisted on the "
        f"workers; medians of {args.rounds} interleaved rounds. Machine: {cores} cores "
        f"({platform.processor() or platform.machine()}){load}.",
        "",
        "| contestant | workers | median per gradient | CPU per gradient | X read per second "
        "per worker | ratio of times |",
        "|---|---|---|---|---|---|",
        row("in-memory gradjit (numpy arrays, one process)", mem, 1, "1 (reference)"),
        row("gradjit over Dask", res[1]["gradjit-dask"], 1, f"1 worker / in-memory: "
            f"**{g1 / mem[0]:.2f}** (goal <= 1.3)"),
        row("gradjit over Dask", res[2]["gradjit-dask"], 2, f"1 worker / 2 workers: "
            f"**{g1 / g2:.2f}x** faster (goal >= 1.6)"),
        row("hand-written Dask expression", res[1]["hand-dask"], 1, f"hand-written / gradjit: "
            f"**{h1 / g1:.2f}** (goal > 1)"),
        row("hand-written Dask expression", res[2]["hand-dask"], 2, f"hand-written / gradjit: "
            f"**{h2 / g2:.2f}**"),
    ]
    if glm1 is not None:
        lines += [row("dask-glm gradient", res[1]["dask-glm"], 1,
                      f"dask-glm / gradjit: **{glm1 / g1:.2f}**"),
                  row("dask-glm gradient", res[2]["dask-glm"], 2,
                      f"dask-glm / gradjit: **{glm2 / g2:.2f}**")]
    else:
        lines.append(f"| dask-glm gradient | 1, 2 | {glm_note} | n/a | n/a | n/a |")
    lines += [
        "",
        "CPU per gradient: this process's (client, scheduler, driver stages) plus every "
        "worker's, read before and after each call (a wall time above it is time spent "
        "waiting for a core). "
        f"X read per second per worker = X's bytes / median time / workers (the in-memory "
        f"row: one process). This machine has {cores} cores shared by the driver (the "
        "client, scheduler and this process's own in-memory runs) and the workers"
        + (" and, here, by other users" if load else "") + ": with 2 workers on 2 cores the "
        "2-worker speedup is bounded below 2x, and the driver's per-call overhead "
        "(building the graph, scheduling, combining) does not shrink with more workers.",
    ]
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=lambda s: int(float(s)), default=4_000_000,
                    help="rows of X (default 4e6: 0.5 GB)")
    ap.add_argument("--chunk-rows", type=lambda s: int(float(s)), default=None,
                    help="rows per chunk (default rows / 16)")
    ap.add_argument("--rounds", type=int, default=7, help="timed rounds (default 7)")
    ap.add_argument("--small", action="store_true", help="smoke run: 1e5 rows, 3 rounds")
    ap.add_argument("--out", help="also write the markdown table to this file")
    args = ap.parse_args(argv)
    if args.small:
        args.rows, args.rounds = min(args.rows, 100_000), min(args.rounds, 3)
    if args.chunk_rows is None:
        args.chunk_rows = max(1000, -(-args.rows // 16))
    try:
        import dask  # noqa: F401
        import distributed  # noqa: F401
    except ImportError as e:
        print(f"dask benchmark skipped: {e.name} is not installed (pip install gradjit[dask])")
        return 0

    rng = np.random.default_rng([SEED, 2**31])
    w_true = 0.5 * rng.standard_normal(FEATURES)
    w = w_true + 0.1 * rng.standard_normal(FEATURES)  # a point on the way to the optimum
    state, notes, res = {}, [], {}
    if hasattr(os, "getloadavg"):
        state["load"] = os.getloadavg()
    t0 = time.perf_counter()
    for n in (1, 2):
        res[n] = run_cluster(n, args, w, w_true, state, notes)
    text = table(args, res, state, notes)
    print()
    print(text)
    print(f"(benchmark ran in {time.perf_counter() - t0:.0f}s)")
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":  # the guard matters: worker processes import this module
    sys.exit(main(sys.argv[1:]))
