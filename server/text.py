"""The text segmenter: the one place where text is cut into the pieces an engine speaks.

Text reaches the engines whole (an HTTP request, a ``speak`` with all its text)
or as it is written (tokens from an LLM); either way it is cut here, by one set
of rules, in the ten languages the engines speak (zh en ja ko de fr ru pt es it)
and in "auto", which must do well on anything, mixed scripts included.

Three layers:

* Sentences (``sentences``). sentencex proposes the boundaries and knows each
  language's abbreviations ("z.B.", "Sra.", "ул."); ``server.sentence_rules``
  corrects it where it is wrong for speech (titles and initials, German
  ordinals, closing quotes and brackets, particles after a quote, marks glued
  to a word).
* Pieces of at most ``max_chars`` (``wrap``): a longer sentence is cut at its
  clause marks (",;:—" before a space, "，、；：" anywhere), else between words,
  else between characters, never inside a grapheme. No text is ever dropped:
  the pieces, joined, are the input less its whitespace.
* Streaming (``Segmenter``): a sentence is released as soon as it is settled,
  the first clause of an utterance sooner, runaway text in bounded pieces.

``pieces`` is what an engine uses on one request's text: sentences packed up to
``max_chars``, optionally with the first clause alone so it can play while the
rest is made.
"""

from __future__ import annotations

import itertools
import math
import re

from . import sentence_rules as rules
from .sentence_rules import language_code, sentence_spans

__all__ = [
    "LANGUAGES", "Piece", "Segmenter", "SentenceBuffer", "language_code", "piece_spans", "pieces", "sentences", "split_sentences", "tidy", "unmarked", "wrap",
]  # fmt: skip

LANGUAGES = rules.LANGUAGES
DEFAULT_MAX_CHARS = 400
FIRST_CLAUSE_WORDS = 3
"""A first clause is said alone once it is a phrase: this many words (two CJK characters count one)."""
_HEAD_SENTENCE_WORDS = 6  # a shorter sentence is not worth cutting for its head
_HEAD_MAX_CHARS = 90  # nor is a head that is most of a long sentence

_CLOSE = re.escape(rules.CLOSERS)
# Where a clause ends: a Latin mark only before a space ("1,000", "10:30" are no
# clause), a full-width one anywhere; quotes and brackets it closes stay with it.
_CLAUSE_END = re.compile(rf"[,;:—–]+[{_CLOSE}]*(?=\s)|[，、；：､]+[{_CLOSE}]*")
_WIDE = re.compile(rules.WIDE_LETTER)
_NEXT_WORD_DONE = re.compile(rf"\s*\S*?(?:\s|{rules.WIDE_LETTER})")


# SSML's elements (and vendors' prefixed ones, "amazon:effect", "mstts:express-as"), the inline
# HTML an LLM writes, XML declarations and comments: only tags of those names, with attributes
# written as attributes ("a <b and c> d" is read as it is).
_MARKUP_NAMES = (
    "speak|prosody|break|emphasis|say-as|sub|phoneme|voice|audio|mark|lang|lexicon|p|s|w|desc|"
    "b|i|u|em|strong|br|span|div|small|sup|code|[a-z]+:[a-z][\\w-]*"
)
_ATTRIBUTES = r"""(?:\s+[\w:.-]+\s*=\s*(?:"[^"<>]*"|'[^'<>]*'))*\s*"""
_MARKUP = re.compile(rf"<!--.*?-->|<\?xml[^<>]*\?>|</?(?:{_MARKUP_NAMES}){_ATTRIBUTES}/?>", re.IGNORECASE | re.DOTALL)


def unmarked(text: str) -> str:
    """``text`` with its markup tags (``<speak>``, ``<break time="1s"/>``, ``<b>``) blanked out, so that
    no engine reads them aloud. SSML is not interpreted: what the tags enclose is said as plain text.
    Each tag becomes as many spaces, so every offset into ``text`` is still right."""
    return _MARKUP.sub(lambda tag: " " * len(tag.group()), text)


_SPACE_BEFORE_MARK = re.compile(rf"\s+(?=[.,!?;:…。，、！？；：{_CLOSE}])")


def tidy(blanked: str) -> str:
    """A piece of ``unmarked`` text as an engine should get it: one space where a tag was, none before a mark."""
    return _SPACE_BEFORE_MARK.sub("", " ".join(blanked.split()))


