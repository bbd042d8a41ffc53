"""The module layout's rules, read from the source (no mocks): core/ has no import circles,
domain code imports neither the job queue nor the CLI, the progress module sits below
everything, core/ never imports Streamlit, and every job kind's options are well formed."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "core"
# the job machinery and the command line: the only core modules that may know about jobs
JOB_LAYER = {"core.jobs", "core.worker", "core.cli", "core.job_kinds", "core.__main__"}


def _imports(path: Path, *, top_level_only: bool) -> set[str]:
    """The core.* modules ``path`` imports (``from core import x`` counts as core.x)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    if top_level_only:  # also imports under `if TYPE_CHECKING:` / try at module level are module level
        nodes = [n for stmt in tree.body for n in ast.walk(stmt) if not isinstance(stmt, (ast.FunctionDef, ast.ClassDef))]
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("core")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("core") and node.level == 0:
            if node.module == "core":
                found |= {f"core.{a.name}" for a in node.names}
            else:
                found.add(node.module)
    return found


def _modules() -> dict[str, Path]:
    return {f"core.{p.stem}": p for p in sorted(CORE.glob("*.py")) if p.stem != "__init__"}


def test_core_has_no_import_circles():
    """Imports between core modules form no cycle, counting the lazy ones inside functions
    (cli -> ml_cli -> cli and jobs -> worker -> ingest -> jobs were of that kind)."""
    graph = {name: _imports(path, top_level_only=False) & set(_modules()) - {name} for name, path in _modules().items()}
    seen: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        seen[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if seen.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                pytest.fail(f"import circle: {' -> '.join(cycle)}")
            if nxt not in seen:
                visit(nxt)
        path.pop()
        seen[node] = 2

    for name in graph:
        if name not in seen:
            visit(name)


def test_domain_code_imports_neither_the_job_queue_nor_the_cli():
    """Not even lazily: a stage, the judge or the fine-tune reports through core.progress."""
    offenders = {}
    for name, path in _modules().items():
        if name in JOB_LAYER:
            continue
        bad = _imports(path, top_level_only=False) & JOB_LAYER
        if bad:
            offenders[name] = sorted(bad)
    assert not offenders, f"domain modules importing the job layer: {offenders}"


def test_the_queue_does_not_import_its_runners():
    assert not _imports(CORE / "jobs.py", top_level_only=False) & {"core.worker", "core.cli"}


def test_progress_and_errors_sit_below_everything():
    for name in ("progress", "errors"):
        assert _imports(CORE / f"{name}.py", top_level_only=False) == set(), f"core.{name} imports other core modules"


def test_core_never_imports_streamlit():
    for path in CORE.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] == "streamlit" for n in names), f"{path.name} imports streamlit"


def test_every_job_kind_has_well_formed_options():
    """Every options field says what it is (help), the params of a kind do not collide, every
    kind's runner exists, and options classes build with their defaults where they have them."""
    from core import job_kinds
    from core.options import describe

    for kind in job_kinds.KINDS.values():
        assert callable(kind.runner()), kind.name
        for cls in kind.options:
            assert dataclasses.is_dataclass(cls)
            for field in describe(cls):
                assert field["help"], f"{cls.__name__}.{field['field']} has no help text"
    assert set(job_kinds.KINDS) >= {"ingest", "tokens", "verify", "score", "finetune", "evaluate"}
