"""core.steps: the splitter round-trips on hand-made, random and real texts; the role rules on
hand-labelled steps; token counts per step against a plain count; placing given steps."""

from __future__ import annotations

import itertools
import json
import random

import pytest

from core import steps
from tests.helpers import REALDATA

# ------------------------------------------------------------------------------------ splitting


def check_partition(text: str, spans: list[tuple[int, int]]) -> None:
    """The spans are contiguous, cover the text, rebuild it, and each holds a visible character."""
    if not text:
        assert spans == []
        return
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    for (a, b), (c, _) in itertools.pairwise(spans):
        assert b == c and a < b
    assert "".join(text[a:b] for a, b in spans) == text
    if text.strip():
        assert all(text[a:b].strip() for a, b in spans)


@pytest.mark.parametrize("text, expected", [
    # hand-split: the boundary is after the whitespace that follows a sentence end
    ("One. Two! Three? Four", ["One. ", "Two! ", "Three? ", "Four"]),
    # abbreviations, a decimal, a lowercase continuation and a factorial do not end a sentence
    ("Dr. Fu has 6.5 percent, e.g. the rate. The 9! ways. Next", ["Dr. Fu has 6.5 percent, e.g. the rate. ", "The 9! ways. ", "Next"]),
    # line breaks split; a list number at the start of a line does not end a sentence
    ("So:\n1. First step.\n2. Second step.\n\nDone.", ["So:\n", "1. First step.\n", "2. Second step.\n\n", "Done."]),
    # nothing splits inside math, display or inline, nor inside a code fence
    ("Then $x = 3. Y$ holds. \\[\na = b.\nc = d.\n\\] After.", ["Then $x = 3. Y$ holds. ", "\\[\na = b.\nc = d.\n\\] After."]),
    ("Code:\n```\nx = 1. Y\ny = 2\n```\nEnd.", ["Code:\n", "```\nx = 1. Y\ny = 2\n```\n", "End."]),
    # closing quotes and bold stay with their sentence
    ('He said "done." Then **this.** Next', ['He said "done." ', "Then **this.** ", "Next"]),
    # leading whitespace joins the first step; trailing whitespace stays with the last
    ("\n\n  Hello there.  \n", ["\n\n  Hello there.  \n"]),
    ("   ", ["   "]),
    ("", []),
])
def test_sentence_splits_by_hand(text, expected):
    assert steps.split_text(text) == expected
    check_partition(text, steps.split_spans(text))


def test_paragraph_unit():
    text = "First line.\nStill first.\n\n\nSecond $$\na\n\nb\n$$ para.\n \nThird."
    assert steps.split_text(text, "paragraph") == [
        "First line.\nStill first.\n\n\n", "Second $$\na\n\nb\n$$ para.\n \n", "Third."]


def test_unknown_unit_is_refused():
    with pytest.raises(ValueError, match="unknown step unit 'word'"):
        steps.split_spans("a. b", "word")


PIECES = ["Wait.", "Hmm,", "so", "x = 3.5", "$a. B$", "\\(y. Z\\)", "\\[\nq. R\n\\]", "Dr.", "e.g.", "9!", "1.", "Yes?",
          "**Bold.**", '"quote."', "```\ncode. X\n```", "é", "日本語。", "\t", " ", "  ", "\n", "\n\n", "\r\n", "$", "\\", "```", ".", "!?"]


@pytest.mark.parametrize("unit", steps.UNITS)
def test_round_trip_on_random_texts(unit):
    rng = random.Random(15)
    for _ in range(3000):
        text = "".join(rng.choice(PIECES) + rng.choice(["", " ", "\n", " "]) for _ in range(rng.randint(0, 40)))
        check_partition(text, steps.split_spans(text, unit))


def test_round_trip_on_real_cots():
    """Every Thought Anchors thinking and every Qwen2.5-Math eval response (up to ~160k chars)."""
    texts = []
    ta = REALDATA / "thought_anchors" / "thought_anchors_math_base_solutions.jsonl"
    qwen = REALDATA / "qwen25_math_eval" / "outputs"
    if not ta.exists() or not qwen.exists():
        pytest.skip(f"real data not found at {REALDATA}")
    texts += [json.loads(line)["response"] for line in ta.open()]
    for path in sorted(qwen.rglob("*.jsonl"))[:12]:
        for line in path.open():
            texts += json.loads(line)["code"]
    assert len(texts) > 300
    for text in texts:
        for unit in steps.UNITS:
            check_partition(text, steps.split_spans(text, unit))


# ------------------------------------------------------------------------------------ roles

