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
    count_matches,
    highlight,
    highlight_markers,
    safe_markdown,
    search_pattern,
    short_labels,
    snippet,
    snippet_markdown,
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

MARKED = r":orange-background\[\*\*:orange\[([^\]]*)\]\*\*\]"  # a highlighted marker, its text in group 1
MARKERS = {"wait": ["wait"], "but_wait": ["but wait"], "hmm": ["hmm", "hmmm"], "let_me_check": ["let me check"]}


def test_markers_highlighted_with_counts():
    text = "Wait, that fails. Hmm. But wait, let me check: awaiting waits. WAIT!"
    out = highlight_markers(safe_markdown(text), MARKERS)
    assert re.findall(MARKED, out) == ["Wait", "Hmm", "But wait", "let me check", "WAIT"]
    assert count_highlights(out) == 5
    # outside the highlights the text is unchanged
    assert re.sub(MARKED, r"\1", out) == text


def test_highlight_count_matches_marker_counter_when_phrases_do_not_overlap():
    markers = {"hmm": ["hmm"], "alternatively": ["alternatively"]}
    # "hmmm" is another word; "hmm-like" starts with the word "hmm"
    text = "Hmm, alternatively... hmm. Alternatively, hmmm is not hmm-like? hmm"
    counted = sum(MarkerCounter(markers).count(text).values())
    assert count_highlights(highlight_markers(text, markers)) == counted == 6


def test_no_highlight_inside_math_or_code():
    out = highlight_markers(safe_markdown(r"wait $\text{wait}$ `wait` \(wait\) wait"), ["wait"])
    assert out == r":orange-background[**:orange[wait]**] $\text{wait}$ `wait` $wait$ :orange-background[**:orange[wait]**]"


def test_phrase_across_lines_is_wrapped_per_line():
    out = highlight_markers("But\nwait", ["but wait"])
    assert out == ":orange-background[**:orange[But]**]\n:orange-background[**:orange[wait]**]"


def test_bundled_markers_load_and_highlight():
    out = highlight_markers("Hold on, let me verify. Alternatively, double-check it.", load_markers())
    assert count_highlights(out) == 4


def test_search_words_and_a_find_phrase_have_their_own_colours_and_win_over_markers():
    text = "Wait, let me check: Let me, CHECK again. $check$ `check` checking"
    out = highlight(safe_markdown(text), markers=["wait", "let me check"], terms=["check"], find="let me check")
    # the find phrase (its words in order, any punctuation between) wins over the marker
    # "let me check"; a phrase broken by punctuation is wrapped piece by piece
    assert out == (
        ":orange-background[**:orange[Wait]**], :violet-background[**:violet[let me check]**]: "
        ":violet-background[**:violet[Let me]**], :violet-background[**:violet[CHECK]**] again. "
        "$check$ `check` checking"
    )
    assert count_highlights(out, "violet") == 3 and count_highlights(out, "blue") == 0
    # the search word alone, on word boundaries, never inside math or code
    out = highlight(safe_markdown(text), terms=["check"])
    assert out.count(":blue-background[**:blue[") == 2


def test_highlights_never_cut_an_escape_or_put_markup_in_a_label():
    out = highlight(safe_markdown("a < b & c: ![x](y) [z]"), terms=["lt", "amp", "b", "z", "x"], find="c")
    assert "&lt;" in out and "&amp;" in out and ":blue-background[**:blue[lt]**]" not in out
    labels = re.findall(r"\*\*:(?:blue|violet)\[([^\]]*)\]\*\*", out)
    assert labels and all(re.fullmatch(r"[\w ]+", label) for label in labels)


def test_count_matches_counts_what_highlight_marks_in_plain_text():
    text = "Check this. check-list, rechecked; CHECK\nand check"
    independent = len(re.findall(r"(?<![A-Za-z0-9])check(?![A-Za-z0-9])", text, re.IGNORECASE))
    assert count_matches(text, terms=["check"]) == independent == 4
    assert count_matches(text, find="check list") == 1
    assert count_matches(text, find="") == 0 and count_matches(None, terms=["x"]) == 0


