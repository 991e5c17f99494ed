"""Persistent on-disk store of generated kernel modules.

The runtime hands this module a *key* (computed by the caller from everything that
determines the generated code) and the generated numba source; the store writes it once,
atomically, imports it, and serves it to later processes. numba's own object-code cache
(``cache=True``) then lives beside each module, so a hit in a new process neither traces
nor compiles.

Layout of the cache directory (mode 0700)::

    <dir>/entries/<key>/kernel.py        generated module, written once, never rewritten
    <dir>/entries/<key>/meta.json        metadata + sha256 of kernel.py and of numba's files
    <dir>/entries/<key>/used             empty; its mtime is the entry's last-used time
    <dir>/entries/<key>/__pycache__/     numba's *.nbi / *.nbc object-code cache
    <dir>/manifests/<fkey>/<name>.mf     what a trace of one function depended on (below)
    <dir>/locks/<key>.lock               per-key inter-process lock (fcntl.flock)
    <dir>/tmp/                           staging area for atomic writes and removals
    <dir>/stats.json, stats.lock         hit/miss figures shared by all processes

Entries are built in ``tmp/`` and renamed into ``entries/`` in one ``rename``; removals
rename the entry out of ``entries/`` first.  A reader therefore sees a complete entry or
none.  Everything read is checked: ownership, permissions, the metadata's own checksum,
the kernel's sha256 and, once :meth:`DiskCache.seal` has recorded them, the sha256 of
numba's files.  Anything damaged is reported with a :class:`GradjitCacheWarning`, removed
and rebuilt by the caller; nothing here ever raises on a bad cache.

Expected use by the runtime::

    mod = cache.load(key)
    if mod is None:
        with cache.lock(key):            # one process compiles, the others wait
            mod = cache.load(key)
            if mod is None:
                mod = cache.store(key, source, meta)
            ...compile (first call) mod's numba functions...
            cache.seal(key)
    else:
        ...compile (first call) mod's numba functions...
        cache.seal(key)                  # cheap no-op unless numba wrote new object code

Manifests put a key computable *before* tracing in front of the entries: the runtime
hashes the function (its source, transform, options and argument signature) into ``fkey``
and stores, per ``fkey``, what the trace depended on (helpers' source, guarded constants,
captured arrays, how to assemble results) and the entry key.  A new process whose checks
all hold imports the entry without tracing.  A manifest is sealed (sha256 of its body,
owner-checked, written by atomic rename) and holds plain data only (pickle without
classes); one whose entry is gone is dead and removed by ``verify``/``prune``/``clear``.

``seal`` must follow every compilation of a module's functions (numba may have recompiled
after a damaged file was removed); otherwise the next process cannot trust, and so
discards, numba's files of that entry.

Heavy modules (numba, tempfile, shutil, platformdirs) are imported lazily.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
import sys
import threading
import time
import warnings

try:
    from gradjit.errors import GradjitError
except ImportError:  # pragma: no cover - only before gradjit/errors.py exists

    class GradjitError(Exception):
        """Fallback base class (gradjit.errors is not available)."""


try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: locks are process-local only
    fcntl = None

__all__ = [
    "DiskCache",
    "GradjitCacheWarning",
    "GradjitError",
    "format_size",
    "parse_size",
]


class GradjitCacheWarning(UserWarning):
    """Something is wrong with the on-disk cache; gradjit carried on without it."""


FORMAT = 1
KERNEL = "kernel.py"
MANIFESTS = "manifests"
MANIFEST_MAGIC = b"gradjit-manifest-1 "
MANIFEST_SUFFIX = ".mf"
MANIFESTS_PER_FUNCTION = 8  # versions kept per function key (helpers edited back and forth)
META = "meta.json"
USED = "used"
PYCACHE = "__pycache__"
NUMBA_SUFFIXES = (".nbi", ".nbc")
MODULE_PREFIX = "gradjit_kernel_"

_KEY_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,199}\Z")
_TRUE = {"1", "true", "yes", "on"}

# Warnings already given in this process: (directory, kind).  "One warning" per problem.
_WARNED: set = set()


def _warn(directory, kind, message, once=True):
    if once:
        if (directory, kind) in _WARNED:
            return
        _WARNED.add((directory, kind))
    warnings.warn(message, GradjitCacheWarning, stacklevel=3)


# ----------------------------------------------------------------------------------------
# Sizes
# ----------------------------------------------------------------------------------------

_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgtp]?)(i?b)?\s*\Z", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_size(text) -> int:
    """``"500M"``, ``"1.5G"``, ``"10KiB"``, ``"2048"`` -> bytes (binary multiples)."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"invalid size {text!r}")
        return text
    m = _SIZE_RE.match(str(text))
    if not m:
        raise ValueError(f"invalid size {text!r} (use e.g. 500M, 1.5G or a number of bytes)")
    number, unit, _ = m.groups()
    return int(float(number) * _UNITS[unit.lower()])


def format_size(n: int) -> str:
    """Bytes as a short human-readable string (``"1.5 MiB"``)."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


# ----------------------------------------------------------------------------------------
# Small file helpers
# ----------------------------------------------------------------------------------------


class _Damaged(Exception):
    """An entry failed a check.  ``silent``: a harmless leftover, removed without a warning."""

    def __init__(self, problem, silent=False):
        super().__init__(problem)
        self.silent = silent


class _Unwritable(Exception):
    """Writing into the cache directory failed (read-only, full, permissions)."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_owner(st, what, is_dir):
    if st.st_uid != os.geteuid():
        raise _Damaged(f"{what} is owned by another user (uid {st.st_uid})")
    if is_dir and st.st_mode & 0o022:
        raise _Damaged(f"{what} is writable by group or others (mode {st.st_mode & 0o777:o})")


