"""Near-duplicate problems: MinHash signatures and LSH (datasketch) over the word shingles of
each problem's question key, clusters within and across datasets, as a resumable stage.

    python -m core near-duplicates [--threshold 0.6] [--json]

Two problems are near-duplicates when the Jaccard similarity of their shingle sets (word
bigrams of the question key, core.identity) is at least ``threshold`` (0.6 by default: the
README gives the measurement behind it). datasketch's MinHash (128 permutations) sketches each
problem; its MinHashLSH, tuned for the threshold with false negatives weighted 0.8, proposes
candidate pairs; each candidate is then checked with the exact Jaccard similarity of the two
shingle sets, so an LSH false positive never becomes a pair. Clusters are the connected
components of the pairs (single linkage: A~B and B~C put A and C together).

Results:

* ``problem_minhash``: each problem's signature, kept so a new dataset costs only its own;
* ``near_duplicate_pairs``: the pairs found (with their Jaccard similarity); a candidate already
  in the query's cluster is not checked again, so a cluster's pairs connect it without listing
  every pair of it;
* ``problem_scores`` under the score source ``near-duplicates`` (kind ``stage``):
  ``cluster_id`` (the smallest problem id of the cluster) and ``cluster_size`` (1 for a problem
  with no near-duplicate) for every problem.

Resumable: signatures are committed a batch at a time, and so are the queries (each problem
records how many of the LSH bands it has been queried in). A rerun with nothing new does
nothing; a new dataset's problems are sketched and queried against every problem; a change of
shingle size or permutations starts over, a change of threshold re-queries. The LSH index lives
in memory only while the stage runs, built in passes of a few bands each (``bands_per_pass``,
by default as many as keep it near 0.8 GB) so its size stays bounded at OmniThought's 708k
problems.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa

from core import identity, store
from core.errors import UserError
from core.options import option

SOURCE = "near-duplicates"
DEFAULT_THRESHOLD = 0.6
DEFAULT_SHINGLE = 2
DEFAULT_NUM_PERM = 128
LSH_WEIGHTS = (0.2, 0.8)  # (false positive, false negative): candidates are checked exactly
MINHASH_SEED = 1

ProgressFn = Callable[[str, int, int | None], None]
CancelledFn = Callable[[], bool]


@dataclass
class NearDupOptions:
    """Options of :func:`run_near_duplicates` (``python -m core near-duplicates``, job kind
    ``near_duplicates``)."""

    threshold: float = option(DEFAULT_THRESHOLD, help="Jaccard similarity of two problems' shingle sets at or above "
                                                      "which they are near-duplicates")
    shingle: int = option(DEFAULT_SHINGLE, help="words per shingle")
    num_perm: int = option(DEFAULT_NUM_PERM, help="MinHash permutations")
    bands_per_pass: int | None = option(None, help="LSH bands held in memory at once (default: as many as keep the "
                                                   "index near 0.8 GB)")
    batch_problems: int = option(20_000, help="problems per committed batch")

    def __post_init__(self):
        if not 0.0 < self.threshold <= 1.0:
            raise UserError(f"threshold is a Jaccard similarity in (0, 1] (got {self.threshold}).")
        if self.shingle < 1 or self.num_perm < 2 or (self.bands_per_pass is not None and self.bands_per_pass < 1):
            raise UserError("shingle must be >= 1, num_perm >= 2 and bands_per_pass >= 1.")
        if self.batch_problems < 1:
            raise UserError(f"batch problems must be at least 1 (got {self.batch_problems}).")

    def sketch_params(self) -> dict:
        """What the stored signatures depend on."""
        return {"shingle": self.shingle, "num_perm": self.num_perm, "seed": MINHASH_SEED, "scheme": "affine32",
                "hash": "crc32", "key_version": identity.KEY_VERSION}


def shingles(key: str, k: int = DEFAULT_SHINGLE) -> set[str]:
    """The word k-grams of a question key (the whole key when it has fewer than k words)."""
    words = identity.key_words(key)
    if len(words) < k:
        return {" ".join(words)} if words else {key}
    return {" ".join(g) for g in zip(*(words[i:] for i in range(k)))}


def jaccard(a: set, b: set) -> float:
    if not a and not b:
        return 1.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


def lsh_params(options: NearDupOptions) -> tuple[int, int]:
    """(bands, rows per band) datasketch chooses for the threshold and weights."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=options.threshold, num_perm=options.num_perm, weights=LSH_WEIGHTS)
    return lsh.b, lsh.r


