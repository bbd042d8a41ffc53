"""Turning dataset text into Markdown that Streamlit shows safely, with LaTeX and markers.

Dataset text is never trusted as HTML. ``safe_markdown`` escapes ``<``, ``>`` and ``&`` in
ordinary text so a CoT's ``<script>`` or ``<think>`` shows as literal characters, while
``$...$``, ``$$...$$``, ``\\(...\\)`` and ``\\[...\\]`` stay math for Streamlit's KaTeX and code
spans stay code. ``highlight`` marks reflection phrases, search terms and a find-in-CoT phrase
outside math and code, and ``snippet`` cuts the text around a search hit.
``cot_diff`` compares two CoTs line by line (sentence by sentence for long lines), and
``clip_for_display`` shortens very long thinking for a first view.

    >>> safe_markdown("Is <b>x</b> < \\\\(y^2\\\\)?")
    'Is &lt;b&gt;x&lt;/b&gt; &lt; $y^2$?'

Streamlit's own markdown (react-markdown without rehype-raw) already turns raw HTML into
text when ``unsafe_allow_html`` is off, but an HTML block swallows the Markdown and LaTeX
after it up to the next blank line; escaping first keeps those rendered.
"""

from __future__ import annotations

import bisect
import difflib
import re
from collections.abc import Iterable, Mapping
from functools import lru_cache

from core.text import phrase_pattern

# ---------------------------------------------------------------------------- tokenising

# What can start a math or code segment: a backtick run, a dollar run, a backslash (for
# \( \[ and escaped characters), or a code fence at the start of a line.
_SPECIAL = re.compile(r"^ {0,3}(?:`{3,}|~{3,})|`+|\$+|\\", re.M)
_ASCII_PUNCT = set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")

TEXT, MATH, CODE = "text", "math", "code"


class WorkCounter:
    """What one ``split_segments`` call cost: ``chars`` is the characters its scans could
    examine (the span each search, find or indexing pass covers), ``steps`` its loop turns
    and index lookups. Tests bound both by a multiple of the text length."""

    def __init__(self) -> None:
        self.chars = 0
        self.steps = 0


class _Scanner:
    """The text and indexes built in one pass each, so that finding where a paragraph ends or
    where a run of ``$`` or backticks closes is a binary search, not a rescan: a 1.6 MB
    paragraph of unmatched ``$`` runs once cost 31 s of rescans to the paragraph's end."""

    def __init__(self, text: str, work: WorkCounter):
        self.text = text
        self.work = work
        n = len(text)
        # every newline that starts a blank line (lookahead: "\n\n\n" holds two)
        self.blank_lines = [m.start() for m in _BLANK_LINE_START.finditer(text)]
        # maximal runs of $ and of backticks, by character and length, in text order
        self.runs: dict[tuple[str, int], list[int]] = {}
        for m in _RUN.finditer(text):
            self.runs.setdefault((text[m.start()], m.end() - m.start()), []).append(m.start())
        self.closers = {
            closer: [m.start() for m in re.finditer(re.escape(closer), text)] for closer in ("\\)", "\\]")
        }
        work.chars += 4 * n

    def _next(self, positions: list[int], start: int) -> int:
        """The first position >= start in a sorted list, or -1."""
        self.work.steps += max(1, len(positions).bit_length())
        i = bisect.bisect_left(positions, start)
        return positions[i] if i < len(positions) else -1

    def paragraph_end(self, start: int) -> int:
        """Where the paragraph holding ``start`` ends: inline math and code spans never cross it."""
        end = self._next(self.blank_lines, start)
        return end if end >= 0 else len(self.text)

    def closing_run(self, char: str, length: int, start: int, stop: int) -> int:
        """Offset of the next run of exactly ``length`` ``char``s in text[start:stop], or -1.
        ``start`` is never inside a run (it follows a whole opening run), so the runs found
        from there are the text's maximal runs."""
        found = self._next(self.runs.get((char, length), []), start)
        return found if 0 <= found < stop else -1

    def closer(self, closer: str, start: int, stop: int) -> int:
        """Offset of the next ``\\)`` or ``\\]`` in text[start:stop], or -1."""
        found = self._next(self.closers[closer], start)
        return found if 0 <= found and found + len(closer) <= stop else -1

    def search(self, pattern: re.Pattern[str], start: int) -> re.Match[str] | None:
        match = pattern.search(self.text, start)
        self.work.chars += (match.end() if match else len(self.text)) - start
        return match

    def find(self, sub: str, start: int) -> int:
        at = self.text.find(sub, start)
        self.work.chars += (at + len(sub) if at >= 0 else len(self.text)) - start
        return at


