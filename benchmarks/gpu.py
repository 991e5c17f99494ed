"""gradjit's CUDA target on a real GPU, against numba-cuda, CuPy, JAX and PyTorch.

On the GPU machine (one NVIDIA GPU; numba-cuda, and optionally CuPy, JAX[cuda], PyTorch[cuda]):

    .venv/bin/python benchmarks/gpu.py --out gpu-bench.md          # also writes gpu-bench.json
    .venv/bin/python benchmarks/gpu.py --out gpu-bench.md --tests  # + pytest tests/cuda

Expected: 1-3 minutes without --tests (most of it imports, host data of up to 1.3 GB, and
compiles), capped at --time-limit (300 s) with --tests.

Smoke run without a GPU (tiny sizes, under numba's CUDA simulator; every section that needs
what is missing says "n/a (reason)"):

    NUMBA_ENABLE_CUDASIM=1 .venv/bin/python benchmarks/gpu.py --small

Sections (each one, and each contestant in it, in its own try/except):

1. Device: GPU name, compute capability, memory, driver / NVRTC / runtime versions, library
   versions.
2. W3: gradient of sum(x**2 + x**3 + 5), n = 10^8 float64 on a device array. gradjit's time,
   the bytes a gradient must move (read x, write the gradient: 16n), and the device-to-device
   copy bandwidth measured in the same run (2 * 8n bytes per copy); gradjit's fraction of it
   (goal >= 70%). A hand-written numba-cuda kernel, JAX and torch for reference.
3. B-field: batched 3x3 Jacobians of f(p) = [x^3 - y^2, y^2 + z^2, z^3 - x^2], N = 10^7 rows:
   gj.vmap(gj.jacobian(f)) vs jax.jit(jax.vmap(jax.jacfwd(f))) vs
   torch.func.vmap(torch.func.jacrev(f)) (goal: gradjit faster than both), checked against the
   closed form.
4. MSE: gradient w.r.t. w of mean((X @ w - y)**2), X 10^7 x 16 float64: gradjit vs JAX vs torch
   (and CuPy/cuBLAS 2/N X^T (X w - y)), checked against numpy.
5. Overhead: per-call time of a small gradient (n = 1000, sum(x**2)) vs a bare numba-cuda kernel
   launch computing 2*x into a preallocated array; each call synchronised (goal <= 2x).
6. Tests (--tests): `pytest -q tests/cuda` in a subprocess without NUMBA_ENABLE_CUDASIM.

Timing: time.perf_counter around (call + synchronise), medians over repeats after a warm-up; the
first call (compile or load, plus run) is reported separately. The whole run is budgeted
(--time-limit, default 300 s): a section that would start with too little time left reports
"n/a (time limit)", and a watchdog writes what has been measured and exits (status 3) if a
section hangs past the limit + 20 s. Results are written after every section. Exit status 0
otherwise, whatever the sections reported. `--only w3,bfield` runs some sections;
`--gradjit-target cpu` gives gradjit host arrays (a check of the script itself, not a result).
"""

import os
import sys

# Before any of the frameworks is imported.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # JAX must not take 75% of the GPU
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS", "0")

import argparse
import atexit
import gc
import importlib
import importlib.metadata
import json
import platform
import re
import shutil
import signal
import statistics
import subprocess
import tempfile
import threading
import time
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# A private gradjit disk cache, so that a stale entry written by another build of the compiler
# is never what gets timed, and the first call's time is a cold compile.
if "GRADJIT_CACHE_DIR" not in os.environ:
    os.environ["GRADJIT_CACHE_DIR"] = tempfile.mkdtemp(prefix="gradjit-gpu-bench-")
    atexit.register(shutil.rmtree, os.environ["GRADJIT_CACHE_DIR"], ignore_errors=True)

import numpy as np

T_START = time.perf_counter()

# ---------------------------------------------------------------------------------------
# The functions gradjit differentiates (module level: gradjit reads their source)
# ---------------------------------------------------------------------------------------


def w3(x):
    return np.sum(x**2 + x**3 + 5)


def bfield(p):
    x, y, z = p[0], p[1], p[2]
    return np.stack([x**3 - y**2, y**2 + z**2, z**3 - x**2])


def mse(w, X, y):
    r = X @ w - y
    return np.mean(r**2)


def sumsq(x):
    return np.sum(x**2)


# Closed forms, on the host.


def w3_grad_ref(x):
    return 2.0 * x + 3.0 * x * x


def bfield_jac_ref(P):
    x, y, z = P[:, 0], P[:, 1], P[:, 2]
    J = np.zeros((P.shape[0], 3, 3))
    J[:, 0, 0], J[:, 0, 1] = 3 * x**2, -2 * y
    J[:, 1, 1], J[:, 1, 2] = 2 * y, 2 * z
    J[:, 2, 0], J[:, 2, 2] = -2 * x, 3 * z**2
    return J


def mse_grad_ref(w, X, y):
    return (2.0 / X.shape[0]) * (X.T @ (X @ w - y))


# ---------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------


class Unavailable(Exception):
    """A contestant or section cannot run here: reported as "n/a (reason)"."""


def log(msg):
    print(f"[gpu-bench {time.perf_counter() - T_START:6.1f}s] {msg}", file=sys.stderr, flush=True)


def first_line(exc, limit=300):
    msg = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    lines = [ln.strip() for ln in msg.strip().splitlines() if ln.strip()]
    msg = " ".join(lines[:3]) if lines else "?"
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


def md_escape(s):
    return str(s).replace("|", "\\|").replace("\n", " ")


def fmt_time(s):
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
    if s < 1.0:
        return f"{s * 1e3:.3g} ms"
    return f"{s:.2f} s"


def fmt_gbps(b):
    return "-" if b is None else f"{b / 1e9:.0f} GB/s" if b >= 1e10 else f"{b / 1e9:.2f} GB/s"


def fmt_pct(f):
    return "-" if f is None else f"{100 * f:.0f} %"


def fmt_bytes(b):
    return f"{b / 1e9:.3g} GB" if b >= 1e8 else f"{b / 1e6:.3g} MB" if b >= 1e5 else f"{b} B"


def version_of(*dists):
    for d in dists:
        try:
            return importlib.metadata.version(d)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def type_name(x):
    t = type(x)
    return f"{t.__module__}.{t.__qualname__}"


