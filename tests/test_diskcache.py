"""Tests of the on-disk kernel store (gradjit.runtime.diskcache)."""

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import uuid
import warnings

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from gradjit.runtime import diskcache
from gradjit.runtime.diskcache import DiskCache, GradjitCacheWarning

NUMBA_SRC = "import numba\n@numba.njit(cache=True)\ndef kernel(x):\n    return x * 2.0\n"
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def plain_src(factor=2.0, pad=0):
    """A kernel module without numba (fast to import), optionally padded to a size."""
    return f"def kernel(x):\n    return x * {factor!r}\n" + "#" * pad + ("\n" if pad else "")


def new_key():
    return hashlib.sha256(uuid.uuid4().bytes).hexdigest()


def meta(qualname="f", **extra):
    m = {"qualname": qualname, "file": "/src/model.py", "line": 3, "transform": "grad",
         "signature": "(float64[:], float64)", "target": "cpu", "created": time.time()}
    m.update(extra)
    return m


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("GRADJIT_CACHE_DIR", "GRADJIT_DISABLE_CACHE", "GRADJIT_CACHE_MAX_SIZE"):
        monkeypatch.delenv(name, raising=False)
    diskcache._WARNED.clear()


@pytest.fixture
def cdir(tmp_path):
    return str(tmp_path / "cache")