_BLANK_LINE_START = re.compile(r"\n(?=[ \t]*\n)")
_RUN = re.compile(r"\$+|`+")


def split_segments(text: str, *, work: WorkCounter | None = None) -> list[tuple[str, str]]:
    """Split Markdown-ish text into (kind, source) pieces: ``text``, ``math`` or ``code``.

    The rules follow what Streamlit's Markdown parser (micromark with the math extension)
    does, so that what this module escapes is exactly what is shown as text: a fenced code
    block runs to its closing fence (or the end); a code span or inline math closes on a run
    of the same length within the same paragraph, else its opening run is plain text;
    ``$$`` alone on a line opens a display block that runs to a ``$$`` line (or the end);
    ``\\(...\\)`` and ``\\[...\\]`` are math; any other backslash escapes the next punctuation.

    The work is linear in the text's length (times a logarithm for the index lookups):
    every scan moves forward, and closing delimiters are looked up in indexes built once.
    ``work`` (optional) receives the count.
    """
    work = work if work is not None else WorkCounter()
    scan = _Scanner(text, work)
    pieces: list[tuple[str, str]] = []
    text_start = 0  # start of the plain text not yet emitted
    pos = 0
    n = len(text)

    def emit(kind: str, start: int, end: int) -> None:
        nonlocal text_start
        if start > text_start:
            pieces.append((TEXT, text[text_start:start]))
        pieces.append((kind, text[start:end]))
        text_start = end

    while pos < n:
        work.steps += 1
        match = scan.search(_SPECIAL, pos)
        if match is None:
            break
        start, token = match.start(), match.group()
        if token.lstrip(" ").startswith(("```", "~~~")) and (start == 0 or text[start - 1] == "\n"):
            fence = token.lstrip(" ")
            fence_char, fence_len = fence[0], len(fence)
            line_end = scan.find("\n", match.end())
            if fence_char == "`" and line_end >= 0 and "`" in text[match.end():line_end]:
                pos = match.end()  # an info string with a backtick: not a fence (CommonMark)
                continue
            closing = re.compile(r"^ {0,3}" + re.escape(fence_char) + "{" + str(fence_len) + r",}[ \t]*$", re.M)
            close = scan.search(closing, line_end + 1) if line_end >= 0 else None
            end = close.end() if close else n
            emit(CODE, start, end)
            pos = end
        elif token[0] == "`":
            close = scan.closing_run("`", len(token), match.end(), scan.paragraph_end(start))
            if close < 0:
                pos = match.end()
                continue
            end = close + len(token)
            emit(CODE, start, end)
            pos = end
        elif token[0] == "$":
            if len(token) >= 2 and (start == 0 or text[start - 1] == "\n"):
                # a display block: "$$" (and maybe a meta string) alone on its line; looked at
                # only for a run at a line's start, so each line is read once here
                line_end = scan.find("\n", match.end())
                if "$" not in text[match.end(): line_end if line_end >= 0 else n]:
                    closing = re.compile(r"^[ \t]*\${" + str(len(token)) + r",}[ \t]*$", re.M)
                    close = scan.search(closing, line_end + 1) if line_end >= 0 else None
                    end = close.end() if close else n
                    emit(MATH, start, end)
                    pos = end
                    continue
            close = scan.closing_run("$", len(token), match.end(), scan.paragraph_end(start))
            if close < 0:
                pos = match.end()
                continue
            end = close + len(token)
            emit(MATH, start, end)
            pos = end
        else:  # a backslash
            nxt = text[start + 1] if start + 1 < n else ""
            if nxt in ("(", "["):
                closer = "\\)" if nxt == "(" else "\\]"
                stop = scan.paragraph_end(start) if nxt == "(" else n
                close = scan.closer(closer, start + 2, stop)
                if close >= 0:
                    emit(MATH, start, close + 2)
                    pos = close + 2
                    continue
            # an escaped punctuation character stays text, and cannot open anything
            pos = start + 2 if nxt in _ASCII_PUNCT else start + 1
    if text_start < n:
        pieces.append((TEXT, text[text_start:]))
    return pieces


