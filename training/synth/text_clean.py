"""Turn raw prose into speakable sentences whose transcript matches what a TTS engine says.

Numbers, symbols and common abbreviations are written out as words before synthesis, so the text
given to every engine and the transcript are the same string. Sentences holding anything an engine
would read inconsistently (code, URLs, markup, stray symbols) are dropped, not repaired.
"""

from __future__ import annotations

import re
import unicodedata

from num2words import num2words

MIN_WORDS, MAX_WORDS = 5, 40
"""Sentence length bounds: shorter is mostly fragments, longer outruns a 25 s utterance."""

ABBREVIATIONS = {
    "Mr.": "Mister", "Mrs.": "Missus", "Ms.": "Miz", "Dr.": "Doctor", "Prof.": "Professor",
    "St.": "Saint", "Jr.": "Junior", "Sr.": "Senior", "e.g.": "for example", "i.e.": "that is",
    "etc.": "et cetera", "vs.": "versus", "approx.": "approximately", "No.": "number",
}
SYMBOLS = {"&": " and ", "%": " percent", "+": " plus ", "°": " degrees"}

_URL = re.compile(r"(https?://|www\.|ftp://|\S+@\S+\.\w|\w+\.(com|org|net|py|txt|html|gz|so|c|h|sh)\b)", re.I)
_CODE = re.compile(
    r"[{}\[\]<>=_\\|/#@^~`*]|\w\(|\)\w|[A-Za-z]\.[A-Za-z]{2}|::|->|(?:^|[\s\"'(])(?:--?|\.)[A-Za-z]"
)
"""Code, paths, options (-v, --verbose) and dotfiles (.profile)."""
_ALLOWED = re.compile(r"^[A-Za-z0-9 .,;:!?'\"()\-]+$")
_MONEY = re.compile(r"\$(\d+(?:,\d{3})*)(?:\.(\d{2}))?\b")
_TIME = re.compile(r"\b(\d{1,2}):(\d{2})\b")
_ORDINAL = re.compile(r"\b(\d+)(st|nd|rd|th)\b")
_YEAR = re.compile(r"\b(1[1-9]\d\d|20\d\d)s?\b")
_DECIMAL = re.compile(r"\b(\d+)\.(\d+)\b")
_INTEGER = re.compile(r"\b\d+(?:,\d{3})*\b")
_NEGATIVE = re.compile(r"(?<![\w-])-(?=\d)")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')]?\s+(?=[\"'(]?[A-Z])")


def _words(number: int, **kwargs) -> str:
    return num2words(number, lang="en", **kwargs).replace(",", "")


def _money(match: re.Match) -> str:
    dollars = int(match.group(1).replace(",", ""))
    text = f"{_words(dollars)} dollar{'s' if dollars != 1 else ''}"
    if match.group(2) and int(match.group(2)):
        cents = int(match.group(2))
        text += f" and {_words(cents)} cent{'s' if cents != 1 else ''}"
    return text


def _time(match: re.Match) -> str:
    hour, minute = int(match.group(1)), int(match.group(2))
    if hour > 23 or minute > 59:
        return match.group(0)
    if minute == 0:
        return f"{_words(hour)} o'clock"
    return f"{_words(hour)} {'oh ' if minute < 10 else ''}{_words(minute)}"


def _year(match: re.Match) -> str:
    spoken = _words(int(match.group(1)), to="year")
    if match.group(0).endswith("s"):
        spoken = spoken[:-1] + "ies" if spoken.endswith("y") else spoken + "s"
    return spoken


def _decimal(match: re.Match) -> str:
    return f"{_words(int(match.group(1)))} point {' '.join(_words(int(d)) for d in match.group(2))}"


def expand_numbers(text: str) -> str:
    """Digits to words: money, clock times, ordinals, years (1100-2099), decimals, integers."""
    text = _MONEY.sub(_money, text)
    text = _TIME.sub(_time, text)
    text = _ORDINAL.sub(lambda m: _words(int(m.group(1)), to="ordinal"), text)
    text = _YEAR.sub(_year, text)
    text = _DECIMAL.sub(_decimal, text)
    text = _NEGATIVE.sub("minus ", text)
    return _INTEGER.sub(lambda m: _words(int(m.group(0).replace(",", ""))), text)


def normalize(text: str) -> str:
    """ASCII-fold, unify quotes and dashes, collapse whitespace."""
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
    text = text.replace("\u2014", ", ").replace("\u2013", "-").replace(" -- ", ", ")
    text = re.sub(r"(?<=\w)--(?=\w)", ", ", text)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"\s+", " ", text).strip()


def split_sentences(paragraph: str) -> list[str]:
    """Split normalized prose at sentence ends; abbreviations are expanded first so they don't split."""
    for short, long in ABBREVIATIONS.items():
        paragraph = re.sub(rf"(?<![\w.]){re.escape(short)}", long, paragraph)
    return [part.strip() for part in _SENTENCE_END.split(paragraph) if part.strip()]


def clean_sentence(sentence: str) -> str | None:
    """A speakable sentence, or None when it holds code, URLs, markup or is too short/long."""
    if _URL.search(sentence) or _CODE.search(sentence):
        return None
    for symbol, spoken in SYMBOLS.items():
        sentence = sentence.replace(symbol, spoken)
    sentence = re.sub(r"\s+", " ", expand_numbers(sentence)).strip()
    sentence = re.sub(r"\s+([.,;:!?])", r"\1", sentence)
    if not _ALLOWED.match(sentence) or re.search(r"\d", sentence) or sentence.count('"') % 2:
        return None
    if sentence.count("(") != sentence.count(")") or re.search(r"[.,;:!?]{2,}(?<!\.\.\.)", sentence):
        return None
    if not re.match(r"^[\"'(]?[A-Z]", sentence) or not re.search(r"[.!?][\"')]?$", sentence):
        return None
    if sentence.isupper() or not MIN_WORDS <= len(sentence.split()) <= MAX_WORDS:
        return None
    if re.search(r"\b[A-Z]{6,}\b", sentence):
        return None
    return sentence


def speakable_sentences(paragraph: str) -> list[str]:
    """Normalize a paragraph, split it, and keep the sentences that clean."""
    kept = (clean_sentence(s) for s in split_sentences(normalize(paragraph)))
    return [s for s in kept if s]
