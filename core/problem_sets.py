"""Saved sets of problems: a lasso on the map (thousands of problems) as a short key.

A selection of 100k problems cannot travel in a URL as ids, so it is saved once as a Parquet
file of problem ids under ``data_dir()/problem_sets/<key>.parquet`` (plus ``<key>.json``: how
many, where from, when) and the filter carries only the key (``CotFilter.problem_set``). The key
is a hash of the sorted ids, so the same selection gives the same key (and the same cached
figures), a file is never rewritten with other content, and a shared URL means the same problems
wherever the file is. ``queries.matching_sql`` reads the file with ``read_parquet(?)``, as it
reads the search index's hits.

    key = problem_sets.save([12884901893, 12884901928], origin="map lasso")
    problem_sets.info(key)        # {'key': ..., 'n': 2, 'origin': 'map lasso', ...}
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from core.errors import UserError
from core import store

KEY_CHARS = 16
_KEY = re.compile(rf"^[0-9a-f]{{{KEY_CHARS}}}$")


class ProblemSetError(UserError):
    """A problem set key that is malformed or whose file is not here."""


def folder() -> Path:
    path = store.data_dir() / "problem_sets"
    path.mkdir(parents=True, exist_ok=True)
    return path


def is_key(text: str) -> bool:
    return bool(_KEY.match(text or ""))


def key_of(ids: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(ids, dtype=np.int64).tobytes()).hexdigest()[:KEY_CHARS]


def path(key: str) -> Path:
    """The Parquet file of set ``key``; a clear error when the key is malformed or the set is
    not saved here (a URL from another machine, or a deleted file)."""
    if not is_key(key):
        raise ProblemSetError(f"'{key}' is not a problem set key ({KEY_CHARS} hexadecimal characters).")
    target = folder() / f"{key}.parquet"
    if not target.exists():
        raise ProblemSetError(
            f"The problem set '{key}' is not saved in {folder()} (it was made on another machine or deleted); "
            "clear it in the sidebar and select the problems again."
        )
    return target


def _atomic_write(target: Path, write) -> None:
    tmp = target.with_name(f"{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    write(tmp)
    os.replace(tmp, target)  # a concurrent reader sees the whole file or none


def save(problem_ids: Iterable[int], *, origin: str = "", db=None) -> str:
    """Save a set of problem ids (duplicates dropped) and return its key."""
    if isinstance(problem_ids, np.ndarray):  # the map's selections: no Python int per id
        ids = np.unique(problem_ids.astype(np.int64, copy=False))
    else:
        ids = np.unique(np.fromiter((int(i) for i in problem_ids), dtype=np.int64))
    if len(ids) == 0:
        raise ProblemSetError("An empty selection cannot narrow the filter; select at least one problem.")
    key = key_of(ids)
    target = folder() / f"{key}.parquet"
    if not target.exists():
        _atomic_write(target, lambda tmp: pq.write_table(pa.table({"problem_id": pa.array(ids, pa.int64())}), tmp,
                                                         compression="zstd"))
    meta = folder() / f"{key}.json"
    if not meta.exists():
        info = {"key": key, "n": int(len(ids)), "origin": origin, "store": str(store.db_path(db)),
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        _atomic_write(meta, lambda tmp: tmp.write_text(json.dumps(info, indent=1)))
    return key


def info(key: str) -> dict[str, Any]:
    """key, n (problems), origin, store, created_at of a saved set."""
    target = path(key)
    meta = target.with_suffix(".json")
    if meta.exists():
        return json.loads(meta.read_text())
    return {"key": key, "n": pq.read_metadata(target).num_rows, "origin": "", "store": None, "created_at": None}


def load(key: str) -> np.ndarray:
    """The set's problem ids, ascending."""
    return pq.read_table(path(key)).column("problem_id").to_numpy()


def filter_sql(key: str) -> tuple[str, list]:
    """A WHERE condition on CoTs ``c`` (and its parameter): the CoT's problem is in the set."""
    return "c.problem_id IN (SELECT problem_id FROM read_parquet(?))", [str(path(key))]
