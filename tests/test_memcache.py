"""The byte-bounded frame cache (core.memcache.ByteLRU) on frames read from a real store, and
the Distributions page using it (ui.frames) with a budget that holds two frames."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from core import memcache, queries, store
from core.errors import UserError
from core.queries import CotFilter

ROOT = Path(__file__).resolve().parents[1]


def _filters(db) -> list[CotFilter]:
    """Three filters on the demo store: token ranges over thirds of its CoTs."""
    lo, mid1, mid2, hi = store.read_rows(
        "SELECT min(n_tokens), quantile_disc(n_tokens, 0.33), quantile_disc(n_tokens, 0.66), max(n_tokens) FROM cots",
        db=db)[0]
    return [CotFilter(tokens_range=(lo, mid1)), CotFilter(tokens_range=(mid1 + 1, mid2)),
            CotFilter(tokens_range=(mid2 + 1, hi))]


def test_lru_by_bytes_on_real_frames(demo_store):
    fs = _filters(demo_store)
    frames = [queries.metric_frame(f, db=demo_store) for f in fs]
    # independent: the same ranges counted with plain SQL
    for f, frame in zip(fs, frames):
        (n,), = store.read_rows("SELECT count(*) FROM cots WHERE n_tokens BETWEEN ? AND ?", list(f.tokens_range),
                                db=demo_store)
        assert frame.height == n > 0
    sizes = [fr.estimated_size() for fr in frames]
    cache = memcache.ByteLRU(sizes[0] + sizes[1] + min(sizes) // 2)  # room for the first two, not three
    computed = []

    def load(i):
        def compute():
            computed.append(i)
            return queries.metric_frame(fs[i], db=demo_store)
        return cache.get_or_compute(repr(fs[i]), compute)

    assert load(0).equals(frames[0]) and load(1).equals(frames[1])
    assert cache.bytes_held == sizes[0] + sizes[1]
    assert load(0).equals(frames[0])  # a hit: 0 is now the most recently used
    assert computed == [0, 1] and cache.hits == 1
    assert load(2).equals(frames[2])  # over budget: the least recently used (1) goes
    assert cache.keys() == [repr(fs[0]), repr(fs[2])]
    assert cache.bytes_held == sizes[0] + sizes[2] <= cache.budget_bytes
    assert cache.evictions == 1
    load(1)  # read again: computed again, and 0 (now the oldest) goes
    assert computed == [0, 1, 2, 1]
    assert cache.keys() == [repr(fs[2]), repr(fs[1])]

    # an entry larger than the budget is returned, not kept (and evicts nothing)
    small = memcache.ByteLRU(min(sizes) - 1)
    assert small.get_or_compute("x", lambda: frames[0]).equals(frames[0])
    assert len(small) == 0 and small.bytes_held == 0

    # discard: a store's older write stamps
    assert cache.discard(lambda k: k == repr(fs[2])) == 1
    assert cache.keys() == [repr(fs[1])] and cache.bytes_held == sizes[1]


def test_same_key_computed_once_other_keys_not_blocked(demo_store):
    """Two sessions on one new filter compute it once; a session on another filter is not held
    behind that computation."""
    fs = _filters(demo_store)
    cache = memcache.ByteLRU(1 << 30)
    release, started = threading.Event(), threading.Event()
    calls = []

    def slow():
        calls.append("slow")
        started.set()
        release.wait(30)
        return queries.metric_frame(fs[0], db=demo_store)

    results = {}
    a = threading.Thread(target=lambda: results.__setitem__("a", cache.get_or_compute("k0", slow)))
    b = threading.Thread(target=lambda: results.__setitem__("b", cache.get_or_compute("k0", slow)))
    a.start()
    assert started.wait(30)
    b.start()
    # another key while k0 is still computing: answered without waiting for it
    other = cache.get_or_compute("k1", lambda: queries.metric_frame(fs[1], db=demo_store))
    assert other.height > 0 and not release.is_set()
    release.set()
    a.join(30)
    b.join(30)
    assert calls == ["slow"] and results["a"] is results["b"]


def test_budget_from_environment(monkeypatch):
    monkeypatch.delenv(memcache.ENV_FRAME_CACHE_MB, raising=False)
    assert memcache.frame_cache_budget() == memcache.DEFAULT_FRAME_CACHE_MB << 20
    monkeypatch.setenv(memcache.ENV_FRAME_CACHE_MB, "1.5")
    assert memcache.frame_cache_budget() == int(1.5 * (1 << 20))
    for bad in ("lots", "-1"):
        monkeypatch.setenv(memcache.ENV_FRAME_CACHE_MB, bad)
        with pytest.raises(UserError, match=memcache.ENV_FRAME_CACHE_MB):
            memcache.frame_cache_budget()


def test_compute_slots_cap_concurrency_and_nest_without_deadlock(monkeypatch):
    """Six threads, two slots: never more than two compute at once, and a computation that needs
    a nested cached value (a frame needing its base) takes no second slot, so all finish even
    when every slot's holder nests."""
    slots = memcache.ComputeSlots(2)
    running, peak, lock = [0], [0], threading.Lock()
    both_in = threading.Barrier(2, timeout=10)

    def work(i: int) -> None:
        with slots.slot():
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            if i < 2:
                both_in.wait()  # the first two hold both slots at once, then nest
            with slots.slot(), slots.slot():  # nested: no slot taken, no wait
                pass
            with lock:
                running[0] -= 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    threads[0].start()
    threads[1].start()
    for t in threads[2:]:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert not any(t.is_alive() for t in threads), "a thread is stuck"
    assert peak[0] == 2 and running[0] == 0

    monkeypatch.delenv(memcache.ENV_COMPUTE_SLOTS, raising=False)
    assert memcache.compute_slots_wanted() >= 1
    monkeypatch.setenv(memcache.ENV_COMPUTE_SLOTS, "3")
    assert memcache.compute_slots_wanted() == 3
    for bad in ("many", "0"):
        monkeypatch.setenv(memcache.ENV_COMPUTE_SLOTS, bad)
        with pytest.raises(UserError, match=memcache.ENV_COMPUTE_SLOTS):
            memcache.compute_slots_wanted()