def test_snippet_around_the_first_hit_of_a_phrase_or_a_substring():
    text = "alpha " * 40 + "Let me,\ncheck this. " + "omega " * 40
    whole = search_pattern("let me check", whole_words=True)
    before, hit, after = snippet(text, whole, width=30)
    assert hit == "Let me, check"  # line breaks become spaces
    assert before.startswith("…") and before.endswith("alpha ") and len(before) <= 31
    assert after.startswith(" this.") and after.endswith("…")
    # whole words: "me check" inside "theme checks" is no hit; a substring search finds it
    assert snippet("theme checks", search_pattern("me check", whole_words=True)) is None
    assert snippet("theme checks", search_pattern("me check", whole_words=False)) == ("the", "me check", "s")
    assert snippet_markdown(("a<", "b c", "!")) == "a\\<:blue-background[**:blue[b c]**]\\!"


def test_short_labels_keep_the_ends_that_tell_long_names_apart():
    names = [f"icml_models/Sky-T1-math-correct-5K-32B-ckpts/checkpoint-{n}" for n in (21, 105, 119)]
    names += ["Qwen/Qwen2.5-Math-7B", None]
    labels = short_labels(names, width=24)
    assert labels["Qwen/Qwen2.5-Math-7B"] == "Qwen/Qwen2.5-Math-7B" and labels[None] is None
    shown = [labels[n] for n in names[:3]]
    assert len(set(shown)) == 3 and all(len(label) <= 24 for label in shown)
    assert all(label.endswith(f"point-{n}") for label, n in zip(shown, (21, 105, 119)))
    # names equal up to a long common end still get labels that differ
    twins = ["a" * 40 + "-x-" + "z" * 30, "a" * 40 + "-y-" + "z" * 30]
    assert len(set(short_labels(twins, width=20).values())) == 2


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


# ---------------------------------------------------------------------------- images from data

IMAGE_SYNTAXES = {
    "inline": "see ![beacon](http://tracker.invalid/a.png) here",
    "inline with title": 'see ![beacon](http://tracker.invalid/a.png "title") here',
    "inline, angle brackets": "see ![beacon](<http://tracker.invalid/a b.png>) here",
    "inline, parentheses in the URL": "see ![beacon](http://tracker.invalid/a_(1).png) here",
    "inline, empty alt": "see ![](http://tracker.invalid/a.png) here",
    "reference": "see ![beacon][ref] here\n\n[ref]: http://tracker.invalid/a.png",
    "collapsed reference": "see ![beacon][] here\n\n[beacon]: http://tracker.invalid/a.png",
    "shortcut reference": "see ![beacon] here\n\n[beacon]: http://tracker.invalid/a.png",
    "nested brackets in the alt": "see ![a [nested] alt](http://tracker.invalid/a.png) here",
    "alt over two lines": "see ![two\nlines](http://tracker.invalid/a.png) here",
    "inside a link": "[![beacon](http://tracker.invalid/a.png)](http://example.invalid)",
    "after an escaped backslash": "see \\\\![beacon](http://tracker.invalid/a.png) here",
}


def _unescaped_image_openers(markdown: str) -> list[int]:
    """Offsets of '![' that CommonMark would read as an image opener: the '!' not escaped by
    an odd number of backslashes before it."""
    found = []
    for i in range(len(markdown) - 1):
        if markdown[i] == "!" and markdown[i + 1] == "[":
            backslashes = len(markdown[:i]) - len(markdown[:i].rstrip("\\"))
            if backslashes % 2 == 0:
                found.append(i)
    return found


@pytest.mark.parametrize("name", list(IMAGE_SYNTAXES))
def test_no_image_syntax_survives(name):
    out = safe_markdown(IMAGE_SYNTAXES[name])
    assert _unescaped_image_openers(out) == [], out
    # and the highlighting pass on top of it does not bring one back
    assert _unescaped_image_openers(highlight_markers(out, ["wait", "see"])) == []


def test_simple_images_become_a_placeholder_with_their_alt_text():
    assert safe_markdown("see ![a <b> beacon](http://tracker.invalid/a.png) here") == (
        r"see \[image removed: a &lt;b&gt; beacon\] here")
    assert safe_markdown("![](http://tracker.invalid/a.png)") == r"\[image removed\]"
    assert safe_markdown("![x][ref]") == r"\[image removed: x\]"