# ---------------------------------------------------------------------------------------
# The frameworks, each imported once, on first use
# ---------------------------------------------------------------------------------------

_LOADED = {}
TORCH_DEVICE = "cuda"
GJ_TARGET = "cuda"  # --gradjit-target: "cpu"/"parallel" feed gradjit host arrays (script checks)


def _load(name, loader):
    if name not in _LOADED:
        try:
            _LOADED[name] = loader()
        except Unavailable as e:
            _LOADED[name] = e
        except BaseException as e:  # noqa: BLE001 - an import may fail in any way
            if isinstance(e, KeyboardInterrupt):
                raise
            _LOADED[name] = Unavailable(first_line(e))
    got = _LOADED[name]
    if isinstance(got, Unavailable):
        raise got
    return got


def simulator():
    try:
        from numba import config

        return bool(config.ENABLE_CUDASIM)
    except Exception:  # noqa: BLE001
        return False


def numba_cuda():
    def load():
        try:
            from numba import cuda
        except ImportError as e:
            raise Unavailable(f"numba-cuda not installed ({first_line(e)})") from None
        try:
            cuda.get_current_device()
        except Exception as e:  # noqa: BLE001
            raise Unavailable(f"no CUDA device: {first_line(e, 160)}") from None
        return cuda

    return _load("numba", load)


def gradjit():
    def load():
        import gradjit as gj

        return gj

    return _load("gradjit", load)


def jax_gpu():
    """(jax, jnp, device): JAX with float64 on, on its first GPU."""

    def load():
        try:
            import jax
            import jax.numpy as jnp
        except ImportError as e:
            raise Unavailable(f"jax not installed ({first_line(e, 80)})") from None
        jax.config.update("jax_enable_x64", True)
        try:
            dev = jax.devices("gpu")[0]
        except Exception as e:  # noqa: BLE001
            raise Unavailable(f"JAX has no GPU backend (default: {jax.default_backend()}; "
                              f"{first_line(e, 100)})") from None
        return jax, jnp, dev

    return _load("jax", load)


def torch_gpu():
    def load():
        try:
            import torch
        except ImportError as e:
            raise Unavailable(f"torch not installed ({first_line(e, 80)})") from None
        if not torch.cuda.is_available():
            raise Unavailable(f"torch {torch.__version__} has no CUDA device "
                              f"(built for CUDA {torch.version.cuda})")
        torch.empty(1, device="cuda")  # context now, not inside the first timing
        return torch

    return _load("torch", load)


def cupy_gpu():
    def load():
        try:
            import cupy
        except ImportError as e:
            raise Unavailable(f"cupy not installed ({first_line(e, 80)})") from None
        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise Unavailable("cupy sees no CUDA device")
        cupy.zeros(1)
        return cupy

    return _load("cupy", load)


def release_memory():
    """Give memory the frameworks cache back between sections (best effort)."""
    gc.collect()
    for name, fn in (
        ("numba", lambda m: m.current_context().deallocations.clear()),
        ("cupy", lambda m: m.get_default_memory_pool().free_all_blocks()),
        ("torch", lambda m: m.cuda.empty_cache()),
    ):
        m = _LOADED.get(name)
        if m is not None and not isinstance(m, Unavailable):
            try:
                fn(m)
            except Exception:  # noqa: BLE001
                pass


def sync_numba(_out=None):
    numba_cuda().synchronize()


def sync_jax(out):
    jax_gpu()[0].block_until_ready(out)


def sync_torch(_out=None):
    torch_gpu().cuda.synchronize()


def sync_cupy(_out=None):
    cupy_gpu().cuda.runtime.deviceSynchronize()


def to_host(x):
    """Any contestant's result (device or host, tuple) as numpy."""
    if isinstance(x, (tuple, list)):
        return type(x)(to_host(v) for v in x)
    if hasattr(x, "copy_to_host"):  # numba device array (and the simulator's)
        return np.asarray(x.copy_to_host())
    if type(x).__module__.startswith("cupy"):
        return x.get()
    if hasattr(x, "detach"):  # torch
        return x.detach().cpu().numpy()
    if hasattr(x, "__cuda_array_interface__"):
        return numba_cuda().as_cuda_array(x).copy_to_host()
    return np.asarray(x)


def is_device_array(x):
    return hasattr(x, "__cuda_array_interface__") or hasattr(x, "copy_to_host")


def compare(got, want, rtol):
    """None when `got` matches `want` (shapes, and max error <= rtol * max|want|)."""
    got = np.asarray(got, dtype=np.float64)
    if got.shape != want.shape:
        return f"shape {got.shape} != expected {want.shape}"
    scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
    err = float(np.max(np.abs(got - want), initial=0.0))
    if not np.isfinite(err) or err > rtol * scale:
        return f"max abs error {err:.3g} (tolerance {rtol * scale:.3g})"
    return None


_KERNELS = {}
cuda = None  # numba.cuda, set by numba_kernels()


def numba_kernels():
    """Hand-written numba-cuda kernels, compiled on first use."""
    # `cuda` must be a module global when the kernels are compiled: the simulator swaps the
    # global numba.cuda for its fake module while a kernel runs (a closure variable it would
    # not see).
    global cuda
    if _KERNELS:
        return _KERNELS
    cuda = numba_cuda()

    @cuda.jit
    def twice(x, out):
        i = cuda.grid(1)
        if i < x.shape[0]:
            out[i] = 2.0 * x[i]

    @cuda.jit
    def w3_grad(x, out):
        i = cuda.grid(1)
        if i < x.shape[0]:
            v = x[i]
            out[i] = 2.0 * v + 3.0 * v * v

    @cuda.jit
    def bfield_jac(P, J):
        i = cuda.grid(1)
        if i < P.shape[0]:
            x, y, z = P[i, 0], P[i, 1], P[i, 2]
            J[i, 0, 0] = 3.0 * x * x
            J[i, 0, 1] = -2.0 * y
            J[i, 0, 2] = 0.0
            J[i, 1, 0] = 0.0
            J[i, 1, 1] = 2.0 * y
            J[i, 1, 2] = 2.0 * z
            J[i, 2, 0] = -2.0 * x
            J[i, 2, 1] = 0.0
            J[i, 2, 2] = 3.0 * z * z

    _KERNELS.update(twice=twice, w3_grad=w3_grad, bfield_jac=bfield_jac)
    return _KERNELS


