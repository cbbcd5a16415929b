from __future__ import annotations

from server.text import SentenceBuffer, clause_groups, split_sentences


def test_sentences_split_at_end_marks_not_abbreviations() -> None:
    assert split_sentences("Hello there. Dr. Smith is in! Is it? Yes… ok") == ["Hello there.", "Dr. Smith is in!", "Is it?", "Yes…", "ok"]


def test_long_sentences_are_capped_at_clauses_then_words() -> None:
    pieces = split_sentences("one two three, " * 100, max_chars=60)
    assert all(len(p) <= 60 for p in pieces)
    assert " ".join(pieces).split() == ("one two three, " * 100).split()


def test_streamed_text_releases_sentences_once_complete() -> None:
    buffer = SentenceBuffer()
    released = [s for word in ["Hello", "there.", "How", "are", "you", "doing", "today?", "I", "am", "fine"] for s in buffer.push(word + " ")]
    assert released == ["Hello there.", "How are you doing today?"]
    assert buffer.flush() == ["I am fine"]


def test_first_clause_is_released_early_later_ones_wait_for_the_sentence() -> None:
    buffer = SentenceBuffer()
    assert buffer.push("Yes, ") == []  # too short a clause to say alone
    assert buffer.push("well I think so, ") == ["Yes, well I think so,"]
    assert buffer.push("and then, ") == []
    assert buffer.push("we go home. ") == ["and then, we go home."]


def test_runaway_text_without_punctuation_is_released_in_pieces() -> None:
    buffer = SentenceBuffer(max_chars=50)
    released = [s for _ in range(40) for s in buffer.push("word ")]
    assert released and all(len(s) <= 50 for s in released)


def test_a_long_first_sentence_gives_its_first_clause_alone() -> None:
    sentence = "When the sunlight strikes raindrops in the air, they act as a prism and form a rainbow."
    assert clause_groups(sentence, 100, head=True) == [
        "When the sunlight strikes raindrops in the air,",
        "they act as a prism and form a rainbow.",
    ]
    assert clause_groups(sentence, 100) == [sentence]
    assert clause_groups("Yes, I will.", 100, head=True) == ["Yes, I will."]  # too short to cut
