"""Where sentences end, in the ten languages the engines speak: sentencex, corrected for speech.

sentencex (maintained, all ten languages, per-language abbreviation lists)
proposes the boundaries. Tried on the cases speech needs, it is wrong in a few
ways, corrected here (each with its example in tests/test_text.py):

* titles and initials before a name: "M. Dupont", "Le Dr. Martin", "Sig. Rossi"
  in "auto", "R. Augusta", "т.е." in "auto";
* German ordinals: "Der 2. Weltkrieg", "Am 3. Oktober";
* a closing bracket split from its sentence: "『本当？』彼女は";
* a quote followed by a particle or a lowercase word, which continues the
  sentence: "「はい。」と言った", "“네.”라고"; so does a dialogue tag:
  "—¿Vienes? —preguntó ella.";
* a mark between digits or glued to a Latin word: "３．５キロ", "Node.Js";
* boundaries it misses: an ellipsis before a capital ("Wait… Then"), a stop
  inside brackets ("(See below.) Next"), a Latin stop before CJK text
  ("at 5 p.m. 会议").

A span with nothing to say ("…", a lone "？") joins its neighbour. "auto" uses
the Russian rules for mostly Cyrillic text and the English ones otherwise (CJK
stops are the same in every language), and the corrections of every language.
"""

from __future__ import annotations

import re
import unicodedata

import sentencex

LANGUAGES = ("zh", "en", "ja", "ko", "de", "fr", "ru", "pt", "es", "it")
_NAMES = {"chinese": "zh", "english": "en", "japanese": "ja", "korean": "ko", "german": "de", "french": "fr",
          "russian": "ru", "portuguese": "pt", "spanish": "es", "italian": "it"}  # fmt: skip

CLOSERS = "\"'’”»›)]}」』）］｝〉》】〕〗〙〛｣＂＇“‘«‹"
"""Quotes and brackets that close what a stop ends; “ and « are German closers („…“, »…«)."""
OPENERS = "\"'“‘„‚«‹»([{「『（［｛〈《【〔〖〘〚｢¿¡—–"
LATIN_STOPS = ".!?…‼⁇⁈⁉"
CJK_STOPS = "。！？｡．"
WIDE_LETTER = (
    "[\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
    "\ua960-\ua97f\uac00-\ud7af\ud7b0-\ud7ff\uf900-\ufaff\uff66-\uff9f\U00020000-\U0003134f]"
)
"""Han, kana and Hangul: letters of scripts written without spaces (Korean has them, but counts alike)."""
_CONTINUATION = re.compile("[\u3040-\u309f\u1100-\u11ff\u3130-\u318f\uac00-\ud7af]")  # hiragana, Hangul

# Words before a name or a number, which never end a sentence, in any of the ten
# languages; none of them is a word that ends a sentence in another.
_NON_FINAL = frozenset(
    (
        "mr.", "mrs.", "ms.", "dr.", "dra.", "prof.", "profa.", "vs.", "e.g.", "i.e.", "mt.", "gen.", "col.", "capt.", "lt.", "sgt.",
        "rev.", "hon.", "gov.",
        "hr.", "z.b.", "d.h.", "bzw.", "ca.", "nr.", "vgl.", "ggf.", "bspw.", "inkl.", "zzgl.", "dipl.",
        "mme.", "mlle.", "mgr.", "cf.", "p.ex.",
        "sr.", "sra.", "srta.", "sres.", "sras.", "dña.", "ud.", "uds.", "lic.", "núm.", "p.ej.",
        "sig.", "sig.ra", "sig.na", "sigg.", "dott.", "dott.ssa", "prof.ssa", "avv.", "ing.", "arch.", "geom.",
        "exa.", "v.exa.", "exmo.", "exma.",
        "т.е.", "т.к.", "т.н.", "ул.", "проф.", "акад.", "тов.", "напр.",
    )
)  # fmt: skip
_DE_MONTHS = frozenset(("januar", "jänner", "februar", "märz", "april", "mai", "juni", "juli", "august", "september", "oktober", "november", "dezember"))
_DE_BEFORE_ORDINAL = frozenset(("der", "die", "das", "den", "dem", "des", "ein", "eine", "einem", "einen", "einer", "eines", "am", "im", "vom", "zum", "zur", "beim"))
_CLOSE = re.escape(CLOSERS)
# Boundaries sentencex misses; kept only before a capital (see _missed).
_MISSED = re.compile(rf"(?:…|\.\.\.)[{_CLOSE}]*\s+|[.!?][)\]）」』]+\s+|[.!?][{_CLOSE}]*\s+(?={WIDE_LETTER})")
_SURROGATE = re.compile("[\ud800-\udfff]")
_CYRILLIC = re.compile("[\u0400-\u04ff]")
_LATIN = re.compile("[A-Za-z\u00c0-\u024f]")
_ORDINAL = re.compile(r"\d+\.")
_LOOK = 64  # how far a rule looks either side of a boundary