def launch_1d(n, threads=256):
    return (max(1, (n + threads - 1) // threads), threads)


def gj_name(spelling):
    return "gradjit " + spelling.replace("{t}", f", target={GJ_TARGET!r}")


def gj_arg(host, dev):
    """What gradjit is given: the device array (target cuda) or the host array."""
    if GJ_TARGET != "cuda":
        return host
    if dev is None:
        raise Unavailable("no numba-cuda device array")
    return dev


def sync_gradjit(out=None):
    if GJ_TARGET == "cuda":
        sync_numba(out)


def gradjit_compile(transformed, *args):
    """Compile now where the transform offers it (tiered execution); else the first call does."""
    comp = getattr(transformed, "compile", None)
    if callable(comp):
        comp(*args)


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------


class Section:
    def __init__(self, key, title):
        self.key, self.title = key, title
        self.params = {}
        self.results = {}  # contestant -> record (dict)
        self.notes = []
        self.goals = []  # (text, True/False/None)
        self.status = "ok"  # or "n/a: ..." / "error: ..."
        self.table = None  # (header, rows) for sections that are not contestant tables
        self.ratio_label = "ratio"
        self.wall_s = None

    def to_json(self):
        return {
            "title": self.title,
            "status": self.status,
            "params": self.params,
            "results": self.results,
            "notes": self.notes,
            "goals": [{"goal": g, "met": m} for g, m in self.goals],
            "table": self.table,
            "wall_s": self.wall_s,
        }


class Report:
    def __init__(self, args):
        self.args = args
        self.meta = {
            "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "mode": "small (smoke)" if args.small else "full",
            "simulator": None,
            "host": platform.node(),
            "python": platform.python_version(),
            "gradjit_cache_dir": os.environ.get("GRADJIT_CACHE_DIR"),
        }
        self.sections = []
        self.lock = threading.Lock()
        self.aborted = None

    def add(self, section):
        self.sections.append(section)
        return section

    # -- output --------------------------------------------------------------------------

    def markdown(self):
        out = ["# gradjit GPU benchmark", ""]
        m = self.meta
        out.append(f"Run {m['started']} on `{m['host']}`, mode **{m['mode']}**, "
                   f"wall time {time.perf_counter() - T_START:.0f} s. Command: `{m['command']}`.")
        if m.get("simulator"):
            out.append("")
            out.append("**CUDA simulator (NUMBA_ENABLE_CUDASIM=1): every time below is "
                       "meaningless; this run only checks that the script works.**")
        if self.aborted:
            out += ["", f"**Aborted by the watchdog: {self.aborted}**"]
        out += ["", "Columns: median / min of the timed calls (each call followed by its "
                "framework's synchronisation; perf_counter), the number of timed calls, the "
                "first call (compile or load + run), and setup (putting data on the device, "
                "building the transform, `compile()` where the transform has one). Outputs: "
                "gradjit allocates its outputs on every call (the public API has no `out=` or "
                "buffer reuse); hand-written numba-cuda rows write into preallocated arrays "
                "unless they say otherwise; JAX (XLA's allocator), torch (caching allocator) "
                "and CuPy (memory pool) allocate each output from a pool. Every result is "
                "checked against a closed form or numpy (column check)."]
        for s in self.sections:
            out += ["", f"## {s.title}", ""]
            if s.wall_s is not None:
                out += [f"(section wall time {s.wall_s:.1f} s)", ""]
            if s.status != "ok":
                out += [s.status, ""]
            if s.params:
                out.append("; ".join(f"{k} = {v}" for k, v in s.params.items()))
                out.append("")
            if s.table is not None:
                header, rows = s.table
                out.append("| " + " | ".join(header) + " |")
                out.append("|" + "---|" * len(header))
                for r in rows:
                    out.append("| " + " | ".join(md_escape(c) for c in r) + " |")
            elif s.results:
                out += self._contestant_table(s)
            if s.goals:
                out.append("")
                for text, met in s.goals:
                    verdict = {True: "**met**", False: "**NOT met**", None: "n/a"}[met]
                    out.append(f"- Goal: {text}: {verdict}")
            if s.notes:
                out.append("")
                for n in s.notes:
                    out.append(f"- {n}")
        out.append("")
        return "\n".join(out)

    @staticmethod
    def _contestant_table(s):
        has_bw = any(r.get("bytes") for r in s.results.values())
        has_ratio = any(r.get("ratio") is not None for r in s.results.values())
        header = ["contestant", "median", "min", "repeats", "first call", "setup"]
        if has_bw:
            header += ["effective bandwidth", "% of D2D copy"]
        if has_ratio:
            header += [s.ratio_label]
        header += ["check", "notes"]
        rows = []
        for name, r in s.results.items():
            if r["status"] != "ok":
                cell = r["status"] if r["status"].startswith("n/a") else f"error: {r['status']}"
                row = [name, cell] + ["-"] * (len(header) - 3) + [md_escape(r.get("notes", ""))]
                rows.append(row)
                continue
            row = [name, fmt_time(r.get("median_s")), fmt_time(r.get("min_s")),
                   str(len(r.get("times_s", []))), fmt_time(r.get("first_call_s")),
                   fmt_time(r.get("setup_s"))]
            if has_bw:
                row += [fmt_gbps(r.get("bandwidth_Bps")), fmt_pct(r.get("fraction_of_copy"))]
            if has_ratio:
                row += ["-" if r.get("ratio") is None else f"{r['ratio']:.2f}x"]
            row += [r.get("check", "-"), r.get("notes", "")]
            rows.append(row)
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in rows]
        return lines

    def to_json(self):
        return {
            "meta": dict(self.meta, wall_s=time.perf_counter() - T_START, aborted=self.aborted),
            "sections": {s.key: s.to_json() for s in self.sections},
        }

    def write(self, final=False):
        """Write the markdown (file, or stdout at the end) and the JSON; safe to call often."""
        with self.lock:
            md = self.markdown()
            if self.args.out:
                tmp = self.args.out + ".tmp"
                with open(tmp, "w") as f:
                    f.write(md)
                os.replace(tmp, self.args.out)
            elif final:
                sys.stdout.write(md)
                sys.stdout.flush()
            tmp = self.args.json + ".tmp"
            with open(tmp, "w") as f:
                json.dump(self.to_json(), f, indent=1, default=str)
            os.replace(tmp, self.args.json)


# ---------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------


class Budget:
    def __init__(self, limit_s):
        self.limit = limit_s

    def left(self):
        return self.limit - (time.perf_counter() - T_START)


def time_calls(fn, sync, *, reps, seconds, warmup=2, min_reps=3):
    """Call fn() + sync(out) once (first call: compile/load + run), `warmup` more times, then
    up to `reps` timed times, stopping after `seconds` once `min_reps` are in.
    A contestant whose warm call alone takes longer than `seconds`, or one still running at
    the run's time limit, is timed once. Returns (last output, first-call seconds, list of
    per-call seconds)."""
    t0 = time.perf_counter()
    out = fn()
    sync(out)
    first = time.perf_counter() - t0
    stop = time.perf_counter() + seconds
    for _ in range(warmup):
        if time.perf_counter() > stop:
            break
        out = None
        out = fn()
        sync(out)
    times = []
    stop = time.perf_counter() + seconds
    while len(times) < reps and (len(times) < min_reps or time.perf_counter() < stop):
        if times and (times[0] > seconds or time.perf_counter() > STATE["deadline"]):
            break
        out = None
        t0 = time.perf_counter()
        out = fn()
        sync(out)
        times.append(time.perf_counter() - t0)
    return out, first, times


def run_contestant(sec, name, setup, sync, *, reps, seconds, check=None, nbytes=None,
                   notes="", warmup=None, min_reps=3, expect_device=False):
    """One row: setup() -> zero-argument callable; time it; check its last output.
    Never raises (except KeyboardInterrupt)."""
    rec = sec.results.setdefault(name, {})
    rec.update(status="ok", notes=notes)
    log(f"{sec.key}: {name}")
    try:
        t0 = time.perf_counter()
        fn = setup()
        rec["setup_s"] = time.perf_counter() - t0
        warmup = STATE["warmup"] if warmup is None else min(warmup, STATE["warmup"] * 5)
        out, first, times = time_calls(fn, sync, reps=reps, seconds=seconds, warmup=warmup,
                                       min_reps=min_reps)
        med = statistics.median(times)
        rec.update(first_call_s=first, times_s=times, median_s=med, min_s=min(times),
                   output_type=type_name(out))
        if expect_device and GJ_TARGET == "cuda" and not is_device_array(out):
            rec["notes"] += f"; returned {type_name(out)}, NOT a device array"
        if nbytes:
            rec.update(bytes=nbytes, bandwidth_Bps=nbytes / med)
        if check is not None:
            try:
                problem = check(out)
                rec["check"] = "ok" if problem is None else f"MISMATCH: {problem}"
            except Exception as e:  # noqa: BLE001
                rec["check"] = f"check failed: {first_line(e, 150)}"
        out = None
    except Unavailable as e:
        rec["status"] = f"n/a ({e})"
    except Exception as e:  # noqa: BLE001
        rec["status"] = first_line(e)
        rec["traceback"] = traceback.format_exc()
        log(f"{sec.key}: {name} failed: {first_line(e)}")
    release_memory()
    return rec


# ---------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------

STATE = {"copy_bw": None, "warmup": 2, "pytest": None, "deadline": float("inf")}


def section_device(rep, args, budget):
    sec = rep.add(Section("device", "Device"))
    rows = []

    def item(k, fn):
        try:
            v = fn()
        except Unavailable as e:
            v = f"n/a ({e})"
        except Exception as e:  # noqa: BLE001
            v = f"n/a ({first_line(e, 200)})"
        rows.append([k, str(v)])
        return v

    rep.meta["simulator"] = simulator()
    item("CUDA simulator", lambda: "yes (NUMBA_ENABLE_CUDASIM=1)" if simulator() else "no")

    def dev():
        return numba_cuda().get_current_device()

    def name():
        n = getattr(dev(), "name", None)
        if n is None:
            return "CUDA simulator" if simulator() else "?"
        return n.decode() if isinstance(n, bytes) else n

    item("GPU", name)
    item("compute capability", lambda: ".".join(map(str, dev().compute_capability)))
    item("multiprocessors", lambda: dev().MULTIPROCESSOR_COUNT)

    def mem():
        info = numba_cuda().current_context().get_memory_info()
        return f"{info.total / 2**30:.1f} GiB total, {info.free / 2**30:.1f} GiB free"

    item("memory", mem)

    def driver():
        from numba.cuda.cudadrv import driver as drv

        return ".".join(map(str, drv.driver.get_version()))

    item("CUDA driver API version (numba)", lambda: numba_cuda() and driver())
    item("NVRTC version (numba cuda.runtime.get_version())",
         lambda: ".".join(map(str, numba_cuda().runtime.get_version())))

    def smi():
        exe = shutil.which("nvidia-smi")
        if exe is None:
            raise Unavailable("nvidia-smi not found")
        r = subprocess.run([exe, "--query-gpu=name,driver_version,memory.total,clocks.max.sm,"
                            "clocks.max.mem", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=15)
        if r.returncode != 0:
            raise Unavailable(first_line(r.stderr or r.stdout or f"exit {r.returncode}", 120))
        return r.stdout.strip().splitlines()[0]

    item("nvidia-smi (name, driver, memory, max SM / mem clock)", smi)

    item("CUDA runtime (cupy)", lambda: cupy_gpu().cuda.runtime.runtimeGetVersion())
    item("torch CUDA build / device",
         lambda: f"{torch_gpu().version.cuda} / {torch_gpu().cuda.get_device_name(0)}")
    item("JAX device", lambda: str(jax_gpu()[2]))

    for label, dists in (("python", None), ("numpy", ("numpy",)), ("numba", ("numba",)),
                         ("numba-cuda", ("numba-cuda",)), ("cuda-bindings", ("cuda-bindings",)),
                         ("cupy", ("cupy-cuda12x", "cupy-cuda13x", "cupy-cuda11x", "cupy")),
                         ("jax", ("jax",)), ("jaxlib", ("jaxlib",)),
                         ("jax CUDA plugin", ("jax-cuda12-plugin", "jax-cuda13-plugin")),
                         ("torch", ("torch",)), ("gradjit", ("gradjit",))):
        if dists is None:
            item("python", platform.python_version)
        else:
            item(label, lambda d=dists: version_of(*d) or "n/a (not installed)")

    def commit():
        r = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                           capture_output=True, text=True, timeout=10)
        return r.stdout.strip() or "?"

    item("gradjit tree", commit)
    sec.table = (["item", "value"], rows)
    sec.params = {}
    for k, v in rows:
        rep.meta[f"device: {k}"] = v


def _copy_bandwidth(sec, args, x_dev, nbytes, reps, seconds):
    """Device-to-device copy of an nbytes array; a copy reads and writes: 2 * nbytes."""
    cuda = numba_cuda()

    def numba_copy():
        dst = cuda.device_array_like(x_dev)
        return lambda: dst.copy_to_device(x_dev)

    run_contestant(sec, "D2D copy: numba copy_to_device (preallocated)", numba_copy, sync_numba,
                   reps=reps, seconds=seconds, nbytes=2 * nbytes,
                   notes="cuMemcpyDtoD; bytes = 2 x 8n (read + write)")

    def cupy_copy():
        cp = cupy_gpu()
        a = cp.asarray(x_dev)  # zero-copy view of the numba array
        b = cp.empty_like(a)
        return lambda: cp.copyto(b, a)

    run_contestant(sec, "D2D copy: cupy copyto (preallocated)", cupy_copy, sync_cupy,
                   reps=reps, seconds=seconds, nbytes=2 * nbytes, notes="bytes = 2 x 8n")
    bws = [r["bandwidth_Bps"] for k, r in sec.results.items()
           if k.startswith("D2D copy") and r.get("status") == "ok" and r.get("bandwidth_Bps")]
    if bws:
        STATE["copy_bw"] = max(bws)
        for k, r in sec.results.items():
            if k.startswith("D2D copy") and r.get("bandwidth_Bps"):
                r["fraction_of_copy"] = r["bandwidth_Bps"] / STATE["copy_bw"]
    return STATE["copy_bw"]


def _fractions(sec):
    bw = STATE["copy_bw"]
    for k, r in sec.results.items():
        if bw and r.get("bandwidth_Bps") and not k.startswith("D2D copy"):
            r["fraction_of_copy"] = r["bandwidth_Bps"] / bw


def section_w3(rep, args, budget):
    n = args.n_w3
    sec = rep.add(Section("w3", f"W3: gradient of sum(x**2 + x**3 + 5), n = {n:,} float64"))
    nbytes = 8 * n
    sec.params = {"n": f"{n:,}", "bytes a gradient must move (read x, write grad)":
                  fmt_bytes(2 * nbytes)}
    reps, secs = args.reps, args.seconds
    rng = np.random.default_rng(0)
    x = rng.random(n)
    idx = np.unique(rng.integers(0, n, size=min(n, 100_000)))
    want = w3_grad_ref(x[idx])

    def check(out):
        return compare(to_host(out)[idx], want, 1e-12)

    x_dev = None
    try:
        cuda = numba_cuda()
        x_dev = cuda.to_device(x)
    except Unavailable as e:
        sec.notes.append(f"numba-cuda unavailable: {e}")
    except Exception as e:  # noqa: BLE001
        sec.notes.append(f"could not put x on the device: {first_line(e)}")

    def need_dev():
        if x_dev is None:
            raise Unavailable("no numba-cuda device array")
        return x_dev

    if x_dev is not None:
        _copy_bandwidth(sec, args, x_dev, nbytes, reps, secs)

    def gj_setup():
        gj = gradjit()
        xd = gj_arg(x, x_dev)
        g = gj.grad(w3, target=GJ_TARGET)
        gradjit_compile(g, xd)
        return lambda: g(xd)

    gname = gj_name("gj.grad(f{t})")
    run_contestant(sec, gname, gj_setup, sync_gradjit, reps=reps, seconds=secs, check=check,
                   nbytes=2 * nbytes, notes="allocates its output on every call",
                   expect_device=True)

    def hand_setup():
        xd = need_dev()
        k = numba_kernels()["w3_grad"]
        out = numba_cuda().device_array_like(xd)
        grid = launch_1d(n)

        def call():
            k[grid](xd, out)
            return out

        return call

    run_contestant(sec, "numba-cuda hand-written kernel (preallocated out)", hand_setup,
                   sync_numba, reps=reps, seconds=secs, check=check, nbytes=2 * nbytes,
                   notes="out[i] = 2x + 3x^2, one thread per element")

    def alloc_setup():
        need_dev()
        cuda = numba_cuda()
        return lambda: cuda.device_array(n, dtype=np.float64)

    run_contestant(sec, "(numba cuda.device_array(n) allocation alone)", alloc_setup,
                   sync_numba, reps=reps, seconds=secs,
                   notes="what allocating an 8n-byte output costs without a pool")

    def jax_setup():
        jax, jnp, dev = jax_gpu()
        xj = jax.device_put(x, dev)
        g = jax.jit(jax.grad(lambda v: jnp.sum(v**2 + v**3 + 5)))
        return lambda: g(xj)

    run_contestant(sec, "JAX jax.jit(jax.grad)", jax_setup, sync_jax, reps=reps, seconds=secs,
                   check=check, nbytes=2 * nbytes, notes="XLA allocator")

    def torch_setup():
        torch = torch_gpu()
        xt = torch.from_numpy(x).to(TORCH_DEVICE)
        g = torch.func.grad(lambda v: (v**2 + v**3 + 5).sum())
        return lambda: g(xt)

    run_contestant(sec, "torch torch.func.grad (eager)", torch_setup, sync_torch, reps=reps,
                   seconds=secs, check=check, nbytes=2 * nbytes, notes="caching allocator")
    _fractions(sec)
    frac = sec.results.get(gname, {}).get("fraction_of_copy")
    sec.goals.append(("gradjit >= 70 % of the device-to-device copy bandwidth"
                      + (f" (achieved {100 * frac:.0f} %)" if frac else ""),
                      None if frac is None else frac >= 0.70))
    sec.notes.append("effective bandwidth = bytes / median time; a gradient moves 16n bytes "
                     "(read x once, write the gradient once), a copy 2 x 8n; % is relative to "
                     "the fastest D2D copy measured in this run")
    sec.notes.append("gradjit returns a fresh device array per call (the public API has no "
                     "out= / buffer reuse); the hand-written kernel writes into a preallocated "
                     "one, so the allocation row shows what that difference can cost")
    x_dev = x = None  # free them before the next section
    release_memory()


def section_bfield(rep, args, budget):
    N = args.n_bfield
    sec = rep.add(Section("bfield", f"B-field: batched 3x3 Jacobians, N = {N:,} rows, float64"))
    nbytes = 8 * N * (3 + 9)
    sec.params = {"f(p)": "[x^3 - y^2, y^2 + z^2, z^3 - x^2]", "N": f"{N:,}",
                  "bytes (read (N,3), write (N,3,3))": fmt_bytes(nbytes)}
    reps, secs = args.reps, args.seconds
    rng = np.random.default_rng(1)
    P = rng.uniform(-1.0, 1.0, size=(N, 3))
    rows = np.unique(np.concatenate([[0, N - 1], rng.integers(0, N, size=min(N, 10_000))]))
    want = bfield_jac_ref(P[rows])

    def check(out):
        return compare(to_host(out)[rows], want, 1e-12)

    P_dev = None
    try:
        P_dev = numba_cuda().to_device(P)
    except Unavailable as e:
        sec.notes.append(f"numba-cuda unavailable: {e}")
    except Exception as e:  # noqa: BLE001
        sec.notes.append(f"could not put P on the device: {first_line(e)}")

    def need_dev():
        if P_dev is None:
            raise Unavailable("no numba-cuda device array")
        return P_dev

    def gj_setup():
        gj = gradjit()
        Pd = gj_arg(P, P_dev)
        J = gj.vmap(gj.jacobian(bfield), target=GJ_TARGET)
        gradjit_compile(J, Pd)
        return lambda: J(Pd)

    gname = gj_name("gj.vmap(gj.jacobian(f){t})")
    run_contestant(sec, gname, gj_setup, sync_gradjit, reps=reps, seconds=secs, check=check,
                   nbytes=nbytes, notes="allocates its output on every call", expect_device=True)

    def hand_setup():
        Pd = need_dev()
        k = numba_kernels()["bfield_jac"]
        out = numba_cuda().device_array((N, 3, 3), dtype=np.float64)
        grid = launch_1d(N)

        def call():
            k[grid](Pd, out)
            return out

        return call

    run_contestant(sec, "numba-cuda hand-written closed form (preallocated out)", hand_setup,
                   sync_numba, reps=reps, seconds=secs, check=check, nbytes=nbytes,
                   notes="one thread per row")

    def jax_setup():
        jax, jnp, dev = jax_gpu()

        def f(p):
            x, y, z = p[0], p[1], p[2]
            return jnp.stack([x**3 - y**2, y**2 + z**2, z**3 - x**2])

        Pj = jax.device_put(P, dev)
        J = jax.jit(jax.vmap(jax.jacfwd(f)))
        return lambda: J(Pj)

    run_contestant(sec, "JAX jax.jit(jax.vmap(jax.jacfwd(f)))", jax_setup, sync_jax, reps=reps,
                   seconds=secs, check=check, nbytes=nbytes)

    def torch_setup():
        torch = torch_gpu()

        def f(p):
            x, y, z = p[0], p[1], p[2]
            return torch.stack([x**3 - y**2, y**2 + z**2, z**3 - x**2])

        Pt = torch.from_numpy(P).to(TORCH_DEVICE)
        J = torch.func.vmap(torch.func.jacrev(f))
        return lambda: J(Pt)

    run_contestant(sec, "torch torch.func.vmap(torch.func.jacrev(f)) (eager)", torch_setup,
                   sync_torch, reps=reps, seconds=secs, check=check, nbytes=nbytes)
    _fractions(sec)
    res = sec.results
    g = res.get(gname, {}).get("median_s")
    for peer in ("JAX jax.jit(jax.vmap(jax.jacfwd(f)))",
                 "torch torch.func.vmap(torch.func.jacrev(f)) (eager)"):
        p = res.get(peer, {}).get("median_s")
        label = peer.split(" ")[0]
        met = None if (g is None or p is None) else g < p
        detail = "" if met is None else f" ({p / g:.2f}x)"
        sec.goals.append((f"gradjit faster than {label}{detail}", met))
    sec.notes.append(f"results checked against the closed form on {len(rows):,} rows "
                     "(first, last and random ones), relative tolerance 1e-12")
    P_dev = P = None
    release_memory()


def section_mse(rep, args, budget):
    N, D = args.n_mse, 16
    sec = rep.add(Section("mse", f"MSE gradient of a linear model, X {N:,} x {D} float64"))
    nbytes = 8 * N * (D + 1)
    sec.params = {"loss": "mean((X @ w - y)**2), gradient w.r.t. w", "N": f"{N:,}", "D": D,
                  "bytes (read X and y once)": fmt_bytes(nbytes)}
    reps, secs = args.reps, args.seconds
    rng = np.random.default_rng(2)
    X = rng.random((N, D))
    w = rng.standard_normal(D)
    y = rng.random(N)
    want = mse_grad_ref(w, X, y)

    def check(out):
        return compare(to_host(out), want, 1e-9)

    devs = None
    try:
        cuda = numba_cuda()
        devs = (cuda.to_device(w), cuda.to_device(X), cuda.to_device(y))
    except Unavailable as e:
        sec.notes.append(f"numba-cuda unavailable: {e}")
    except Exception as e:  # noqa: BLE001
        sec.notes.append(f"could not put the data on the device: {first_line(e)}")

    def need_dev():
        if devs is None:
            raise Unavailable("no numba-cuda device arrays")
        return devs

    def gj_setup():
        gj = gradjit()
        wd, Xd, yd = gj_arg((w, X, y), devs)
        g = gj.grad(mse, target=GJ_TARGET)
        gradjit_compile(g, wd, Xd, yd)
        return lambda: g(wd, Xd, yd)

    run_contestant(sec, gj_name("gj.grad(f{t})"), gj_setup, sync_gradjit, reps=reps, seconds=secs,
                   check=check, nbytes=nbytes, expect_device=True,
                   notes="w, X, y all device arrays; allocates its output on every call")

    def cupy_setup():
        cp = cupy_gpu()
        wd, Xd, yd = need_dev()
        wc, Xc, yc = cp.asarray(wd), cp.asarray(Xd), cp.asarray(yd)
        return lambda: (2.0 / N) * (Xc.T @ (Xc @ wc - yc))

    run_contestant(sec, "CuPy 2/N X^T (X w - y) (cuBLAS, hand-derived)", cupy_setup, sync_cupy,
                   reps=reps, seconds=secs, check=check, nbytes=nbytes,
                   notes="two passes over X")

    def jax_setup():
        jax, jnp, dev = jax_gpu()
        wj, Xj, yj = (jax.device_put(a, dev) for a in (w, X, y))
        g = jax.jit(jax.grad(lambda w_, X_, y_: jnp.mean((X_ @ w_ - y_) ** 2)))
        return lambda: g(wj, Xj, yj)

    run_contestant(sec, "JAX jax.jit(jax.grad)", jax_setup, sync_jax, reps=reps, seconds=secs,
                   check=check, nbytes=nbytes)

    def torch_setup():
        torch = torch_gpu()
        wt, Xt, yt = (torch.from_numpy(a).to(TORCH_DEVICE) for a in (w, X, y))
        g = torch.func.grad(lambda w_, X_, y_: ((X_ @ w_ - y_) ** 2).mean())
        return lambda: g(wt, Xt, yt)

    run_contestant(sec, "torch torch.func.grad (eager)", torch_setup, sync_torch, reps=reps,
                   seconds=secs, check=check, nbytes=nbytes)
    _fractions(sec)
    sec.notes.append("bytes = one read of X and y; an implementation that runs X @ w and "
                     "X^T r as two passes reads X twice, so its bound is ~50 % of the copy rate")
    sec.notes.append("checked against numpy's 2/N X^T (X w - y) in float64, relative "
                     f"tolerance 1e-9 (sums of {N:,} terms in different orders)")
    devs = X = y = None
    release_memory()


def section_overhead(rep, args, budget):
    n = args.n_overhead
    sec = rep.add(Section("overhead", f"Per-call overhead: gradient of sum(x**2), n = {n:,}"))
    calls = args.calls
    sec.params = {"n": n, "calls (each synchronised)": calls}
    sec.ratio_label = "vs bare kernel"
    secs = args.seconds
    rng = np.random.default_rng(3)
    x = rng.random(n)
    want = 2.0 * x

    def check(out):
        return compare(to_host(out), want, 1e-14)

    x_dev = None
    try:
        x_dev = numba_cuda().to_device(x)
    except Unavailable as e:
        sec.notes.append(f"numba-cuda unavailable: {e}")
    except Exception as e:  # noqa: BLE001
        sec.notes.append(f"could not put x on the device: {first_line(e)}")

    def need_dev():
        if x_dev is None:
            raise Unavailable("no numba-cuda device array")
        return x_dev

    common = dict(reps=calls, seconds=secs, warmup=5, min_reps=min(calls, 20), check=check)

    def bare_setup():
        xd = need_dev()
        k = numba_kernels()["twice"]
        out = numba_cuda().device_array_like(xd)
        grid = launch_1d(n)

        def call():
            k[grid](xd, out)
            return out

        return call

    run_contestant(sec, "numba-cuda @cuda.jit kernel, 2*x into preallocated out", bare_setup,
                   sync_numba, **common)

    def alloc_setup():
        xd = need_dev()
        cuda = numba_cuda()
        k = numba_kernels()["twice"]
        grid = launch_1d(n)

        def call():
            out = cuda.device_array(n, dtype=np.float64)
            k[grid](xd, out)
            return out

        return call

    run_contestant(sec, "numba-cuda kernel + cuda.device_array output per call", alloc_setup,
                   sync_numba, **common)

    def gj_setup():
        gj = gradjit()
        xd = gj_arg(x, x_dev)
        g = gj.grad(sumsq, target=GJ_TARGET)
        gradjit_compile(g, xd)
        return lambda: g(xd)

    gname = gj_name("gj.grad(f{t})")
    run_contestant(sec, gname, gj_setup, sync_gradjit, **common, expect_device=True,
                   notes="allocates its output on every call")

    def jax_setup():
        jax, jnp, dev = jax_gpu()
        xj = jax.device_put(x, dev)
        g = jax.jit(jax.grad(lambda v: jnp.sum(v**2)))
        return lambda: g(xj)

    run_contestant(sec, "JAX jax.jit(jax.grad)", jax_setup, sync_jax, **common)

    def torch_setup():
        torch = torch_gpu()
        xt = torch.from_numpy(x).to(TORCH_DEVICE)
        g = torch.func.grad(lambda v: (v**2).sum())
        return lambda: g(xt)

    run_contestant(sec, "torch torch.func.grad (eager)", torch_setup, sync_torch, **common)

    base = sec.results.get("numba-cuda @cuda.jit kernel, 2*x into preallocated out", {})
    b = base.get("median_s")
    for r in sec.results.values():
        if b and r.get("median_s"):
            r["ratio"] = r["median_s"] / b
    g = sec.results.get(gname, {}).get("ratio")
    sec.goals.append(("gradjit per-call time <= 2x a bare numba-cuda kernel launch"
                      + ("" if g is None else f" ({g:.2f}x)"), None if g is None else g <= 2.0))
    sec.notes.append("each call is timed with its synchronisation (cuda.synchronize(), "
                     "block_until_ready, torch.cuda.synchronize); median over the calls")
    x_dev = None
    release_memory()


def parse_pytest_counts(text):
    counts = {}
    for line in reversed(text.splitlines()):
        found = re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected|"
                           r"warnings?)", line)
        if found and (" in " in line or "no tests ran" in line):
            for num, kind in found:
                kind = {"error": "errors", "warning": "warnings"}.get(kind, kind)
                counts[kind] = int(num)
            break
    return counts


