"""Run every seed workload and print gradjit's result next to the expected value.

    make demo        # or: .venv/bin/python examples/run_all.py
"""

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gradjit as gj  # noqa: E402
import seeds  # noqa: E402

try:  # control-flow examples need the control-flow front end
    import control_flow  # noqa: E402
    EXTRA = control_flow.ALL
except Exception:  # pragma: no cover
    EXTRA = []
try:  # local arrays written element by element
    import local_arrays  # noqa: E402
    EXTRA = EXTRA + local_arrays.ALL
except Exception:  # pragma: no cover
    pass


def close(a, b):
    if isinstance(a, tuple):
        return all(close(x, y) for x, y in zip(a, b))
    return np.allclose(a, b, rtol=1e-4, atol=1e-4)


def show(v):
    if isinstance(v, tuple):
        return "(" + ", ".join(show(x) for x in v) + ")"
    return np.array2string(np.asarray(v), precision=4, suppress_small=True, threshold=8,
                           max_line_width=60).replace("\n", " ")


def main():
    failed = 0
    for fn in seeds.ALL + EXTRA:
        t = time.perf_counter()
        got, want = fn()
        dt = time.perf_counter() - t
        ok = close(got, want)
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {fn.__name__:<24} {dt:6.2f}s  gradjit: {show(got)}")
        if not ok:
            print(f"{'':36}expected: {show(want)}")
    info = gj.cache_info()
    print(f"\n{len(seeds.ALL) + len(EXTRA) - failed} of {len(seeds.ALL) + len(EXTRA)} workloads "
          f"match; kernels compiled: {info.compiles}, loaded from disk: {info.disk_hits}, "
          f"cache hits: {info.hits}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