def _read_private(path, what, with_stat=False):
    """Read a regular file we own, without following symlinks (no check-then-open race)."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise _Damaged(f"{what} is a symbolic link") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _Damaged(f"{what} is not a regular file")
        _check_owner(st, what, is_dir=False)
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
        data = b"".join(chunks)
        return (data, _stamp(st)) if with_stat else data
    finally:
        os.close(fd)


def _write_file(path, data: bytes):
    """Create ``path`` (must not exist) with mode 0600 and write ``data`` to it."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _stamp(st):
    """What changes when numba (re)writes one of its files (it writes via os.replace)."""
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _dir_size(path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _meta_digest(meta: dict) -> str:
    return _sha256(json.dumps(meta, sort_keys=True, default=str).encode())


def _dump_meta(meta: dict) -> bytes:
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    body["meta_sha256"] = _meta_digest(body)
    return json.dumps(body, sort_keys=True, indent=1, default=str).encode()


def _parse_meta(data: bytes, key: str) -> dict:
    try:
        meta = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _Damaged("meta.json is truncated or not valid JSON") from None
    if not isinstance(meta, dict):
        raise _Damaged("meta.json is not a gradjit metadata object")
    digest = meta.pop("meta_sha256", None)
    if meta.get("format") != FORMAT or "sha256" not in meta:
        raise _Damaged("foreign entry (not written by this version of gradjit)")
    if digest != _meta_digest(meta):
        raise _Damaged("meta.json checksum mismatch (modified or corrupted)")
    if meta.get("key") != key:
        raise _Damaged("foreign entry (its metadata names another key)")
    return meta


def _versions() -> dict:
    gj = sys.modules.get("gradjit")
    numba = sys.modules.get("numba")
    numba_version = getattr(numba, "__version__", None)
    if numba_version is None:
        try:
            from importlib.metadata import version

            numba_version = version("numba")
        except Exception:  # noqa: BLE001  # pragma: no cover - numba not installed
            numba_version = None
    return {
        "gradjit": getattr(gj, "__version__", None),
        "numba": numba_version,
        "python": sys.version.split()[0],
    }


def _seal_manifest(payload) -> bytes:
    import pickle

    body = pickle.dumps(payload, protocol=4)
    return MANIFEST_MAGIC + _sha256(body).encode() + b"\n" + body


def _open_manifest(data: bytes, fkey: str):
    """The payload of a sealed manifest; raises _Damaged."""
    import io
    import pickle

    head, sep, body = data.partition(b"\n")
    if not sep or not head.startswith(MANIFEST_MAGIC):
        raise _Damaged("manifest is truncated or not written by gradjit")
    if head[len(MANIFEST_MAGIC):].decode("ascii", "replace") != _sha256(body):
        raise _Damaged("manifest checksum mismatch (truncated or modified)")

    class Plain(pickle.Unpickler):
        def find_class(self, module, name):  # plain data only: never a class or function
            raise _Damaged(f"manifest refers to {module}.{name}")

    try:
        payload = Plain(io.BytesIO(body)).load()
    except _Damaged:
        raise
    except Exception as e:  # noqa: BLE001 - whatever is wrong with it, it is damaged
        raise _Damaged(f"manifest cannot be read ({type(e).__name__})") from None
    if not isinstance(payload, dict) or payload.get("fkey") != fkey:
        raise _Damaged("foreign manifest (it names another function key)")
    return payload


# ----------------------------------------------------------------------------------------
# Locks: re-entrant within a process (per thread), exclusive across processes
# ----------------------------------------------------------------------------------------


class _ProcessLock:
    def __init__(self):
        self.rlock = threading.RLock()
        self.depth = 0
        self.fd = None


_LOCKS: dict = {}
_LOCKS_GUARD = threading.Lock()


def _reset_locks_after_fork():  # pragma: no cover - exercised only by forking callers
    # The child shares the parent's open file descriptions; it must neither think it holds
    # the parent's locks nor unlock them.
    global _LOCKS_GUARD
    _LOCKS.clear()
    _LOCKS_GUARD = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_locks_after_fork)