# Hand-labelled steps (written for this test, not taken from Thought Anchors) with the role a
# reader gives them; position is where the step starts in its CoT (0-1).
HAND_LABELLED = [
    ("Okay, so I have this problem about a train leaving a station at 3 pm.", 0.0, "problem_setup"),
    ("The problem says the train travels at 60 miles per hour.", 0.4, "problem_setup"),
    ("We need to find when it reaches the next town.", 0.02, "problem_setup"),
    ("Let me try to set up an equation for the distance.", 0.2, "plan_generation"),
    ("First, I'll find the total time.", 0.3, "plan_generation"),
    ("Maybe I can use the quadratic formula here.", 0.5, "plan_generation"),
    ("Alternatively, I could count the complementary cases.", 0.5, "plan_generation"),
    ("Hmm, let me think about how to approach this.", 0.1, "plan_generation"),
    ("I remember that the sum of the angles in a triangle is 180 degrees.", 0.3, "fact_retrieval"),
    ("The formula for compound interest is A = P(1 + r/n)^{nt}.", 0.3, "fact_retrieval"),
    ("There are 12 months in a year.", 0.3, "fact_retrieval"),
    ("Compute 12 * 7 = 84.", 0.5, "active_computation"),
    ("$3x + 5 = 20 \\implies x = 5$", 0.5, "active_computation"),
    ("1.005^12 ≈ 1.0616778", 0.5, "active_computation"),
    ("Substituting back gives the second root.", 0.5, "active_computation"),
    ("Wait, that doesn't make sense.", 0.6, "uncertainty_management"),
    ("Hmm, maybe I made a mistake in the sign.", 0.6, "uncertainty_management"),
    ("Is the order of the plates important?", 0.6, "uncertainty_management"),
    ("But that seems too large for a probability.", 0.6, "uncertainty_management"),
    ("Therefore, the total number of arrangements is 588.", 0.8, "result_consolidation"),
    ("So, in total, the digit 4 appears 187 times.", 0.8, "result_consolidation"),
    ("Putting these together gives the full count.", 0.8, "result_consolidation"),
    ("Let me double-check the multiplication.", 0.8, "self_checking"),
    ("Wait, let me verify this by plugging x = 5 back in.", 0.8, "self_checking"),
    ("Yes, that matches the earlier result.", 0.8, "self_checking"),
    ("Layer 5: 1 + 3*121 = 364 ✔️", 0.8, "self_checking"),
    ("**Final Answer** The number of ways is \\boxed{588}.", 0.99, "final_answer_emission"),
    ("So the answer is 42.", 0.97, "final_answer_emission"),
]


@pytest.mark.parametrize("step, position, role", HAND_LABELLED)
def test_roles_on_hand_labelled_steps(step, position, role):
    assert steps.RoleRules.load().role(step, position) == role


def test_every_role_is_exercised_and_known():
    assert {r for _, _, r in HAND_LABELLED} == set(steps.ROLES)
    rules = steps.RoleRules.load()
    assert {rule.role for rule in rules.rules} | {rules.fallback} <= set(steps.ROLES)
    assert set(rules.descriptions) == set(steps.ROLES)


@pytest.mark.parametrize("step, actions", [
    ("Wait, let me check that again.", ["pause", "verify"]),
    ("Hmm. Alternatively, another approach is to count pairs.", ["pause", "switch"]),
    ("No, wait, I made a mistake.", ["pause", "backtrack"]),
    ("The waiting time is 5 minutes; a checkpoint follows.", []),  # whole words only
    ("Let me  double\ncheck.", ["verify"]),  # any whitespace inside a phrase
])
def test_micro_actions(step, actions):
    assert steps.RoleRules.load().actions(step) == actions


def test_bad_rule_files_name_what_is_wrong(tmp_path):
    bad_role = tmp_path / "a.yaml"
    bad_role.write_text("rules:\n  - role: problem_setup\n    start: ['x']\n  - role: musing\n")
    with pytest.raises(ValueError, match=r"a\.yaml: rule 2: 'role' must be one of"):
        steps.RoleRules.load(bad_role)
    bad_regex = tmp_path / "b.yaml"
    bad_regex.write_text("rules:\n  - role: self_checking\n    any: ['(unclosed']\n")
    with pytest.raises(ValueError, match=r"b\.yaml: rule 1: a 'any' pattern is not a valid regular expression"):
        steps.RoleRules.load(bad_regex)
    not_rules = tmp_path / "c.yaml"
    not_rules.write_text("- just a list\n")
    with pytest.raises(ValueError, match="expected a mapping with a 'rules' list"):
        steps.RoleRules.load(not_rules)


def test_a_custom_rule_file_changes_roles_and_hash(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("rules:\n  - role: self_checking\n    any: ['zebra']\nfallback: plan_generation\n")
    rules = steps.RoleRules.load(mine)
    assert rules.role("A zebra appears.") == "self_checking"
    assert rules.role("Compute 2 + 2 = 4.") == "plan_generation"
    assert rules.sha256 != steps.RoleRules.load().sha256


# ------------------------------------------------------------------------------------ tokens


def test_span_token_counts_partition_the_text_tokens():
    from core.tokens import load_tokenizer

    tok = load_tokenizer()
    text = "Okay, so we need x. Let me compute: $2 + 3 = 5$.\n\nWait, is that right? Yes, 5 ✔️. Done!"
    spans = steps.split_spans(text)
    encoding = tok.encode(text, add_special_tokens=False)
    counts = steps.span_token_counts(encoding, spans)
    assert sum(counts) == len(encoding.ids)
    # independently: a token belongs to the span its first character falls in
    expected = [sum(1 for s, _ in encoding.offsets if a <= s < b) for a, b in spans]
    assert counts == expected
    assert steps.span_token_counts(encoding, []) == []


# ------------------------------------------------------------------------------------ given steps


def test_align_steps_ignores_whitespace_and_covers_the_text():
    text = "First part.\n\nSecond\npart here.  Third."
    spans, skipped = steps.align_steps(text, ["First part.", "Second part here.", "Third."])
    assert [text[a:b] for a, b in spans] == ["First part.\n\n", "Second\npart here.  ", "Third."]
    assert skipped == 0
    check_partition(text, spans)


def test_align_steps_counts_skipped_text_and_refuses_wrong_order():
    text = "Intro. A step. Between. B step."
    spans, skipped = steps.align_steps(text, ["A step.", "B step."])
    assert [text[a:b] for a, b in spans] == ["Intro. A step. Between. ", "B step."]
    assert skipped == len("Intro.") + len("Between.")
    with pytest.raises(steps.AlignmentError, match="step 1 .* is not in the CoT's text after step 0"):
        steps.align_steps(text, ["B step.", "A step."])