def test_exclamation_marks_and_links_otherwise_unchanged():
    assert safe_markdown("Wait! [0, 1] is closed. Hmm!") == "Wait! [0, 1] is closed. Hmm!"
    assert safe_markdown("a [link](http://example.invalid)") == "a [link](http://example.invalid)"
    # an image in math or code is not Markdown there
    assert safe_markdown("`![x](y)` and $![x](y)$") == "`![x](y)` and $![x](y)$"


# ---------------------------------------------------------------------------- linear splitting


def _reference_split(text):
    """The splitter as it was before it kept indexes: it rescans to the paragraph's end (or
    the text's end for a display bracket) for every opening delimiter. Quadratic on hostile
    text, but simple: the indexed splitter must give exactly its segments."""
    special = re.compile(r"^ {0,3}(?:`{3,}|~{3,})|`+|\$+|\\", re.M)
    blank_line = re.compile(r"\n[ \t]*\n")
    punct = set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")

    def paragraph_end(start):
        blank = blank_line.search(text, start)
        return blank.start() if blank else len(text)

    def closing_run(char, length, start, stop):
        for match in re.compile(re.escape(char) + "+").finditer(text, start, stop):
            if match.end() - match.start() == length:
                return match.start()
        return -1

    pieces, text_start, pos, n = [], 0, 0, len(text)

    def emit(kind, start, end):
        nonlocal text_start
        if start > text_start:
            pieces.append(("text", text[text_start:start]))
        pieces.append((kind, text[start:end]))
        text_start = end

    while pos < n:
        match = special.search(text, pos)
        if match is None:
            break
        start, token = match.start(), match.group()
        if token.lstrip(" ").startswith(("```", "~~~")) and (start == 0 or text[start - 1] == "\n"):
            fence = token.lstrip(" ")
            line_end = text.find("\n", match.end())
            if fence[0] == "`" and line_end >= 0 and "`" in text[match.end():line_end]:
                pos = match.end()
                continue
            closing = re.compile(r"^ {0,3}" + re.escape(fence[0]) + "{" + str(len(fence)) + r",}[ \t]*$", re.M)
            close = closing.search(text, line_end + 1) if line_end >= 0 else None
            end = close.end() if close else n
            emit("code", start, end)
            pos = end
        elif token[0] in "`$":
            line_end = text.find("\n", match.end())
            rest = text[match.end(): line_end if line_end >= 0 else n]
            if token[0] == "$" and len(token) >= 2 and (start == 0 or text[start - 1] == "\n") and "$" not in rest:
                closing = re.compile(r"^[ \t]*\${" + str(len(token)) + r",}[ \t]*$", re.M)
                close = closing.search(text, line_end + 1) if line_end >= 0 else None
                end = close.end() if close else n
                emit("math", start, end)
                pos = end
                continue
            close = closing_run(token[0], len(token), match.end(), paragraph_end(start))
            if close < 0:
                pos = match.end()
                continue
            emit("code" if token[0] == "`" else "math", start, close + len(token))
            pos = close + len(token)
        else:
            nxt = text[start + 1] if start + 1 < n else ""
            if nxt in ("(", "["):
                closer = "\\)" if nxt == "(" else "\\]"
                close = text.find(closer, start + 2, paragraph_end(start) if nxt == "(" else n)
                if close >= 0:
                    emit("math", start, close + 2)
                    pos = close + 2
                    continue
            pos = start + 2 if nxt in punct else start + 1
    if text_start < n:
        pieces.append(("text", text[text_start:]))
    return pieces