def entry_dir(cdir, key):
    return os.path.join(cdir, "entries", key)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def write(path, data):
    with open(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


# ----------------------------------------------------------------------------------------
# Basics
# ----------------------------------------------------------------------------------------


def test_store_then_load_roundtrip(cdir):
    cache = DiskCache(cdir)
    assert cache.enabled and cache.directory == cdir
    assert os.stat(cdir).st_mode & 0o777 == 0o700
    key = new_key()
    assert cache.load(key) is None
    mod = cache.store(key, plain_src(3.0), meta("model.loss"))
    assert mod.kernel(2.0) == 6.0
    assert mod.__name__ == "gradjit_kernel_" + key
    assert sys.modules[mod.__name__] is mod
    assert mod.__file__ == os.path.join(entry_dir(cdir, key), "kernel.py")
    # A second instance (as in another process) loads the same module file.
    again = DiskCache(cdir).load(key)
    assert again is not None and again.kernel(1.5) == 4.5
    [info] = DiskCache(cdir).entries()
    assert info["key"] == key and info["qualname"] == "model.loss"
    assert info["transform"] == "grad" and info["signature"] == "(float64[:], float64)"
    assert info["size"] >= len(plain_src(3.0)) and info["last_used"] > 0
    assert info["versions"]["python"] == sys.version.split()[0]
    assert info["sha256"] == hashlib.sha256(plain_src(3.0).encode()).hexdigest()
    assert cache.stats() == {"hits": 1, "misses": 1}
    assert DiskCache(cdir).stats() == {"hits": 1, "misses": 1}  # persisted


def test_kernel_file_is_written_once(cdir):
    cache = DiskCache(cdir)
    key = new_key()
    cache.store(key, plain_src(), meta())
    path = os.path.join(entry_dir(cdir, key), "kernel.py")
    before = os.stat(path)
    time.sleep(0.01)
    mod = DiskCache(cdir).store(key, plain_src(), meta())  # e.g. a racing process
    after = os.stat(path)
    assert (before.st_mtime_ns, before.st_ino) == (after.st_mtime_ns, after.st_ino)
    assert mod.kernel(1.0) == 2.0
    assert os.listdir(os.path.join(cdir, "tmp")) == []  # staging cleaned up


def test_invalid_key_rejected(cdir):
    cache = DiskCache(cdir)
    for bad in ("", "../evil", "a/b", "a.b", "x" * 300):
        with pytest.raises(ValueError):
            cache.load(bad)


def test_bad_generated_code_leaves_no_entry(cdir):
    cache = DiskCache(cdir)
    key = new_key()
    with pytest.raises(ZeroDivisionError):
        cache.store(key, "x = 1 / 0\n", meta())
    assert not os.path.exists(entry_dir(cdir, key))
    assert cache.load(key) is None


def test_last_used_updated_by_load(cdir):
    cache = DiskCache(cdir)
    key = new_key()
    cache.store(key, plain_src(), meta())
    used = os.path.join(entry_dir(cdir, key), "used")
    os.utime(used, (1000.0, 1000.0))
    assert cache.entries()[0]["last_used"] == 1000.0
    cache.load(key)
    assert cache.entries()[0]["last_used"] > time.time() - 60


# ----------------------------------------------------------------------------------------
# Damage: detected, warned, removed, rebuilt
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, damage",
    [
        ("kernel.py", "truncate"),
        ("kernel.py", "garbage"),
        ("kernel.py", "delete"),
        ("meta.json", "truncate"),
        ("meta.json", "garbage"),
        ("meta.json", "edit"),
        ("meta.json", "foreign"),
    ],
)
def test_damaged_entry_is_warned_removed_and_rebuilt(cdir, name, damage):
    cache = DiskCache(cdir)
    key = new_key()
    cache.store(key, plain_src(5.0), meta())
    path = os.path.join(entry_dir(cdir, key), name)
    data = read(path)
    if damage == "truncate":
        write(path, data[: len(data) // 2])
    elif damage == "garbage":
        write(path, os.urandom(len(data)))
    elif damage == "delete":
        os.unlink(path)
    elif damage == "edit":  # valid JSON, but not what gradjit wrote
        m = json.loads(data)
        m["sha256"] = hashlib.sha256(b"def kernel(x): return 0\n").hexdigest()
        write(path, json.dumps(m))
    elif damage == "foreign":
        write(path, json.dumps({"hello": "world"}))
    fresh = DiskCache(cdir)
    with pytest.warns(GradjitCacheWarning, match="damaged"):
        assert fresh.load(key) is None
    assert not os.path.exists(entry_dir(cdir, key))
    mod = fresh.store(key, plain_src(5.0), meta())
    assert mod.kernel(2.0) == 10.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert DiskCache(cdir).load(key).kernel(1.0) == 5.0


def test_entry_writable_by_others_is_refused(cdir):
    cache = DiskCache(cdir)
    key = new_key()
    cache.store(key, plain_src(), meta())
    os.chmod(entry_dir(cdir, key), 0o777)
    with pytest.warns(GradjitCacheWarning, match="writable by group or others"):
        assert DiskCache(cdir).load(key) is None
    assert not os.path.exists(entry_dir(cdir, key))


def test_symlinked_kernel_is_refused(cdir, tmp_path):
    cache = DiskCache(cdir)
    key = new_key()
    cache.store(key, plain_src(), meta())
    evil = tmp_path / "evil.py"
    evil.write_text(plain_src(99.0))
    path = os.path.join(entry_dir(cdir, key), "kernel.py")
    os.unlink(path)
    os.symlink(evil, path)
    with pytest.warns(GradjitCacheWarning, match="symbolic link"):
        assert DiskCache(cdir).load(key) is None


# ----------------------------------------------------------------------------------------
# numba's object code beside the module
# ----------------------------------------------------------------------------------------

WORKER = textwrap.dedent(
    """
    import json, sys, time, warnings
    sys.path.insert(0, {repo!r})
    t0 = time.perf_counter()
    from gradjit.runtime.diskcache import DiskCache
    SRC = {src!r}
    cache_dir, key = sys.argv[1], sys.argv[2]
    if len(sys.argv) > 3:                      # start together with the other workers
        time.sleep(max(0.0, float(sys.argv[3]) - time.time()))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cache = DiskCache(cache_dir)
        mod = cache.load(key)
        stored = False
        if mod is None:
            with cache.lock(key):
                mod = cache.load(key)
                if mod is None:
                    mod = cache.store(key, SRC, {{"qualname": "f", "file": "f.py", "line": 1,
                                                "transform": "jit", "signature": "(float64,)",
                                                "target": "cpu", "created": time.time()}})
                    stored = True
                result = mod.kernel(3.0)
                cache.seal(key)
        else:
            result = mod.kernel(3.0)
            cache.seal(key)                    # a no-op unless numba wrote new object code
    st = mod.kernel.stats
    print(json.dumps(dict(result=result, stored=stored,
                          numba_hits=sum(st.cache_hits.values()),
                          numba_misses=sum(st.cache_misses.values()),
                          warnings=[str(w.message) for w in caught],
                          seconds=time.perf_counter() - t0)))
    """
)


def worker_script(tmp_path):
    path = tmp_path / "worker.py"
    if not path.exists():
        path.write_text(WORKER.format(repo=REPO, src=NUMBA_SRC))
    return str(path)


def run_worker(tmp_path, cdir, key, *extra):
    proc = subprocess.run([sys.executable, worker_script(tmp_path), cdir, key, *extra],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_new_process_reuses_numba_object_code(tmp_path, cdir):
    key = new_key()
    first = run_worker(tmp_path, cdir, key)
    assert first["result"] == 6.0 and first["stored"]
    assert first["numba_misses"] == 1 and first["numba_hits"] == 0
    second = run_worker(tmp_path, cdir, key)
    assert second["result"] == 6.0 and not second["stored"]
    assert second["numba_hits"] == 1 and second["numba_misses"] == 0  # no recompilation
    assert first["warnings"] == [] and second["warnings"] == []
    meta_ = json.loads(read(os.path.join(entry_dir(cdir, key), "meta.json")))
    names = sorted(meta_["numba_files"])
    assert any(n.endswith(".nbi") for n in names) and any(n.endswith(".nbc") for n in names)
    assert DiskCache(cdir).stats() == {"hits": 1, "misses": 2}  # miss, miss under lock, hit


@pytest.fixture(scope="module")
def sealed_template(tmp_path_factory):
    """A cache directory holding one numba entry, compiled and sealed (made once)."""
    tmp = tmp_path_factory.mktemp("template")
    cdir = str(tmp / "cache")
    key = new_key()
    out = run_worker(tmp, cdir, key)
    assert out["stored"] and out["numba_misses"] == 1
    return cdir, key


@pytest.mark.parametrize("suffix, damage", [(".nbi", "truncate"), (".nbc", "garbage")])
def test_damaged_numba_files_are_detected_and_recompiled(tmp_path, sealed_template, suffix,
                                                         damage):
    src_dir, key = sealed_template
    cdir = str(tmp_path / "cache")
    shutil.copytree(src_dir, cdir)
    pdir = os.path.join(entry_dir(cdir, key), "__pycache__")
    [name] = [n for n in os.listdir(pdir) if n.endswith(suffix)]
    path = os.path.join(pdir, name)
    data = read(path)
    write(path, os.urandom(64) if damage == "garbage" else data[: len(data) // 3])
    out = run_worker(tmp_path, cdir, key)
    assert out["result"] == 6.0
    assert any("numba object code" in w and "damaged" in w for w in out["warnings"])
    assert out["numba_misses"] == 1  # recompiled rather than loading the bad file
    # Re-sealed by the worker: the next process hits numba's cache with no warning.
    again = run_worker(tmp_path, cdir, key)
    assert again["result"] == 6.0 and again["warnings"] == [] and again["numba_hits"] == 1


def test_verify_finds_damaged_numba_file(tmp_path, sealed_template):
    src_dir, key = sealed_template
    cdir = str(tmp_path / "cache")
    shutil.copytree(src_dir, cdir)
    pdir = os.path.join(entry_dir(cdir, key), "__pycache__")
    [name] = [n for n in os.listdir(pdir) if n.endswith(".nbc")]
    with open(os.path.join(pdir, name), "r+b") as f:
        f.seek(100)
        f.write(b"\x00" * 8)
    problems = DiskCache(cdir).verify()
    assert len(problems) == 1 and problems[0][0] == key and "checksum" in problems[0][1]
    assert DiskCache(cdir).entries() == []


def test_four_processes_at_once_then_a_fifth(tmp_path, cdir):
    key = new_key()
    script = worker_script(tmp_path)
    start = str(time.time() + 1.0)
    procs = [subprocess.Popen([sys.executable, script, cdir, key, start],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, stderr
        outs.append(json.loads(stdout))
    assert [o["result"] for o in outs] == [6.0] * 4
    assert sum(o["stored"] for o in outs) == 1  # one stored it, the others loaded it
    # normally only that one compiles; under heavy load a waiter may time out and compile
    # harmlessly as well, which the contract allows (no half-written entry is ever read)
    assert 1 <= sum(o["numba_misses"] for o in outs) <= 4
    assert all(o["warnings"] == [] for o in outs)
    fifth = run_worker(tmp_path, cdir, key)
    assert fifth["result"] == 6.0 and fifth["numba_misses"] == 0 and fifth["numba_hits"] == 1
    assert DiskCache(cdir).verify() == []
    assert os.listdir(os.path.join(cdir, "tmp")) == []


# ----------------------------------------------------------------------------------------
# Locks
# ----------------------------------------------------------------------------------------


def test_lock_is_reentrant_and_excludes_other_threads(cdir):
    cache = DiskCache(cdir)
    key = new_key()
    order = []

    def other():
        with DiskCache(cdir).lock(key):
            order.append("other")

    with cache.lock(key), cache.lock(key):  # re-entrant (seal/store take it again inside)
        cache.store(key, plain_src(), meta())
        cache.seal(key)
        t = threading.Thread(target=other)
        t.start()
        time.sleep(0.2)
        order.append("owner")
    t.join(5)
    assert order == ["owner", "other"]


def test_lock_excludes_other_processes(tmp_path, cdir):
    cache = DiskCache(cdir)
    key = new_key()
    marker = tmp_path / "marker"
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {REPO!r})
        from gradjit.runtime.diskcache import DiskCache
        with DiskCache({cdir!r}).lock({key!r}):
            open({str(marker)!r}, "w").write("held")
            time.sleep(1.0)
            open({str(marker)!r}, "w").write("released")
    """)
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + 30
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.01)
    with cache.lock(key):
        assert marker.read_text() == "released"
    proc.wait(30)


# ----------------------------------------------------------------------------------------
# Unusable directories degrade to memory-only, with one warning
# ----------------------------------------------------------------------------------------


def assert_memory_only_works(cache):
    key = new_key()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        mod = cache.store(key, plain_src(4.0), meta())
        assert mod.kernel(2.0) == 8.0
        assert not mod.__file__.startswith(cache.directory + os.sep)
        assert cache.load(key) is None  # memory only: nothing comes from disk
        assert cache.store(key, plain_src(4.0), meta()) is mod


def test_world_writable_directory_is_refused(cdir):
    os.makedirs(cdir)
    os.chmod(cdir, 0o777)
    with pytest.warns(GradjitCacheWarning, match="writable by group or others") as rec:
        cache = DiskCache(cdir)
    assert len(rec) == 1
    assert not cache.enabled
    assert_memory_only_works(cache)
    assert not os.path.exists(os.path.join(cdir, "entries"))


@pytest.mark.skipif(not IS_ROOT, reason="needs root to chown to another user")
def test_directory_of_another_user_is_refused(cdir):
    os.makedirs(cdir, mode=0o700)
    os.chown(cdir, 12345, -1)
    with pytest.warns(GradjitCacheWarning, match="owned by another user"):
        cache = DiskCache(cdir)
    assert not cache.enabled
    assert_memory_only_works(cache)


def test_uncreatable_directory_falls_back(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.warns(GradjitCacheWarning, match="cannot create") as rec:
        cache = DiskCache(str(blocker / "cache"))
    assert len(rec) == 1 and not cache.enabled
    assert_memory_only_works(cache)


@pytest.mark.skipif(IS_ROOT, reason="root ignores chmod 0500; covered by the write-failure test")
def test_read_only_directory_falls_back(cdir):
    os.makedirs(cdir)
    os.chmod(cdir, 0o500)
    try:
        with pytest.warns(GradjitCacheWarning, match="not writable") as rec:
            cache = DiskCache(cdir)
        assert len(rec) == 1 and not cache.enabled
        assert_memory_only_works(cache)
    finally:
        os.chmod(cdir, 0o700)


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_failed_write_falls_back_with_one_warning(cdir, monkeypatch, err):
    cache = DiskCache(cdir)
    assert cache.enabled

    def fail(path, data):
        raise OSError(err, os.strerror(err), path)

    monkeypatch.setattr(diskcache, "_write_file", fail)
    key = new_key()
    with pytest.warns(GradjitCacheWarning, match="cannot write") as rec:
        mod = cache.store(key, plain_src(7.0), meta())
    assert len(rec) == 1 and mod.kernel(1.0) == 7.0 and not cache.enabled
    assert_memory_only_works(cache)
    assert os.listdir(os.path.join(cdir, "entries")) == []
    assert os.listdir(os.path.join(cdir, "tmp")) == []


def test_disable_cache_env(tmp_path, monkeypatch):
    cdir = str(tmp_path / "cache")
    monkeypatch.setenv("GRADJIT_DISABLE_CACHE", "1")
    monkeypatch.setenv("GRADJIT_CACHE_DIR", cdir)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cache = DiskCache()
        assert cache.directory == cdir and not cache.enabled
        assert "GRADJIT_DISABLE_CACHE" in cache.disabled_reason
        assert_memory_only_works(cache)
    assert not os.path.exists(cdir)


def test_default_directory_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADJIT_CACHE_DIR", str(tmp_path / "envcache"))
    assert DiskCache().directory == str(tmp_path / "envcache")
    monkeypatch.delenv("GRADJIT_CACHE_DIR")
    import platformdirs

    monkeypatch.setattr(platformdirs, "user_cache_dir", lambda name: str(tmp_path / name))
    assert DiskCache().directory == str(tmp_path / "gradjit")


def test_stats_failure_never_breaks_a_load(cdir):
    cache = DiskCache(cdir)
    key = new_key()
    cache.store(key, plain_src(), meta())
    stats_file = os.path.join(cdir, "stats.json")
    if os.path.exists(stats_file):
        os.unlink(stats_file)
    os.mkdir(stats_file)  # a stats file impossible to read or replace
    assert cache.load(key).kernel(1.0) == 2.0


# ----------------------------------------------------------------------------------------
# Management: prune, clear, verify, remove
# ----------------------------------------------------------------------------------------


def fill(cache, n, pad=10_000, qualname=None):
    keys = []
    for i in range(n):
        key = new_key()
        cache.store(key, plain_src(float(i), pad=pad), meta(qualname or f"f{i}"))
        keys.append(key)
    return keys


def test_prune_removes_least_recently_used_first(cdir):
    cache = DiskCache(cdir)
    keys = fill(cache, 5)
    for k in [keys[3], keys[0], keys[4], keys[1], keys[2]]:  # use order: 2 is the newest
        assert cache.load(k) is not None
    size_one = cache.total_size() // 5
    removed = cache.prune(int(size_one * 2.5))
    assert removed == 3
    assert cache.total_size() <= size_one * 2.5
    assert {e["key"] for e in cache.entries()} == {keys[1], keys[2]}
    assert cache.prune("10M") == 0 and cache.prune(0) == 2 and cache.total_size() == 0


def test_max_size_env_prunes_after_store(cdir, monkeypatch):
    monkeypatch.setenv("GRADJIT_CACHE_MAX_SIZE", "25K")
    cache = DiskCache(cdir)
    keys = fill(cache, 5)
    assert cache.total_size() <= 25 * 1024
    left = {e["key"] for e in cache.entries()}
    assert keys[-1] in left and keys[0] not in left and len(left) == 2


def test_clear_by_age_and_function(cdir):
    cache = DiskCache(cdir)
    a, b = fill(cache, 2, pad=0, qualname="Model.loss")
    c, d = fill(cache, 2, pad=0, qualname="other")
    old = time.time() - 10 * 86400
    os.utime(os.path.join(entry_dir(cdir, a), "used"), (old, old))
    assert cache.clear(older_than_days=5) == 1
    assert {e["key"] for e in cache.entries()} == {b, c, d}
    assert cache.clear(function="loss") == 1  # last component of the qualname
    assert cache.clear(function="oth*") == 2  # glob
    assert cache.entries() == []
    fill(cache, 3, pad=0)
    assert cache.clear() == 3 and cache.total_size() == 0


def test_verify_reports_and_removes_damage(cdir):
    cache = DiskCache(cdir)
    good, bad_kernel, bad_meta = fill(cache, 3, pad=0)
    with open(os.path.join(entry_dir(cdir, bad_kernel), "kernel.py"), "a") as f:
        f.write("import os  # planted\n")
    write(os.path.join(entry_dir(cdir, bad_meta), "meta.json"), "{garbage")
    write(os.path.join(cdir, "entries", "README.txt"), "foreign")
    problems = dict(cache.verify())
    assert set(problems) == {bad_kernel, bad_meta, "README.txt"}
    assert "kernel.py checksum" in problems[bad_kernel]
    assert "meta.json" in problems[bad_meta]
    assert [e["key"] for e in cache.entries()] == [good]
    assert os.listdir(os.path.join(cdir, "entries")) == [good]
    assert cache.verify() == []


def test_remove(cdir):
    cache = DiskCache(cdir)
    key, other = fill(cache, 2, pad=0)
    cache.remove(key)
    cache.remove(key)  # absent: no error
    assert [e["key"] for e in cache.entries()] == [other]
    assert not os.path.exists(os.path.join(cdir, "locks", key + ".lock"))


def test_parse_and_format_size():
    assert diskcache.parse_size("2048") == 2048
    assert diskcache.parse_size("10M") == 10 << 20
    assert diskcache.parse_size("1.5G") == 3 << 29
    assert diskcache.parse_size("500 MiB") == 500 << 20
    assert diskcache.parse_size("2kb") == 2048
    for bad in ("", "M", "-1", "1X", "1.2.3"):
        with pytest.raises(ValueError):
            diskcache.parse_size(bad)
    assert diskcache.format_size(512) == "512 B"
    assert diskcache.format_size(1536) == "1.5 KiB"
    assert diskcache.format_size(10 << 20) == "10.0 MiB"


def test_importing_stays_light():
    # Whatever `import gradjit` itself needs, the cache and CLI modules add no numba.
    code = (f"import sys; sys.path.insert(0, {REPO!r}); import gradjit; "
            "before = 'numba' in sys.modules; "
            "import gradjit.runtime.cli, gradjit.runtime.diskcache; "
            "print(before, 'numba' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=False)
    before, after = out.stdout.split()
    assert after == before, out.stderr


# ----------------------------------------------------------------------------------------
# Manifests: what a trace depended on, so that a new process hits without tracing
# ----------------------------------------------------------------------------------------


def manifest_files(cdir):
    root = os.path.join(cdir, "manifests")
    return sorted(os.path.join(d, n) for d, _, names in os.walk(root) for n in names)


def test_manifest_roundtrip_limit_and_damage(cdir):
    cache = DiskCache(cdir)
    fkey, key = new_key(), new_key()
    cache.store(key, plain_src(), meta())
    for k in range(diskcache.MANIFESTS_PER_FUNCTION + 3):
        cache.store_manifest(fkey, {"entry": key, "version": k, "tree": ("t", ("*", None))})
        time.sleep(0.002)  # distinct mtimes: the oldest are the ones dropped
    found = DiskCache(cdir).manifests(fkey)
    assert [p["version"] for _, p in found] == list(range(diskcache.MANIFESTS_PER_FUNCTION + 2,
                                                           2, -1))  # most recent first
    assert found[0][1]["tree"] == ("t", ("*", None)) and found[0][1]["fkey"] == fkey
    assert os.stat(os.path.dirname(manifest_files(cdir)[0])).st_mode & 0o777 == 0o700
    # Truncated, garbage, and a sealed pickle that names a class: each warned and removed.
    paths = manifest_files(cdir)
    write(paths[0], read(paths[0])[:20])
    write(paths[1], os.urandom(200))
    import pickle

    body = pickle.dumps({"fkey": fkey, "entry": key, "evil": os.system}, protocol=4)
    write(paths[2], diskcache.MANIFEST_MAGIC + hashlib.sha256(body).hexdigest().encode()
          + b"\n" + body)
    with pytest.warns(GradjitCacheWarning, match="manifest") as rec:
        left = DiskCache(cdir).manifests(fkey)
    assert len(left) == diskcache.MANIFESTS_PER_FUNCTION - 3
    assert any("refers to" in str(w.message) for w in rec)
    assert len(manifest_files(cdir)) == len(left)
    # A manifest of another function key, copied here, is foreign.
    other = new_key()
    cache.store_manifest(other, {"entry": key})
    [src] = [p for p in manifest_files(cdir) if other in p]
    shutil.copy(src, os.path.join(cdir, "manifests", fkey, "copied.mf"))
    with pytest.warns(GradjitCacheWarning, match="foreign manifest"):
        assert len(DiskCache(cdir).manifests(fkey)) == len(left)


def test_verify_and_clear_drop_dead_and_damaged_manifests(cdir):
    cache = DiskCache(cdir)
    live, dead = new_key(), new_key()
    cache.store(live, plain_src(), meta())
    f1, f2, f3 = new_key(), new_key(), new_key()
    cache.store_manifest(f1, {"entry": live})
    cache.store_manifest(f2, {"entry": dead})  # its entry is gone (e.g. pruned)
    cache.store_manifest(f3, {"entry": live})
    [bad] = [p for p in manifest_files(cdir) if f3 in p]
    write(bad, read(bad)[:-3])
    assert cache.manifest_count() == 3
    problems = DiskCache(cdir).verify()
    assert [p for p, _ in problems] == [f"manifest {f3}/{os.path.basename(bad)}"]
    assert "checksum" in problems[0][1]
    assert cache.manifest_count() == 1 and len(cache.manifests(f1)) == 1  # dead one removed
    assert cache.clear() == 1
    assert cache.manifest_count() == 0 and manifest_files(cdir) == []


MODEL = '''
import os
import numpy as np
import helpers
from helpers import cube

SCALE = 2.0
DATA = np.linspace(0.0, float(os.environ.get("DATA_END", "1.0")), 4)


def f_src(x):
    return np.sum(2.0 * x ** 2)


def f_helper(x):
    return np.sum(cube(x))


def f_global(x):
    return np.sum(SCALE * x ** 2)


def f_modattr(x):
    return helpers.K * np.sum(x)


def make(c):
    def inner(x):
        return np.sum(c * x ** 2)
    return inner


f_closure = make(float(os.environ.get("CLOSED", "1.0")))


def f_array(w):
    return np.sum((DATA * w - 1.0) ** 2)


def f_aux(x, d):
    return np.sum(d["a"] * x ** 2), {"double": x * 2.0}
'''

HELPERS = '''
K = 1.5


def cube(x):
    return x ** 3
'''

CHILD = '''
import json, sys, warnings
sys.path.insert(0, {repo!r})
sys.path.insert(0, ".")
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    import numpy as np
    import gradjit as gj
    import model
    x = np.array([1.0, 2.0, 3.0, 4.0])
    out = {{}}
    for name in sys.argv[1:]:
        before = gj.cache_info()
        if name == "f_aux":   # a dict argument, argnums, has_aux, value_and_grad
            f = gj.value_and_grad(model.f_aux, argnums=(0, 1), has_aux=True)
            (v, aux), (gx, gd) = f(x, {{"a": np.full(4, 3.0)}})
            res = [float(v), aux["double"].tolist(), gx.tolist(), gd["a"].tolist()]
        else:
            res = gj.grad(getattr(model, name))(x).tolist()
        after = gj.cache_info()
        out[name] = dict(result=res, traces=after.traces - before.traces,
                         compiles=after.compiles - before.compiles,
                         manifest_hits=after.manifest_hits - before.manifest_hits)
out["warnings"] = [str(w.message) for w in caught]
print(json.dumps(out))
'''

NAMES = ["f_src", "f_helper", "f_global", "f_modattr", "f_closure", "f_array", "f_aux"]


class Project:
    """A user's project in a directory: model.py, helpers.py, and a script running them."""

    def __init__(self, tmp_path):
        self.dir = tmp_path / "proj"
        self.dir.mkdir()
        self.cache = str(tmp_path / "cache")
        (self.dir / "model.py").write_text(MODEL)
        (self.dir / "helpers.py").write_text(HELPERS)
        (self.dir / "child.py").write_text(CHILD.format(repo=REPO))

    def edit(self, name, old, new):
        path = self.dir / name
        text = path.read_text()
        assert old in text
        path.write_text(text.replace(old, new))
        st = os.stat(path)  # a distinct mtime, as an edit seconds later would have
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))

    def run(self, *names, **env):
        env = dict(os.environ, GRADJIT_CACHE_DIR=self.cache, PYTHONDONTWRITEBYTECODE="1",
                   **env)
        env.pop("GRADJIT_DISABLE_CACHE", None)
        proc = subprocess.run([sys.executable, "child.py", *(names or NAMES)], cwd=self.dir,
                              env=env, capture_output=True, text=True, timeout=300,
                              check=False)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout.strip().splitlines()[-1])


X = [1.0, 2.0, 3.0, 4.0]


def expected(scale=2.0, src=2.0, cube=1.0, k=1.5, closed=1.0, data_end=1.0):
    import numpy as np

    x = np.array(X)
    data = np.linspace(0.0, data_end, 4)
    return {
        "f_src": (2 * src * x).tolist(),
        "f_helper": (3 * cube * x ** 2).tolist(),
        "f_global": (2 * scale * x).tolist(),
        "f_modattr": [k] * 4,
        "f_closure": (2 * closed * x).tolist(),
        "f_array": (2 * data * (data * x - 1.0)).tolist(),
        "f_aux": [float(np.sum(3.0 * x ** 2)), (2 * x).tolist(), (6.0 * x).tolist(),
                  (x ** 2).tolist()],
    }


def check(out, want, traced):
    """Results are right; exactly the functions in ``traced`` were traced, the others came
    from a manifest without tracing and without compiling."""
    import numpy as np

    assert out["warnings"] == []
    for name in NAMES:
        r = out[name]
        got, ref = r["result"], want[name]
        if name == "f_aux":
            assert got[0] == pytest.approx(ref[0])
            got, ref = got[1:], ref[1:]
        np.testing.assert_allclose(np.asarray(got, dtype=float), np.asarray(ref, dtype=float),
                                   rtol=1e-12, err_msg=name)
        if name in traced:
            assert r["traces"] >= 1, name
        else:
            assert (r["traces"], r["compiles"], r["manifest_hits"]) == (0, 0, 1), name


def test_new_process_hits_without_tracing_and_edits_are_seen(tmp_path):
    p = Project(tmp_path)
    first = p.run()
    check(first, expected(), traced=NAMES)
    assert all(first[n]["compiles"] == 1 for n in NAMES)
    # A new process: nothing traced, nothing compiled (numba's object code is loaded).
    check(p.run(), expected(), traced=())
    # The function's own source, a helper in another module, a global constant, a constant
    # read as another module's attribute: each edit is a new trace and the new result;
    # everything else (in the same, edited files) still hits.
    p.edit("model.py", "return np.sum(2.0 * x ** 2)", "return np.sum(3.0 * x ** 2)")
    p.edit("helpers.py", "return x ** 3", "return 2.0 * x ** 3")
    p.edit("model.py", "SCALE = 2.0", "SCALE = 5.0")
    p.edit("helpers.py", "K = 1.5", "K = 2.5")
    want = expected(src=3.0, cube=2.0, scale=5.0, k=2.5)
    out = p.run()
    check(out, want, traced=["f_src", "f_helper", "f_global", "f_modattr"])
    assert all(out[n]["compiles"] == 1 for n in ["f_src", "f_helper", "f_global", "f_modattr"])
    check(p.run(), want, traced=())
    # A closure constant: traced again. A global array (passed at every call): never baked
    # in, so a new content is the new result without a new trace.
    check(p.run(CLOSED="4.0", DATA_END="2.0"), expected(src=3.0, cube=2.0, scale=5.0,
                                                         k=2.5, closed=4.0, data_end=2.0),
          traced=["f_closure"])
    # Both versions of the closure are kept: going back is a hit.
    check(p.run(), want, traced=())


def test_damaged_or_dead_manifests_are_rebuilt(tmp_path):
    p = Project(tmp_path)
    names = ["f_src", "f_helper", "f_aux"]
    first = p.run(*names)
    paths = manifest_files(p.cache)
    assert len(paths) == 3
    write(paths[0], read(paths[0])[:40])  # truncated
    write(paths[1], os.urandom(300))  # garbage
    data = bytearray(read(paths[2]))
    data[-5] ^= 0xFF  # one flipped byte
    write(paths[2], bytes(data))
    out = p.run(*names)
    assert sum("manifest" in w and "damaged" in w for w in out["warnings"]) == 3
    for n in names:  # traced again, the kernel itself still came from the cache
        assert out[n]["result"] == first[n]["result"]
        assert (out[n]["traces"], out[n]["compiles"]) == (1, 0)
    again = p.run(*names)
    assert again["warnings"] == []
    assert all((again[n]["traces"], again[n]["result"]) == (0, first[n]["result"])
               for n in names)
    # Entries gone (pruned): their manifests are dead; traced and compiled again.
    shutil.rmtree(os.path.join(p.cache, "entries"))
    out = p.run(*names)
    assert out["warnings"] == []
    assert all((out[n]["traces"], out[n]["compiles"], out[n]["result"])
               == (1, 1, first[n]["result"]) for n in names)
    assert DiskCache(p.cache).verify() == []
    assert DiskCache(p.cache).manifest_count() == 3  # the dead ones were replaced


def test_four_processes_at_once_then_a_fifth_traces_nothing(tmp_path):
    p = Project(tmp_path)
    names = ["f_helper", "f_aux"]
    env = dict(os.environ, GRADJIT_CACHE_DIR=p.cache)
    env.pop("GRADJIT_DISABLE_CACHE", None)
    procs = [subprocess.Popen([sys.executable, "child.py", *names], cwd=p.dir, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    want = expected()
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
        out = json.loads(stdout.strip().splitlines()[-1])
        assert out["warnings"] == []
        assert out["f_helper"]["result"] == pytest.approx(want["f_helper"])
        assert out["f_aux"]["result"][0] == pytest.approx(want["f_aux"][0])
    # The same trace written by several processes is one manifest per function.
    assert DiskCache(p.cache).manifest_count() == len(names)
    fifth = p.run(*names)
    assert all((fifth[n]["traces"], fifth[n]["compiles"]) == (0, 0) for n in names)
    assert DiskCache(p.cache).verify() == []


DTYPE_CHILD = textwrap.dedent('''
    import json, sys
    sys.path.insert(0, {repo!r})
    import numpy as np, gradjit as gj

    def f(x):
        return np.sum(x ** 3 / 3.0 + 0.1 * x)

    x = np.array([0.1, 1.0 / 3.0, 2.0], dtype=sys.argv[1])
    g = gj.grad(f)(x)
    info = gj.cache_info()
    print(json.dumps(dict(dtype=str(g.dtype), grad=g.astype(np.float64).tolist(),
                          compiles=info.compiles, manifest_hits=info.manifest_hits)))
''')


def test_disk_key_tells_dtypes_apart(tmp_path):
    """One function, called in new processes with float64 then float32 then float64 again:
    each dtype gets its own kernel and result dtype (a disk key that ignored the dtype would
    hand the float64 kernel to the float32 call)."""
    (tmp_path / "dtypes.py").write_text(DTYPE_CHILD.format(repo=REPO))
    env = dict(os.environ, GRADJIT_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("GRADJIT_DISABLE_CACHE", None)

    def run(dtype):
        proc = subprocess.run([sys.executable, "dtypes.py", dtype], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300, check=False)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout.strip().splitlines()[-1])

    import numpy as np

    x = [0.1, 1.0 / 3.0, 2.0]
    for dtype, hit in (("float64", 0), ("float32", 0), ("float64", 1), ("float32", 1)):
        out = run(dtype)
        assert out["dtype"] == dtype
        want = [v ** 2 + 0.1 for v in (np.array(x, dtype=dtype).astype(float))]
        rtol = 1e-6 if dtype == "float32" else 1e-14
        assert out["grad"] == pytest.approx(want, rel=rtol)
        # float32 arithmetic rounds where float64 does not: the kernel really is float32
        err = max(abs(g - w) / w for g, w in zip(out["grad"], want))
        assert (err > 1e-12) == (dtype == "float32")
        assert out["manifest_hits"] == hit and out["compiles"] == 1 - hit