def section_tests(rep, args, budget):
    sec = rep.add(Section("tests", "Tests on the real GPU: pytest -q tests/cuda"))
    test_dir = ROOT / "tests" / "cuda"
    if not test_dir.exists():
        sec.status = "n/a (tests/cuda does not exist in this tree)"
        return
    if budget.left() < 20.0:
        sec.status = (f"n/a (time limit: {max(0.0, budget.left()):.0f} s left of "
                      f"{args.time_limit:.0f} s)")
        return
    timeout = min(args.tests_timeout, budget.left() - 5.0)
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/cuda"]
    sec.params = {"command": " ".join(["python"] + cmd[1:]) + " (NUMBA_ENABLE_CUDASIM unset)",
                  "timeout": f"{timeout:.0f} s"}
    if simulator():
        sec.notes.append("this process runs under the CUDA simulator; the tests run without it "
                         "and need a real GPU")
    log(f"tests: {' '.join(cmd)} (timeout {timeout:.0f} s)")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    STATE["pytest"] = proc
    timed_out = False
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the pytest process group we started
        except OSError:
            pass
        output, _ = proc.communicate()
    wall = time.perf_counter() - t0
    counts = parse_pytest_counts(output or "")
    failed_ids = [ln.strip() for ln in (output or "").splitlines()
                  if ln.startswith(("FAILED ", "ERROR "))]
    sec.results["pytest"] = {"status": "ok", "returncode": proc.returncode, "wall_s": wall,
                             "timed_out": timed_out, "counts": counts,
                             "failed": failed_ids, "output_tail": (output or "")[-6000:]}
    rows = [["exit status", "timed out" if timed_out else str(proc.returncode)],
            ["wall time", f"{wall:.1f} s"]]
    rows += [[k, str(v)] for k, v in counts.items()] or [["counts", "none parsed"]]
    for fid in failed_ids[:15]:
        rows.append(["failure", fid[:200]])
    if len(failed_ids) > 15:
        rows.append(["failure", f"... and {len(failed_ids) - 15} more (see the JSON)"])
    sec.table = (["item", "value"], rows)


