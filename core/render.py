"""Turning dataset text into Markdown that Streamlit shows safely, with LaTeX and markers.

Dataset text is never trusted as HTML. ``safe_markdown`` escapes ``<``, ``>`` and ``&`` in
ordinary text so a CoT's ``<script>`` or ``<think>`` shows as literal characters, while
``$...$``, ``$$...$$``, ``\\(...\\)`` and ``\\[...\\]`` stay math for Streamlit's KaTeX and code
spans stay code. ``highlight_markers`` marks reflection phrases outside math and code.
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


# ---------------------------------------------------------------------------- markers

HIGHLIGHT = "orange-background"


def _marker_phrases(markers: Mapping[str, Iterable[str]] | Iterable[str]) -> tuple[str, ...]:
    if isinstance(markers, Mapping):
        phrases = [p for group in markers.values() for p in group]
    else:
        phrases = list(markers)
    return tuple(sorted({p.strip().lower() for p in phrases if p and p.strip()}))


@lru_cache(maxsize=32)
def _marker_pattern(phrases: tuple[str, ...]) -> re.Pattern[str] | None:
    """One pattern for all phrases, longest first so "but wait" wins over "wait"; each phrase
    read as core.text.MarkerCounter reads it (core.text.phrase_pattern)."""
    if not phrases:
        return None
    alternatives = sorted((phrase_pattern(p) for p in phrases), key=len, reverse=True)
    return re.compile(r"(?<!\w)(?:" + "|".join(alternatives) + r")(?!\w)", re.IGNORECASE)


def _wrap(match: re.Match[str]) -> str:
    # A directive's label stays on one line: a phrase split across lines is wrapped per line.
    return "\n".join(f":{HIGHLIGHT}[{part}]" if part.strip() else part for part in match.group().split("\n"))


def highlight_markers(markdown: str, markers: Mapping[str, Iterable[str]] | Iterable[str]) -> str:
    """Wrap each reflection-marker occurrence in Streamlit's ``:orange-background[...]``.

    ``markers`` is core.text.load_markers()'s mapping or a list of phrases. Matching is
    case-insensitive on word boundaries; nothing inside math or code is touched, so LaTeX
    keeps working. Apply it to ``safe_markdown``'s output.

    >>> highlight_markers("Wait, $x = wait$. But wait!", ["wait", "but wait"])
    ':orange-background[Wait], $x = wait$. :orange-background[But wait]!'
    """
    pattern = _marker_pattern(_marker_phrases(markers))
    if pattern is None or not markdown:
        return markdown or ""
    return "".join(
        pattern.sub(_wrap, source) if kind == TEXT else source for kind, source in split_segments(markdown)
    )


def count_highlights(markdown: str) -> int:
    """How many highlighted spans ``highlight_markers`` put into a text (lines of one
    phrase split over lines count once each)."""
    return markdown.count(f":{HIGHLIGHT}[")


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
