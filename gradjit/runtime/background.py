"""Kernels compiled in a background process (tier 1 of runtime/tiered.py).

numba compiles under a global lock and holds the GIL, so a thread would take the caller's
time anyway: a child process (``python -m gradjit.runtime.background REQUEST``) compiles the
generated module into the disk cache, holding the entry's inter-process lock from the store
to the seal (runtime/diskcache.py: other processes wait for it, then load; at most one compile
per key). The caller's process polls the child (a ``waitpid`` at most every ``POLL`` seconds)
and, once it has exited, loads the entry as any disk-cache hit.

The request (source, metadata, stand-ins for the argument types) is a pickle of plain data
in the cache's ``tmp/`` directory. The child dies with its parent (``PR_SET_PDEATHSIG`` on
Linux; every child still running is killed at interpreter exit), runs in its own session
(Ctrl-C in the terminal interrupts the caller, not the compile), and a fork of the caller
does not inherit the parent's children (it waits on the entry's lock instead).
"""

from __future__ import annotations

import os
import pickle
import sys
import time

import numpy as np

POLL = 0.005  # seconds between two polls of a running child
TIMEOUT = 600.0  # seconds a caller waits for a child before compiling itself


def timeout():
    try:
        return float(os.environ.get("GRADJIT_BACKGROUND_TIMEOUT", "") or TIMEOUT)
    except ValueError:
        return TIMEOUT


# ---------------------------------------------------------------------------------------------
# The caller's side
# ---------------------------------------------------------------------------------------------

_jobs = set()  # running children of this process, killed at exit
_module = ["gradjit.runtime.background"]  # what the child runs (tests point it elsewhere)


class Unpicklable(Exception):
    """An argument type the child cannot be told about (the caller compiles itself)."""


def stand_in(x):
    """Plain data from which the child makes a value numba types as it types ``x`` (dtype,
    rank, layout, read-only), without copying ``x``."""
    if type(x) is np.ndarray:
        layout = "C" if x.flags.c_contiguous else "F" if x.flags.f_contiguous else "A"
        return ("array", x.dtype.str, x.ndim, layout, not x.flags.writeable)
    if isinstance(x, (bool, int, float, complex, np.generic)):
        return ("value", x)
    raise Unpicklable(type(x).__name__)


def _example(desc):
    if desc[0] == "value":
        return desc[1]
    _, dt, nd, layout, readonly = desc
    if layout == "A":
        a = np.zeros((2,) * max(nd - 1, 0) + (4,), dt)[..., ::2] if nd else np.zeros((), dt)
    else:
        a = np.zeros((2,) * nd, dt, order=layout)
    if readonly:
        a.setflags(write=False)
    return a


class Job:
    """One background compile: the child process and its request file."""

    def __init__(self, proc, path, what):
        self.proc = proc
        self.path = path
        self.what = what
        self.owner = os.getpid()
        self.started = time.perf_counter()
        self.next_poll = self.started + POLL
        self.returncode = None
        self.error = None  # the child's last line of error output, when it failed
        _jobs.add(self)

    def done(self):
        """Whether the child has exited (cheap: at most one ``waitpid`` per POLL seconds)."""
        if self.returncode is not None:
            return True
        if self.owner != os.getpid():  # a fork of the caller: not its child
            self.returncode = -1
            return True
        now = time.perf_counter()
        if now < self.next_poll:
            return False
        self.next_poll = now + POLL
        if self.proc.poll() is None:
            return False
        self._reap()
        return True

    def wait(self, seconds=None):
        """Wait for the child; kill it after ``seconds`` (then it counts as failed)."""
        if self.returncode is not None:
            return
        if self.owner != os.getpid():
            self.returncode = -1
            return
        import subprocess
        try:
            self.proc.wait(timeout() if seconds is None else seconds)
        except subprocess.TimeoutExpired:
            self.kill()
        self._reap()

    def kill(self):
        if self.owner == os.getpid() and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reap()

    def _reap(self):
        if self.returncode is None:
            rc = self.proc.returncode if self.owner == os.getpid() else -1
            self.returncode = -9 if rc is None else rc
            if self.returncode:
                self.error = _last_line(self.path + ".log") or f"exit status {self.returncode}"
        _jobs.discard(self)
        for p in (self.path, self.path + ".log"):
            try:
                os.unlink(p)
            except OSError:
                pass

    @property
    def ok(self):
        return self.returncode == 0