def language_code(language: str | None) -> str:
    """One of ``LANGUAGES`` for a code ("en", "en-US", "pt_BR"), a name ("English"), else "auto"."""
    name = (language or "auto").strip().lower()
    code = name.replace("_", "-").split("-")[0]
    return code if code in LANGUAGES else _NAMES.get(name, "auto")


def speakable(text: str) -> bool:
    """Whether ``text`` has a letter or a digit (or anything else an engine says)."""
    return any(unicodedata.category(c)[0] in "LN" for c in text)


def sentence_spans(text: str, language: str) -> list[tuple[int, int]]:
    """Contiguous spans tiling ``text``, one per sentence (with the whitespace after it)."""
    if not text:
        return []
    starts = _boundaries(text, language)
    return list(zip([0, *starts], [*starts, len(text)], strict=True))


def ends_sentence(prefix: str, language: str) -> bool:
    """Whether ``prefix`` ends with a sentence whatever text comes after it.

    It must end with a stop and a space, or with "。" and every bracket closed
    (a "！" or "？" may yet become "！？"); and the boundary must hold both
    before a capital, a lowercase word and a dialogue tag ("5 p.m. " holds
    before neither: the next word decides), or, after "。", before a Han character
    and a particle ("「はい。」" does not: "と" would continue it).
    """
    core = prefix.rstrip()
    bare = core.rstrip(CLOSERS)
    if not bare:
        return False
    spaced = len(core) < len(prefix)
    if spaced and bare[-1] not in LATIN_STOPS + CJK_STOPS:
        return False
    if not spaced and (bare[-1] not in "。｡" or not _balanced(core)):
        return False
    probes = ("Xx", "xx", "—xx") if spaced else ("Xx", "中", "の")
    return all(len(prefix) in _boundaries(prefix + probe, language) for probe in probes)


def grapheme_boundary(text: str, i: int) -> bool:
    """Whether ``text`` may be cut before ``text[i]`` without splitting a character a reader sees as one.

    Keeps together what Unicode's grapheme rules keep together in practice:
    combining marks, emoji joined by ZWJ or modified (skin tones, variation
    selectors, tags), flag pairs, Hangul jamo, CR LF and surrogate pairs.
    """
    if not 0 < i < len(text):
        return True
    before, after = text[i - 1], text[i]
    a, b = ord(before), ord(after)
    if (before, after) == ("\r", "\n") or before == "\u200d" or (0xD800 <= a <= 0xDBFF and 0xDC00 <= b <= 0xDFFF):
        return False
    if after == "\u200d" or unicodedata.category(after) in ("Mn", "Mc", "Me"):
        return False
    if 0xFE00 <= b <= 0xFE0F or 0x1F3FB <= b <= 0x1F3FF or 0xE0020 <= b <= 0xE007F or 0xE0100 <= b <= 0xE01EF:
        return False
    if 0x1160 <= b <= 0x11FF or 0xD7B0 <= b <= 0xD7FF:  # a Hangul vowel or final jamo joins what is before
        return False
    if 0x1100 <= a <= 0x115F and (0x1100 <= b <= 0x115F or 0xAC00 <= b <= 0xD7A3):
        return False
    if _regional(a) and _regional(b):
        run = 0
        while i - 1 - run >= 0 and _regional(ord(text[i - 1 - run])):
            run += 1
        return run % 2 == 0
    return True


def _regional(code: int) -> bool:
    return 0x1F1E6 <= code <= 0x1F1FF