# ---------------------------------------------------------------------------- safe markdown

_TEXT_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", ":": "\\:", "!": "\\!"}
# A backslash-escaped punctuation character is already literal text ("\\<" shows "<"), so it
# is kept as it is; bare <, > and & become entities. A colon that would open one of
# Streamlit's directives (":red[...]", "x:abc[def]") is escaped too: an unknown directive's
# label vanishes from the page (seen in Chromium), and dataset text must not pick colours.
# An "!" before "[" is escaped: by CommonMark's rules an image must start with an unescaped
# "![", so no image from the data can form (what is left is at most a link, which fetches
# nothing unless clicked).
_TEXT_ESCAPE = re.compile(r"\\[!-/:-@\[-`{-~]|[<>&]|:(?=[A-Za-z][\w-]*[\[{])|!(?=\[)")

# A Markdown image in dataset text would make every reader's browser request its URL (a
# tracking beacon): inline ![alt](url "title"), reference ![alt][ref], collapsed ![alt][] and
# shortcut ![alt] images are shown as a placeholder that keeps the alt text. Forms this does
# not match (brackets nested in the alt text, a line break inside) still cannot render as
# images: _TEXT_ESCAPE escapes their "!".
_IMAGE = re.compile(
    r"(?<!\\)!\[([^\[\]\n]*)\]"
    r"(?:\((?:[^()\n]|\([^()\n]*\))*\)|\[[^\[\]\n]*\])?"
)
IMAGE_PLACEHOLDER = "image removed"


def _image_placeholder(match: re.Match[str]) -> str:
    alt = _TEXT_ESCAPE.sub(lambda m: _TEXT_ESCAPES.get(m.group(), m.group()), match.group(1).strip())
    return f"\\[{IMAGE_PLACEHOLDER}{': ' + alt if alt else ''}\\]"


def _escape_text(source: str) -> str:
    out = []
    last = 0
    for image in _IMAGE.finditer(source):
        out.append(_TEXT_ESCAPE.sub(lambda m: _TEXT_ESCAPES.get(m.group(), m.group()), source[last:image.start()]))
        out.append(_image_placeholder(image))
        last = image.end()
    out.append(_TEXT_ESCAPE.sub(lambda m: _TEXT_ESCAPES.get(m.group(), m.group()), source[last:]))
    return "".join(out)


# Inside math, < and > become KaTeX's \lt and \gt: no raw angle bracket reaches the Markdown
# parser even where it might disagree with split_segments about where math ends.
_MATH_ANGLES = str.maketrans({"<": r"\lt ", ">": r"\gt "})


def _math_markdown(source: str) -> str:
    if source.startswith("\\("):
        body = source[2:-2].strip()
        return f"${body}$" if body else ""
    if source.startswith("\\["):
        # Display math needs "$$" on lines of its own; blank lines would end the block.
        body = "\n".join(line for line in source[2:-2].strip().splitlines() if line.strip())
        return f"\n\n$$\n{body}\n$$\n\n" if body else ""
    return source


def safe_markdown(text: str | None) -> str:
    """Dataset text as Markdown for ``st.markdown`` without ``unsafe_allow_html``.

    ``<``, ``>`` and ``&`` in plain text become HTML entities (shown as the characters);
    math keeps its LaTeX (``\\(..\\)`` becomes ``$..$``, ``\\[..\\]`` a ``$$`` block, angle
    brackets inside become ``\\lt``/``\\gt``); code spans and fenced blocks are left as they
    are, since Markdown shows code literally.

    >>> safe_markdown("<script>alert(1)</script>")
    '&lt;script&gt;alert(1)&lt;/script&gt;'
    >>> safe_markdown("$a<b$ and \\\\[x\\\\]")
    '$a\\\\lt b$ and \\n\\n$$\\nx\\n$$\\n\\n'
    """
    if not text:
        return ""
    out = []
    for kind, source in split_segments(text):
        if kind == TEXT:
            out.append(_escape_text(source))
        elif kind == MATH:
            out.append(_math_markdown(source).translate(_MATH_ANGLES))
        else:
            out.append(source)
    return "".join(out)


