"""Tests for core.text on small hand-made inputs with hand-computed expected values."""

import threading

import pytest

from core.text import (
    SOLUTION_OPEN,
    THINK_CLOSE,
    THINK_OPEN,
    THOUGHT_CLOSE,
    THOUGHT_OPEN,
    MarkerCounter,
    count_paragraphs,
    extract_answer,
    load_markers,
    reference_from_gsm8k,
    split_thinking,
    verify_answer,
)

# --------------------------------------------------------------------------- split_thinking


def test_split_think_tags():
    assert split_thinking("<think>\nI reason.\n</think>\n\nThe answer is 4.") == (
        "I reason.",
        "The answer is 4.",
        False,
    )


def test_split_missing_opening_think_tag():
    # DeepSeek-R1 chat templates strip the opening <think>.
    assert split_thinking("I reason.\n</think>\nDone.") == ("I reason.", "Done.", False)


def test_split_empty_thinking():
    assert split_thinking("<think></think>Answer") == ("", "Answer", False)


def test_split_unclosed_think():
    assert split_thinking("<think>\nStill thinking... wait") == ("Still thinking... wait", "", True)


def test_split_no_markers_returns_text_untouched():
    assert split_thinking("  just an answer \n") == (None, "  just an answer \n", False)
    assert split_thinking("") == (None, "", False)


def test_split_thought_and_solution_markers():
    text = (
        "<|begin_of_thought|>\n\nStep 1.\n\nStep 2.\n\n<|end_of_thought|>\n\n"
        "<|begin_of_solution|>\n\nx = 3\n\n<|end_of_solution|>"
    )
    assert split_thinking(text) == ("Step 1.\n\nStep 2.", "x = 3", False)


def test_split_thought_without_solution_markers():
    assert split_thinking("<|begin_of_thought|>T<|end_of_thought|>\n  S \n") == ("T", "S", False)


def test_split_solution_without_closing_marker():
    text = "<|begin_of_thought|>T<|end_of_thought|><|begin_of_solution|> S"
    assert split_thinking(text) == ("T", "S", False)


def test_split_unclosed_thought():
    assert split_thinking("<|begin_of_thought|> T\n") == ("T", "", True)


# --------------------------------------------------------------------------- count_paragraphs


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", 0),
        ("\n\n  \n", 0),
        ("one", 1),
        ("one\ntwo", 1),
        ("one\n\ntwo", 2),
        ("one\n \t\n\n two\n\n\nthree\n", 3),
        ("\n\none\r\n\r\ntwo\n\n", 2),
    ],
)
def test_count_paragraphs(text, expected):
    assert count_paragraphs(text) == expected


# --------------------------------------------------------------------------- reflection markers


def test_default_markers_file():
    markers = load_markers()
    assert set(markers) == {
        "wait",
        "hmm",
        "alternatively",
        "let_me_check",
        "double_check",
        "but_wait",
        "hold_on",
        "pause",
    }
    assert markers["hmm"] == ["hmm+"]
    assert markers["let_me_check"] == ["let me check", "let me verify", "let me confirm"]
    assert markers["pause"] == ["let's pause", "let me pause", "let us pause"]


def test_marker_counts_hand_counted():
    text = (
        "Wait, let me check this. Hmm... But wait, the awaiting list is long. HMMM. "
        "Alternatively we could hold on; let me verify again.\nBut\nwait: double-check "
        "and Double check. waiting? hold-on? Let me confirm. Let\u2019s pause. hmmmmm, hm. "
        "Let us pause here, hmmmm."
    )
    counts = MarkerCounter(load_markers()).count(text)
    assert counts == {
        "wait": 1,  # "Wait,"; the two "But wait" are but_wait only; not "awaiting" nor "waiting"
        "hmm": 4,  # "Hmm", "HMMM", "hmmmmm", "hmmmm"; not "hm"
        "alternatively": 1,
        "let_me_check": 3,  # check, verify, confirm
        "double_check": 2,  # "double-check", "Double check"
        "but_wait": 2,  # "But wait", "But\nwait"
        "hold_on": 2,  # "hold on", "hold-on"
        "pause": 2,  # "Let’s pause" (typographic apostrophe), "Let us pause"
    }


def test_each_occurrence_counts_once_under_the_longest_phrase():
    markers = {"wait": ["wait"], "but_wait": ["but wait"], "but": ["but"], "hmm": ["hmm+"], "hmmm": ["hmmm"]}
    counter = MarkerCounter(markers)
    text = "But wait. but. wait but wait, hmmm hmmmmm"
    assert counter.count(text) == {"wait": 1, "but_wait": 2, "but": 1, "hmm": 2, "hmmm": 0}
    # the occurrences tile the text without overlap, in order
    spans = [(text[s:e], counter.names[i]) for s, e, i in counter.occurrences(text)]
    assert spans == [("But wait", "but_wait"), ("but", "but"), ("wait", "wait"), ("but wait", "but_wait"),
                     ("hmmm", "hmm"), ("hmmmmm", "hmm")]  # "hmmm": both match as long; the first listed wins