def test_distributions_keeps_frames_within_the_budget(demo_store, app_store, monkeypatch):
    """Through the page: a budget of two frames' bytes; three new filters leave the two latest
    cached, every frame the page read agrees with SQL, and the cache never holds more than its
    budget."""
    from streamlit.testing.v1 import AppTest

    from ui import frames

    app_store(demo_store)
    fs = _filters(demo_store)
    generated = [r[0] for r in store.read_rows("SELECT name FROM datasets WHERE generated", db=demo_store)]
    sizes = [frames.prepared(queries.metric_frame(f, db=demo_store), generated).estimated_size() for f in fs]
    budget = sorted(sizes)[-1] + sorted(sizes)[-2] + min(sizes) // 2  # two of the three, whichever two
    monkeypatch.setenv(memcache.ENV_FRAME_CACHE_MB, str(budget / (1 << 20)))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    at.switch_page("pages/distributions.py").run()
    assert not at.exception, [e.value for e in at.exception]
    cache = frames.frame_cache()
    assert cache.budget_bytes == int(budget)
    for f in fs:
        at.session_state["f_tokens"] = f.tokens_range
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        assert cache.bytes_held <= cache.budget_bytes
    held = [key[1] for key in cache.keys() if key[0] == "frame"]
    assert len(held) == 2, held
    assert "tokens_range=" + repr(fs[2].tokens_range) in held[-1]
    (n,), = store.read_rows("SELECT count(*) FROM cots WHERE n_tokens BETWEEN ? AND ?", list(fs[2].tokens_range),
                            db=demo_store)
    assert cache.get(cache.keys()[-1]).height == n


def test_select_pools_are_sized_and_kept_within_the_budget(demo_store, app_store, monkeypatch):
    """A Select pool reports its bytes (DuckDB tables, index arrays, frames), and the Select page
    keeps its pools in the same byte budget: with room for about one pool, three new filters
    leave the latest only, and it agrees with SQL."""
    from streamlit.testing.v1 import AppTest

    from core import selection
    from core.selection import ScoreSources, Selection
    from ui import frames

    app_store(demo_store)
    fs = _filters(demo_store)
    sources = ScoreSources(rv=tuple(queries.sources("rv", db=demo_store)), cd=tuple(queries.sources("cd", db=demo_store)),
                           correct=(queries.OWN_CORRECTNESS,))
    pools = [selection.load_pool(Selection(base=f, sources=sources), db=demo_store) for f in fs]
    for pool, f in zip(pools, fs):
        (n,), = store.read_rows("SELECT count(*) FROM cots WHERE n_tokens BETWEEN ? AND ?", list(f.tokens_range),
                                db=demo_store)
        assert pool.n_cots == n
        arrays = pool.row_keys.nbytes + pool.row_problem.nbytes
        # at least its index and an 8-byte id per CoT in its table
        assert pool.nbytes >= arrays + pool.groups.estimated_size() + 8 * n
    biggest = max(p.nbytes for p in pools)
    monkeypatch.setenv(memcache.ENV_FRAME_CACHE_MB, str(biggest * 1.5 / (1 << 20)))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    at.switch_page("pages/select.py").run()
    assert not at.exception, [e.value for e in at.exception]
    cache = frames.frame_cache()
    for f in fs:
        at.session_state["f_tokens"] = f.tokens_range
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        assert cache.bytes_held <= cache.budget_bytes
    held = [key for key in cache.keys() if key[0] == "pool"]
    assert len(held) == 1 and json.loads(held[0][1])["base"]["tokens_range"] == fs[2].to_params()["tokens_range"], held
    assert cache.get(held[0]).n_cots == pools[2].n_cots