def escape_inline(text: str | None) -> str:
    """Short dataset strings (a model name, an answer) as literal Markdown text: every ASCII
    punctuation character is backslash-escaped, so nothing in it is markup or HTML."""
    if text is None:
        return ""
    return "".join("\\" + ch if ch in _ASCII_PUNCT else ch for ch in str(text)).replace("\n", " ")


def inline_code(text: str | None) -> str:
    """Dataset text (a readable id, a key) as a Markdown code span: a fence longer than any run
    of backticks inside it, so nothing in it can close the span and become markup.

    >>> inline_code("a`b")
    '``a`b``'
    """
    body = "" if text is None else str(text).replace("\n", " ")
    fence = "`" * (max((len(run) for run in re.findall(r"`+", body)), default=0) + 1)
    pad = " " if body.startswith("`") or body.endswith("`") else ""
    return f"{fence}{pad}{body}{pad}{fence}"


# ---------------------------------------------------------------------------- highlights

# What is highlighted, each in its own colour, as Streamlit Markdown (no HTML): bold text in
# the colour on a tint of it. Streamlit's backgrounds alone are tints so pale (#fff6ed for
# orange) that on its page background a reader could not see the markers (issue 11); the
# coloured bold text is what stands out (tests/browser/test_reader_flow.py measures it).
MARKER_COLOUR = "orange"  # reflection markers
TERM_COLOUR = "blue"      # the sidebar's text search
FIND_COLOUR = "violet"    # "Find in this CoT"
HIGHLIGHT = f"{MARKER_COLOUR}-background"  # what count_highlights counts


def styled(colour: str, text: str) -> str:
    """``text`` (letters, digits, spaces) in a highlight colour, as Streamlit Markdown.

    >>> styled("orange", "wait")
    ':orange-background[**:orange[wait]**]'
    """
    return f":{colour}-background[**:{colour}[{text}]**]"


def legend(*, markers: bool = True, terms: bool = False, find: bool = False) -> str:
    """One line of Markdown naming what each highlight colour means."""
    parts = []
    if markers:
        parts.append(styled(MARKER_COLOUR, "reflection markers") + " (wait, hmm, alternatively, …)")
    if terms:
        parts.append(styled(TERM_COLOUR, "search terms"))
    if find:
        parts.append(styled(FIND_COLOUR, "found in this CoT"))
    return "Highlighted: " + " · ".join(parts) if parts else ""


def _marker_phrases(markers: Mapping[str, Iterable[str]] | Iterable[str]) -> tuple[str, ...]:
    if isinstance(markers, Mapping):
        phrases = [p for group in markers.values() for p in group]
    else:
        phrases = list(markers)
    return tuple(sorted({p.strip().lower() for p in phrases if p and p.strip()}))


def _phrase_alternatives(phrases: tuple[str, ...]) -> list[str]:
    """Longest first, so "but wait" wins over "wait"; each phrase read as core.text.MarkerCounter
    reads it (core.text.phrase_pattern: whitespace or hyphens between words, 'hmm+' elongations)."""
    return sorted((phrase_pattern(p) for p in phrases), key=len, reverse=True)


def search_words(text: str | None) -> tuple[str, ...]:
    """The words of a search or find text (runs of letters and digits, lower case): what is
    highlighted for it.

    >>> search_words("Let me check, x_1!")
    ('let', 'me', 'check', 'x', '1')
    """
    return tuple(w.lower() for w in re.findall(r"[^\W_]+", text or ""))


# Entities and backslash escapes of safe_markdown's output are skipped whole, so that a
# highlight never cuts one ("&lt;" stays "<" on screen even when "lt" is searched for).
_ESCAPES = r"&(?:lt|gt|amp);|\\[!-/:-@\[-`{-~]"


