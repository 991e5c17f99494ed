"""Everything about CUDA devices at run time, in one module: whether a value is a device
array, whether a GPU (or numba's simulator) is there, transfers, the kind of array results
are handed back as, and the device's compute capability for cache keys.

numba-cuda is imported here, and only when the CUDA target is used: ``import gradjit`` and
CPU calls never import it. Detection of device arrays needs no import at all: a device array
is anything with ``__cuda_array_interface__`` (numba device arrays, CuPy arrays, PyTorch CUDA
tensors), or the simulator's stand-in for one.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from ..errors import GradjitError

INSTALL = "pip install gradjit[cuda]"


def simulating():
    """Whether numba's CUDA simulator is on (``NUMBA_ENABLE_CUDASIM=1``, read by numba when
    it is first imported)."""
    cfg = sys.modules.get("numba.core.config")
    if cfg is not None and hasattr(cfg, "ENABLE_CUDASIM"):
        return bool(cfg.ENABLE_CUDASIM)
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0").strip() not in ("", "0")


def is_device_array(x):
    """Whether ``x`` lives on a CUDA device (no import needed to tell)."""
    t = type(x)
    if t is np.ndarray:
        return False
    if hasattr(x, "__cuda_array_interface__"):
        return True
    return t.__name__ == "FakeCUDAArray" and t.__module__.startswith("numba")


def device_key(x):
    """The signature key of a device array: marked "cuda" so that it never finds the entry of
    a numpy array of the same dtype and rank (their kernels differ)."""
    s = tuple(int(d) for d in x.shape)
    return ("cuda", np.dtype(x.dtype), len(s), tuple(d == 1 for d in s) if 1 in s else None)


def host_view(x):
    """What tracing sees of a leaf: a device array's numpy stand-in, anything else as is."""
    return standin(x) if is_device_array(x) else x


_cuda = []


def cuda():
    """The ``numba.cuda`` module of numba-cuda, checked usable: a GradjitError says what is
    missing (numba-cuda itself, or a GPU and the simulator)."""
    if _cuda:
        return _cuda[0]
    try:
        import numba_cuda  # noqa: F401 - numba-cuda, not numba's deprecated built-in numba.cuda
    except ImportError:
        raise GradjitError(f"target='cuda' needs numba-cuda, which is not installed: {INSTALL} "
                           "(numba's own numba.cuda is deprecated and not used)") from None
    try:
        from numba import cuda as mod
    except Exception as e:  # noqa: BLE001 - a broken install: say so in one line
        raise GradjitError(f"target='cuda': importing numba-cuda failed ({type(e).__name__}: "
                           f"{e})") from None
    if not simulating():
        try:
            ok = mod.is_available()
        except Exception:  # noqa: BLE001 - no driver: the same answer
            ok = False
        if not ok:
            raise GradjitError(
                "target='cuda': no CUDA GPU is available (numba-cuda found no usable device or "
                "driver) and the CUDA simulator is off; use target='cpu', or set "
                "NUMBA_ENABLE_CUDASIM=1 before numba is imported to run the kernels in numba's "
                "simulator (slow: for tests)")
    _cuda.append(mod)
    return mod


def versions():
    """What a CUDA kernel module depends on besides its source and gradjit/numba: numba-cuda's
    version, the device's compute capability, and the helpers of kernels/cuda.py that its
    kernels call (their edits numba-cuda's own cache would miss)."""
    if not _versions:
        import hashlib
        from importlib import metadata

        from ..kernels import cuda as helpers  # (imports numba-cuda)
        try:
            ver = metadata.version("numba-cuda")
        except metadata.PackageNotFoundError:
            ver = "?"
        with open(helpers.__file__, "rb") as f:
            stamp = hashlib.sha256(f.read()).hexdigest()[:16]
        _versions.append(f"numba-cuda={ver};cc={capability()};cuda-helpers={stamp}")
    return _versions[0]


_versions = []


def capability():
    """The compute capability for cache keys: ``"sm_90"``, or ``"sim"`` under the
    simulator."""
    if simulating():
        return "sim"
    cc = cuda().get_current_device().compute_capability
    return f"sm_{cc[0]}{cc[1]}"


# ---------------------------------------------------------------------------------------------
# Transfers and the kind of results
# ---------------------------------------------------------------------------------------------


def as_numba(x):
    """A numba device array for ``x`` (a device array of any library), no copy."""
    t = type(x)
    if t.__module__.startswith(("numba", "numba_cuda")):
        return x
    cu = cuda()
    return cu.as_cuda_array(x)


def to_device(x):
    """A host value as a device array (numpy arrays are copied once)."""
    return cuda().to_device(np.ascontiguousarray(x))


def kind_of(x):
    """The library of a device array: "cupy", "torch", or "numba"."""
    mod = type(x).__module__.split(".")[0]
    return mod if mod in ("cupy", "torch") else "numba"


def wrapper(kind):
    """How a numba device array result is handed back for inputs of ``kind``: as the input's
    own kind where that is free (CuPy and PyTorch read ``__cuda_array_interface__``, no
    copy), else as it is. The peer library is used only if the caller already imported it."""
    if kind == "cupy" and "cupy" in sys.modules:
        cp = sys.modules["cupy"]
        return cp.asarray
    if kind == "torch" and "torch" in sys.modules:
        torch = sys.modules["torch"]
        return lambda d: torch.as_tensor(d, device="cuda")
    return None


def standin(x):
    """A numpy array of the dtype and shape of device array ``x``, taking no memory."""
    dt = np.dtype(x.dtype) if not hasattr(x, "__cuda_array_interface__") else \
        np.dtype(x.__cuda_array_interface__["typestr"])
    shape = tuple(int(d) for d in x.shape)
    return np.lib.stride_tricks.as_strided(np.zeros(1, dt), shape, (0,) * len(shape))


def runner(host_fn, kinds, what):
    """A function calling the generated host function ``host_fn`` like a CPU kernel: numpy
    arrays copied to the device once, device arrays of any library passed without a copy;
    array results handed back as device arrays when an argument was one (as the input's own
    kind where free, ``wrapper``), else copied back to numpy; rank-0 results as numpy scalars
    (one small copy). ``kinds``: the module's ``kernel_results``. A failure inside numba-cuda
    (a kernel it cannot compile) becomes a GradjitError naming ``what()``."""
    cu = cuda()
    to_dev = cu.to_device
    n = len(kinds)

    def run(*args):
        dev = None
        ins = []
        for a in args:
            if type(a) is np.ndarray:
                a = to_dev(np.ascontiguousarray(a))
            elif is_device_array(a):
                dev = dev or kind_of(a)
                a = as_numba(a)
            ins.append(a)
        try:
            raw = host_fn(*ins)
        except GradjitError:
            raise
        except Exception as e:  # noqa: BLE001 - numba-cuda's errors: one line, ours
            raise GradjitError(f"internal error: the CUDA kernels of {what()} failed: "
                               f"{type(e).__name__}: {' '.join(str(e).split())[:400]}") from None
        wrap = wrapper(dev) if dev else None
        outs = [_result(r, k, dev, wrap) for r, k in zip(raw, kinds)]
        return outs[0] if n == 1 else tuple(outs)
    return run


def _result(r, kind, dev, wrap):
    if kind[0] == "host":
        return np.dtype(kind[1]).type(r)
    if kind[0] == "one":
        return np.dtype(kind[1]).type(r.copy_to_host()[0])
    if not dev:
        return r.copy_to_host()
    return r if wrap is None else wrap(r)