def _boundaries(text: str, language: str) -> list[int]:
    """Where each sentence of ``text`` after the first starts."""
    safe = _SURROGATE.sub("\ufffd", text)  # sentencex takes UTF-8 only; offsets stay the same
    found = {_settle(text, part["end_index"]) for part in sentencex.get_sentence_boundaries(_sentencex_language(safe, language), safe)}
    found |= {_settle(text, m.end()) for m in _MISSED.finditer(text) if _missed(text, m.end())}
    kept = sorted(b for b in found if 0 < b < len(text) and not _continues(text, b, language))
    return _without_mute(text, kept)


def _sentencex_language(text: str, language: str) -> str:
    if language != "auto":
        return language
    return "ru" if len(_CYRILLIC.findall(text)) > len(_LATIN.findall(text)) else "en"


def _settle(text: str, b: int) -> int:
    """A boundary moved past the closing quotes and brackets glued to its stop, then past whitespace."""
    if 0 < b < len(text) and not text[b - 1].isspace():
        while b < len(text) and text[b] in CLOSERS:
            b += 1
    while b < len(text) and text[b].isspace():
        b += 1
    return b


def _missed(text: str, b: int) -> bool:
    nxt = text[b : b + 2].lstrip(OPENERS)
    return bool(nxt) and (nxt[0].isupper() or bool(re.match(WIDE_LETTER, nxt)))


def _continues(text: str, b: int, language: str) -> bool:
    """Whether the sentence goes on at ``b``, where sentencex (or ``_MISSED``) would end one."""
    before = text[max(0, b - _LOOK) : b]
    core = before.rstrip()
    glued = len(core) == len(before)
    bare = core.rstrip(CLOSERS)
    after = text[b : b + _LOOK]
    if not bare:
        return False
    if glued and _glued_continues(bare, closed=len(bare) < len(core), after=after):
        return True
    if not glued and _dialogue_tag(core, after):
        return True
    if bare[-1] != "." or bare.endswith(".."):
        return False
    words = bare.split()
    token = words[-1].lstrip(OPENERS).lower()
    if token in _NON_FINAL or (len(token) == 2 and words[-1][-2].isupper()):
        return True  # a title or an initial: a name follows
    if language in ("de", "auto") and _ORDINAL.fullmatch(token):
        following = after.split()[:1]
        if following and following[0].strip(".,;:!?").lower() in _DE_MONTHS:
            return True
        return len(words) > 1 and words[-2].lower() in _DE_BEFORE_ORDINAL
    return False


def _dialogue_tag(core: str, after: str) -> bool:
    """A line of dialogue goes on into its tag: "—¿Vienes? —preguntó ella.", "— Vens? — perguntou ela."."""
    line = core.rsplit("\n", 1)[-1]
    opened = line.lstrip()[:1] in "—–" or bool(re.search("[.!?…:] [—–]", line))
    return opened and core[-1] in "?!" and after[:1] in "—–" and after.lstrip("—– ")[:1].islower()


def _glued_continues(bare: str, *, closed: bool, after: str) -> bool:
    """For a stop with no space after it: whether the text right after continues the sentence."""
    nxt = after[:1]
    if bare[-1] in ".．" and bare[-2:-1].isdigit() and nxt.isdigit():
        return True  # "３．５", "3.5"
    if closed and (bool(_CONTINUATION.match(nxt)) or nxt.islower()):
        return True  # a particle or a verb after a quote: "「はい。」と", "“네.”라고"
    return bare[-1] in LATIN_STOPS and (nxt.isalnum() and not re.match(WIDE_LETTER, nxt))


def _balanced(text: str) -> bool:
    """Whether every CJK bracket or quote opened in ``text`` is closed."""
    depth = 0
    for char in text:
        if char in "「『（“《【〈〔":
            depth += 1
        elif char in "」』）”》】〉〕":
            depth = max(0, depth - 1)
    return depth == 0


def _without_mute(text: str, starts: list[int]) -> list[int]:
    """The boundaries, less those that leave a span with nothing to say: it joins its neighbour."""
    kept: list[int] = []
    previous = 0
    for start in starts:
        if speakable(text[previous:start]):
            kept.append(start)
            previous = start
    if kept and not speakable(text[kept[-1] :]):
        kept.pop()
    return kept
