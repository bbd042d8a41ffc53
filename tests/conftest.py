"""Shared fixtures: real stores built through the real ingest (never mocked), the tiny
models and the judge's store. What they are built from is in tests/helpers.py."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from helpers import (
    BENCHMARKS,
    QWEN_OUTPUTS,
    REALDATA,
    REPO,
    build_tiny_llama,
    build_tiny_qwen2_prm,
    judge_corpus,
    judge_rows,
    require_realdata,
)

ROOT = REPO

# Time limits by marker (pytest.ini's timeout = 120 s is for everything else); a test's own
# @pytest.mark.timeout(N) wins. Generous: the suite shares small, busy machines.
MARKER_TIMEOUTS = {"spawns_processes": 600, "slow": 900, "browser": 1800, "vllm": 1800}


def pytest_collection_modifyitems(items):
    for item in items:
        if item.get_closest_marker("timeout") is not None:
            continue
        limits = [seconds for marker, seconds in MARKER_TIMEOUTS.items() if item.get_closest_marker(marker)]
        if limits:
            item.add_marker(pytest.mark.timeout(max(limits)))


def _build_store(path: Path, builder) -> Path:
    """Build once per pytest run and cache the file, so every test starts from a copy."""
    if not path.exists():
        builder(path)
    return path


@pytest.fixture(scope="session")
def qwen_store_template(tmp_path_factory) -> Path:
    """A store holding every Qwen2.5-Math eval run of ../shared/realdata, verified and counted."""
    require_realdata(QWEN_OUTPUTS)
    from core.ingest import ingest
    from core.tokens import count_tokens_stage
    from core.verify import verify_stage

    def build(path: Path) -> None:
        ingest(str(QWEN_OUTPUTS), name="qwen25-math-eval", db=path)
        verify_stage(db=path)
        count_tokens_stage(db=path)

    return _build_store(tmp_path_factory.mktemp("qwen") / "qwen.duckdb", build)


@pytest.fixture(scope="session")
def demo_store_template(tmp_path_factory) -> Path:
    """A store holding a small generated OmniThought-shaped dataset (RV, CD, correctness)."""
    from core.demo import write_omnithought
    from core.ingest import ingest
    from core.tokens import count_tokens_stage
    from core.verify import verify_stage

    def build(path: Path) -> None:
        src = path.parent / "demo.parquet"
        write_omnithought(src, 150, seed=7, text_scale=0.2)
        ingest(str(src), name="demo (generated)", db=path, generated=True)
        verify_stage(db=path)
        count_tokens_stage(db=path)

    return _build_store(tmp_path_factory.mktemp("demo") / "demo.duckdb", build)


def _copy(template: Path, tmp_path: Path) -> Path:
    target = tmp_path / "store.duckdb"
    shutil.copy(template, target)
    return target


@pytest.fixture
def qwen_store(qwen_store_template, tmp_path) -> Path:
    return _copy(qwen_store_template, tmp_path)


@pytest.fixture
def demo_store(demo_store_template, tmp_path) -> Path:
    return _copy(demo_store_template, tmp_path)


@pytest.fixture
def app_store(monkeypatch):
    """Point the app (THOUGHTSCOPE_DB) at a store and start with empty Streamlit caches."""

    def use(path: Path) -> Path:
        monkeypatch.setenv("THOUGHTSCOPE_DB", str(path))
        import streamlit as st

        st.cache_data.clear()
        st.cache_resource.clear()
        return path

    yield use
    import streamlit as st

    st.cache_data.clear()
    st.cache_resource.clear()


@pytest.fixture(autouse=True)
def _isolated_data_dirs(tmp_path, tmp_path_factory, monkeypatch):
    """Exports, recipes, jobs and caches of a test go under its tmp_path, never data/."""
    monkeypatch.setenv("THOUGHTSCOPE_DATA", str(tmp_path / "data"))
    # browser-started ingests read only under the ingest roots: the run's temporary files and the real data
    roots = [str(tmp_path_factory.getbasetemp()), str(REALDATA)]
    monkeypatch.setenv("THOUGHTSCOPE_INGEST_ROOTS", os.pathsep.join(roots))
    # the tokenizer cache is safe to share and slow to rebuild
    monkeypatch.setenv("THOUGHTSCOPE_CACHE", os.environ.get("THOUGHTSCOPE_CACHE", str(ROOT / "data" / "cache")))


# --------------------------------------------------------------------------- models and the judge's store


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer Llama with a BPE tokenizer trained here (on the judge's
    CoTs and templates and a few math lines), saved with save_pretrained: proves the plain
    `from_pretrained` path works for any local folder."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), corpus=judge_corpus())


@pytest.fixture(scope="session")
def judge_store_template(tmp_path_factory) -> Path:
    """A store ingested (by the real ingest) from a six-CoT OmniThought JSONL, token-counted."""
    from core.ingest import ingest
    from core.tokens import count_tokens_stage

    folder = tmp_path_factory.mktemp("judge-store")
    src = folder / "tiny-omnithought.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in judge_rows()))
    db = folder / "judge.duckdb"
    ingest(str(src), name="tiny omnithought", db=db)
    count_tokens_stage(db=db)
    return db


@pytest.fixture
def judge_store(judge_store_template, tmp_path) -> Path:
    target = tmp_path / "judge.duckdb"
    shutil.copy(judge_store_template, target)
    return target


@pytest.fixture(scope="session")
def tiny_backend(tiny_llama):
    from core.generation import open_backend

    return open_backend("transformers", str(tiny_llama), device="cpu", batch_size=4)


@pytest.fixture(scope="session")
def tiny_prm(tmp_path_factory) -> Path:
    """A randomly initialised Qwen2.5-Math-PRM look-alike (Qwen2ForProcessRewardModel, the
    <extra_0> separator), saved with save_pretrained (tests/helpers.py)."""
    return build_tiny_qwen2_prm(tmp_path_factory.mktemp("tiny-prm"), corpus=judge_corpus())


MAP_RUN = QWEN_OUTPUTS / "Qwen" / "Qwen2.5-Math-7B"  # one model's AIME 2024 and MATH500 runs


def build_map_store(path: Path) -> Path:
    """The AIME 2024, AIME 2025 and MATH500 benchmark files of ../shared/realdata plus one real
    eval run of both (Qwen2.5-Math-7B, with CoTs), and the map made by the real offline model."""
    from core.ingest import ingest
    from core.problem_map import MapOptions, run_map

    outputs = path.parent / "outputs" / "Qwen" / "Qwen2.5-Math-7B"
    shutil.copytree(MAP_RUN, outputs)
    ingest(str(path.parent / "outputs"), name="qwen2.5-math-7b eval", db=path)
    for name in ("aime24_test", "aime25_test", "math500_test"):
        ingest(str(BENCHMARKS / f"{name}.jsonl"), fmt="benchmark", name=name, db=path)
    run_map(path, MapOptions())
    return path


@pytest.fixture(scope="session")
def map_store_template(tmp_path_factory) -> Path:
    """A store with real benchmark problems and eval CoTs, and its map (see build_map_store)."""
    require_realdata()
    return _build_store(tmp_path_factory.mktemp("map") / "map.duckdb", build_map_store)


@pytest.fixture
def map_store(map_store_template, tmp_path) -> Path:
    return _copy(map_store_template, tmp_path)