@lru_cache(maxsize=64)
def _highlight_pattern(markers: tuple[str, ...], terms: tuple[str, ...], find: tuple[str, ...]) -> re.Pattern[str] | None:
    """One pattern for everything highlighted: escapes to skip, then the find phrase (its words
    in order, anything but letters and digits between them), the search words, the marker
    phrases; each alternative a named group, on word boundaries, case-insensitive."""
    groups = []
    if find:
        groups.append(("find", r"[\W_]+".join(re.escape(w) for w in find)))
    if terms:
        groups.append(("term", "|".join(sorted((re.escape(w) for w in set(terms)), key=len, reverse=True))))
    if markers:
        groups.append(("marker", "|".join(_phrase_alternatives(markers))))
    if not groups:
        return None
    body = "|".join(f"(?P<{name}>{alternatives})" for name, alternatives in groups)
    return re.compile(rf"(?P<skip>{_ESCAPES})|(?<![^\W_])(?:{body})(?![^\W_])", re.IGNORECASE)


# What goes inside a directive's label: words with spaces, tabs, hyphens or apostrophes
# between them, never a bracket, a star or a line break.
_LABEL_RUN = re.compile(r"[^\W_]+(?:[ \t'\-]+[^\W_]+)*")
_COLOURS = {"find": FIND_COLOUR, "term": TERM_COLOUR, "marker": MARKER_COLOUR}


def _wrap(match: re.Match[str]) -> str:
    kind = match.lastgroup
    if kind == "skip":
        return match.group()
    colour = _COLOURS[kind]
    return _LABEL_RUN.sub(lambda run: styled(colour, run.group()), match.group())


def highlight(markdown: str, *, markers: Mapping[str, Iterable[str]] | Iterable[str] = (),
              terms: Iterable[str] = (), find: str | None = None) -> str:
    """Highlight, in ``safe_markdown``'s output, the reflection ``markers`` (core.text's
    mapping or a list of phrases), the search ``terms`` (words) and the ``find`` text (its
    words in order), each in its colour (``styled``). Matching is case-insensitive on word
    boundaries; nothing inside math or code is touched, so LaTeX keeps working; where two
    overlap, find wins over terms, terms over markers.

    >>> highlight("Wait, $x = wait$. But wait!", markers=["wait", "but wait"])
    ':orange-background[**:orange[Wait]**], $x = wait$. :orange-background[**:orange[But wait]**]!'
    >>> highlight("a &lt; b", terms=["lt", "b"])
    'a &lt; :blue-background[**:blue[b]**]'
    """
    pattern = _highlight_pattern(_marker_phrases(markers), tuple(sorted({t.lower() for t in terms if t})),
                                 search_words(find))
    if pattern is None or not markdown:
        return markdown or ""
    return "".join(
        pattern.sub(_wrap, source) if kind == TEXT else source for kind, source in split_segments(markdown)
    )


def highlight_markers(markdown: str, markers: Mapping[str, Iterable[str]] | Iterable[str]) -> str:
    """``highlight`` with the reflection markers only.

    >>> highlight_markers("But wait!", ["wait", "but wait"])
    ':orange-background[**:orange[But wait]**]!'
    """
    return highlight(markdown, markers=markers)


def count_highlights(markdown: str, colour: str = MARKER_COLOUR) -> int:
    """How many highlighted spans of ``colour`` a text holds (a phrase split over lines, or
    at punctuation, counts once per piece)."""
    return markdown.count(f":{colour}-background[")


def count_matches(text: str | None, *, terms: Iterable[str] = (), find: str | None = None) -> int:
    """How often the search ``terms`` or the ``find`` phrase occur in plain ``text``, as
    ``highlight`` matches them (math and code included: this counts, it does not draw)."""
    pattern = _highlight_pattern((), tuple(sorted({t.lower() for t in terms if t})), search_words(find))
    if pattern is None or not text:
        return 0
    return sum(1 for m in pattern.finditer(text) if m.lastgroup != "skip")


# ---------------------------------------------------------------------------- snippets

SNIPPET_CHARS = 90  # on each side of a hit


def search_pattern(text: str, *, whole_words: bool) -> re.Pattern[str] | None:
    """What a text search matches, as a regular expression: its words in order with anything
    but letters and digits between them, on word boundaries (the search index's phrase
    query), or the text itself anywhere (the substring scan). None for an empty search."""
    if whole_words:
        words = search_words(text)
        if not words:
            return None
        return re.compile(r"(?<![^\W_])" + r"[\W_]+".join(re.escape(w) for w in words) + r"(?![^\W_])", re.IGNORECASE)
    text = (text or "").strip()
    return re.compile(re.escape(text), re.IGNORECASE) if text else None