def test_indexed_splitter_matches_the_rescanning_one_on_random_text():
    import random

    alphabet = ["$", "$$", "`", "``", "```", "~~~", "\\", "\\(", "\\)", "\\[", "\\]", "\n", "\n\n", " ",
                "a", "b", "\n  \n", "\t", "x\\$", "\n```\n", "\n$$\n"]
    rng = random.Random(9)
    for _ in range(20_000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        assert split_segments(text) == _reference_split(text), repr(text)


def _distinct_dollar_runs(n: int) -> str:
    """Runs of 1, 2, 3, ... dollars: no run has a partner of its length, so every one is
    unmatched and (rescanning) each looked through all the runs after it."""
    parts, k, size = [], 1, 0
    while size < n:
        parts.append("$" * k + " x ")
        size += k + 3
        k += 1
    return "".join(parts)[:n]


ADVERSARIAL = {
    # the shape: one long paragraph of dollar runs that never close in pairs
    "unmatched $ and $$": lambda n: ("costs $5 and $$ " * (n // 16 + 1))[:n],
    "distinct-length $ runs": _distinct_dollar_runs,
    "unclosed \\(": lambda n: ("\\( a " * (n // 5 + 1))[:n],
    "unclosed \\[": lambda n: ("\\[ a " * (n // 5 + 1))[:n],
    "unmatched backtick runs": lambda n: ("`` x ` y " * (n // 9 + 1))[:n],
    "$$ at line starts with $ later on the line": lambda n: ("$$ a $ b\n" * (n // 9 + 1))[:n],
    "fence-like lines with backticks in the info": lambda n: ("``` a`b\n" * (n // 8 + 1))[:n],
}


def _line_events(text: str) -> int:
    """Python lines run inside core.render while splitting ``text``: a count of work the
    splitter does not report itself (a rescan loop in Python shows up here)."""
    import sys

    import core.render as module

    events = 0

    def tracer(frame, event, arg):
        nonlocal events
        if frame.f_code.co_filename != module.__file__:
            return None
        if event == "line":
            events += 1
        return tracer

    sys.settrace(tracer)
    try:
        split_segments(text)
    finally:
        sys.settrace(None)
    return events


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_splitting_work_is_linear_in_the_text_length(name):
    from core.render import WorkCounter

    make = ADVERSARIAL[name]
    small, large = make(50_000), make(200_000)
    costs = {}
    for text in (small, large):
        work = WorkCounter()
        split_segments(text, work=work)
        # every character is looked at a bounded number of times, whatever the text holds
        assert work.chars <= 8 * len(text), (name, len(text), work.chars)
        assert work.steps <= 30 * len(text), (name, len(text), work.steps)
        costs[len(text)] = (work.chars, work.steps, _line_events(text))
    # four times the text costs about four times the work (a rescan would cost sixteen)
    for i in range(3):
        ratio = costs[len(large)][i] / max(1, costs[len(small)][i])
        assert ratio <= 5, (name, i, costs)


# ---------------------------------------------------------------------------- chart labels


def test_chart_labels_from_data_cannot_carry_active_tags():
    import numpy as np
    import plotly.graph_objects as go

    from core.render import inert_figure

    hostile = '<span style="fill:url(http://tracker.invalid/x.gif#a)">QwQ</span>'
    fig = go.Figure([
        go.Bar(x=[hostile, "plain"], y=[1, 2], name=f"<b style='x'>{hostile}</b>", hovertemplate="%{x}<br>%{y}<extra></extra>"),
        go.Bar(x=np.array(['<a href="http://tracker.invalid">a</a>', "b"], dtype=object), y=[3, 4], name="ok"),
    ])
    fig.update_layout(title={"text": "Tokens<br><sup>by model</sup>"}, annotations=[{"text": hostile}])
    out = inert_figure(fig)
    spec = out.to_plotly_json()
    text = repr(spec)
    assert "<span style" not in text and "<a href" not in text and "<b style" not in text
    assert spec["data"][0]["x"][0] == '&lt;span style="fill:url(http://tracker.invalid/x.gif#a)">QwQ</span>'
    # this project's own markup is kept
    assert spec["data"][0]["hovertemplate"] == "%{x}<br>%{y}<extra></extra>"
    assert spec["layout"]["title"]["text"] == "Tokens<br><sup>by model</sup>"
    # a figure with nothing to change is returned as it is
    plain = go.Figure(go.Bar(x=["a"], y=[1], name="<b>bold</b>"))
    assert inert_figure(plain) is plain


def test_chart_builders_return_inert_figures():
    import polars as pl

    from core import charts

    hostile = '<span style="fill:url(http://tracker.invalid/x.gif#a)">m</span>'
    mp = pl.DataFrame({"model": [hostile, "plain"], "dataset": ["d", "d"], "benchmark": ["b", "b"],
                       "mean_at_k": [0.5, 0.25], "pass_at_k": [0.75, 0.5], "problems_skipped": [0, 0]})
    fig = charts.mean_pass_at_k_figure(mp, n_cots=8, k=2)
    assert "<span style" not in repr(fig.to_plotly_json())
