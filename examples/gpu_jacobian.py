"""The batched Jacobian of B(x, y, z) = [x^3 - y^2, y^2 + z^2, z^3 - x^2] on the GPU.

``gj.vmap(gj.jacobian(b))`` of the per-point field, compiled for ``target="cuda"``: device
arrays in (numba-cuda's ``cuda.to_device``), a device array of n 3 x 3 Jacobians out, checked
against the closed form and against the CPU target. Without an NVIDIA GPU the script runs in
numba-cuda's simulator (NUMBA_ENABLE_CUDASIM=1, set here before numba is imported) at a small
size: the simulator runs kernels in Python, so it checks results, not speed. Needs the
``cuda`` extra (``pip install gradjit[cuda]``); without numba-cuda it says so and exits 0.

    python examples/gpu_jacobian.py [N]
"""

import os
import shutil
import sys
import time

if "NUMBA_ENABLE_CUDASIM" not in os.environ and shutil.which("nvidia-smi") is None:
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"  # before numba is first imported
SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")

import numpy as np  # noqa: E402

import gradjit as gj  # noqa: E402
from _check import check, section  # noqa: E402
from batched_jacobian import b, closed_form  # noqa: E402


def main(n):
    try:
        from numba import cuda
        import numba_cuda  # noqa: F401 - the numba-cuda package, not numba's deprecated module
    except ImportError:
        print("skipped: numba-cuda is not installed (pip install gradjit[cuda])")
        return
    where = "numba-cuda's simulator (no GPU found)"
    if not SIMULATED:
        name = cuda.get_current_device().name
        where = name.decode() if isinstance(name, bytes) else name
    section(f"vmap(jacobian(b)) at {n:,} points on {where}")
    X = np.random.default_rng(0).uniform(-2, 2, (n, 3))
    on_gpu = gj.vmap(gj.jacobian(b), target="cuda")
    Xd = cuda.to_device(X)
    t = time.perf_counter()
    Jd = on_gpu(Xd)
    first = time.perf_counter() - t
    print(f"  result: {type(Jd).__name__} of shape {Jd.shape} (stays on the device); "
          f"first call {first:.2f}s (trace, compile)")
    J = Jd.copy_to_host()
    check("against the closed form", J, closed_form(X), rtol=1e-12, atol=1e-12,
          show_value=False)
    check("against target='cpu'", J, gj.vmap(gj.jacobian(b), target="cpu")(X), rtol=1e-12,
          atol=1e-12, show_value=False)
    if not SIMULATED:
        t = time.perf_counter()
        for _ in range(10):
            on_gpu(Xd)
        cuda.synchronize()
        print(f"  {(time.perf_counter() - t) / 10 * 1e3:.3f} ms per call on the device")


if __name__ == "__main__":
    default = 64 if SIMULATED or os.environ.get("GRADJIT_EXAMPLES_QUICK") else 10**7
    main(int(float(sys.argv[1])) if len(sys.argv) > 1 else default)