def snippet(text: str | None, pattern: re.Pattern[str] | None, width: int = SNIPPET_CHARS) -> tuple[str, str, str] | None:
    """(before, hit, after) around the first match of ``pattern`` in ``text``, each side cut
    to about ``width`` characters at a space and with its line breaks made spaces; None when
    nothing matches.

    >>> snippet("one two three four five", re.compile("three"), width=5)
    ('…two ', 'three', ' four…')
    """
    if not text or pattern is None:
        return None
    match = pattern.search(text)
    if match is None:
        return None
    start, end = match.span()
    before, after = text[max(0, start - width):start], text[end:end + width]
    if start > width:
        cut = before.find(" ")
        before = "…" + (before[cut + 1:] if 0 <= cut < len(before) // 2 else before)
    if end + width < len(text):
        cut = after.rfind(" ")
        after = (after[:cut + 1] if cut > len(after) // 2 else after) + "…"
    return tuple(" ".join(part.split("\n")) for part in (before, match.group(), after))


def snippet_text(parts: tuple[str, str, str] | None) -> str:
    """A snippet as plain text with the hit between guillemets (for a table cell)."""
    return "" if parts is None else f"{parts[0]}«{parts[1]}»{parts[2]}"


def snippet_markdown(parts: tuple[str, str, str] | None) -> str:
    """A snippet as safe inline Markdown with the hit highlighted in the search colour."""
    if parts is None:
        return ""
    before, hit, after = (escape_inline(p) for p in parts)
    return f"{before}{_LABEL_RUN.sub(lambda run: styled(TERM_COLOUR, run.group()), hit)}{after}"


# ---------------------------------------------------------------------------- long names

NAME_WIDTH = 30  # characters a narrow table column shows before it cuts a name


def short_labels(names: Iterable[str | None], width: int = NAME_WIDTH, head: int = 10) -> dict[str | None, str | None]:
    """Labels for names shown in a narrow column: a name longer than ``width`` keeps its first
    ``head`` characters and its end, with "…" between, because long model names differ at
    the end (``Sky-T1-math-correct-5K-32B-ckpts/checkpoint-105`` and ``-119``), where a column
    would cut them. Where two labels would still be equal the ends grow until they differ.

    >>> short_labels(["Sky-T1-math-correct-5K-32B-ckpts/checkpoint-105", "Qwen/Qwen2.5-Math-7B"])
    {'Sky-T1-math-correct-5K-32B-ckpts/checkpoint-105': 'Sky-T1-mat…kpts/checkpoint-105', 'Qwen/Qwen2.5-Math-7B': 'Qwen/Qwen2.5-Math-7B'}
    """
    unique = list(dict.fromkeys(names))
    tail = {n: max(1, width - head - 1) for n in unique}

    def label(name):
        if name is None or len(name) <= width or head + tail[name] + 1 >= len(name):
            return name
        return name[:head] + "…" + name[-tail[name]:]

    for _ in range(max((len(n) for n in unique if n), default=0)):
        labels = {n: label(n) for n in unique}
        seen: dict[str | None, list] = {}
        for n, shown in labels.items():
            seen.setdefault(shown, []).append(n)
        clashes = [n for group in seen.values() if len(group) > 1 for n in group]
        if not clashes:
            return labels
        for n in clashes:
            tail[n] += 1
    return {n: n for n in unique}


# ---------------------------------------------------------------------------- long texts

# Measured in headless Chromium (2 busy cores), page load of one st.markdown over a 1k-char
# baseline of ~3.5 s: a math-heavy demo CoT (a "$" every ~22 chars) took +4 s at 20k chars,
# +7.5 s at 50k and +33-45 s at 165k; 167k chars of plain text +1.5 s. KaTeX dominates, and
# grows faster than linearly, so a first view shows this much and offers the rest.
DISPLAY_LIMIT = 20_000


def clip_for_display(text: str | None, limit: int = DISPLAY_LIMIT) -> tuple[str, bool]:
    """The first ``limit`` characters of ``text``, cut at a paragraph (else line, else
    word) boundary, and whether anything was cut.

    >>> clip_for_display("one two three", 8)
    ('one two', True)
    """
    if not text or len(text) <= limit:
        return text or "", False
    head = text[:limit]
    floor = limit // 2  # never cut away more than half of what could be shown
    for boundary in ("\n\n", "\n", " "):
        cut = head.rfind(boundary)
        if cut >= floor:
            return head[:cut].rstrip(), True
    return head, True


# ---------------------------------------------------------------------------- diff

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")
LONG_LINE = 300


def diff_units(text: str | None) -> list[str]:
    """Lines of a text; a line longer than ``LONG_LINE`` characters is split into sentences,
    so CoTs written as one huge paragraph still diff usefully."""
    units: list[str] = []
    for line in (text or "").splitlines():
        if len(line) > LONG_LINE:
            units.extend(_SENTENCE_END.split(line))
        else:
            units.append(line)
    return units


def cot_diff(a: str | None, b: str | None, context: int = 3, *, a_name: str = "a", b_name: str = "b") -> str:
    """A unified diff of two texts by line (by sentence within long lines); empty when equal.

    >>> print(cot_diff("x\\ny\\n", "x\\nz\\n", context=1))
    --- a
    +++ b
    @@ -1,2 +1,2 @@
     x
    -y
    +z
    """
    lines = difflib.unified_diff(diff_units(a), diff_units(b), fromfile=a_name, tofile=b_name, n=context, lineterm="")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- charts

# Plotly draws labels (trace names, category ticks, facet titles, hover text) through its own
# small HTML: a tag's style attribute is applied as CSS, so a teacher named
# <span style="fill:url(http://host/x)">m</span> made the browser fetch that URL (seen in
# Chromium). A tag that carries attributes is turned into text; this project's own
# templates (<br>, <extra>) carry none and are left alone.
_ACTIVE_TAG = re.compile(r"<(?=\s*/?\s*[A-Za-z][A-Za-z0-9]*[\s/][^>]*=)")


def _inert(value):
    """``value`` with every attribute-carrying tag in its strings escaped, and whether it
    changed."""
    if isinstance(value, str):
        out = _ACTIVE_TAG.sub("&lt;", value)
        return out, out != value
    if isinstance(value, dict):
        changed = False
        for key, item in value.items():
            new, hit = _inert(item)
            if hit:
                value[key], changed = new, True
        return value, changed
    if isinstance(value, (list, tuple)):
        results = [_inert(item) for item in value]
        if any(hit for _, hit in results):
            return [new for new, _ in results], True
        return value, False
    if getattr(value, "dtype", None) is not None and value.dtype.kind in "OU":  # a numpy array of labels
        results = [_inert(item) for item in value.tolist()]
        if any(hit for _, hit in results):
            return [new for new, _ in results], True
    return value, False


def inert_figure(fig):
    """A plotly figure whose text cannot make the browser load anything: every tag with
    attributes in any of its strings (from trace names to axis categories) shows as text.
    Returns ``fig`` itself when nothing needed changing (the usual case).

    >>> import plotly.graph_objects as go
    >>> inert_figure(go.Figure(go.Bar(x=['<span style="fill:url(http://h/x)">m</span>'], y=[1]))).data[0].x
    ('&lt;span style="fill:url(http://h/x)">m</span>',)
    """
    import plotly.graph_objects as go

    # Look first at the figure's own dicts (no copy; to_plotly_json would cost ~2 ms a
    # figure on every slider move), and rebuild only the rare figure that needs it.
    raw = [getattr(fig, "_data", None), getattr(fig, "_layout", None)]
    if all(part is not None for part in raw) and not _has_active_tag(raw):
        return fig
    spec, changed = _inert(fig.to_plotly_json())
    return go.Figure(spec) if changed else fig


def _has_active_tag(value) -> bool:
    if isinstance(value, str):
        return "<" in value and _ACTIVE_TAG.search(value) is not None
    if isinstance(value, dict):
        return any(_has_active_tag(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_active_tag(item) for item in value)
    if getattr(value, "dtype", None) is not None and value.dtype.kind in "OU":
        return any(_has_active_tag(item) for item in value.tolist())
    return False
