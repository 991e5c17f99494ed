"""The runtime's process-wide state: debug level, cache counters, the live transform
objects, and the disk cache (opened on first use)."""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass


# GRADJIT_DEBUG: 1 reports compiles and cache decisions, 2 also prints the IR, 3 verifies it;
# any other non-empty value (e.g. "true") counts as 1
_debug = os.environ.get("GRADJIT_DEBUG", "0").strip() or "0"


DEBUG = int(_debug) if _debug.isdigit() else 1


@dataclass
class CacheInfo:
    hits: int = 0
    misses: int = 0
    compiles: int = 0
    memory_entries: int = 0
    disk_entries: int = 0
    disk_hits: int = 0
    # functions traced (one per compiled signature; a disk-cache hit through a manifest
    # traces nothing); manifest_hits: such hits
    traces: int = 0
    manifest_hits: int = 0
    # tiered execution (runtime/tiered.py): calls answered by the numpy tier while a kernel
    # compiled; kernels compiled by background processes for this one (not in ``compiles``),
    # background compiles that failed (the kernel was then compiled here), switches to kernels
    tier0_calls: int = 0
    background_compiles: int = 0
    background_failures: int = 0
    tier_switches: int = 0


stats = CacheInfo()


# every live transform, for cache_info/clear_cache (weakly: a transform made per call, as in
# a loop over ``gj.grad(lambda ...)``, must not keep its kernels alive forever)
live = weakref.WeakSet()


def cache_info():
    """Counters of this process: hits, misses, compiles, memory_entries, disk_entries,
    disk_hits, traces (functions traced, one per new signature; none when a disk-cache
    manifest supplies the kernel, as in a new process whose functions are all cached) and
    manifest_hits."""
    info = CacheInfo(**vars(stats))
    info.memory_entries = sum(len(t.cache) for t in list(live))
    dc = disk_cache()
    info.disk_entries = len(dc.entries()) if dc is not None and dc.enabled else 0
    return info


# other in-memory caches (the vjp's) register how to empty them
memory_clearers = []


def clear_cache(memory=True, disk=False):
    if memory:
        for t in list(live):
            t.cache.clear()
            t.fast.clear()
        for clear in memory_clearers:
            clear()
    if disk:
        dc = disk_cache()
        if dc is not None:
            dc.clear()


_disk = None


def disk_cache():
    global _disk
    if _disk is None:
        try:
            from .diskcache import DiskCache
        except ImportError:  # pragma: no cover - during bring-up
            return None
        _disk = DiskCache()
    return _disk


def open_disk_cache():
    """The disk cache if this process has opened it (None otherwise): opens nothing."""
    return _disk


def reset_disk_cache():
    """Forget the disk cache object (tests switch GRADJIT_CACHE_DIR)."""
    global _disk
    _disk = None
