"""The LLM judge on Ray (core.judge_ray.score_cots_ray): a real local Ray instance on CPU, Ray Data
actors with the transformers backend, the same store fixtures and models as tests/test_judge.py.

One Ray instance serves the module (2 CPUs, a 200 MB object store, no dashboard) and is shut
down at the end, where the test also checks that none of its processes is left running.
"""

from __future__ import annotations

import json

import psutil
import pytest

from core import judge, judge_ray, store
from core.judge import JudgeError, score_cots
from core.judge_ray import score_cots_ray
from core.models import DEFAULT_MODEL
from core.tokens import tokenizer_cache_dir
from helpers import cot_ids as _cot_ids
from helpers import source_scores as _scores

pytestmark = pytest.mark.spawns_processes

ray = pytest.importorskip("ray")

OBJECT_STORE_BYTES = 200 * 2**20  # /dev/shm holds it; 200 MB is far more than six CoTs need


def _ray_processes() -> list[psutil.Process]:
    """This test process's descendants that belong to Ray (GCS, raylet, workers, agents)."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            cmdline = " ".join(proc.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if "ray" in cmdline:
            found.append(proc)
    return found


@pytest.fixture(scope="module")
def local_ray():
    assert not ray.is_initialized()
    ray.init(
        num_cpus=2, object_store_memory=OBJECT_STORE_BYTES, include_dashboard=False, log_to_driver=False,
        # the workers resolve the offline default model from the same cache as this process
        runtime_env={"env_vars": {"THOUGHTSCOPE_CACHE": str(tokenizer_cache_dir())}},
    )
    assert _ray_processes(), "ray.init started no processes of its own"
    yield ray
    started = _ray_processes()  # workers and actors included
    ray.shutdown()
    _, alive = psutil.wait_procs(started, timeout=30)
    assert not alive, f"Ray processes left running after shutdown: {[p.pid for p in alive]}"


def _params(db, source: str) -> dict:
    return json.loads(store.read_rows("SELECT params FROM score_sources WHERE name = ?", [source], db=db)[0][0])


@pytest.mark.slow
def test_ray_run_matches_the_local_run_on_smollm2(judge_store, local_ray):
    """Same CoTs, same model, greedy: the Ray actor answers exactly as score_cots does here."""
    ids, metrics = _cot_ids(judge_store)[:3], ["rv", "logic"]
    options = dict(metrics=metrics, backend="transformers", model=DEFAULT_MODEL, max_new_tokens=16, batch_size=3)
    import torch

    threads = torch.get_num_threads()
    try:
        # one torch thread, as in the Ray actor (one CPU each): on a busy 2-core machine it ran
        # 4x faster than torch's default of one per core
        local = score_cots(judge_store, ids, source_name="local judge", backend_options={"threads": 1}, **options)
    finally:
        torch.set_num_threads(threads)
    progress = []
    on_ray = score_cots_ray(judge_store, ids, source_name="ray judge", replicas=1, commit_every=2,
                            progress=lambda stage, n, total: progress.append((stage, n, total)), **options)
    print(f"\nSmolLM2, 6 pairs: in-process {local.seconds:.1f} s, on Ray {on_ray.seconds:.1f} s (actor start included)")
    assert (on_ray.total, on_ray.already_done, on_ray.scored) == (6, 0, 6)
    assert (on_ray.with_value, on_ray.errors) == (local.with_value, local.errors)
    assert on_ray.generated_tokens == local.generated_tokens > 0
    assert progress == [("judge", n, 6) for n in (0, 2, 4, 6)]
    local_rows, ray_rows = _scores(judge_store, "local judge"), _scores(judge_store, "ray judge")
    assert len(ray_rows) == 6 and all(raw for _, _, _, raw, _ in ray_rows)  # the raw answer is kept
    assert ray_rows == local_rows  # parsed values, raw outputs and reasons alike
    # a Ray run is the same kind of source with the same recorded settings
    assert _params(judge_store, "ray judge") == _params(judge_store, "local judge")
    assert store.read_rows("SELECT kind FROM score_sources WHERE name = 'ray judge'", db=judge_store) == [("judge",)]


def test_ray_run_resumes_without_redoing_or_duplicating(judge_store, tiny_llama, local_ray, capsys):
    """A cancelled Ray run, a local run and the CLI pointed at Ray share one source name: every
    pair is judged once. The CLI run stages its work as Parquet instead of the object store."""
    from core.cli import main

    ids = _cot_ids(judge_store)
    options = dict(metrics=["rv", "cd", "logic"], backend="transformers", model=str(tiny_llama), max_new_tokens=4,
                   batch_size=2, source_name="ray resumable")
    asked = []

    def stop_after_first_commit() -> bool:
        asked.append(1)
        return len(asked) == 2  # asked before the start, then after each commit

    first = score_cots_ray(judge_store, ids, commit_every=4, cancelled=stop_after_first_commit, **options)
    assert first.cancelled and first.scored == 4 and len(asked) == 2
    kept = _scores(judge_store, "ray resumable")
    assert len(kept) == 4
    # pairs committed by a local run under the same name count as done for Ray too
    local = score_cots(judge_store, ids[-1:], **options)
    assert (local.scored, local.already_done) == (3, 0)

    # `python -m core score ... --ray-address local`, in-process: Ray is up already, so the run uses it
    staging = store.data_dir() / "ray-staging"
    code = main(["--db", str(judge_store), "score", "--cot-ids", ",".join(map(str, ids)), "--metrics", "rv,cd,logic",
                 "--model", str(tiny_llama), "--max-new-tokens", "4", "--batch-size", "2",
                 "--source-name", "ray resumable", "--ray-address", "local", "--ray-replicas", "1",
                 "--ray-staging-dir", str(staging)])
    assert code == 0
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (second["total"], second["already_done"], second["scored"], second["cancelled"]) == (18, 7, 11, False)
    assert not any(staging.iterdir())  # the staged Parquet is removed at the end
    rows = _scores(judge_store, "ray resumable")
    assert len(rows) == 18 and len({(r[0], r[1]) for r in rows}) == 18
    assert [r for r in rows if (r[0], r[1]) in {(k[0], k[1]) for k in kept}] == kept  # committed rows untouched
    for _, metric, value, raw, error in rows:
        assert raw is not None and (value is None) == (error is not None)
        if value is not None:
            assert value == judge.parse_score(raw, metric)[0]

    third = score_cots_ray(judge_store, ids, **options)
    assert (third.already_done, third.scored, third.generated_tokens) == (18, 0, 0)
    assert len(_scores(judge_store, "ray resumable")) == 18


def test_failed_ray_run_leaves_the_store_as_it_was(judge_store, local_ray, tmp_path):
    """The actors cannot load the model: the run fails, and the source it created is gone."""
    before = store.read_rows("SELECT * FROM score_sources ORDER BY source_id", db=judge_store)
    with pytest.raises(Exception, match="not-a-model"):
        score_cots_ray(judge_store, _cot_ids(judge_store)[:2], metrics=["rv"], backend="transformers",
                       model=str(tmp_path / "not-a-model"), source_name="doomed", max_new_tokens=2)
    assert store.read_rows("SELECT * FROM score_sources ORDER BY source_id", db=judge_store) == before
    assert store.read_rows("SELECT count(*) FROM scores s JOIN score_sources ss USING (source_id) "
                           "WHERE ss.name = 'doomed'", db=judge_store) == [(0,)]


def test_ray_address_comes_from_the_option_or_the_environment(monkeypatch):
    monkeypatch.delenv(judge_ray.RAY_ADDRESS_ENV, raising=False)
    assert judge_ray.ray_address_from(None) is None
    for address in ("auto", "local", "ray://head.example:10001", "10.0.0.5:6379"):
        assert judge_ray.ray_address_from(address) == address
    monkeypatch.setenv(judge_ray.RAY_ADDRESS_ENV, "ray://head:10001")
    assert judge_ray.ray_address_from(None) == "ray://head:10001"
    assert judge_ray.ray_address_from("none") is None  # the option overrides the environment
    with pytest.raises(JudgeError, match="--ray-address 'http://x' is not a Ray address"):
        judge_ray.ray_address_from("http://x")
    monkeypatch.setenv(judge_ray.RAY_ADDRESS_ENV, "somewhere")
    with pytest.raises(JudgeError, match=r"\$THOUGHTSCOPE_RAY_ADDRESS 'somewhere'"):
        judge_ray.ray_address_from(None)
