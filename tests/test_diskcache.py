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
