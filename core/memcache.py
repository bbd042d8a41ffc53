"""A cache bounded by bytes, not by entry count: the per-filter frames the pages share.

A count bound (``st.cache_resource(max_entries=2)``) says nothing about memory: two 2M-CoT
frames are ~270 MB, two 20k-CoT frames are 3 MB, and a lab of eight researchers, each on a
filter of their own, either thrashes a count of 2 or, with a larger count, outgrows the
server. ``ByteLRU`` keeps entries while their summed size (``sizeof``, by default polars'
``estimated_size``) fits ``budget_bytes`` and evicts the least recently used first. An entry
larger than the whole budget is returned but not kept.

Concurrency (one server, many sessions, each a thread): computing a key holds only that key's
lock, so a session never waits for another session's different filter, and two sessions asking
for the same new filter compute it once (the second waits for the first and then reads it).
The cache's own lock is held only for dictionary work.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Any

DEFAULT_FRAME_CACHE_MB = 512
ENV_FRAME_CACHE_MB = "THOUGHTSCOPE_FRAME_CACHE_MB"


def frame_cache_budget() -> int:
    """The frame cache's budget in bytes: ``$THOUGHTSCOPE_FRAME_CACHE_MB`` (MiB), else 512 MiB.

    Why 512: at 2M CoTs a frame is ~135 MB, so the cache keeps the last three or four filters;
    the server's other memory at 2M (the catalogue, the Select pools, DuckDB's buffers while a
    frame is read, Streamlit) was 1.1-1.4 GB in bench_pages' browser run, which leaves the
    server under the 2 GB target with eight sessions sharing it. 0 turns caching off."""
    raw = os.environ.get(ENV_FRAME_CACHE_MB, "").strip()
    if not raw:
        return DEFAULT_FRAME_CACHE_MB << 20
    try:
        mb = float(raw)
    except ValueError:
        from core.errors import UserError

        raise UserError(f"{ENV_FRAME_CACHE_MB}={raw!r} is not a number of MiB; set it to e.g. 512 (or 0 for no cache).") from None
    if mb < 0:
        from core.errors import UserError

        raise UserError(f"{ENV_FRAME_CACHE_MB}={raw!r} is negative; set it to a size in MiB (0 for no cache).")
    return int(mb * (1 << 20))


def estimated_size(value: Any) -> int:
    """Bytes a cached value holds: ``estimated_size()`` for polars frames, ``nbytes`` where an
    object reports it, else 0 (the entry then counts only against the count bound)."""
    for attr in ("estimated_size", "nbytes"):
        size = getattr(value, attr, None)
        if size is not None:
            return int(size() if callable(size) else size)
    return 0


class ByteLRU:
    """Least-recently-used cache whose entries' summed ``sizeof`` stays within ``budget_bytes``."""

    def __init__(self, budget_bytes: int, *, sizeof: Callable[[Any], int] = estimated_size, max_entries: int = 256):
        self.budget_bytes = int(budget_bytes)
        self.max_entries = max_entries
        self._sizeof = sizeof
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._key_locks: dict[Hashable, threading.Lock] = {}
        self.hits = self.misses = self.evictions = 0

    # ------------------------------------------------------------------ reading
    @property
    def bytes_held(self) -> int:
        return self._bytes

    def keys(self) -> list[Hashable]:
        """Keys from least to most recently used."""
        with self._lock:
            return list(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable, default: Any = None) -> Any:
        with self._lock:
            if key not in self._entries:
                return default
            self._entries.move_to_end(key)
            return self._entries[key][0]

    # ------------------------------------------------------------------ writing
    def put(self, key: Hashable, value: Any) -> None:
        size = self._sizeof(value)
        with self._lock:
            if key in self._entries:
                self._bytes -= self._entries.pop(key)[1]
            if size > self.budget_bytes:  # would evict everything and still not fit
                return
            self._entries[key] = (value, size)
            self._bytes += size
            self._evict_locked()

    def discard(self, predicate: Callable[[Hashable], bool]) -> int:
        """Drop every entry whose key ``predicate`` accepts (e.g. a store's older write stamps)."""
        with self._lock:
            dead = [k for k in self._entries if predicate(k)]
            for k in dead:
                self._bytes -= self._entries.pop(k)[1]
            return len(dead)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def _evict_locked(self) -> None:
        while self._entries and (self._bytes > self.budget_bytes or len(self._entries) > self.max_entries):
            _, (_, size) = self._entries.popitem(last=False)
            self._bytes -= size
            self.evictions += 1

    def get_or_compute(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """The cached value of ``key``, else ``compute()`` kept under it. Only this key's lock is
        held while computing: other keys are computed and read meanwhile."""
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                self.hits += 1
                return self._entries[key][0]
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:  # another thread may have computed it while this one waited
                if key in self._entries:
                    self._entries.move_to_end(key)
                    self.hits += 1
                    return self._entries[key][0]
                self.misses += 1
            try:
                value = compute()
                self.put(key, value)
                return value
            finally:
                with self._lock:
                    if self._key_locks.get(key) is key_lock:
                        del self._key_locks[key]


ENV_COMPUTE_SLOTS = "THOUGHTSCOPE_COMPUTE_SLOTS"


def compute_slots_wanted() -> int:
    """How many cache misses (a new filter's frame, pool, base) the app server computes at once:
    ``$THOUGHTSCOPE_COMPUTE_SLOTS``, else the machine's CPU count.

    Why a cap: each such computation is CPU-bound and holds a copy of up to every CoT's numbers
    while it runs (hundreds of MB at 2M CoTs). Eight sessions computing at once on two cores
    take no less time in all than two at a time, but hold four times the memory, and each waits
    for the slowest instead of the first finishing first."""
    raw = os.environ.get(ENV_COMPUTE_SLOTS, "").strip()
    if not raw:
        return max(1, os.cpu_count() or 1)
    try:
        slots = int(raw)
    except ValueError:
        slots = 0
    if slots < 1:
        from core.errors import UserError

        raise UserError(f"{ENV_COMPUTE_SLOTS}={raw!r} is not a whole number >= 1; set it to e.g. 2.")
    return slots


class ComputeSlots:
    """A bounded semaphore that a thread takes once however deeply its computations nest (one
    cached value computed inside another's computation takes no second slot: no deadlock when
    every slot's holder needs a nested value)."""

    def __init__(self, slots: int):
        self.slots = slots
        self._sem = threading.BoundedSemaphore(slots)
        self._held = threading.local()

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        depth = getattr(self._held, "depth", 0)
        if depth:
            self._held.depth = depth + 1
            try:
                yield
            finally:
                self._held.depth = depth
            return
        with self._sem:
            self._held.depth = 1
            try:
                yield
            finally:
                self._held.depth = 0


def use_system_allocator_for_arrow() -> None:
    """Arrow's buffers from the C library's malloc instead of the mimalloc bundled with pyarrow,
    in this process. In the app server (many threads, short-lived buffers of hundreds of MB)
    mimalloc made the same cut of a 2M-CoT Select pool take 28-377 ms from one filter to the next,
    malloc a steady ~80 ms (bench/README.md, issue 17). Idempotent."""
    import pyarrow as pa

    if pa.default_memory_pool().backend_name != "system":
        pa.set_memory_pool(pa.system_memory_pool())


# glibc's mallopt parameter for the most malloc arenas (malloc.h)
_M_ARENA_MAX = -8


@functools.lru_cache(maxsize=1)
def _glibc():
    """The C library when it is glibc (mallopt, malloc_trim), else None (macOS, musl)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim, libc.mallopt  # noqa: B018 - both exist only in glibc
    except (OSError, AttributeError):
        return None
    return libc


def limit_malloc_arenas(arenas: int | None = None) -> bool:
    """At most ``arenas`` (default: one per CPU) malloc arenas in this process, unless
    $MALLOC_ARENA_MAX says otherwise.
    glibc gives threads up to eight arenas per core, and memory one session's thread frees in its
    arena is not reused by another thread's: in the app server, where every session is a thread
    and Arrow and numpy buffers of hundreds of MB come and go (Arrow on malloc, see
    use_system_allocator_for_arrow), that freed memory stays counted in the server's RSS.
    True when the limit was set; call it before the threads start."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    libc = _glibc()
    return bool(libc is not None and libc.mallopt(_M_ARENA_MAX, int(arenas or os.cpu_count() or 2)))


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc's malloc_trim): after a whole-store
    read, whose buffers of ~1 GB at 2M CoTs are freed, so the next read does not start from
    the last one's high-water mark. A no-op outside glibc."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
