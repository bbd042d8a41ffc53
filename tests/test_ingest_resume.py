"""A `python -m core ingest` (or `make run`'s demo) killed with SIGKILL during math-verify,
the token count or the search index: running the same command again finishes every stage
the first run would have run, and does no committed work twice.

The kill is real: the command runs in its own process, with the CLI's progress callback
(called after each committed batch) wrapped so the process SIGKILLs itself at a chosen batch.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from core import search, store
from core.demo import write_omnithought

REPO = Path(__file__).resolve().parents[1]

# Runs the real CLI in this process after arranging a SIGKILL: at the progress report of
# STAGE once DONE items are committed, or (STAGE == "index") after the index commits its
# first dataset and before it records it. The token stage's batch is made small, so it
# commits several times on a small dataset.
KILLER = textwrap.dedent("""
    import os, signal, sys
    from core import cli, search, tokens

    stage, at, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    tokens.count_tokens_stage.__kwdefaults__["batch_cots"] = 128

    def die():  # this process only: verify's pool workers must go with it (the pipes close then)
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    real_bar = cli._bar

    def killing_bar(desc):
        update, close = real_bar(desc)

        def report(name, done, total):
            update(name, done, total)
            if name == stage and done >= at:
                die()

        return report, close

    cli._bar = killing_bar
    real_build = search.build
    if stage == "index":
        search.build = lambda *a, **k: real_build(*a, after_dataset=lambda *x, **y: die(), **k)
    sys.exit(cli.main(argv))
""")


def run_cli(*args: str, kill_at: tuple[str, int] | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    if kill_at:
        cmd = [sys.executable, "-c", KILLER, kill_at[0], str(kill_at[1]), *args]
    else:
        cmd = [sys.executable, "-m", "core", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, start_new_session=True)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, int]:
    """An OmniThought-shaped file of about 700 CoTs, all with reference answers (so each
    is verified) and more than one verify batch (512) and several token batches."""
    path = tmp_path_factory.mktemp("resume") / "omni.jsonl"
    info = write_omnithought(path, 120, seed=3, text_scale=0.01)
    assert info["cots"] > 512, info
    return path, info["cots"]


def stage_counts(db: Path) -> dict[str, int]:
    """What the stages committed, counted in plain SQL."""
    rows = store.read_rows(
        """SELECT (SELECT count(*) FROM cots),
                  (SELECT count(*) FROM scores s JOIN score_sources ss USING (source_id) WHERE ss.name = 'math-verify'),
                  (SELECT count(DISTINCT s.cot_id) FROM scores s JOIN score_sources ss USING (source_id) WHERE ss.name = 'math-verify'),
                  (SELECT count(n_tokens) FROM cots),
                  (SELECT count(*) FROM datasets)""",
        db=db,
    )[0]
    return dict(zip(("cots", "verify_scores", "verified_cots", "counted", "datasets"), rows))


@pytest.mark.parametrize(
    ("kill_at", "expect_verify", "expect_tokens", "expect_index"),
    [
        (("verify", 512), True, True, True),   # after the first verify batch: tokens and index never ran
        (("tokens", 256), False, True, True),  # two token batches committed
        (("index", 0), False, False, True),    # the index committed, but had not recorded the dataset
    ],
    ids=["killed-in-verify", "killed-in-tokens", "killed-in-index"],
)
def test_rerun_finishes_what_a_killed_ingest_left(corpus, tmp_path, kill_at, expect_verify, expect_tokens, expect_index):
    src, n_cots = corpus
    db = tmp_path / "store.duckdb"
    killed = run_cli("--db", str(db), "ingest", str(src), kill_at=kill_at)
    assert killed.returncode == -9, (killed.returncode, killed.stdout, killed.stderr[-2000:])

    before = stage_counts(db)
    assert before["cots"] == n_cots and before["datasets"] == 1  # the load itself had finished
    assert before["verify_scores"] == before["verified_cots"]  # committed batches only, no duplicate
    assert (before["verified_cots"] < n_cots) == expect_verify
    assert (before["counted"] < n_cots) == expect_tokens
    assert not search.coverage(db).complete

    again = run_cli("--db", str(db), "ingest", str(src))
    assert again.returncode == 0, again.stderr[-2000:]
    assert "Traceback" not in again.stderr
    after = stage_counts(db)
    # every stage the first run would have run is done, each CoT verified exactly once
    assert after == {"cots": n_cots, "verify_scores": n_cots, "verified_cots": n_cots, "counted": n_cots, "datasets": 1}
    assert search.coverage(db).complete
    # and only the remainder was done: the numbers the command reports are what was missing
    said = again.stdout.strip().splitlines()[-1]
    assert said.startswith("Already in the store as dataset 'omni' (id 1, same content hash); finished what an earlier run left undone: ")
    assert (f"verified {n_cots - before['verified_cots']:,} CoTs" in said) == expect_verify
    assert (f"counted the tokens of {n_cots - before['counted']:,} CoTs" in said) == expect_tokens
    assert (f"indexed {n_cots:,} CoTs for search" in said) == expect_index

    # a third run has nothing left
    third = run_cli("--db", str(db), "ingest", str(src))
    assert third.returncode == 0 and third.stdout.strip().endswith("(id 1, same content hash); nothing to do.")
    assert stage_counts(db) == after


def test_rerun_keeps_the_first_runs_choice_of_stages(corpus, tmp_path):
    """The same command again: with --no-verify it leaves verification alone."""
    src, n_cots = corpus
    db = tmp_path / "store.duckdb"
    killed = run_cli("--db", str(db), "ingest", str(src), "--no-verify", kill_at=("tokens", 128))
    assert killed.returncode == -9
    again = run_cli("--db", str(db), "ingest", str(src), "--no-verify")
    assert again.returncode == 0, again.stderr[-2000:]
    after = stage_counts(db)
    assert (after["verify_scores"], after["counted"]) == (0, n_cots)


def test_make_run_demo_killed_in_tokens_finishes_on_the_next_run(tmp_path):
    """`make run` runs `demo --if-empty`: killed in the demo's token stage, the next run
    finds the store not empty and still finishes the demo's stages."""
    db = tmp_path / "store.duckdb"
    args = ("--db", str(db), "demo", "--problems", "60", "--if-empty", "--out", str(tmp_path / "demo.parquet"))
    killed = run_cli(*args, kill_at=("tokens", 128))
    assert killed.returncode == -9, killed.stderr[-2000:]
    before = stage_counts(db)
    assert 0 < before["counted"] < before["cots"]

    again = run_cli(*args)
    assert again.returncode == 0, again.stderr[-2000:]
    after = stage_counts(db)
    assert after["counted"] == after["cots"] == before["cots"]
    assert after["verified_cots"] == after["verify_scores"] == after["cots"]
    assert f"finished the demo's stages: counted the tokens of {before['cots'] - before['counted']:,} CoTs" in again.stdout
    assert search.coverage(db).complete
    summary = json.loads(run_cli("--db", str(db), "summary", "--json").stdout)
    assert sum(r["cots"] for r in summary) == after["cots"]