def _flock_open(path, blocking=True):
    """Open and flock ``path``; retry if it was unlinked meanwhile.  None: busy."""
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
    while True:
        fd = os.open(path, flags, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                os.close(fd)
                return None
            st = os.fstat(fd)
            try:
                cur = os.stat(path)
            except FileNotFoundError:
                cur = None
            if cur is not None and (cur.st_ino, cur.st_dev) == (st.st_ino, st.st_dev):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the lock file was replaced while we waited: lock the new one


class _KeyLock:
    """Context manager returned by :meth:`DiskCache.lock`; ``acquired`` tells if it is held."""

    def __init__(self, path, blocking=True, name=None):
        self.path = path  # the lock file; None: a process-local lock only (named ``name``)
        self.name = path if path is not None else name
        self.blocking = blocking
        self.acquired = False
        self._plock = None

    def __enter__(self):
        with _LOCKS_GUARD:
            plock = _LOCKS.setdefault(self.name, _ProcessLock())
        if not plock.rlock.acquire(blocking=self.blocking):
            return self
        plock.depth += 1
        if plock.depth == 1 and fcntl is not None and self.path is not None:
            try:
                fd = _flock_open(self.path, self.blocking)
            except OSError:
                fd = None  # cannot lock (read-only, full): go on without inter-process lock
            else:
                if fd is None:  # another process holds it
                    plock.depth -= 1
                    plock.rlock.release()
                    return self
            plock.fd = fd
        self._plock = plock
        self.acquired = True
        return self

    @property
    def depth(self):
        return self._plock.depth if self._plock else 0

    def __exit__(self, *exc):
        plock = self._plock
        if plock is None:
            return False
        self._plock = None
        self.acquired = False
        plock.depth -= 1
        if plock.depth == 0 and plock.fd is not None:
            fd, plock.fd = plock.fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
        plock.rlock.release()
        return False


# ----------------------------------------------------------------------------------------
# Importing kernel modules
# ----------------------------------------------------------------------------------------

_IMPORT_LOCK = threading.RLock()


class _KernelLoader:
    """Executes the exact bytes that were checksummed (no re-read, no .pyc to go stale)."""

    def __init__(self, code: bytes):
        self._code = code

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        code = compile(self._code, module.__file__, "exec", dont_inherit=True)
        exec(code, module.__dict__)  # noqa: S102 - gradjit's own checksummed kernel


def _import_kernel(key, path, code: bytes):
    import importlib.util

    name = MODULE_PREFIX + key
    with _IMPORT_LOCK:
        mod = sys.modules.get(name)
        if mod is not None and getattr(mod, "__file__", None) == path:
            return mod  # same key -> same content: reuse this process's module
        spec = importlib.util.spec_from_file_location(name, path, loader=_KernelLoader(code))
        mod = importlib.util.module_from_spec(spec)
        # numba's cache=True re-imports the module by name when it rebuilds cached code.
        sys.modules[name] = mod
        try:
            spec.loader.exec_module(mod)
        except BaseException:
            if sys.modules.get(name) is mod:
                del sys.modules[name]
            raise
        return mod


def _check_key(key):
    if not isinstance(key, str) or not _KEY_RE.match(key):
        raise ValueError(f"invalid cache key {key!r}: expected a hex digest ([A-Za-z0-9_-]+)")


# ----------------------------------------------------------------------------------------
# The cache
# ----------------------------------------------------------------------------------------


class DiskCache:
    """The on-disk kernel store (see the module docstring).

    ``enabled`` is False when the cache is off (``GRADJIT_DISABLE_CACHE=1``) or unusable
    (insecure, read-only or full directory; ``disabled_reason`` says why).  Then
    :meth:`load` misses and :meth:`store` imports from a private temporary directory, so the
    caller always gets a module.
    """

    def __init__(self, directory: str | None = None):
        if directory is None:
            directory = os.environ.get("GRADJIT_CACHE_DIR") or None
        if directory is None:
            import platformdirs

            directory = platformdirs.user_cache_dir("gradjit")
        self.directory = os.path.abspath(os.path.expanduser(os.fspath(directory)))
        self.enabled = False
        self.disabled_reason = None
        self._readable = False  # directory exists and is safe to list/manage
        self._memdir = None
        self._counts = {"hits": 0, "misses": 0}
        # key -> stamps of numba's files as last verified or sealed by this process; seal()
        # has nothing to do while they are unchanged.
        self._stamps = {}
        self._guard = threading.Lock()
        off = os.environ.get("GRADJIT_DISABLE_CACHE", "").strip().lower() in _TRUE
        if off:
            self.disabled_reason = "disabled by GRADJIT_DISABLE_CACHE"
        self._open(create=not off)
        if off:
            self.enabled = False

    def __repr__(self):
        state = "enabled" if self.enabled else f"disabled: {self.disabled_reason}"
        return f"DiskCache({self.directory!r}, {state})"

    # -- set-up -------------------------------------------------------------------------

    def _path(self, *parts):
        return os.path.join(self.directory, *parts)

    def _entry_dir(self, key):
        return self._path("entries", key)

    def _lock_path(self, key):
        return self._path("locks", key + ".lock")

    def _disable(self, kind, message):
        self.enabled = False
        if self.disabled_reason is None:
            self.disabled_reason = message
        _warn(self.directory, kind, f"gradjit cache: {message}; using an in-memory cache only")

    def _open(self, create):
        d = self.directory
        existed = os.path.isdir(d)
        if not existed and not create:
            return
        try:
            if not existed:
                os.makedirs(d, mode=0o700, exist_ok=True)
                os.chmod(d, 0o700)
            st = os.stat(d)
        except OSError as e:
            self._disable("create", f"cannot create cache directory {d} ({e.strerror or e})")
            return
        try:
            _check_owner(st, f"cache directory {d}", is_dir=True)
        except _Damaged as e:
            if create:  # (with the cache switched off there is nothing to warn about)
                self._disable("insecure", f"refusing to use it: {e}")
            return
        if not stat.S_ISDIR(st.st_mode):
            self._disable("create", f"cache path {d} is not a directory")
            return
        self._readable = True
        if not create:
            return
        if not os.access(d, os.W_OK | os.X_OK):
            self._disable("readonly", f"cache directory {d} is not writable")
            return
        try:
            self._make_subdirs()
        except _Damaged as e:
            self._readable = False
            self._disable("insecure", f"refusing to use it: {e}")
            return
        except OSError as e:
            self._disable("readonly", f"cannot write to cache directory {d} ({e.strerror or e})")
            return
        self.enabled = True

    def _make_subdirs(self):
        for sub in ("entries", "locks", "tmp", MANIFESTS):
            p = self._path(sub)
            try:
                os.mkdir(p, 0o700)
            except FileExistsError:
                pass
            st = os.lstat(p)
            if not stat.S_ISDIR(st.st_mode):
                raise _Damaged(f"{p} is not a directory")
            _check_owner(st, p, is_dir=True)

    # -- locking --------------------------------------------------------------------------

    def lock(self, key: str):
        """Inter-process, per-key exclusive lock (re-entrant within a thread).

        Hold it across load-miss -> store -> compile -> seal so that, among processes
        compiling the same key, one compiles and the others wait, then load.
        """
        _check_key(key)
        if self.enabled or (self._readable and os.path.isdir(self._path("locks"))):
            return _KeyLock(self._lock_path(key))
        # Memory-only: a process-local lock is all there is.
        return _KeyLock(None, name=("memory", self.directory, key))

    # -- load -----------------------------------------------------------------------------

    def load(self, key: str):
        """The kernel module of a complete, checksummed entry, or None on a miss.

        Damaged, truncated or foreign entries are reported with a warning, removed, and
        count as a miss (the caller rebuilds).  Records last-used time and hit/miss counts.
        """
        _check_key(key)
        mod = None
        if self.enabled:
            try:
                mod = self._load(key, repair=False)
                if mod is _NEEDS_REPAIR:
                    with self.lock(key):
                        mod = self._load(key, repair=True)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as e:  # noqa: BLE001 - a cache problem must never break a call
                _warn(
                    self.directory,
                    "load",
                    f"gradjit cache: could not read entry {key} ({type(e).__name__}: {e}); "
                    "rebuilding it",
                    once=False,
                )
                mod = None
        self._count(hit=mod is not None)
        return mod

    def _load(self, key, repair):
        try:
            found = self._read_entry(key)
        except _Damaged as d:
            if not repair:
                return _NEEDS_REPAIR
            self._drop_damaged(key, d)
            return None
        if found is None:
            return None
        meta, code = found
        if "sealed" not in meta and not repair:
            # Being compiled by another process right now (or it died): wait for its lock
            # rather than compile the same thing again.
            return _NEEDS_REPAIR
        corrupt, unverified, stamps = self._check_numba(key, meta)
        if corrupt or unverified:
            if not repair:
                return _NEEDS_REPAIR
            if corrupt:
                _warn(
                    self.directory,
                    "numba",
                    f"gradjit cache: numba object code of entry {key} is damaged "
                    f"({'; '.join(corrupt)}); it is removed and will be recompiled",
                    once=False,
                )
                self._purge_numba(key)
                stamps = {}
                meta["numba_files"] = {}
                meta.pop("sealed", None)
                try:
                    self._write_meta(key, meta)
                except OSError:
                    pass
            else:  # never sealed (a crashed compile): unverified, so not trusted
                self._purge_numba(key, names=unverified)
        path = os.path.join(self._entry_dir(key), KERNEL)
        try:
            mod = _import_kernel(key, path, code)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # noqa: BLE001 - whatever the kernel raised: rebuild it
            with self.lock(key):
                self._drop_damaged(key, _Damaged(f"importing it failed ({type(e).__name__}: {e})"))
            return None
        self._stamps[key] = stamps
        self._touch(key)
        return mod

    def _read_entry(self, key):
        """(meta, kernel bytes) of a checked entry; None if absent; raises _Damaged."""
        edir = self._entry_dir(key)
        try:
            st = os.lstat(edir)
        except FileNotFoundError:
            return None
        if not stat.S_ISDIR(st.st_mode):
            raise _Damaged("entry is not a directory")
        _check_owner(st, "entry directory", is_dir=True)
        try:
            meta_bytes = _read_private(os.path.join(edir, META), "meta.json")
            meta = _parse_meta(meta_bytes, key)
            code = _read_private(os.path.join(edir, KERNEL), "kernel.py")
        except FileNotFoundError:
            if not os.path.isdir(edir):
                return None  # removed by someone else meanwhile
            left = set(os.listdir(edir))
            if not left & {KERNEL, META}:
                # Only numba's __pycache__: it re-created it after the entry was removed.
                raise _Damaged("leftover directory", silent=True) from None
            missing = KERNEL if META in left else META
            raise _Damaged(f"incomplete entry ({missing} is missing)") from None
        if _sha256(code) != meta["sha256"]:
            raise _Damaged("kernel.py checksum mismatch (truncated or modified)")
        return meta, code

    def _check_numba(self, key, meta):
        """Check numba's files against the checksums recorded by :meth:`seal`.

        Returns (problems with sealed files, names of never-sealed files, stamps of the
        verified files).
        """
        pdir = os.path.join(self._entry_dir(key), PYCACHE)
        try:
            st = os.lstat(pdir)
        except FileNotFoundError:
            return [], [], {}
        try:
            if not stat.S_ISDIR(st.st_mode):
                raise _Damaged(f"{PYCACHE} is not a directory")
            _check_owner(st, PYCACHE, is_dir=True)
        except _Damaged as d:
            return [str(d)], [], {}
        recorded = meta.get("numba_files") or {}
        corrupt, unverified, stamps = [], [], {}
        for name in sorted(os.listdir(pdir)):
            if not name.endswith(NUMBA_SUFFIXES):
                continue
            want = recorded.get(name)
            if want is None:
                unverified.append(name)
                continue
            try:
                data, stamps[name] = _read_private(os.path.join(pdir, name), name, True)
            except FileNotFoundError:
                continue
            except _Damaged as d:
                corrupt.append(str(d))
                continue
            if _sha256(data) != want:
                corrupt.append(f"{name}: checksum mismatch")
        return corrupt, unverified, stamps

    def _numba_stamps(self, key):
        pdir = os.path.join(self._entry_dir(key), PYCACHE)
        try:
            names = os.listdir(pdir)
        except OSError:
            return {}
        stamps = {}
        for name in names:
            if name.endswith(NUMBA_SUFFIXES):
                try:
                    stamps[name] = _stamp(os.lstat(os.path.join(pdir, name)))
                except OSError:
                    pass
        return stamps

    def _purge_numba(self, key, names=None):
        pdir = os.path.join(self._entry_dir(key), PYCACHE)
        try:
            listing = os.listdir(pdir) if names is None else names
        except FileNotFoundError:
            return
        except NotADirectoryError:
            os.unlink(pdir)
            return
        for name in listing:
            if name.endswith(NUMBA_SUFFIXES):
                try:
                    os.unlink(os.path.join(pdir, name))
                except FileNotFoundError:
                    pass

    def _drop_damaged(self, key, damage):
        if not damage.silent:
            _warn(
                self.directory,
                "damaged",
                f"gradjit cache: entry {key} in {self.directory} is damaged ({damage}); "
                "it is removed and will be rebuilt",
                once=False,
            )
        self._remove_locked(key)

    def _touch(self, key):
        path = os.path.join(self._entry_dir(key), USED)
        now = time.time_ns()  # explicit: the kernel's own timestamps are coarse (jiffies)
        try:
            os.utime(path, ns=(now, now))
        except FileNotFoundError:
            try:
                _write_file(path, b"")
            except OSError:
                pass
        except OSError:
            pass

    # -- store / seal -----------------------------------------------------------------------

    def store(self, key: str, source: str, meta: dict):
        """Write the entry atomically, import and return its module.

        If the entry already exists (another process stored it), that one is used.  When the
        cache is disabled or unwritable the module is imported from a private temporary
        directory instead.  Errors raised by the module itself propagate.
        """
        _check_key(key)
        code = source.encode("utf-8")
        if self.enabled:
            try:
                with self.lock(key):
                    mod = self._store(key, code, meta)
            except _Unwritable as e:
                self._disable("write", f"cannot write to cache directory {self.directory} ({e})")
            else:
                self._auto_prune(protect=key)
                return mod
        return self._store_memory(key, code)

    def _store(self, key, code, meta):
        existing = self._load(key, repair=True)
        if existing is not None:
            self._touch(key)
            return existing
        edir = self._entry_dir(key)
        staging = self._stage(key, code, meta)
        try:
            try:
                os.rename(staging, edir)
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise _Unwritable(e.strerror or str(e)) from None
                # Someone stored it meanwhile without the lock: use theirs if sound.
                existing = self._load(key, repair=True)
                if existing is not None:
                    return existing
                os.rename(staging, edir)
        finally:
            if os.path.isdir(staging):
                _rmtree(staging)
        path = os.path.join(edir, KERNEL)
        try:
            mod = _import_kernel(key, path, code)
        except BaseException:
            self._remove_locked(key)  # generated code that does not import: keep nothing
            raise
        self._stamps[key] = {}
        return mod

    def _stage(self, key, code, meta):
        import tempfile

        full = dict(meta)
        full.update(
            format=FORMAT,
            key=key,
            sha256=_sha256(code),
            size=len(code),
            versions=_versions(),
            numba_files={},
        )
        full.setdefault("created", time.time())
        try:
            payload = _dump_meta(full)
        except (TypeError, ValueError) as e:
            raise TypeError(f"cache metadata must be JSON-serializable: {e}") from None
        for attempt in (0, 1):
            staging = None
            try:
                staging = tempfile.mkdtemp(prefix=key[:24] + ".", dir=self._path("tmp"))
                _write_file(os.path.join(staging, KERNEL), code)
                os.mkdir(os.path.join(staging, PYCACHE), 0o700)
                _write_file(os.path.join(staging, META), payload)
                _write_file(os.path.join(staging, USED), b"")
                return staging
            except OSError as e:
                if staging is not None:
                    _rmtree(staging)
                if attempt == 0 and isinstance(e, FileNotFoundError):
                    try:  # the directory was deleted under us: re-create it and retry
                        os.makedirs(self.directory, mode=0o700, exist_ok=True)
                        self._make_subdirs()
                        continue
                    except (OSError, _Damaged):
                        pass
                raise _Unwritable(e.strerror or str(e)) from None
        raise AssertionError  # pragma: no cover

    def _store_memory(self, key, code):
        import tempfile

        with self._guard:
            if self._memdir is None:
                import atexit

                self._memdir = tempfile.mkdtemp(prefix="gradjit-kernels-")
                atexit.register(_rmtree, self._memdir)
        kdir = os.path.join(self._memdir, key)
        path = os.path.join(kdir, KERNEL)
        os.makedirs(kdir, mode=0o700, exist_ok=True)
        if not os.path.exists(path):
            tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
            with open(tmp, "wb") as f:
                f.write(code)
            os.replace(tmp, path)
        return _import_kernel(key, path, code)

    def seal(self, key: str) -> None:
        """Record the checksums of numba's cache files of ``key``.

        Call it after compiling (or first calling) the functions of a module returned by
        :meth:`load` or :meth:`store`.  It costs a directory listing when numba wrote
        nothing new, so it can be called unconditionally.
        """
        _check_key(key)
        if not self.enabled:
            return
        known = self._stamps.get(key)
        if known is not None and self._numba_stamps(key) == known:
            return
        try:
            with self.lock(key):
                found = self._read_entry(key)
                if found is None:
                    return
                meta, _code = found
                pdir = os.path.join(self._entry_dir(key), PYCACHE)
                files, stamps = {}, {}
                if os.path.isdir(pdir):
                    for name in sorted(os.listdir(pdir)):
                        if name.endswith(NUMBA_SUFFIXES):
                            try:
                                data, stamps[name] = _read_private(
                                    os.path.join(pdir, name), name, True)
                            except (FileNotFoundError, _Damaged):
                                continue
                            files[name] = _sha256(data)
                if files != meta.get("numba_files") or "sealed" not in meta:
                    meta["numba_files"] = files
                    meta["sealed"] = time.time()
                    meta["size"] = _dir_size(self._entry_dir(key))
                    self._write_meta(key, meta)
                self._stamps[key] = stamps
        except (OSError, _Damaged):
            return
        self._auto_prune(protect=key)

    def _write_meta(self, key, meta):
        edir = self._entry_dir(key)
        tmp = os.path.join(edir, f".{META}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        _write_file(tmp, _dump_meta(meta))
        os.replace(tmp, os.path.join(edir, META))

    # -- manifests ----------------------------------------------------------------------------

    def _manifest_dir(self, fkey):
        return self._path(MANIFESTS, fkey)

    def manifests(self, fkey: str) -> list:
        """``(name, payload)`` of every sound manifest of ``fkey``, most recently used first.
        Damaged ones are reported with a warning and removed."""
        _check_key(fkey)
        if not self.enabled:
            return []
        mdir = self._manifest_dir(fkey)
        try:
            st = os.lstat(mdir)
            names = os.listdir(mdir)
        except OSError:
            return []
        try:
            if not stat.S_ISDIR(st.st_mode):
                raise _Damaged("manifest directory is not a directory")
            _check_owner(st, "manifest directory", is_dir=True)
        except _Damaged as d:
            self._drop_manifest(fkey, None, d)
            return []
        found = []
        for name in names:
            if not name.endswith(MANIFEST_SUFFIX):
                continue
            path = os.path.join(mdir, name)
            try:
                data = _read_private(path, "manifest")
                payload = _open_manifest(data, fkey)
                used = os.lstat(path).st_mtime_ns
            except FileNotFoundError:
                continue
            except _Damaged as d:
                self._drop_manifest(fkey, name, d)
                continue
            except OSError:
                continue
            found.append((used, name, payload))
        found.sort(key=lambda t: t[0], reverse=True)
        return [(name, payload) for _, name, payload in found]

    def store_manifest(self, fkey: str, payload: dict):
        """Write (or refresh) a manifest of ``fkey`` atomically; keep the most recent few.
        Returns its name (None if nothing was written)."""
        _check_key(fkey)
        if not self.enabled:
            return None
        data = _seal_manifest(dict(payload, fkey=fkey))
        # named by content (its creation time aside): processes that traced the same thing
        # at once write one file, not one each
        stable = _seal_manifest({k: v for k, v in payload.items() if k != "created"})
        name = hashlib.sha256(stable).hexdigest()[:32] + MANIFEST_SUFFIX
        mdir = self._manifest_dir(fkey)
        tmp = self._path("tmp", f"{fkey[:24]}.{name}.{os.getpid()}.{threading.get_ident()}")
        try:
            try:
                os.mkdir(mdir, 0o700)
            except FileExistsError:
                _check_owner(os.lstat(mdir), "manifest directory", is_dir=True)
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            _write_file(tmp, data)
            now = time.time_ns()  # explicit: the kernel's own timestamps are coarse (jiffies)
            os.utime(tmp, ns=(now, now))
            os.replace(tmp, os.path.join(mdir, name))
        except (OSError, _Damaged):
            try:
                os.unlink(tmp)
            except OSError:
                pass
            return None
        try:  # the oldest beyond the limit go
            names = [n for n in os.listdir(mdir) if n.endswith(MANIFEST_SUFFIX)]
            if len(names) > MANIFESTS_PER_FUNCTION:
                aged = sorted(names, key=lambda n: self._mtime(os.path.join(mdir, n)))
                for n in aged[: len(names) - MANIFESTS_PER_FUNCTION]:
                    os.unlink(os.path.join(mdir, n))
        except OSError:
            pass
        return name

    @staticmethod
    def _mtime(path):
        try:
            return os.lstat(path).st_mtime_ns
        except OSError:
            return 0

    def touch_manifest(self, fkey: str, name: str) -> None:
        """Mark a manifest as just used (the most recent is tried first)."""
        try:
            now = time.time_ns()
            os.utime(os.path.join(self._manifest_dir(fkey), name), ns=(now, now))
        except OSError:
            pass

    def remove_manifest(self, fkey: str, name: str | None = None) -> None:
        """Remove one manifest of ``fkey`` (or all of them)."""
        _check_key(fkey)
        mdir = self._manifest_dir(fkey)
        if name is None:
            if os.path.isdir(mdir) and not os.path.islink(mdir):
                _rmtree(mdir)
            else:
                try:
                    os.unlink(mdir)
                except OSError:
                    pass
            return
        try:
            os.unlink(os.path.join(mdir, name))
        except OSError:
            pass

    def _drop_manifest(self, fkey, name, damage):
        _warn(
            self.directory,
            "manifest",
            f"gradjit cache: manifest {fkey}/{name or ''} in {self.directory} is damaged "
            f"({damage}); it is removed and will be rebuilt",
            once=False,
        )
        self.remove_manifest(fkey, name)

    def _manifest_files(self):
        """(fkey, name, path) of every manifest file (unchecked)."""
        root = self._path(MANIFESTS)
        try:
            fkeys = sorted(os.listdir(root))
        except OSError:
            return []
        out = []
        for fkey in fkeys:
            mdir = os.path.join(root, fkey)
            try:
                names = sorted(os.listdir(mdir))
            except OSError:
                out.append((fkey, None, mdir))
                continue
            out.extend((fkey, n, os.path.join(mdir, n)) for n in names)
        return out

    def manifest_count(self) -> int:
        """How many manifests the directory holds."""
        return sum(1 for _, n, _ in self._manifest_files() if n and n.endswith(MANIFEST_SUFFIX))

    def _check_manifests(self, remove_dead=True):
        """Remove damaged manifests (returned as problems) and, with ``remove_dead``, those
        whose entry is gone (dead: not a problem, e.g. after prune)."""
        problems = []
        if not self._readable:
            return problems
        live = set(self._keys())
        for fkey, name, path in self._manifest_files():
            try:
                if not _KEY_RE.match(fkey):
                    raise _Damaged("foreign file in the manifest directory")
                if name is None or not name.endswith(MANIFEST_SUFFIX):
                    raise _Damaged("foreign file in the manifest directory")
                payload = _open_manifest(_read_private(path, "manifest"), fkey)
            except FileNotFoundError:
                continue
            except (OSError, _Damaged) as d:
                problems.append((f"manifest {fkey}/{name or ''}", str(d)))
                _remove(path)
                continue
            if remove_dead and payload.get("entry") not in live:
                try:
                    os.unlink(path)
                except OSError:
                    pass
        for fkey, name, path in self._manifest_files():
            if name is None:
                continue
            try:  # drop emptied function directories
                os.rmdir(os.path.dirname(path))
            except OSError:
                pass
        return problems

    # -- statistics ---------------------------------------------------------------------------

    def _count(self, hit):
        field = "hits" if hit else "misses"
        with self._guard:
            self._counts[field] += 1
        if not self.enabled:
            return
        try:
            with _KeyLock(self._path("stats.lock")):
                stats = self._read_stats()
                stats[field] += 1
                tmp = self._path(f"stats.json.{os.getpid()}.tmp")
                try:
                    os.unlink(tmp)
                except FileNotFoundError:
                    pass
                _write_file(tmp, json.dumps(stats).encode())
                os.replace(tmp, self._path("stats.json"))
        except Exception:  # noqa: BLE001, S110 - statistics must never break a load
            pass

    def _read_stats(self):
        try:
            with open(self._path("stats.json")) as f:
                data = json.load(f)
            return {k: int(data.get(k, 0)) for k in ("hits", "misses")}
        except Exception:  # noqa: BLE001 - missing or damaged: start again from zero
            return {"hits": 0, "misses": 0}

    def stats(self) -> dict:
        """``{'hits': int, 'misses': int}`` recorded by every process using this directory
        (this process's own figures when there is no usable directory)."""
        if self._readable and os.path.exists(self._path("stats.json")):
            return self._read_stats()
        if self.enabled:
            return {"hits": 0, "misses": 0}
        with self._guard:
            return dict(self._counts)

    # -- listing and management --------------------------------------------------------------

    def _keys(self):
        if not self._readable:
            return []
        try:
            names = os.listdir(self._path("entries"))
        except OSError:
            return []
        return sorted(n for n in names if _KEY_RE.match(n))

    def _last_used(self, key):
        try:
            return os.stat(os.path.join(self._entry_dir(key), USED)).st_mtime
        except OSError:
            try:
                return os.lstat(self._entry_dir(key)).st_mtime
            except OSError:
                return 0.0

    def entries(self) -> list:
        """Metadata of every readable entry, plus ``key``, ``size`` (bytes, numba's files
        included), ``last_used`` and ``created`` (seconds since the epoch)."""
        out = []
        for key in self._keys():
            edir = self._entry_dir(key)
            try:
                st = os.lstat(edir)
                if not stat.S_ISDIR(st.st_mode):
                    continue
                meta = _parse_meta(_read_private(os.path.join(edir, META), "meta.json"), key)
            except (OSError, _Damaged):
                continue
            info = {k: v for k, v in meta.items() if k not in ("numba_files", "format")}
            info["sealed"] = bool(meta.get("numba_files"))
            info["key"] = key
            info["size"] = _dir_size(edir)
            info["last_used"] = self._last_used(key)
            info.setdefault("created", st.st_mtime)
            out.append(info)
        return out

    def total_size(self) -> int:
        """Bytes used by all entries (numba's object code included)."""
        return sum(_dir_size(self._entry_dir(k)) for k in self._keys())

    def _remove_locked(self, key):
        """Remove ``key``'s entry (caller holds its lock).  True if something was removed."""
        edir = self._entry_dir(key)
        if not os.path.lexists(edir):
            return False
        import tempfile

        try:
            trash = tempfile.mkdtemp(prefix=f"trash-{key[:24]}.", dir=self._path("tmp"))
            os.rename(edir, os.path.join(trash, "entry"))
        except OSError:
            trash = None
        if trash is not None:
            _rmtree(trash)
        elif os.path.isdir(edir) and not os.path.islink(edir):
            _rmtree(edir)
        else:
            try:
                os.unlink(edir)
            except OSError:
                pass
        return not os.path.lexists(edir)

    def _remove_key(self, key, blocking=True):
        lk = _KeyLock(self._lock_path(key), blocking=blocking)
        with lk:
            if not lk.acquired:
                return False
            removed = self._remove_locked(key)
            self._drop_lock_file(lk, key)
            return removed

    def _drop_lock_file(self, lk, key):
        # Only while we hold the flock and nobody else in this process relies on it; other
        # processes waiting on the old file notice (inode changed) and lock the new one.
        if lk.acquired and lk.depth == 1:
            try:
                os.unlink(self._lock_path(key))
            except OSError:
                pass

    def remove(self, key: str) -> None:
        """Remove one entry (no error if it does not exist)."""
        _check_key(key)
        if self._readable:
            self._remove_key(key)

    def clear(self, older_than_days: float | None = None, function: str | None = None) -> int:
        """Remove entries: all, those not used for ``older_than_days`` days, and/or those of
        ``function`` (qualname, its last component, or a glob).  Returns how many."""
        import fnmatch

        cutoff = None if older_than_days is None else time.time() - older_than_days * 86400.0
        removed = 0
        infos = self.entries() if function is not None else self._plain_list()
        for info in infos:
            if cutoff is not None and info["last_used"] > cutoff:
                continue
            if function is not None:
                qual = str(info.get("qualname") or "")
                names = {qual, qual.rpartition(".")[2], qual.replace(".<locals>", "")}
                if function not in names and not fnmatch.fnmatchcase(qual, function):
                    continue
            if self._remove_key(info["key"]):
                removed += 1
        if removed:
            self._check_manifests()
        self._clean_tmp(max_age=3600)
        return removed

    def _plain_list(self):
        return [{"key": k, "last_used": self._last_used(k)} for k in self._keys()]

    def prune(self, max_size, _protect=None) -> int:
        """Remove least recently used entries until the total size is at most ``max_size``
        (bytes, or a string like ``"500M"``).  Entries locked by a compiling process are
        skipped.  Returns how many were removed."""
        limit = parse_size(max_size)
        sized = [(self._last_used(k), k, _dir_size(self._entry_dir(k))) for k in self._keys()]
        total = sum(s for _, _, s in sized)
        removed = 0
        for _used, key, size in sorted(sized):
            if total <= limit:
                break
            if key == _protect:
                continue
            if self._remove_key(key, blocking=False):
                total -= size
                removed += 1
        if removed:
            self._check_manifests()
        return removed

    def _auto_prune(self, protect):
        text = os.environ.get("GRADJIT_CACHE_MAX_SIZE", "").strip()
        if not text:
            return
        try:
            limit = parse_size(text)
        except ValueError as e:
            _warn(self.directory, "maxsize", f"gradjit cache: GRADJIT_CACHE_MAX_SIZE ignored: {e}")
            return
        try:
            self.prune(limit, _protect=protect)
        except OSError:
            pass

    def verify(self) -> list:
        """Check every entry; return ``(key, problem)`` for each damaged one, which is removed."""
        problems = []
        if not self._readable:
            return problems
        try:
            names = sorted(os.listdir(self._path("entries")))
        except OSError:
            return problems
        for name in names:
            if not _KEY_RE.match(name):
                problems.append((name, "foreign file in the cache directory"))
                path = self._path("entries", name)
                _remove(path)
                continue
            with self.lock(name) as lk:
                try:
                    found = self._read_entry(name)
                    if found is None:
                        continue
                    corrupt, unverified, _ = self._check_numba(name, found[0])
                    if corrupt:
                        raise _Damaged("numba object code: " + "; ".join(corrupt))
                    if unverified:
                        self._purge_numba(name, names=unverified)
                except _Damaged as d:
                    problems.append((name, str(d)))
                    self._remove_locked(name)
                    self._drop_lock_file(lk, name)
        problems.extend(self._check_manifests())
        self._clean_tmp(max_age=3600)
        return problems

    def _clean_tmp(self, max_age):
        tmp = self._path("tmp")
        now = time.time()
        try:
            names = os.listdir(tmp)
        except OSError:
            return
        for name in names:
            path = os.path.join(tmp, name)
            try:
                if now - os.lstat(path).st_mtime >= max_age:
                    _rmtree(path)
            except OSError:
                pass


_NEEDS_REPAIR = object()


def _remove(path):
    """Remove a file or a directory tree; whatever is already gone is fine."""
    if os.path.isdir(path) and not os.path.islink(path):
        _rmtree(path)
        return
    try:
        os.unlink(path)
    except OSError:
        pass


def _rmtree(path):
    import shutil

    shutil.rmtree(path, ignore_errors=True)