def lsh_layout(options: NearDupOptions) -> list[int]:
    """[bands, rows per band]: what a problem's ``bands_done`` refers to."""
    return list(lsh_params(options))


# datasketch's in-memory index costs ~410 bytes per (problem, band), most of it a set per
# bucket (measured: 4 bands x 709,888 problems = 1.17 GB); passes of this many entries keep it
# near 0.8 GB beside the 0.36 GB of signatures.
INDEX_ENTRIES = 2_000_000


def band_passes(bands: int, problems: int, bands_per_pass: int | None) -> list[tuple[int, int]]:
    """[first band, end band) of each pass over the index."""
    per_pass = bands_per_pass or max(2, INDEX_ENTRIES // max(problems, 1))
    return [(b, min(b + per_pass, bands)) for b in range(0, bands, per_pass)]


def signatures(keys: list[str], options: NearDupOptions) -> np.ndarray:
    """MinHash signatures (uint32, one row per key) with datasketch."""
    from datasketch import MinHash

    sets = [[s.encode() for s in shingles(k, options.shingle)] for k in keys]
    sketches = MinHash.bulk(sets, num_perm=options.num_perm, seed=MINHASH_SEED, hashfunc=zlib.crc32)
    return np.stack([m.hashvalues for m in sketches]).astype(np.uint32) if sketches else np.zeros((0, options.num_perm), np.uint32)


class _UnionFind:
    def __init__(self):
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        parent = self.parent
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while x != root:  # path compression
            parent[x], x = root, parent.get(x, x)
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)  # the root is the smallest id


# ---------------------------------------------------------------------------- the stage


def _reset_if_changed(options: NearDupOptions, source_id: int, params: dict, *, db=None) -> str | None:
    """Drop what the new options make stale; returns what was reset."""
    sketch = options.sketch_params()
    with store.connect(db, read_only=False) as con:
        con.execute("BEGIN")
        reset = None
        if params.get("sketch") != sketch:
            con.execute("DELETE FROM problem_minhash")
            con.execute("DELETE FROM near_duplicate_pairs")
            reset = "signatures" if params else None
        elif params.get("threshold") != options.threshold or params.get("lsh") != lsh_layout(options):
            con.execute("DELETE FROM near_duplicate_pairs")
            con.execute("UPDATE problem_minhash SET bands_done = 0")
            reset = "pairs"
        con.execute("COMMIT")
    return reset


def _sketch_missing(options: NearDupOptions, progress, cancelled, *, db=None) -> tuple[int, bool]:
    todo_sql = ("FROM problems p JOIN datasets d USING (dataset_id) "
                "JOIN problem_keys k ON k.problem_id = p.problem_id AND k.key_version = ? "
                "WHERE d.status = 'ready' AND p.problem_id > ? "
                "AND NOT EXISTS (SELECT 1 FROM problem_minhash m WHERE m.problem_id = p.problem_id)")
    total = store.read_rows(f"SELECT count(*) {todo_sql}", [identity.KEY_VERSION, -1], db=db)[0][0]
    done, after = 0, -1
    if progress and total:
        progress("near-duplicates: sketch", 0, total)
    while done < total:
        if cancelled is not None and cancelled():
            return done, True
        rows = store.read_rows(f"SELECT p.problem_id, k.question_key {todo_sql} ORDER BY p.problem_id LIMIT ?",
                               [identity.KEY_VERSION, after, options.batch_problems], db=db)
        if not rows:
            break
        sigs = signatures([r[1] for r in rows], options)
        table = pa.table({
            "problem_id": pa.array([r[0] for r in rows], pa.int64()),
            "signature": pa.array([s.tobytes() for s in sigs], pa.binary()),
        })
        with store.connect(db, read_only=False) as con:
            con.register("sig_batch", table)
            con.execute("INSERT INTO problem_minhash SELECT problem_id, signature, 0 FROM sig_batch")
            con.unregister("sig_batch")
        done += len(rows)
        after = rows[-1][0]
        if progress:
            progress("near-duplicates: sketch", done, total)
    return done, False


