"""Logistic regression over a data set larger than memory, on a Dask cluster.

The data set (by default 2e8 rows x 16 float64 features, about 26 GB) is a ``dask.array``
generated chunk by chunk from a seed, so it is never materialised: every evaluation of the
loss regenerates each chunk on a worker, runs gradjit's per-chunk kernel on it and keeps
only the chunk's partial sums. ``gj.value_and_grad(loss)`` is called on it as on numpy
arrays and hands scipy's L-BFGS-B a numpy value and gradient. The fit runs on a
``distributed.LocalCluster`` of worker processes; each worker compiles the kernel once (or
loads it from the disk cache) and reuses it for every chunk and iteration.

The labels follow the logistic model of known coefficients, so the fit must recover them
up to sampling noise: the script exits with status 1 if any fitted coefficient is more
than 6 standard errors (of order sqrt(1 / rows)) from the generating one.

    python examples/dask_logistic.py                          # 2e8 rows: long, ~26 GB
    python examples/dask_logistic.py --rows 200000            # quick: seconds
    python examples/dask_logistic.py --rows 1e7 --workers 2 --chunk-rows 500000 --maxiter 50

With GRADJIT_EXAMPLES_QUICK=1 (as examples/run_all.py sets) the default is the quick size.
A progress bar (distributed's ``progress``) is drawn for each pass over the data when the
output is a terminal (``--progress`` / ``--no-progress`` to choose).
"""

import argparse
import math
import os
import resource
import sys
import time

import numpy as np

FULL_ROWS = 200_000_000
QUICK_ROWS = 200_000
FEATURES = 16
SEED = 16
TOL_SIGMAS = 6


def loss(theta, X, y):
    """Mean negative log-likelihood of a logistic model; ``theta`` = coefficients, intercept."""
    z = X @ theta[:-1] + theta[-1]
    return np.mean(np.logaddexp(0.0, z) - y * z)


def true_theta(d, seed):
    rng = np.random.default_rng([seed, 2**31])  # a stream no chunk uses
    return np.append(0.5 * rng.standard_normal(d), -0.5)


def features_block(d, seed, block_info=None):
    """The features of one chunk: seeded by the chunk's index, so any worker (or a rerun)
    generates the same chunk."""
    (i, _), shape = block_info[None]["chunk-location"], block_info[None]["chunk-shape"]
    return np.random.default_rng([seed, i]).standard_normal(shape)


def labels_block(X, theta, seed, block_info=None):
    """The labels of one chunk, drawn from the logistic model on its features (a stream of
    their own, so they don't depend on how the features' stream is consumed)."""
    i = block_info[None]["chunk-location"][0]
    p = 1.0 / (1.0 + np.exp(-(X @ theta[:-1] + theta[-1])))
    return (np.random.default_rng([seed, i, 1]).random(len(X)) < p).astype(np.float64)


def dataset(rows, chunk_rows, d, seed, theta):
    import dask.array as da
    chunks = (chunk_rows,) * (rows // chunk_rows) + ((rows % chunk_rows,) if rows % chunk_rows
                                                     else ())
    X = da.map_blocks(features_block, d, seed, chunks=(chunks, (d,)), dtype=np.float64,
                      meta=np.empty((0, 0)), name="features")
    y = X.map_blocks(labels_block, theta, seed, drop_axis=1, dtype=np.float64,
                     meta=np.empty(0), name="labels")
    return X, y


def standard_errors(theta, rows, seed, n=100_000):
    """Standard errors of the maximum-likelihood fit at ``rows`` rows, sqrt(diag(I^-1) / rows),
    from the Fisher information I = E[p (1 - p) x x^T] estimated on an in-memory sample."""
    rng = np.random.default_rng([seed, 2**31 + 1])
    Z = np.hstack([rng.standard_normal((n, len(theta) - 1)), np.ones((n, 1))])
    p = 1.0 / (1.0 + np.exp(-Z @ theta))
    info = (Z * (p * (1 - p))[:, None]).T @ Z / n
    return np.sqrt(np.diag(np.linalg.inv(info)) / rows)


def progress_scheduler(client):
    """A Dask scheduler function: the client's, drawing distributed's progress bar for each
    computation (gradjit calls ``dask.compute`` once per pass over the chunks)."""
    from distributed import progress

    def get(dsk, keys, **kwargs):
        futures = client.get(dsk, keys, sync=False, **kwargs)
        progress(futures)  # in a console, blocks until they are done; the bar then clears
        return client.gather(futures)
    return get


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def parse(argv):
    quick = os.environ.get("GRADJIT_EXAMPLES_QUICK") == "1"
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=lambda s: int(float(s)),
                    default=QUICK_ROWS if quick else FULL_ROWS,
                    help=f"rows of the data set (default {FULL_ROWS:.0e}; {QUICK_ROWS} with "
                         "GRADJIT_EXAMPLES_QUICK=1)")
    ap.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    ap.add_argument("--chunk-rows", type=lambda s: int(float(s)), default=None,
                    help="rows per chunk (default min(1e6, rows / 8))")
    ap.add_argument("--maxiter", type=int, default=100, help="L-BFGS-B iterations (default 100)")
    ap.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                    help="draw a progress bar per pass (default: when stdout is a terminal)")
    args = ap.parse_args(argv)
    if args.chunk_rows is None:
        args.chunk_rows = min(1_000_000, max(1000, math.ceil(args.rows / 8)))
    if args.progress is None:
        args.progress = sys.stdout.isatty()
    return args