def running():
    """How many children of this process are compiling (finished ones are reaped)."""
    for job in list(_jobs):
        job.done()
    return len(_jobs)


def max_children():
    """Background compiles at once: half the cores (the caller keeps working meanwhile)."""
    try:
        return max(1, int(os.environ.get("GRADJIT_BACKGROUND_JOBS", "") or
                          (os.cpu_count() or 2) // 2))
    except ValueError:
        return 1


def start(low, dc):
    """A Job compiling ``low`` (a runtime.compiled.Lowered) into ``dc``; None when it cannot
    be started now (too many running: the caller asks again later, or compiles itself)."""
    import subprocess
    if running() >= max_children():
        return None
    try:
        request = {"source": low.source, "meta": low.cache_meta(), "what": low.what(),
                   "args": [stand_in(v) for v in low.kernel_args()], "directory": dc.directory}
        data = pickle.dumps(request, protocol=4)
    except (Unpicklable, pickle.PicklingError, TypeError, AttributeError):
        return None
    import tempfile
    try:
        fd, path = tempfile.mkstemp(prefix="request-", suffix=".pickle",
                                    dir=os.path.join(dc.directory, "tmp"))
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        log = open(path + ".log", "wb")
    except OSError:
        return None
    env = dict(os.environ)
    env.pop("GRADJIT_DISABLE_CACHE", None)
    env["GRADJIT_CACHE_DIR"] = dc.directory
    env["GRADJIT_TIERED"] = "0"
    try:
        with log:
            proc = subprocess.Popen([sys.executable, "-m", _module[0], path], env=env,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=log, start_new_session=True, close_fds=True)
    except OSError:
        os.unlink(path)
        return None
    _at_exit()
    return Job(proc, path, low.what())


def _last_line(path):
    try:
        with open(path, "rb") as f:
            lines = f.read().decode("utf-8", "replace").strip().splitlines()
    except OSError:
        return None
    return lines[-1] if lines else None


_registered = []


def _at_exit():
    if not _registered:
        import atexit
        atexit.register(kill_all)
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=_jobs.clear)
        _registered.append(True)


def kill_all_now():
    for job in list(_jobs):
        job.kill()


EXIT_WAIT = 30.0  # seconds the interpreter's exit waits for running compiles


def kill_all():
    """At interpreter exit: let running compiles finish (up to GRADJIT_BACKGROUND_EXIT_WAIT
    seconds in all, so that the next process finds the kernels on disk), then kill the rest."""
    try:
        limit = float(os.environ.get("GRADJIT_BACKGROUND_EXIT_WAIT", "") or EXIT_WAIT)
    except ValueError:
        limit = EXIT_WAIT
    end = time.perf_counter() + limit
    try:
        for job in list(_jobs):
            job.wait(max(0.0, end - time.perf_counter()))
    finally:
        for job in list(_jobs):
            try:
                job.kill()
            except Exception:  # noqa: BLE001, S110 - exiting: nothing to report to
                pass


# ---------------------------------------------------------------------------------------------
# The child
# ---------------------------------------------------------------------------------------------


def _die_with_parent():
    """Linux: SIGTERM when the parent exits, however it exits (no orphaned compiles)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent was already gone
            sys.exit(3)
    except (OSError, AttributeError):
        pass


def compile_request(path):
    """Compile the request at ``path`` into the disk cache (the child's whole job)."""
    import hashlib

    with open(path, "rb") as f:
        req = pickle.load(f)
    from .diskcache import DiskCache
    from .loader import (capi_needed, entry_point, numba_compile, out_examples, preload_capi,
                         versions)
    dc = DiskCache(req["directory"])
    if not dc.enabled:
        raise SystemExit(f"gradjit background compile: the cache is unusable "
                         f"({dc.disabled_reason})")
    source = req["source"]
    key = hashlib.sha256((source + versions()).encode()).hexdigest()
    vals = [_example(d) for d in req["args"]]
    with dc.lock(key):  # held until sealed: a reader never sees a half-written entry
        mod = dc.load(key)
        if mod is None:
            mod = dc.store(key, source, req["meta"])
        preload_capi(capi_needed(source))
        numba_compile(entry_point(mod), vals + out_examples(mod), lambda: req["what"])
        dc.seal(key)


def main(argv):
    _die_with_parent()
    from ..errors import GradjitError
    try:
        compile_request(argv[0])
    except GradjitError as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