SECTIONS = [
    # key, function, seconds it needs left to start (full mode)
    ("device", section_device, 5),
    ("w3", section_w3, 40),
    ("bfield", section_bfield, 40),
    ("mse", section_mse, 40),
    ("overhead", section_overhead, 20),
]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="markdown file (default: stdout at the end)")
    ap.add_argument("--json", help="raw numbers (default: OUT with .json, else gpu-bench.json)")
    ap.add_argument("--small", action="store_true",
                    help="smoke sizes (about 1/10^4), few repeats: for the CUDA simulator")
    ap.add_argument("--tests", action="store_true", help="also run pytest -q tests/cuda")
    ap.add_argument("--only", help="comma-separated sections: device,w3,bfield,mse,overhead")
    ap.add_argument("--time-limit", type=float, default=300.0,
                    help="seconds for the whole run (default 300); the watchdog aborts at +20")
    ap.add_argument("--tests-timeout", type=float, default=150.0)
    ap.add_argument("--reps", type=int, help="timed repeats per contestant (default 30; small 3)")
    ap.add_argument("--seconds", type=float,
                    help="timing budget per contestant after warm-up (default 4; small 1)")
    ap.add_argument("--gradjit-target", default="cuda", choices=("cuda", "cpu", "parallel"),
                    help="developer check of the script itself: give gradjit host arrays and "
                         "this target (default cuda: device arrays)")
    args = ap.parse_args(argv)
    global GJ_TARGET
    GJ_TARGET = args.gradjit_target

    if args.json is None:
        args.json = (str(Path(args.out).with_suffix(".json")) if args.out else "gpu-bench.json")
    if args.small:
        args.n_w3, args.n_bfield, args.n_mse, args.n_overhead = 10**4, 10**3, 10**3, 100
        args.calls = 20
        STATE["warmup"] = 1
        args.reps = args.reps or 3
        args.seconds = args.seconds if args.seconds is not None else 1.0
    else:
        args.n_w3, args.n_bfield, args.n_mse, args.n_overhead = 10**8, 10**7, 10**7, 1000
        args.calls = 2000
        args.reps = args.reps or 30
        args.seconds = args.seconds if args.seconds is not None else 4.0
    only = set(args.only.split(",")) if args.only else None

    warnings.simplefilter("ignore")  # numba performance warnings etc. would bury the log
    rep = Report(args)
    budget = Budget(args.time_limit)
    STATE["deadline"] = T_START + args.time_limit

    def watchdog():
        rep.aborted = (f"still running at {time.perf_counter() - T_START:.0f} s "
                       f"(limit {args.time_limit:.0f} s + 20 s); unfinished sections are missing")
        log(rep.aborted)
        proc = STATE["pytest"]
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the pytest process group we started
            except OSError:
                pass
        try:
            rep.write(final=True)
        finally:
            os._exit(3)

    timer = threading.Timer(max(1.0, args.time_limit + 20 - (time.perf_counter() - T_START)),
                            watchdog)
    timer.daemon = True
    timer.start()

    for key, fn, need in SECTIONS:
        if only is not None and key not in only:
            continue
        need = need if not args.small else 1
        if budget.left() < need:
            sec = rep.add(Section(key, key))
            sec.status = (f"n/a (time limit: {max(0.0, budget.left()):.0f} s left of "
                          f"{args.time_limit:.0f} s, section needs about {need} s)")
            continue
        log(f"section {key} ({budget.left():.0f} s left)")
        n_before = len(rep.sections)
        t_sec = time.perf_counter()
        try:
            fn(rep, args, budget)
        except Exception as e:  # noqa: BLE001
            if len(rep.sections) == n_before:
                rep.add(Section(key, key))
            rep.sections[-1].status = f"error: {first_line(e)}"
            rep.sections[-1].notes.append(traceback.format_exc().splitlines()[-1])
            log(f"section {key} failed: {first_line(e)}")
        release_memory()
        if len(rep.sections) > n_before:
            rep.sections[-1].wall_s = time.perf_counter() - t_sec
        try:
            rep.write()
        except Exception as e:  # noqa: BLE001
            log(f"could not write the report: {first_line(e)}")

    if args.tests:
        try:
            section_tests(rep, args, budget)
        except Exception as e:  # noqa: BLE001
            sec = rep.sections[-1] if rep.sections and rep.sections[-1].key == "tests" else \
                rep.add(Section("tests", "Tests on the real GPU"))
            sec.status = f"error: {first_line(e)}"
    timer.cancel()
    rep.write(final=True)
    log(f"done in {time.perf_counter() - T_START:.1f} s; markdown: {args.out or 'stdout'}, "
        f"json: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
