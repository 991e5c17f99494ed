"""Cold compile: define -> first gradient, in a fresh process.

Child:  python benchmarks/coldstart.py CONTESTANT GROUP   (prints one JSON line)
Parent: `cold_start(contestant, group)` runs the child with GRADJIT_DISABLE_CACHE=1 and a
        private, empty GRADJIT_CACHE_DIR, so no disk cache hides the compile.

"import" is the framework's import (numba, jax, gradjit); "first" is everything after it:
defining the transform (decorating, jitting) and the first call, which compiles. Inputs
are small, so "first" is compile time, not compute.
"""

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


def _child(contestant, group):
    sys.path.insert(0, str(ROOT))
    import numpy as np

    from benchmarks import workloads as wk

    fn, args, argnums, expected, kernel = {
        "W2": (wk.himmelblau, (wk.himmelblau_input(),), 0, wk.himmelblau_grad, "himmelblau_grad"),
        "W4": (wk.mse, wk.linear_inputs(1000), (0, 1), wk.mse_grad, "mse_grad"),
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

    if contestant == "gradjit":
        out = gj.grad(fn, argnums=argnums)(*args)
    elif contestant == "numba":
        from benchmarks import handwritten as hw

        out = getattr(hw, kernel)(*args)
    elif contestant == "jax":
        out = jax.block_until_ready(jax.jit(jax.grad(with_numpy(fn, jnp), argnums))(*args))
    t2 = time.perf_counter()

    from benchmarks.harness import mismatch

    np_args = tuple(np.asarray(a) for a in args)
    print(
        json.dumps(
            {"import": t1 - t0, "first": t2 - t1, "wrong": mismatch(out, expected(*np_args))}
        )
    )


def cold_start(contestant, group, repeats=1, timeout=600):
    """Median {"import": s, "first": s} over `repeats` fresh processes; raises on failure."""
    runs = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as cache_dir:
            env = dict(os.environ, GRADJIT_DISABLE_CACHE="1", GRADJIT_CACHE_DIR=cache_dir)
            p = subprocess.run(
                [sys.executable, __file__, contestant, group],
                check=False,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        if p.returncode != 0:
            lines = (p.stderr or p.stdout).strip().splitlines() or [f"exit {p.returncode}"]
            raise RuntimeError(lines[-1])
        runs.append(json.loads(p.stdout.strip().splitlines()[-1]))
    if runs[0]["wrong"]:
        raise RuntimeError(f"wrong gradient: {runs[0]['wrong']}")
    return {k: sorted(r[k] for r in runs)[len(runs) // 2] for k in ("import", "first")}


if __name__ == "__main__":
    _child(*sys.argv[1:3])
