"""Held-out text for validation speech: Debian package descriptions, which training text never reads.

The training corpus (``text_corpus.build_corpus``) reads fortunes, templates, man pages, READMEs and
docstrings, and a training run samples any of its sentences. The long descriptions in dpkg's status
file are none of these sources. Their sentences are cleaned as the corpus's are, and every sentence
that the training corpus also holds is dropped, so speech read from them is held out from every model
trained on corpus text, whatever seed its data was made with. Only sentences made of dictionary
words are kept (no package or library names), so the set measures reading, not jargon.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from training.synth.text_clean import speakable_sentences
from training.synth.text_corpus import Corpus, sentence_key

DPKG_STATUS = Path("/var/lib/dpkg/status")
DICTIONARY = Path("/usr/share/dict/words")
"""English word list (Debian ``wamerican``, installed by training/setup_tts.sh)."""
SOURCE_PREFIX = "description:"
"""Manifest ``source`` of held-out sentences: ``description:<package>``."""
_DESCRIPTION = re.compile(r"^Description: .*\n((?: .*(?:\n|$))*)", re.M)
_PARAGRAPH_BREAK = re.compile(r"^ \.[ \t]*$", re.M)


def description_paragraphs(status: Path = DPKG_STATUS) -> Iterator[tuple[str, str]]:
    """(``description:<package>``, paragraph) for each paragraph of each package's long description
    (the indented lines after ``Description:``; a line holding `` .`` separates paragraphs)."""
    for stanza in status.read_text(errors="ignore").split("\n\n"):
        package = re.search(r"^Package: (\S+)", stanza, re.M)
        description = _DESCRIPTION.search(stanza)
        if package is None or description is None:
            continue
        for paragraph in _PARAGRAPH_BREAK.split(description.group(1)):
            text = " ".join(line.strip() for line in paragraph.splitlines() if line.strip())
            if text:
                yield f"{SOURCE_PREFIX}{package.group(1)}", text


def dictionary_words(sentence: str, vocabulary: set[str]) -> bool:
    """Whether every word of ``sentence`` (letters and apostrophes, hyphenated parts apart) is in
    ``vocabulary`` (lower case)."""
    return all(word.lower() in vocabulary for word in re.findall(r"[A-Za-z']+", sentence))


def heldout_corpus(training: Corpus, status: Path = DPKG_STATUS, dictionary: Path = DICTIONARY) -> Corpus:
    """Speakable, unique description sentences of dictionary words that ``training`` does not hold,
    in package order."""
    if not dictionary.is_file():
        raise FileNotFoundError(f"{dictionary}: no English word list; install it with training/setup_tts.sh")
    vocabulary = {word.strip().lower() for word in dictionary.read_text(errors="ignore").splitlines()}
    seen = {sentence_key(sentence) for sentence in training.sentences}
    sentences, sources = [], []
    for source, paragraph in description_paragraphs(status):
        for sentence in speakable_sentences(paragraph):
            key = sentence_key(sentence)
            if key not in seen and dictionary_words(sentence, vocabulary):
                seen.add(key)
                sentences.append(sentence)
                sources.append(source)
    if not sentences:
        raise ValueError(f"{status}: no held-out sentences (no package descriptions left after cleaning)")
    return Corpus(tuple(sentences), tuple(sources))