def main(argv):
    try:
        import dask
        import dask.array  # noqa: F401
        import distributed
        from scipy.optimize import minimize
    except ImportError as e:
        print(f"dask_logistic skipped: needs dask, distributed and scipy ({e.name} is missing;"
              " pip install gradjit[dask] scipy)")
        return 0
    import logging

    import psutil  # a dependency of distributed

    import gradjit as gj

    args = parse(argv)
    d, rows = FEATURES, args.rows
    theta0 = true_theta(d, SEED)
    X, y = dataset(rows, args.chunk_rows, d, SEED, theta0)
    gb = rows * (d + 1) * 8 / 1e9
    print(f"data: {rows:,} rows x {d} float64 features + labels = {gb:.2f} GB in "
          f"{X.numblocks[0]} chunks of {args.chunk_rows:,} rows, generated per chunk from seed "
          f"{SEED} (this machine: {psutil.virtual_memory().total / 1e9:.0f} GB, "
          f"{os.cpu_count()} cores)")

    t = time.perf_counter()
    cluster = distributed.LocalCluster(n_workers=args.workers, threads_per_worker=1,
                                       processes=True, dashboard_address=None,
                                       silence_logs=logging.ERROR)
    client = distributed.Client(cluster)
    print(f"cluster: LocalCluster of {args.workers} worker processes x 1 thread, started in "
          f"{time.perf_counter() - t:.1f}s")

    value_and_grad = gj.value_and_grad(loss)
    evals = []  # seconds per evaluation (one pass over the data each)

    def fun(theta):
        t = time.perf_counter()
        value, grad = value_and_grad(theta, X, y)
        evals.append(time.perf_counter() - t)
        return value, grad

    last = [time.perf_counter()]

    def callback(intermediate_result):
        now = time.perf_counter()
        r = intermediate_result
        print(f"  iter {len(iter_times) + 1:3d}  loss {r.fun:.10f}  {now - last[0]:6.2f}s")
        iter_times.append(now - last[0])
        last[0] = now

    iter_times = []
    schedule = progress_scheduler(client) if args.progress else client.get
    print("fitting with scipy L-BFGS-B on gj.value_and_grad(loss) ...")
    t0 = last[0] = time.perf_counter()
    try:
        with dask.config.set(scheduler=schedule):
            res = minimize(fun, np.zeros(d + 1), jac=True, method="L-BFGS-B", callback=callback,
                           options={"maxiter": args.maxiter, "ftol": 1e-12, "gtol": 1e-8})
        total = time.perf_counter() - t0
        workers = client.run(peak_rss_mb)
    finally:
        client.close()
        cluster.close()

    first, steady = evals[0], evals[1:] or evals
    print(f"{res.message} after {res.nit} iterations, {res.nfev} evaluations in {total:.1f}s")
    print(f"time: first evaluation {first:.2f}s (trace, compile once per worker); then median "
          f"{np.median(steady):.3f}s per evaluation ({rows * d * 8 / 1e9 / np.median(steady):.2f}"
          f" GB of X per second), {np.median(iter_times or [total]):.3f}s per iteration")
    print(f"peak memory: driver {peak_rss_mb():.0f} MB; workers "
          + ", ".join(f"{m:.0f} MB" for m in workers.values())
          + f" (data {gb:.2f} GB, chunk {args.chunk_rows * (d + 1) * 8 / 1e6:.0f} MB)")

    se = standard_errors(theta0, rows, SEED)
    tol = TOL_SIGMAS * se
    err = np.abs(res.x - theta0)
    print(f"\n{'coefficient':>12} {'generating':>11} {'fitted':>11} {'|error|':>9} "
          f"{'tolerance':>9}")
    names = [f"w[{j}]" for j in range(d)] + ["intercept"]
    for name, a, b, e, tl in zip(names, theta0, res.x, err, tol):
        print(f"{name:>12} {a:11.5f} {b:11.5f} {e:9.5f} {tl:9.5f}{'' if e <= tl else '  FAIL'}")
    worst = np.max(err / se)
    if not np.all(err <= tol):
        print(f"FAIL: fitted coefficients are up to {worst:.1f} standard errors from the "
              f"generating ones (allowed {TOL_SIGMAS})")
        return 1
    print(f"ok: every fitted coefficient within {TOL_SIGMAS} standard errors of the generating "
          f"one (largest {worst:.2f}; a standard error is ~{np.median(se) * math.sqrt(rows):.1f}"
          f" * sqrt(1/rows))")
    return 0


if __name__ == "__main__":  # the guard matters: worker processes import this module
    sys.exit(main(sys.argv[1:]))