def test_marker_counts_empty_text_has_every_name():
    counts = MarkerCounter(load_markers()).count("")
    assert counts == dict.fromkeys(load_markers(), 0)


def test_custom_markers_are_literal(tmp_path):
    path = tmp_path / "markers.yaml"
    path.write_text("plus:\n  - a+b?\nsorry:\n  - sorry\nnone: []\ncpp:\n  - c++\n", encoding="utf-8")
    markers = load_markers(path)
    assert markers == {"plus": ["a+b?"], "sorry": ["sorry"], "none": [], "cpp": ["c++"]}
    counts = MarkerCounter(markers).count("a+b? ab aab a+b?x Sorry, SORRY. unsorry c++ cc")
    # "a+b?x" has a word character right after the phrase, "unsorry" one right before it;
    # "+" after a non-letter is literal ("c++" is not "c repeated")
    assert counts == {"plus": 1, "sorry": 2, "none": 0, "cpp": 1}


def test_marker_retry_inside_word():
    # A rejected match inside a word must not hide a real one that overlaps it.
    counts = MarkerCounter({"haha": ["ha ha"]}).count("aha ha ha")
    assert counts == {"haha": 1}


# --------------------------------------------------------------------------- extract_answer


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"so $\boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),
        (r"first \boxed{1} then \boxed{2}", "2"),
        (r"\boxed{\{1,2\}}", r"\{1,2\}"),
        (r"\boxed{ {a}+{b} }", "{a}+{b}"),
        (r"$\boxed 5$", "5"),
        (r"\boxed 5", "5"),
        (r"\fbox{7}", "7"),
        (r"\framebox{x+1}", "x+1"),
        (r"\boxed{3} and an unbalanced \boxed{4", "3"),
        (r"The answer is 3 but \boxed{4}", "4"),
        ("So the final answer is $42$.", "42"),
        ("The answer is 3.5. Done.", "3.5"),
        ("the answer is 7\nmore text", "7"),
        (r"Therefore, the answer is: \frac{1}{2}.", r"\frac{1}{2}"),
        ("Final Answer: The final answer is 17. I hope it is correct.", "17"),
        ("The answer is **12**.", "12"),
        ("the answer is 1. Later, the answer is 2.", "2"),
        ("THE ANSWER IS 5", "5"),
        ("\u0130stanbul: the answer is 9.", "9"),  # lower() lengthens U+0130
        ("breathe answer is 3", None),  # "the" must be a whole word
        ("The answer is\n5", None),  # X must be on the same line
        ("#### 18", "18"),
        ("Total:\n#### 1,000\n", "1,000"),
        ("no answer here", None),
        ("", None),
        (r"\boxedfoo{3}", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


# --------------------------------------------------------------------------- reference_from_gsm8k


def test_reference_from_gsm8k():
    field = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nAltogether 48+24 = <<48+24=72>>72.\n#### 72"
    assert reference_from_gsm8k(field) == "72"
    assert reference_from_gsm8k("a #### 1 #### 2 ") == "2"
    assert reference_from_gsm8k(" 42 \n") == "42"


# --------------------------------------------------------------------------- verify_answer


@pytest.mark.parametrize(
    "response, reference, expected",
    [
        (r"We add them up, so the result is \boxed{204}.", "204", True),
        (r"\boxed{0.5}", r"\frac{1}{2}", True),
        (r"\boxed{(3,\frac{\pi}{2})}", r"\left( 3, \frac{\pi}{2} \right)", True),
        ("#### 18", "18", True),
        (r"\boxed{6}", "5", False),
        ("The final answer is $\\frac{1}{2}$.", "0.5", True),
        (r"\fbox{12}", "12", True),
        ("no answer here", "5", None),
        ("5", "", None),
    ],
)
def test_verify_answer(response, reference, expected):
    assert verify_answer(response, reference) is expected
    assert verify_answer(response, reference, timeout=False) is expected


def test_verify_answer_in_worker_thread():
    # math_verify's signal-based timeouts raise ValueError outside the main thread.
    results = []

    def work():
        results.append(verify_answer(r"\boxed{204}", "204", timeout=False))
        results.append(verify_answer(r"\boxed{204}", "204"))  # switched off automatically

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    assert results == [True, True]


def test_thinking_unclosed_agrees_with_split_thinking():
    """The ingest's shortcut for sources that give thinking and solution themselves."""
    import random

    from core.text import thinking_unclosed

    parts = [THINK_OPEN, THINK_CLOSE, THOUGHT_OPEN, THOUGHT_CLOSE, SOLUTION_OPEN, "x", " ", "\n"]
    rng = random.Random(1)
    for _ in range(20_000):
        text = "".join(rng.choice(parts) for _ in range(rng.randint(0, 7)))
        assert thinking_unclosed(text) == split_thinking(text)[2], repr(text)
