"""The token-count stage on a real store: counts agree with the tokenizer, batches shrink
when the texts are long, and a second run has nothing left to count."""

from __future__ import annotations

import core.tokens as tokens_mod
from core import store
from core.demo import write_omnithought
from core.ingest import ingest
from core.tokens import DEFAULT_TOKENIZER, count_tokens_stage, load_tokenizer


def test_counts_match_the_tokenizer_and_long_texts_make_smaller_batches(tmp_path, monkeypatch):
    db = tmp_path / "s.duckdb"
    src = tmp_path / "omni.jsonl"
    info = write_omnithought(src, 40, seed=3, text_scale=0.01)
    ingest(str(src), db=db)
    texts = store.read_rows("SELECT full_text FROM cots ORDER BY cot_id", db=db)
    mean_chars = sum(len(t) for (t,) in texts) // len(texts)
    # a character budget of about 10 mean texts: after the first batch, about 10 CoTs a batch
    monkeypatch.setattr(tokens_mod, "BATCH_CHARS", 10 * mean_chars)
    monkeypatch.setattr(tokens_mod, "MIN_BATCH_COTS", 4)
    seen = []
    result = count_tokens_stage(db=db, batch_cots=64, progress=lambda stage, done, total: seen.append((done, total)))
    assert result["cots"] == info["cots"] and seen[-1] == (info["cots"], info["cots"])
    sizes = [b - a for (a, _), (b, _) in zip([(0, None), *seen], seen)]
    assert sizes[0] == min(64, info["cots"])  # the first batch knows no lengths yet
    assert all(4 <= size <= 30 for size in sizes[1:-1]), sizes

    tok = load_tokenizer(DEFAULT_TOKENIZER)
    stored = store.read_rows("SELECT full_text, n_tokens, tokenizer FROM cots ORDER BY cot_id", db=db)
    assert [n for _, n, _ in stored] == [len(tok.encode(t, add_special_tokens=False).ids) for t, _, _ in stored]
    assert {name for _, _, name in stored} == {DEFAULT_TOKENIZER}
    assert result["tokens"] == sum(n for _, n, _ in stored)
    # resumable: a second run finds nothing without a count
    assert count_tokens_stage(db=db)["cots"] == 0