def sentences(text: str, language: str = "auto") -> list[str]:
    """The sentences of ``text``, whatever their length."""
    return [sentence for start, end in sentence_spans(text, language_code(language)) if (sentence := text[start:end].strip())]


def split_sentences(text: str, max_chars: int = DEFAULT_MAX_CHARS, language: str = "auto") -> list[str]:
    """The sentences of ``text``, each cut into pieces of at most ``max_chars``."""
    return [piece for sentence in sentences(text, language) for piece in wrap(sentence, max_chars)]


def pieces(text: str, max_chars: int = DEFAULT_MAX_CHARS, language: str = "auto", *, head: bool = False) -> list[str]:
    """``text`` as an engine renders it: whole sentences packed into pieces of at most ``max_chars``.

    With ``head``, a long first sentence's first clause (once it is a phrase)
    is a piece of its own: it can be heard while the rest is made.
    """
    return [text[start:end] for start, end in piece_spans(text, max_chars, language, head=head)]


def piece_spans(text: str, max_chars: int = DEFAULT_MAX_CHARS, language: str = "auto", *, head: bool = False) -> list[tuple[int, int]]:
    """Where the ``pieces`` of ``text`` lie in it: (start, end) offsets."""
    spans = sentence_spans(text, language_code(language))
    if not spans:
        return []
    first: list[tuple[int, int]] = []
    if head:
        start, end = spans[0]
        cut = _head_cut(text[start:end])
        worth = _words(text[start:end]) >= _HEAD_SENTENCE_WORDS
        if cut is not None and worth and cut <= min(max_chars, _HEAD_MAX_CHARS) and text[start + cut : end].strip():
            first = [_trim(text, start, start + cut)]
            spans[0] = (start + cut, end)
    wrapped = [piece for start, end in spans for piece in _wrap(text, start, end, max_chars)]
    return first + _pack(wrapped, max_chars)


def wrap(text: str, max_chars: int) -> list[str]:
    """``text`` (one sentence, say) in pieces of at most ``max_chars``: cut at clauses, else words, else characters."""
    return [text[start:end] for start, end in _wrap(text, 0, len(text), max_chars)]


class Piece(str):
    """A piece of an utterance's text that knows where it lies in all the text given so far."""

    start: int
    end: int

    def __new__(cls, text: str, start: int) -> Piece:
        piece = super().__new__(cls, text)
        piece.start, piece.end = start, start + len(text)
        return piece


_Cut = tuple[list[tuple[int, int]], int]
"""Spans of the pending text to release, and how much of it they use up."""


class Segmenter:
    """Cuts one utterance's text as it streams in, for example token by token from an LLM.

    ``push`` returns the pieces that are ready to be spoken, ``flush`` the rest
    (at the end of the text, or when the client asks for what it has sent so
    far to be spoken now); every piece is at most ``max_chars`` long and is a
    ``Piece``, which knows its offsets in the text given so far.

    A sentence is ready once it is settled: its end mark is followed by a space
    (a CJK full stop needs none), and no text yet to come can undo it. "Hello. "
    is settled at once; "Dr. " waits for the name, and "at 5 p.m. " for the next
    word ("on Friday" continues the sentence, "Then" does not). "「はい。」"
    waits for the next character ("と" continues it) and "“好的。" for its
    closing quote.

    Until the first piece is out, a clause ("Well, I think so," then a space,
    or "我们去公园，") is enough once it is a phrase: the listener hears
    something sooner, and later pieces have time to arrive while it plays.
    Text that runs past ``max_chars`` with no sentence end is released in
    pieces of at most that, all but its unfinished tail.

    One Segmenter is one utterance, used by one task or thread at a time.
    """

    def __init__(self, language: str = "auto", max_chars: int = DEFAULT_MAX_CHARS, *, early_first_clause: bool = True) -> None:
        if max_chars < 1:
            raise ValueError("max_chars must be at least 1")
        self.language = language_code(language)
        self.max_chars = max_chars
        self.early_first_clause = early_first_clause
        self._pending = ""
        self._offset = 0  # where _pending starts in all the text pushed
        self._started = False

    def push(self, text: str) -> list[Piece]:
        self._pending += text
        released = self._take(self._settled_sentences())
        if not released and not self._started and self.early_first_clause:
            released = self._take(self._first_clause())
        released += self._take(self._runaway())
        self._started = self._started or bool(released)
        return released

    def flush(self) -> list[Piece]:
        text = self._pending
        spans = [piece for start, end in sentence_spans(text, self.language) for piece in _wrap(text, start, end, self.max_chars)]
        released = self._take((spans, len(text)))
        self._started = self._started or bool(released)
        return released

    def _take(self, cut: _Cut) -> list[Piece]:
        spans, used = cut
        released = [Piece(self._pending[start:end], self._offset + start) for start, end in spans]
        self._pending = self._pending[used:]
        self._offset += used
        return released

    def _settled_sentences(self) -> _Cut:
        text = self._pending
        ends = [end for _, end in sentence_spans(text, self.language)]
        done = 0
        for end in ends:
            if not self._settled(text, end):
                break
            done = end
        spans = [span for start, end in itertools.pairwise([0, *ends]) if end <= done for span in _wrap(text, start, end, self.max_chars)]
        return spans, done

    def _settled(self, text: str, end: int) -> bool:
        """Whether the sentence ending at ``end`` stays one, whatever text is still to come."""
        if end < len(text) and _NEXT_WORD_DONE.match(text, end):
            return True  # the boundary was decided with the next word in view
        return rules.ends_sentence(text[:end], self.language)

    def _first_clause(self) -> _Cut:
        cut = _head_cut(self._pending)
        if cut is None:
            return [], 0
        return _wrap(self._pending, 0, cut, self.max_chars), cut

    def _runaway(self) -> _Cut:
        text = self._pending
        if len(text.strip()) <= self.max_chars:
            return [], 0
        spans = _wrap(text, 0, len(text), self.max_chars)
        return spans[:-1], spans[-1][0]  # the tail may still grow: it waits