def _load_signatures(num_perm: int, *, db=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(problem ids, signatures, bands done) of every sketched problem, in id order.

    Read in Arrow batches straight into preallocated arrays: an ORDER BY, or one Arrow table
    of 708k blobs, cost DuckDB and pyarrow 0.4-0.9 GB more at the peak than the 362 MB kept."""
    n = store.read_rows("SELECT count(*) FROM problem_minhash", db=db)[0][0]
    ids = np.empty(n, np.int64)
    sigs = np.empty((n, num_perm), np.uint32)
    bands_done = np.empty(n, np.int32)
    at = 0
    with store.connect(db, read_only=True) as con:
        reader = con.sql("SELECT problem_id, signature, bands_done FROM problem_minhash").to_arrow_reader(50_000)
        for batch in reader:
            k = batch.num_rows
            blobs = batch.column(1)
            offsets = np.frombuffer(blobs.buffers()[1], dtype=np.int64 if pa.types.is_large_binary(blobs.type) else np.int32)
            offsets = offsets[blobs.offset:blobs.offset + k + 1]
            data = np.frombuffer(blobs.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]]
            if data.size != k * num_perm * 4 or at + k > n:
                raise UserError("problem_minhash holds signatures of another size; run with the options they were made with.")
            ids[at:at + k] = batch.column(0).to_numpy()
            sigs[at:at + k] = data.view(np.uint32).reshape(k, num_perm)
            bands_done[at:at + k] = batch.column(2).to_numpy()
            at += k
    if n > 1 and not (ids[1:] > ids[:-1]).all():
        order = np.argsort(ids, kind="stable")
        ids, sigs, bands_done = ids[order], sigs[order], bands_done[order]
    return ids, sigs, bands_done


def run_near_duplicates(db=None, options: NearDupOptions | None = None, progress: ProgressFn | None = None,
                        cancelled: CancelledFn | None = None) -> dict:
    """Bring near-duplicate pairs and clusters up to date (see the module docstring)."""
    from datasketch import LeanMinHash, MinHashLSH

    options = options or NearDupOptions()
    started = time.perf_counter()
    identity.run_problem_keys(db)
    with store.connect(db, read_only=False) as con:
        con.execute("BEGIN")
        source_id = store.ensure_source(con, SOURCE, "stage")
        raw = con.execute("SELECT params FROM score_sources WHERE source_id = ?", [source_id]).fetchone()[0]
        con.execute("COMMIT")
    params = json.loads(raw) if raw else {}
    reset = _reset_if_changed(options, source_id, params, db=db)
    bands, rows_per_band = lsh_params(options)
    params = {"sketch": options.sketch_params(), "threshold": options.threshold, "lsh": lsh_layout(options),
              "lsh_weights": list(LSH_WEIGHTS), "clusters_of": params.get("clusters_of") if not reset else None}
    with store.connect(db, read_only=False) as con:
        con.execute("UPDATE score_sources SET params = ? WHERE source_id = ?", [json.dumps(params), source_id])
    stats = {"reset": reset, "lsh_bands": bands, "lsh_rows": rows_per_band, "threshold": options.threshold}

    sketched, stop = _sketch_missing(options, progress, cancelled, db=db)
    stats["sketched"] = sketched
    if stop:
        return {**stats, "cancelled": True, "seconds": time.perf_counter() - started}

    # ---- query: each problem not yet queried in every band, against every problem
    pending = store.read_rows("SELECT count(*) FROM problem_minhash WHERE bands_done < ?", [bands], db=db)[0][0]
    stats.update(queried=0, pairs_new=0, passes=0)
    if pending:
        ids, sigs, bands_done = _load_signatures(options.num_perm, db=db)
        position = {pid: i for i, pid in enumerate(ids.tolist())}
        uf = _UnionFind()
        for a, b in store.read_rows("SELECT problem_id, other_id FROM near_duplicate_pairs", db=db):
            uf.union(a, b)
        def shingle_sets(wanted: set[int]) -> dict[int, set[str]]:
            """Shingles of one batch's candidate problems, their keys read from the store (a
            cache across batches held ~3 KB a problem: 0.6 GB at 708k)."""
            return {pid: shingles(key, options.shingle) for pid, key in store.read_rows(
                "SELECT problem_id, question_key FROM problem_keys WHERE key_version = ? "
                "AND problem_id IN (SELECT unnest(?::BIGINT[]))", [identity.KEY_VERSION, list(wanted)], db=db)}

        passes = band_passes(bands, len(ids), options.bands_per_pass)
        stats["passes"] = len(passes)
        total = int(np.maximum(bands - bands_done, 0).sum())
        work_done = 0
        if progress:
            progress("near-duplicates: query", 0, total)
        for b0, b1 in passes:
            # problems not yet queried in these bands (one killed mid-pass is queried in all of them again)
            todo_mask = (bands_done >= b0) & (bands_done < b1)
            todo = ids[todo_mask].tolist()
            if not todo:
                continue
            lo, hi = b0 * rows_per_band, b1 * rows_per_band
            part = np.ascontiguousarray(sigs[:, lo:hi])

            def sketch(i: int, part=part):
                return LeanMinHash(seed=MINHASH_SEED, hashvalues=part[i], scheme="affine32")

            if b1 - b0 > 1:  # datasketch's index takes two bands or more
                lsh = MinHashLSH(num_perm=hi - lo, params=(b1 - b0, rows_per_band))
                with lsh.insertion_session(buffer_size=100_000) as session:
                    for i, pid in enumerate(ids.tolist()):
                        session.insert(pid, sketch(i), check_duplication=False)
                query = lambda i, lsh=lsh, sketch=sketch: lsh.query(sketch(i))  # noqa: E731
            else:  # a lone last band is a plain bucket table
                buckets: dict[bytes, list[int]] = {}
                for i, pid in enumerate(ids.tolist()):
                    buckets.setdefault(part[i].tobytes(), []).append(pid)
                query = lambda i, buckets=buckets, part=part: buckets.get(part[i].tobytes(), ())  # noqa: E731
            in_pass = {int(p) for p in todo}
            for start in range(0, len(todo), options.batch_problems):
                if cancelled is not None and cancelled():
                    return {**stats, "cancelled": True, "seconds": time.perf_counter() - started}
                batch = todo[start:start + options.batch_problems]
                candidates: list[tuple[int, int]] = []
                for pid in batch:
                    for other in query(position[pid]):
                        # a candidate also queried in this pass, with a larger id, finds the pair itself
                        if other == pid or (other in in_pass and other > pid):
                            continue
                        candidates.append((pid, other))
                shingle_cache = shingle_sets({x for pair in candidates for x in pair})
                found: list[tuple[int, int, float]] = []
                for pid, other in candidates:
                    if uf.find(pid) == uf.find(other):
                        continue  # already in one cluster: the pair adds nothing to it
                    similarity = jaccard(shingle_cache[pid], shingle_cache[other])
                    if similarity >= options.threshold:
                        found.append((min(pid, other), max(pid, other), similarity))
                        uf.union(pid, other)
                pairs = pa.table({
                    "problem_id": pa.array([f[0] for f in found], pa.int64()),
                    "other_id": pa.array([f[1] for f in found], pa.int64()),
                    "jaccard": pa.array([f[2] for f in found], pa.float64()),
                })
                with store.connect(db, read_only=False) as con:
                    con.execute("BEGIN")
                    con.register("pair_batch", pairs)
                    con.execute("INSERT INTO near_duplicate_pairs SELECT b.* FROM pair_batch b WHERE NOT EXISTS "
                                "(SELECT 1 FROM near_duplicate_pairs n WHERE n.problem_id = b.problem_id AND n.other_id = b.other_id)")
                    con.unregister("pair_batch")
                    con.execute("UPDATE problem_minhash SET bands_done = ? WHERE problem_id IN (SELECT unnest(?::BIGINT[]))",
                                [b1, batch])
                    con.execute("COMMIT")
                for pid in batch:
                    bands_done[position[pid]] = b1
                stats["pairs_new"] += len(found)
                work_done += len(batch) * (b1 - b0)
                if progress:
                    progress("near-duplicates: query", min(work_done, total), total)
            del query
        stats["queried"] = pending

    stats.update(_write_clusters(source_id, params, db=db))
    stats["seconds"] = time.perf_counter() - started
    return stats


def _write_clusters(source_id: int, params: dict, *, db=None) -> dict:
    """cluster_id and cluster_size of every sketched problem, rewritten when the pairs or the
    problems changed since they were last written."""
    n_sigs, n_pairs, pair_sum = store.read_rows(
        "SELECT (SELECT count(*) FROM problem_minhash), count(*), coalesce(sum(problem_id + other_id), 0)::VARCHAR "
        "FROM near_duplicate_pairs", db=db)[0]
    state = [n_sigs, n_pairs, pair_sum]
    if params.get("clusters_of") == state:
        return {"clusters_rewritten": False}
    uf = _UnionFind()
    for a, b in store.read_rows("SELECT problem_id, other_id FROM near_duplicate_pairs", db=db):
        uf.union(a, b)
    ids = [r[0] for r in store.read_rows("SELECT problem_id FROM problem_minhash ORDER BY problem_id", db=db)]
    roots = [uf.find(i) for i in ids]
    sizes: dict[int, int] = {}
    for r in roots:
        sizes[r] = sizes.get(r, 0) + 1
    n = len(ids)
    table = pa.table({
        "problem_id": pa.array(ids + ids, pa.int64()),
        "metric": pa.array(["cluster_id"] * n + ["cluster_size"] * n, pa.string()),
        "value": pa.array([float(r) for r in roots] + [float(sizes[r]) for r in roots], pa.float64()),
    })
    params = {**params, "clusters_of": state}
    with store.connect(db, read_only=False) as con:
        con.execute("BEGIN")
        con.execute("DELETE FROM problem_scores WHERE source_id = ?", [source_id])
        con.register("cluster_rows", table)
        con.execute("INSERT INTO problem_scores (problem_id, source_id, metric, value) "
                    "SELECT problem_id, ?, metric, value FROM cluster_rows", [source_id])
        con.unregister("cluster_rows")
        con.execute("UPDATE score_sources SET params = ? WHERE source_id = ?", [json.dumps(params), source_id])
        con.execute("COMMIT")
    clustered = sum(s for s in sizes.values() if s > 1)
    return {"clusters_rewritten": True, "clusters": sum(1 for s in sizes.values() if s > 1),
            "problems_in_clusters": clustered, "largest_cluster": max(sizes.values(), default=0)}


# ---------------------------------------------------------------------------- reading the results


def near_duplicates_of(problem_id: int, *, limit: int = 50, db=None) -> pl.DataFrame:
    """The other problems of this problem's near-duplicate cluster, most similar first: problem_id,
    dataset, problem_key, benchmark, jaccard (exact, of the shingle sets, to this problem),
    question. Empty when the stage has not run or the problem has no near-duplicate."""
    if not identity.tables_present("problem_keys", "problem_scores", db=db):
        return pl.DataFrame(schema={"problem_id": pl.Int64, "dataset": pl.String, "problem_key": pl.String,
                                    "benchmark": pl.String, "question": pl.String, "jaccard": pl.Float64})
    rows = store.read_df(
        "WITH src AS (SELECT source_id FROM score_sources WHERE name = ?), "
        "me AS (SELECT ps.value FROM problem_scores ps JOIN src USING (source_id) "
        "       WHERE ps.problem_id = ? AND ps.metric = 'cluster_id') "
        "SELECT p.problem_id, d.name AS dataset, p.problem_key, p.benchmark, k.question_key, p.question "
        "FROM problem_scores ps JOIN src USING (source_id) JOIN me ON ps.value = me.value "
        "JOIN problems p ON p.problem_id = ps.problem_id JOIN datasets d ON d.dataset_id = p.dataset_id "
        "JOIN problem_keys k ON k.problem_id = p.problem_id AND k.key_version = ? "
        "WHERE ps.metric = 'cluster_id' AND d.status = 'ready' ORDER BY p.problem_id LIMIT ?",
        [SOURCE, problem_id, identity.KEY_VERSION, limit + 1 if limit else 1 << 31], db=db,
    )
    if rows.height == 0:
        return rows.drop("question_key").with_columns(pl.lit(None, pl.Float64).alias("jaccard"))
    params = json.loads(store.read_rows("SELECT params FROM score_sources WHERE name = ?", [SOURCE], db=db)[0][0] or "{}")
    k = (params.get("sketch") or {}).get("shingle", DEFAULT_SHINGLE)
    mine = rows.filter(pl.col("problem_id") == problem_id)
    own = shingles(mine["question_key"][0], k) if mine.height else set()
    others = rows.filter(pl.col("problem_id") != problem_id)
    scored = others.with_columns(pl.Series("jaccard", [jaccard(own, shingles(q, k)) for q in others["question_key"]],
                                           dtype=pl.Float64))
    return scored.drop("question_key").sort("jaccard", descending=True).head(limit or scored.height)


def summary(*, db=None) -> pl.DataFrame:
    """Per dataset: problems sketched, problems in a near-duplicate cluster, clusters touching it,
    and clusters shared with another dataset."""
    if not identity.tables_present("problem_scores", db=db):
        return pl.DataFrame(schema={"dataset": pl.String, "problems": pl.Int64, "in_clusters": pl.Int64, "clusters": pl.Int64,
                                    "clusters_across_datasets": pl.Int64, "largest_cluster": pl.Int64})
    return store.read_df(
        """
        WITH src AS (SELECT source_id FROM score_sources WHERE name = ?),
             c AS (SELECT ps.problem_id, ps.problem_id >> 32 AS dataset_id, ps.value AS cluster_id
                   FROM problem_scores ps JOIN src USING (source_id) WHERE ps.metric = 'cluster_id'),
             s AS (SELECT ps.problem_id, ps.value AS size FROM problem_scores ps JOIN src USING (source_id)
                   WHERE ps.metric = 'cluster_size'),
             spread AS (SELECT cluster_id, count(DISTINCT dataset_id) AS datasets FROM c GROUP BY 1)
        SELECT d.name AS dataset, count(*) AS problems, count(*) FILTER (WHERE s.size > 1) AS in_clusters,
               count(DISTINCT c.cluster_id) FILTER (WHERE s.size > 1) AS clusters,
               count(DISTINCT c.cluster_id) FILTER (WHERE spread.datasets > 1) AS clusters_across_datasets,
               max(s.size)::BIGINT AS largest_cluster
        FROM c JOIN s USING (problem_id) JOIN spread USING (cluster_id) JOIN datasets d USING (dataset_id)
        WHERE d.status = 'ready' GROUP BY d.dataset_id, d.name ORDER BY d.dataset_id
        """, [SOURCE], db=db,
    )

