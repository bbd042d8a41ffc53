"""Shared fixtures: real stores built through the real ingest (never mocked)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REALDATA = ROOT.parent / "shared" / "realdata"
QWEN_OUTPUTS = REALDATA / "qwen25_math_eval" / "outputs"
BENCHMARKS = REALDATA / "benchmarks"


def require_realdata() -> None:
    if not QWEN_OUTPUTS.exists():
        pytest.skip(f"real data not found at {REALDATA} (it sits beside the repo in ThoughtScope's CI)")


def _build_store(path: Path, builder) -> Path:
    """Build once per pytest run and cache the file, so every test starts from a copy."""
    if not path.exists():
        builder(path)
    return path


@pytest.fixture(scope="session")
def qwen_store_template(tmp_path_factory) -> Path:
    """A store holding every Qwen2.5-Math eval run of ../shared/realdata, verified and counted."""
    require_realdata()
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
