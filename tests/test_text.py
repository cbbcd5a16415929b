"""The text segmenter in the ten languages, whole and streamed, and its one promise: no text is lost."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.text import LANGUAGES, Piece, Segmenter, SentenceBuffer, language_code, pieces, sentences, split_sentences, tidy, unmarked, wrap

# (language, text, its sentences). Each case is also streamed character by
# character and token by token, and must come out the same.
SENTENCES: list[tuple[str, str, list[str]]] = [
    ("en", "Hello there. Dr. Smith is in! Is it? Yes… ok", ["Hello there.", "Dr. Smith is in!", "Is it?", "Yes… ok"]),
    ("en", "We met at 5 p.m. on Friday. It was late.", ["We met at 5 p.m. on Friday.", "It was late."]),
    ("en", "We met at 5 p.m. Then we left.", ["We met at 5 p.m.", "Then we left."]),
    ("en", "The U.S. Army came. It left.", ["The U.S. Army came.", "It left."]),
    ("en", "He lives in the U.S. Then he moved.", ["He lives in the U.S.", "Then he moved."]),
    ("en", "He said “Stop.” Then he left.", ["He said “Stop.”", "Then he left."]),
    ("en", "I saw J. K. Rowling. She waved.", ["I saw J. K. Rowling.", "She waved."]),
    ("en", "(See below.) Next one.", ["(See below.)", "Next one."]),
    ("en", "Pi is 3.14 exactly. Wait… Then it came.", ["Pi is 3.14 exactly.", "Wait…", "Then it came."]),
    ("de", "Das ist z.B. gut. Ja.", ["Das ist z.B. gut.", "Ja."]),
    ("de", "Das ist z. B. gut. Ja.", ["Das ist z. B. gut.", "Ja."]),
    ("de", "Am 3. Oktober feiern wir. Dann nicht.", ["Am 3. Oktober feiern wir.", "Dann nicht."]),
    ("de", "Der 2. Weltkrieg endete 1945. Danach kam der Frieden.", ["Der 2. Weltkrieg endete 1945.", "Danach kam der Frieden."]),
    ("de", "Siehe Nr. 5 im Text. Hr. Müller kommt.", ["Siehe Nr. 5 im Text.", "Hr. Müller kommt."]),
    ("de", "Er sagte: „Nein.“ Dann ging er.", ["Er sagte: „Nein.“", "Dann ging er."]),
    ("fr", "« Bonjour ! » dit-il. Puis il partit.", ["« Bonjour ! » dit-il.", "Puis il partit."]),
    ("fr", "Il a dit : « Non ! » Puis il est parti.", ["Il a dit : « Non ! »", "Puis il est parti."]),
    ("fr", "M. Dupont est là. Mme Martin aussi.", ["M. Dupont est là.", "Mme Martin aussi."]),
    ("fr", "Le Dr. Martin arrive. C'est bien.", ["Le Dr. Martin arrive.", "C'est bien."]),
    ("es", "La Sra. García llegó. Se sentó.", ["La Sra. García llegó.", "Se sentó."]),
    ("es", "¿Qué hora es? ¡Son las tres!", ["¿Qué hora es?", "¡Son las tres!"]),
    ("es", "—¿Vienes? —preguntó ella. —Sí.", ["—¿Vienes? —preguntó ella.", "—Sí."]),
    ("es", "Vive en EE. UU. desde hace años. Ud. tiene razón.", ["Vive en EE. UU. desde hace años.", "Ud. tiene razón."]),
    ("it", "Il Sig. Rossi è qui. Bene.", ["Il Sig. Rossi è qui.", "Bene."]),
    ("it", "La Sig.ra Bianchi arriva. Ciao.", ["La Sig.ra Bianchi arriva.", "Ciao."]),
    ("it", "Il dott. Verdi parla. Il prof. Neri insegna.", ["Il dott. Verdi parla.", "Il prof. Neri insegna."]),
    ("pt", "O Sr. Silva chegou. Sentou-se.", ["O Sr. Silva chegou.", "Sentou-se."]),
    ("pt", "A Sra. Costa mora na R. Augusta. Sim.", ["A Sra. Costa mora na R. Augusta.", "Sim."]),
    ("pt", "V. Exa. pediu silêncio. Olá! Tudo bem?", ["V. Exa. pediu silêncio.", "Olá!", "Tudo bem?"]),
    ("ru", "Привет. Как дела?", ["Привет.", "Как дела?"]),
    ("ru", "Это т.е. правда. Ул. Ленина длинная.", ["Это т.е. правда.", "Ул. Ленина длинная."]),
    ("ru", "Он сказал: «Нет.» Потом ушёл.", ["Он сказал: «Нет.»", "Потом ушёл."]),
    ("ru", "В 1990 г. всё изменилось. Проф. Иванов пришёл.", ["В 1990 г. всё изменилось.", "Проф. Иванов пришёл."]),
    ("zh", "你好。今天天气很好！你呢？", ["你好。", "今天天气很好！", "你呢？"]),
    ("zh", "他说：“好的。”然后走了。", ["他说：“好的。”", "然后走了。"]),
    ("zh", "我们去公园，然后回家。价格是3.5元。", ["我们去公园，然后回家。", "价格是3.5元。"]),
    ("zh", "他问：“你去吗？”我说：“去。”", ["他问：“你去吗？”", "我说：“去。”"]),
    ("ja", "「はい。」と彼は言った。それから帰った。", ["「はい。」と彼は言った。", "それから帰った。"]),
    ("ja", "『本当？』彼女は聞いた。", ["『本当？』", "彼女は聞いた。"]),
    ("ja", "３．５キロ走った。疲れた。", ["３．５キロ走った。", "疲れた。"]),
    ("ja", "えっ！？本当に？こんにちは。", ["えっ！？", "本当に？", "こんにちは。"]),
    ("ko", "안녕하세요. 반갑습니다! 잘 지내요?", ["안녕하세요.", "반갑습니다!", "잘 지내요?"]),
    ("ko", "그는 “네.”라고 말했다. 그리고 갔다.", ["그는 “네.”라고 말했다.", "그리고 갔다."]),
    ("ko", "3.5킬로미터를 달렸다. 좋아.", ["3.5킬로미터를 달렸다.", "좋아."]),
    ("auto", "Hello. 你好。Bonjour M. Dupont. Привет. Это т.е. правда.", ["Hello.", "你好。", "Bonjour M. Dupont.", "Привет.", "Это т.е. правда."]),
    ("auto", "Ask Sra. García, Sig. Rossi, Nr. 5 and z.B. this. Next.", ["Ask Sra. García, Sig. Rossi, Nr. 5 and z.B. this.", "Next."]),
    ("auto", "Meeting at 5 p.m. 会议在五点。「はい。」と言った。", ["Meeting at 5 p.m.", "会议在五点。", "「はい。」と言った。"]),
]
# "auto" gets these right too, but for two abbreviations that may also end a
# sentence, which only the language's own rules keep: "usw.", "EE. UU.".
AUTO_DIFFERS = {"Vive en EE. UU. desde hace años. Ud. tiene razón."}


def _case_id(case: tuple[str, str, list[str]]) -> str:
    return f"{case[0]}:{case[1][:24]}"


def _tokens(text: str) -> list[str]:
    """Text as an LLM streams it: words with their leading space, marks apart, CJK two characters at a time."""
    tokens = re.findall(r"\s*(?:[^\W\d_]+|\d+|[^\w\s])", text)
    return [piece for token in tokens for piece in (re.findall(r"\s*..?", token) if len(token.strip()) > 2 and not token.isascii() else [token])]


def _streamed(segmenter: Segmenter, chunks: list[str]) -> list[str]:
    return [piece for chunk in chunks for piece in segmenter.push(chunk)] + segmenter.flush()


@pytest.mark.parametrize("case", SENTENCES, ids=_case_id)
def test_sentences_whole(case: tuple[str, str, list[str]]) -> None:
    language, text, expected = case
    assert sentences(text, language) == expected
    assert split_sentences(text, 400, language) == expected
    if text not in AUTO_DIFFERS:
        assert sentences(text, "auto") == expected


@pytest.mark.parametrize("case", SENTENCES, ids=_case_id)
def test_sentences_streamed_character_by_character(case: tuple[str, str, list[str]]) -> None:
    language, text, expected = case
    assert _streamed(Segmenter(language, early_first_clause=False), list(text)) == expected


@pytest.mark.parametrize("case", SENTENCES, ids=_case_id)
def test_sentences_streamed_token_by_token(case: tuple[str, str, list[str]]) -> None:
    language, text, expected = case
    assert "".join(_tokens(text)) == text
    assert _streamed(Segmenter(language, early_first_clause=False), _tokens(text)) == expected


def test_each_sentence_is_released_before_the_text_ends() -> None:
    for language, text, expected in SENTENCES:
        segmenter = Segmenter(language, early_first_clause=False)
        released: list[str] = []
        for token in [*_tokens(text), " "]:
            released += segmenter.push(token)
        # Each but the last is out before the flush: once its end is followed
        # by a space, or at most by the next word (German sets no boundary
        # before a lowercase word, so "gut. Ja" waits for "Ja").
        assert released[: len(expected) - 1] == expected[:-1], text


# (language, streamed text, the first clause said alone, or None where it is too short to be a phrase).
FIRST_CLAUSES: list[tuple[str, str, str | None]] = [
    ("en", "When the rain stops, we will walk to the station.", "When the rain stops,"),
    ("en", "Yes, I will come.", None),
    ("de", "Wenn der Regen aufhört, gehen wir zum Bahnhof.", "Wenn der Regen aufhört,"),
    ("fr", "Quand la pluie s'arrête, nous marchons jusqu'à la gare.", "Quand la pluie s'arrête,"),
    ("es", "Cuando pare la lluvia, caminaremos a la estación.", "Cuando pare la lluvia,"),
    ("it", "Quando smette di piovere, andiamo alla stazione.", "Quando smette di piovere,"),
    ("pt", "Quando a chuva parar, vamos andar até a estação.", "Quando a chuva parar,"),
    ("ru", "Когда дождь закончится, мы пойдём на вокзал.", "Когда дождь закончится,"),
    ("zh", "我们今天下午去公园，然后一起回家吃饭。", "我们今天下午去公园，"),
    ("zh", "你好，我是小明。", None),
    ("ja", "今日はとてもいい天気なので、散歩に行きましょう。", "今日はとてもいい天気なので、"),
    ("ko", "비가 그치면, 우리는 역까지 걸어갈 거예요.", "비가 그치면,"),
]


@pytest.mark.parametrize("case", FIRST_CLAUSES, ids=lambda c: f"{c[0]}:{c[1][:16]}")
def test_the_first_clause_of_an_utterance_is_released_early(case: tuple[str, str, str | None]) -> None:
    language, text, head = case
    for chunks in (list(text), _tokens(text)):
        segmenter = Segmenter(language)
        releases = [segmenter.push(chunk) for chunk in chunks] + [segmenter.flush()]
        first = next(release for release in releases if release)
        assert first == [head or text], text
        assert _unspaced("".join(piece for release in releases for piece in release)) == _unspaced(text)


def test_a_full_width_clause_mark_releases_at_once_a_latin_one_waits_for_its_space() -> None:
    assert Segmenter("zh").push("我们今天下午去公园，") == ["我们今天下午去公园，"]
    assert Segmenter("ja").push("今日はとてもいい天気なので、") == ["今日はとてもいい天気なので、"]
    latin = Segmenter("en")
    assert latin.push("When the rain stops,") == []  # may yet be "stops,000"
    assert latin.push(" we") == ["When the rain stops,"]


def test_streamed_text_releases_sentences_once_complete() -> None:
    buffer = SentenceBuffer()
    released = [s for word in ["Hello", "there.", "How", "are", "you", "doing", "today?", "I", "am", "fine"] for s in buffer.push(word + " ")]
    assert released == ["Hello there.", "How are you doing today?"]
    assert buffer.flush() == ["I am fine"]


def test_a_cjk_full_stop_releases_at_once_unless_a_quote_is_open() -> None:
    segmenter = Segmenter("zh")
    assert segmenter.push("你好。") == ["你好。"]
    assert segmenter.push("他说：“好的。") == []  # the closing quote belongs to this sentence
    assert segmenter.push("”") == []  # "”と" would continue it: wait for the next character
    assert segmenter.push("然后") == ["他说：“好的。”"]
    assert segmenter.flush() == ["然后"]


def test_an_ambiguous_abbreviation_waits_for_the_next_word() -> None:
    segmenter = Segmenter("en", early_first_clause=False)
    assert segmenter.push("We met at 5 p.m. ") == []
    assert segmenter.push("on ") == []
    assert segmenter.push("Friday. ") == ["We met at 5 p.m. on Friday."]
    assert segmenter.push("Dr. ") == []
    assert segmenter.push("Smith left. ") == ["Dr. Smith left."]


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
    assert " ".join(released + buffer.flush()).split() == ["word"] * 40


def test_long_sentences_are_capped_at_clauses_then_words() -> None:
    pieces_ = split_sentences("one two three, " * 100, max_chars=60)
    assert all(len(p) <= 60 for p in pieces_)
    assert all(p.endswith(",") for p in pieces_)
    assert " ".join(pieces_).split() == ("one two three, " * 100).split()


def test_480_characters_of_chinese_with_only_commas_are_wrapped_not_cut() -> None:
    passage = "我们今天去公园散步，" * 48  # 480 characters, no space, no full stop
    for released in (split_sentences(passage, 400, "zh"), _streamed(Segmenter("zh"), list(passage))):
        assert "".join(released) == passage
        assert len(released) > 1 and all(len(p) <= 400 for p in released)
        assert all(p.endswith("，") for p in released)  # cut at clause marks


def test_a_5000_character_word_is_said_in_pieces() -> None:
    word = "abcdefghij" * 500
    for released in (split_sentences(word), pieces(word), _streamed(Segmenter(), [word[i : i + 7] for i in range(0, len(word), 7)])):
        assert "".join(released) == word
        assert all(len(p) <= 400 for p in released)


def test_a_hard_cut_never_splits_a_grapheme() -> None:
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # one emoji, five code points
    text = ("e\u0301" + family + "\U0001f1eb\U0001f1f7" + "\u1100\u1161\u11a8") * 40
    for max_chars in (5, 7, 11, 50):
        cut = wrap(text, max_chars)
        assert "".join(cut) == text and all(len(p) <= max_chars for p in cut)
        for piece in cut:
            assert not piece.startswith(("\u0301", "\u200d", "\u1161", "\u11a8")), (max_chars, piece)
            assert piece.count("\U0001f1eb") == piece.count("\U0001f1f7")


def test_engine_pieces_pack_sentences_and_give_a_long_first_sentence_its_head() -> None:
    sentence = "When the sunlight strikes raindrops in the air, they act as a prism and form a rainbow."
    assert pieces(sentence, 100, head=True) == ["When the sunlight strikes raindrops in the air,", "they act as a prism and form a rainbow."]
    assert pieces(sentence, 100) == [sentence]
    assert pieces("Yes, I will.", 100, head=True) == ["Yes, I will."]  # too short to cut
    text = "First sentence is here. Second one follows! Third, with a comma, ends? " * 3
    packed = pieces(text, 60)
    assert all(len(p) <= 60 for p in packed) and len(packed) > 2
    assert " ".join(packed).split() == text.split()
    assert pieces("x" * 130, 50) == ["x" * 50, "x" * 50, "x" * 30]
    assert pieces("你好。今天天气很好！", 100, "zh") == ["你好。今天天气很好！"]  # packed without an added space


def test_empty_text_and_a_bad_maximum() -> None:
    assert sentences("") == sentences("  \n ") == split_sentences(" ") == pieces("\t") == wrap("", 5) == []
    assert Segmenter().push("   ") == [] and Segmenter().flush() == []
    for bad in (lambda: wrap("abc", 0), lambda: pieces("abc", 0), lambda: Segmenter(max_chars=0)):
        with pytest.raises(ValueError, match="max_chars"):
            bad()


def test_language_names_and_codes() -> None:
    assert [language_code(c) for c in ("en-US", "pt_BR", "English", "ZH", "japanese", None, "auto", "xx")] == ["en", "pt", "en", "zh", "ja", "auto", "auto", "auto"]
    assert set(LANGUAGES) == {"zh", "en", "ja", "ko", "de", "fr", "ru", "pt", "es", "it"}


# -- no text is lost, whatever the input -----------------------------------

_ALPHABET = st.sampled_from(
    list("ab Z.,!?;:—…\n\t") + list("你好。，、！？「」“”") + list("はい가나") + list("Дд«»") + ["e\u0301", "\u200d", "\U0001f600", "\ufe0f", "\U0001f1eb", "\ud800", "3", "Dr.", "p.m. ", "  "]
)
_TEXT = st.one_of(st.lists(_ALPHABET, max_size=300).map("".join), st.text(max_size=200))


def _unspaced(text: str) -> str:
    return "".join(c for c in text if not c.isspace())


@settings(max_examples=300, deadline=None)
@given(text=_TEXT, max_chars=st.integers(1, 60), language=st.sampled_from([*LANGUAGES, "auto"]))
def test_whole_text_loses_nothing_and_respects_the_maximum(text: str, max_chars: int, language: str) -> None:
    for cut in (split_sentences(text, max_chars, language), pieces(text, max_chars, language, head=True), wrap(text, max_chars)):
        assert _unspaced("".join(cut)) == _unspaced(text)
        assert all(0 < len(p) <= max_chars and p == p.strip() for p in cut)


@settings(max_examples=300, deadline=None)
@given(text=_TEXT, max_chars=st.integers(1, 60), language=st.sampled_from([*LANGUAGES, "auto"]), data=st.data())
def test_streamed_text_loses_nothing_and_respects_the_maximum(text: str, max_chars: int, language: str, data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.sets(st.integers(0, len(text)), max_size=40)))
    chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    released = _streamed(Segmenter(language, max_chars), chunks)
    assert _unspaced("".join(released)) == _unspaced(text)
    assert all(0 < len(p) <= max_chars and p == p.strip() for p in released)
    # Every piece knows where it lies in all the text given, so a client can align what it hears.
    assert all(isinstance(p, Piece) and text[p.start : p.end] == p for p in released)
    assert [p.start for p in released] == sorted(p.start for p in released)


def test_a_flush_mid_stream_releases_what_is_buffered_and_offsets_go_on() -> None:
    segmenter = Segmenter("en")
    assert segmenter.push("Let me think") == []
    flushed = segmenter.flush()
    assert flushed == ["Let me think"] and (flushed[0].start, flushed[0].end) == (0, 12)
    later = segmenter.push(" about it. And") + segmenter.flush()
    assert later == ["about it.", "And"] and [(p.start, p.end) for p in later] == [(13, 22), (23, 26)]


@pytest.mark.parametrize(
    ("text", "spoken"),
    [
        ('<speak><prosody rate="slow">Hello there.</prosody></speak>', "Hello there."),
        ('<?xml version="1.0"?><speak>Wait<break time="0.5s"/>now.</speak>', "Wait now."),
        ("<amazon:effect name='whispered'>Psst.</amazon:effect> <!-- aside --> Go.", "Psst. Go."),
        ("It is <B>bold</B> and <em>slanted</em>.<br/>", "It is bold and slanted."),
        ("a <b and c> d, if x<y then y>x", "a <b and c> d, if x<y then y>x"),  # not tags: read as written
        ("Use <stdio.h> or <vector>.", "Use <stdio.h> or <vector>."),
    ],
)
def test_markup_tags_are_blanked_and_everything_else_kept(text: str, spoken: str) -> None:
    blanked = unmarked(text)
    assert len(blanked) == len(text) and tidy(blanked) == spoken