class SentenceBuffer(Segmenter):
    """The former name of ``Segmenter`` (``max_chars`` first), kept until every caller passes a language."""

    def __init__(self, max_chars: int = DEFAULT_MAX_CHARS, language: str = "auto") -> None:
        super().__init__(language, max_chars)


def _words(text: str) -> int:
    """How many words ``text`` says: spaced words, and CJK characters two to a word."""
    wide = len(_WIDE.findall(text))
    spaced = sum(1 for token in _WIDE.sub(" ", text).split() if rules.speakable(token))
    return spaced + math.ceil(wide / 2)


def _head_cut(text: str) -> int | None:
    """Where the first clause of ``text`` that is a phrase ends (its clause mark included), if it has one."""
    for match in _CLAUSE_END.finditer(text):
        if _words(text[: match.end()]) >= FIRST_CLAUSE_WORDS:
            return match.end()
    return None


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _wrap(text: str, start: int, end: int, max_chars: int) -> list[tuple[int, int]]:
    """The span ``text[start:end]`` as trimmed spans of at most ``max_chars``, tiling it but for whitespace."""
    if max_chars < 1:
        raise ValueError("max_chars must be at least 1")
    spans: list[tuple[int, int]] = []
    start, end = _trim(text, start, end)
    while end - start > max_chars:
        cut = start + _cut(text[start : start + max_chars + 1], max_chars)
        spans.append(_trim(text, start, cut))
        start, end = _trim(text, cut, end)
    if end > start:
        spans.append((start, end))
    return spans


def _cut(window: str, limit: int) -> int:
    """Where to end a piece that starts ``window`` and is at most ``limit`` long.

    The last clause end, unless it comes so early that the piece would be a
    stub; else the last space; else a clause end after all; else the last
    grapheme boundary (a 5,000-character "word" is still said, in pieces).
    """
    clause = max((m.end() for m in _CLAUSE_END.finditer(window, 0, limit + 1) if m.end() <= limit), default=0)
    if clause >= limit // 3 and clause > 0:
        return clause
    space = next((i for i in range(min(limit, len(window) - 1), 0, -1) if window[i].isspace()), 0)
    if space:
        return space
    if clause:
        return clause
    return next((i for i in range(limit, 0, -1) if rules.grapheme_boundary(window, i)), limit)


def _pack(spans: list[tuple[int, int]], max_chars: int) -> list[tuple[int, int]]:
    """Consecutive spans joined while the joined span is at most ``max_chars`` long."""
    packed: list[tuple[int, int]] = []
    for start, end in spans:
        if packed and end - packed[-1][0] <= max_chars:
            packed[-1] = (packed[-1][0], end)
        else:
            packed.append((start, end))
    return packed