def test_a_store_write_frees_that_stores_older_entries(demo_store, app_store):
    """After a write (a new stamp), the next entry computed for that store drops the entries of
    its older stamps; another store's entries stay, and the bytes held follow."""
    from ui import frames

    app_store(demo_store)
    fs = _filters(demo_store)
    db = str(demo_store)
    old, new = (1.0, 0.0), (2.0, 0.0)  # two write stamps of the store (common.store_stamp's shape)
    first = frames.cached("frame", repr(fs[0]), db, old, lambda: queries.metric_frame(fs[0], db=demo_store))
    other = frames.cached("frame", repr(fs[0]), "/elsewhere.duckdb", old, lambda: first)
    second = frames.cached("frame", repr(fs[1]), db, new, lambda: queries.metric_frame(fs[1], db=demo_store))
    cache = frames.frame_cache()
    assert cache.keys() == [("frame", repr(fs[0]), "/elsewhere.duckdb", old), ("frame", repr(fs[1]), db, new)]
    assert cache.bytes_held == other.estimated_size() + second.estimated_size()


def test_freed_heap_memory_goes_back_to_the_system_after_a_large_read():
    """What ui.frames does after a whole-store read: the C heap's free pages are returned, so
    the server's RSS does not keep the read's high-water mark (glibc only)."""
    import numpy as np
    import psutil

    if memcache._glibc() is None:
        pytest.skip("malloc_trim is glibc's")
    process = psutil.Process()
    blocks = [np.ones(8000) for _ in range(4000)]  # 64 KB each: heap memory, not mmap'd, 256 MB
    last = blocks[-1]  # kept: the freed blocks sit below it, so free() alone cannot shrink the heap
    del blocks
    freed = process.memory_info().rss
    memcache.release_free_memory()
    assert process.memory_info().rss < freed - (128 << 20)
    assert last.sum() == 8000


def test_the_arena_limit_leaves_an_explicit_malloc_arena_max_alone(monkeypatch):
    if memcache._glibc() is None:
        pytest.skip("mallopt is glibc's")
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert memcache.limit_malloc_arenas() is False
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    assert memcache.limit_malloc_arenas(2) is True


def test_whole_store_reads_run_one_at_a_time_and_per_filter_work_does_not_wait_for_them(demo_store, app_store,
                                                                                        monkeypatch):
    """Two sessions reading different whole-store tables (a base, a whole-store pool) take
    turns, so their transient memory never adds up; a per-filter computation meanwhile runs
    at once."""
    import time

    from ui import frames

    app_store(demo_store)
    monkeypatch.setenv(memcache.ENV_COMPUTE_SLOTS, "4")
    frames.compute_slots.clear()
    db, stamp = str(demo_store), (1.0, 0.0)
    running, most, events = [0], [0], []
    lock = threading.Lock()

    def whole_store_read(name):
        def compute():
            with lock:
                running[0] += 1
                most[0] = max(most[0], running[0])
            time.sleep(0.3)
            with lock:
                running[0] -= 1
            events.append(("read done", name, time.monotonic()))
            return name
        return lambda: frames.versioned("whole", name, db, stamp, lambda: (), compute)

    def per_filter():
        frames.cached("frame", "small", db, stamp, lambda: events.append(("filter done", "", time.monotonic())) or 1)

    started = time.monotonic()
    threads = [threading.Thread(target=whole_store_read(name)) for name in ("base", "pool")]
    for t in threads:
        t.start()
    time.sleep(0.05)
    per_filter()
    for t in threads:
        t.join()
    assert most[0] == 1  # never two whole-store reads at once
    reads = sorted(at - started for kind, _, at in events if kind == "read done")
    filtered = [at - started for kind, _, at in events if kind == "filter done"]
    assert len(reads) == 2 and reads[1] - reads[0] >= 0.25  # one after the other
    assert filtered and filtered[0] < reads[0]  # the per-filter work did not queue behind them
