"""Splitting text into sentences, whole or as it streams in."""

from __future__ import annotations

import re

# A sentence ends at . ! ? … (and CJK stops) followed by space, but not after
# a single letter or a common abbreviation ("Dr. Smith", "U.S. law").
_END = re.compile(r"[.!?…]+[\"')\]]*(?=\s)|[。！？]")
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "no", "mt"}
_CLAUSE = re.compile(r"(?<=[,;:—])\s+")
_FIRST_CLAUSE_WORDS = 3
# A head clause: only for sentences long enough to be worth cutting, and only
# a clause that is a phrase of its own (not "Yes," nor most of the sentence).
_HEAD_OVER, _HEAD_MIN, _HEAD_MAX = 24, 8, 90


def _ends_with_abbreviation(text: str) -> bool:
    words = text.rstrip(".").split()
    if not words:
        return False
    word = words[-1].lower()
    return word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha())


def _complete(text: str) -> tuple[list[str], str]:
    """The complete sentences of ``text`` and the unfinished rest."""
    sentences: list[str] = []
    start = 0
    for match in _END.finditer(text):
        candidate = text[start : match.end()]
        if match.group().startswith(".") and _ends_with_abbreviation(candidate):
            continue
        sentences.append(candidate.strip())
        start = match.end()
    return [s for s in sentences if s], text[start:]


def clause_groups(sentence: str, max_chars: int, *, head: bool = False) -> list[str]:
    """``sentence`` in pieces of at most ``max_chars``, cut at clause marks, else between words.

    With ``head``, a long sentence's first clause (if it is a phrase worth
    saying alone) is its own piece: it can be spoken while the rest is made.
    """
    clauses = [c.strip() for c in _CLAUSE.split(sentence) if c.strip()]
    pieces: list[str] = []
    if head and len(sentence) > _HEAD_OVER and clauses and _HEAD_MIN <= len(clauses[0]) <= _HEAD_MAX:
        pieces.append(clauses.pop(0))
    current = ""
    for clause in clauses:
        for word in clause.split() if len(clause) > max_chars else [clause]:
            if current and len(current) + 1 + len(word) > max_chars:
                pieces.append(current)
                current = ""
            current = f"{current} {word}" if current else word[:max_chars]
    if current:
        pieces.append(current)
    return pieces


def split_sentences(text: str, max_chars: int = 400) -> list[str]:
    """Sentences of ``text``, each at most ``max_chars`` long."""
    sentences, rest = _complete(text + " ")
    if rest.strip():
        sentences.append(rest.strip())
    return [piece for s in sentences for piece in clause_groups(s, max_chars)]


class SentenceBuffer:
    """Collects streamed text and releases each sentence once it is complete.

    A sentence is complete once its end mark is followed by whitespace: "Hi."
    alone may still become "Hi.5", but "Hi. " is done. Until the first piece is
    out, a clause ("Well, I think", then a comma and a space) is enough: the
    listener hears something sooner, and later pieces have time to arrive
    while it plays.
    """

    def __init__(self, max_chars: int = 400) -> None:
        self.max_chars = max_chars
        self._pending = ""
        self._started = False

    def push(self, text: str) -> list[str]:
        sentences, self._pending = _complete(self._pending + text)
        if not sentences and not self._started:
            sentences = self._first_clause()
        if len(self._pending) > self.max_chars:
            # Runaway text without punctuation: release all but the last word.
            head, _, tail = self._pending.rpartition(" ")
            sentences.append(head.strip())
            self._pending = tail
        released = [piece for s in sentences if s for piece in clause_groups(s, self.max_chars)]
        self._started = self._started or bool(released)
        return released

    def _first_clause(self) -> list[str]:
        for match in _CLAUSE.finditer(self._pending):
            head = self._pending[: match.start()]
            if len(head.split()) >= _FIRST_CLAUSE_WORDS:
                self._pending = self._pending[match.end() :]
                return [head.strip()]
        return []

    def flush(self) -> list[str]:
        text, self._pending = self._pending, ""
        return split_sentences(text, self.max_chars)
