"""core.render on hand-made texts: HTML escaped, LaTeX and code intact, markers
highlighted, diffs by line and by sentence, long texts clipped."""

from __future__ import annotations

import re

import pytest

from core.render import (
    clip_for_display,
    cot_diff,
    count_highlights,
    diff_units,
    escape_inline,
    highlight_markers,
    safe_markdown,
    split_segments,
)
from core.text import MarkerCounter, load_markers

# ---------------------------------------------------------------------------- safe_markdown


def test_script_and_tags_are_escaped_to_visible_text():
    out = safe_markdown("Before <script>alert(1)</script> and <b>x</b> & <think>")
    assert out == "Before &lt;script&gt;alert(1)&lt;/script&gt; and &lt;b&gt;x&lt;/b&gt; &amp; &lt;think&gt;"
    assert "<" not in out and ">" not in out


def test_think_block_keeps_markdown_and_math_after_it():
    # a raw "<think>" line would start an HTML block that swallows the lines after it
    out = safe_markdown("<think>\nso **bold** and $x^2$\n</think>\n\nAnswer $y$")
    assert out == "&lt;think&gt;\nso **bold** and $x^2$\n&lt;/think&gt;\n\nAnswer $y$"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"Let $a<b$ and $$\sum_{i=1}^n i$$.", r"Let $a\lt b$ and $$\sum_{i=1}^n i$$."),
        (r"so \(x^2 > 0\) holds", r"so $x^2 \gt  0$ holds"),
        ("then \\[\n a+b \\]\ndone", "then \n\n$$\na+b\n$$\n\n\ndone"),
        ("$$\n\\frac{1}{2} < 1\n$$", "$$\n\\frac{1}{2} \\lt  1\n$$"),
        (r"\frac{a}{b} outside math & more", r"\frac{a}{b} outside math &amp; more"),
        ("matrix $\\begin{pmatrix} 1 & 2 \\end{pmatrix}$", "matrix $\\begin{pmatrix} 1 & 2 \\end{pmatrix}$"),
    ],
)
def test_latex_stays_math(text, expected):
    assert safe_markdown(text) == expected


def test_code_is_left_literal():
    text = "use `a<b` here\n\n```python\nif x < y and y > z:\n    pass\n```\nthen <i>"
    assert safe_markdown(text) == "use `a<b` here\n\n```python\nif x < y and y > z:\n    pass\n```\nthen &lt;i&gt;"


def test_unclosed_delimiters_are_plain_text():
    assert safe_markdown("costs $5 <b>") == "costs $5 &lt;b&gt;"
    assert safe_markdown("a `tick <b>") == "a `tick &lt;b&gt;"
    # inline math does not reach across a blank line (nor does Streamlit's parser)
    assert safe_markdown("$a\n\nb$ <") == "$a\n\nb$ &lt;"


def test_escaped_characters_stay_escaped():
    # "\<" already shows "<"; "\$" is a literal dollar that opens no math
    assert safe_markdown(r"a \< b and \$5 <") == r"a \< b and \$5 &lt;"


def test_directive_like_text_cannot_pick_colours_or_vanish():
    assert safe_markdown("see :red[this] and x:abc[def]") == r"see \:red[this] and x\:abc[def]"
    assert safe_markdown("ratio 3:4 and time 10:30") == "ratio 3:4 and time 10:30"


def test_empty_and_none():
    assert safe_markdown("") == ""
    assert safe_markdown(None) == ""


def test_segments_cover_the_text_exactly():
    text = "x `c` $m$ \\(n\\)\n```\nblock <b>\n```\ntail"
    pieces = split_segments(text)
    assert "".join(source for _, source in pieces) == text
    assert pieces == [
        ("text", "x "), ("code", "`c`"), ("text", " "), ("math", "$m$"), ("text", " "), ("math", "\\(n\\)"),
        ("text", "\n"), ("code", "```\nblock <b>\n```"), ("text", "\ntail"),
    ]


def test_escape_inline():
    assert escape_inline("Qwen/Qwen2.5_7B <x>") == r"Qwen\/Qwen2\.5\_7B \<x\>"
    assert escape_inline(None) == ""


# ---------------------------------------------------------------------------- markers

MARKERS = {"wait": ["wait"], "but_wait": ["but wait"], "hmm": ["hmm", "hmmm"], "let_me_check": ["let me check"]}


def test_markers_highlighted_with_counts():
    text = "Wait, that fails. Hmm. But wait, let me check: awaiting waits. WAIT!"
    out = highlight_markers(safe_markdown(text), MARKERS)
    assert re.findall(r":orange-background\[([^\]]*)\]", out) == ["Wait", "Hmm", "But wait", "let me check", "WAIT"]
    assert count_highlights(out) == 5
    # outside the highlights the text is unchanged
    assert re.sub(r":orange-background\[([^\]]*)\]", r"\1", out) == text


def test_highlight_count_matches_marker_counter_when_phrases_do_not_overlap():
    markers = {"hmm": ["hmm"], "alternatively": ["alternatively"]}
    # "hmmm" is another word; "hmm-like" starts with the word "hmm"
    text = "Hmm, alternatively... hmm. Alternatively, hmmm is not hmm-like? hmm"
    counted = sum(MarkerCounter(markers).count(text).values())
    assert count_highlights(highlight_markers(text, markers)) == counted == 6


def test_no_highlight_inside_math_or_code():
    out = highlight_markers(safe_markdown(r"wait $\text{wait}$ `wait` \(wait\) wait"), ["wait"])
    assert out == r":orange-background[wait] $\text{wait}$ `wait` $wait$ :orange-background[wait]"


def test_phrase_across_lines_is_wrapped_per_line():
    out = highlight_markers("But\nwait", ["but wait"])
    assert out == ":orange-background[But]\n:orange-background[wait]"


def test_bundled_markers_load_and_highlight():
    out = highlight_markers("Hold on, let me verify. Alternatively, double-check it.", load_markers())
    assert count_highlights(out) == 4


def test_no_markers_means_no_change():
    assert highlight_markers("wait", []) == "wait"
    assert highlight_markers("", MARKERS) == ""


# ---------------------------------------------------------------------------- diff and clip


def test_diff_by_line():
    a = "step 1\nstep 2\nanswer 5\n"
    b = "step 1\nstep 2\nanswer 6\n"
    diff = cot_diff(a, b, context=1, a_name="left", b_name="right").split("\n")
    assert diff[:3] == ["--- left", "+++ right", "@@ -2,2 +2,2 @@"]
    assert diff[3:] == [" step 2", "-answer 5", "+answer 6"]


def test_identical_texts_have_an_empty_diff():
    assert cot_diff("same\ntext", "same\ntext") == ""


def test_long_single_line_is_diffed_by_sentence():
    filler = " ".join(f"Sentence number {i} is here." for i in range(30))
    a = filler + " The answer is 5. Done."
    b = filler + " The answer is 6. Done."
    assert len(diff_units(a)) == 32
    changed = [line for line in cot_diff(a, b).split("\n") if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    assert changed == ["-The answer is 5.", "+The answer is 6."]


def test_clip_for_display_cuts_at_a_paragraph():
    text = "first paragraph\n\nsecond paragraph\n\nthird paragraph"
    shown, clipped = clip_for_display(text, 30)
    assert (shown, clipped) == ("first paragraph", True)
    assert clip_for_display(text, 1000) == (text, False)
    assert clip_for_display(None) == ("", False)


def test_clip_without_boundaries_cuts_at_the_limit():
    assert clip_for_display("x" * 50, 10) == ("x" * 10, True)
