"""Long natural-text documents for soft-mask fine-tuning, as token ids (deterministic, cached).

Sources: documentation that Debian ships as plain reStructuredText, none of it evaluation material:

  python      /usr/share/doc/python3.11/html/_sources     the Python 3.11 manuals (python3.11-doc)
  linux       /usr/share/doc/linux-doc-6.1/Documentation  the Linux kernel's documentation, English
                                                          only (linux-doc-6.1; gzip-compressed rst)

(``apt-get install python3.11-doc linux-doc-6.1``; about 9M tokens with the SmolLM2 tokenizer.) Each
top directory of a source is one manual: its files are joined in path order and its token stream cut
into documents of ``min_tokens``..``max_tokens`` tokens (lengths drawn from a seeded generator; a
remainder shorter than ``min_tokens`` is dropped). Files holding evaluation material (the GPL-3 text
and the RULER-style haystack of ``eval/longqa.py``) are skipped. Every ``holdout_every``-th document
is held out (evaluation during training), the rest trains.

    python -m training.text_corpus --out .cache/text_corpus [--tokenizer HF_DIR]

writes ``tokens.npy`` (uint16 ids, documents back to back), ``documents.json`` (per document: offset,
length, manual, split) and ``corpus.json`` (the spec it was built from). A directory built from the
same spec is reused as it is.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from asr.weights_cache import build_once, is_built

SOURCES = {
    "python": (Path("/usr/share/doc/python3.11/html/_sources"), "**/*.rst.txt", ("python3.11-doc",)),
    "linux": (Path("/usr/share/doc/linux-doc-6.1/Documentation"), "**/*.rst.gz", ("linux-doc-6.1",)),
}
SKIPPED_MANUALS = ("translations",)  # not English
# Phrases of evaluation material (eval/longqa.py): a file holding one is never trained on.
EVAL_MARKERS = (
    "GNU GENERAL PUBLIC LICENSE\n                       Version 3",
    "Version 3, 29 June 2007",
    "The grass is green. The sky is blue.",
    "special magic number",
)
FILE_SEPARATOR = "\n\n"
SPLITS = ("train", "heldout")


@dataclass(frozen=True)
class CorpusSpec:
    """What a corpus is built from; a cached corpus is reused only for the same spec."""

    sources: tuple[str, ...] = ("python", "linux")
    min_tokens: int = 8192
    max_tokens: int = 16384
    holdout_every: int = 40
    seed: int = 0
    tokenizer: str = ""  # the vocabulary's identity (tokenizer_name)


@dataclass(frozen=True)
class Document:
    offset: int
    length: int
    manual: str
    split: str  # "train" or "heldout"


class TextCorpus:
    """A built corpus: ``tokens`` (uint16 memory map) and its ``documents``."""

    def __init__(self, directory: str | Path) -> None:
        directory = Path(directory)
        spec = json.loads((directory / "corpus.json").read_text())["spec"]
        self.spec = CorpusSpec(**dict(spec, sources=tuple(spec["sources"])))
        self.tokens = np.load(directory / "tokens.npy", mmap_mode="r")
        self.documents = [Document(**d) for d in json.loads((directory / "documents.json").read_text())]

    def split(self, name: str) -> list[Document]:
        return [doc for doc in self.documents if doc.split == name]

    def ids(self, doc: Document) -> np.ndarray:
        """The document's token ids [length] int64."""
        return np.asarray(self.tokens[doc.offset : doc.offset + doc.length], dtype=np.int64)


def holds_eval_material(text: str) -> bool:
    return any(marker in text for marker in EVAL_MARKERS)


def read_text(path: Path) -> str:
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return data.decode("utf-8", errors="replace")


def manuals(source: str, sources: dict = SOURCES) -> dict[str, list[Path]]:
    """The source's files by manual (top directory; files at the top form the manual '.'), in path
    order; ``sources``: name -> (root, glob pattern, Debian packages). Raises FileNotFoundError
    naming the packages when the source is not installed."""
    root, pattern, packages = sources[source]
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is missing: apt-get install {' '.join(packages)}")
    grouped: dict[str, list[Path]] = {}
    for path in sorted(root.glob(pattern)):
        relative = path.relative_to(root)
        manual = relative.parts[0] if len(relative.parts) > 1 else "."
        if manual not in SKIPPED_MANUALS:
            grouped.setdefault(f"{source}/{manual}", []).append(path)
    return grouped


def cut_documents(length: int, spec: CorpusSpec, rng: random.Random) -> list[tuple[int, int]]:
    """(start, length) pieces of a manual of ``length`` tokens."""
    pieces, start = [], 0
    while True:
        size = rng.randint(spec.min_tokens, spec.max_tokens)
        if start + size > length:
            size = length - start  # the remainder, if it is long enough
            if size >= spec.min_tokens:
                pieces.append((start, size))
            return pieces
        pieces.append((start, size))
        start += size


def build_corpus(out_dir: Path, tokenizer, spec: CorpusSpec, sources: dict = SOURCES) -> None:
    """Tokenize the sources into ``out_dir`` (see the module docstring)."""
    rng = random.Random(spec.seed)
    grouped = {name: files for source in spec.sources for name, files in manuals(source, sources).items()}
    chunks, documents, offset, skipped = [], [], 0, []
    for name, files in tqdm(grouped.items(), desc="tokenizing manuals"):
        texts = []
        for path in files:
            text = read_text(path)
            if holds_eval_material(text):
                skipped.append(str(path))
            else:
                texts.append(text)
        ids = tokenizer(FILE_SEPARATOR.join(texts), add_special_tokens=False, verbose=False).input_ids
        for start, length in cut_documents(len(ids), spec, rng):
            split = "heldout" if len(documents) % spec.holdout_every == spec.holdout_every - 1 else "train"
            chunks.append(np.asarray(ids[start : start + length], dtype=np.uint16))
            documents.append(Document(offset, length, name, split))
            offset += length

    def write(staging: Path) -> None:
        np.save(staging / "tokens.npy", np.concatenate(chunks))
        (staging / "documents.json").write_text(json.dumps([asdict(d) for d in documents]))
        counts = {split: sum(d.length for d in documents if d.split == split) for split in SPLITS}
        meta = dict(spec=asdict(spec), documents=len(documents), tokens=counts, skipped_eval_material=skipped)
        (staging / "corpus.json").write_text(json.dumps(meta, indent=1))

    build_once(out_dir, write, rebuild=True)


def tokenizer_name(tokenizer) -> str:
    """The vocabulary's identity (size and hash), whatever directory the tokenizer came from."""
    vocabulary = json.dumps(sorted(tokenizer.get_vocab().items())).encode()
    return f"vocab{len(tokenizer)}-{hashlib.sha1(vocabulary).hexdigest()[:12]}"


def load_or_build(
    out_dir: str | Path, tokenizer, spec: CorpusSpec = CorpusSpec(), sources: dict = SOURCES
) -> TextCorpus:
    """The corpus in ``out_dir``, built first unless it was built from the same spec and tokenizer."""
    out_dir = Path(out_dir)
    spec = CorpusSpec(**{**asdict(spec), "tokenizer": tokenizer_name(tokenizer)})
    if len(tokenizer) > np.iinfo(np.uint16).max + 1:
        raise ValueError(f"a vocabulary of {len(tokenizer)} does not fit uint16 token ids")
    if not (is_built(out_dir) and json.loads((out_dir / "corpus.json").read_text())["spec"] == asdict(spec)):
        build_corpus(out_dir, tokenizer, spec, sources)
    return TextCorpus(out_dir)


def open_corpus(directory: str | Path, tokenizer) -> TextCorpus:
    """The corpus in ``directory`` as it was built (whatever its spec), else one built there with the
    default spec. Raises ValueError when it was built with another tokenizer."""
    if not is_built(Path(directory)):
        return load_or_build(directory, tokenizer)
    corpus = TextCorpus(directory)
    if corpus.spec.tokenizer != tokenizer_name(tokenizer):
        raise ValueError(
            f"the corpus in {directory} was built with the tokenizer {corpus.spec.tokenizer}, not "
            f"{tokenizer_name(tokenizer)}; build one with `python -m training.text_corpus --tokenizer DIR`"
        )
    return corpus


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="corpus directory")
    parser.add_argument("--tokenizer", help="Hugging Face model directory (default: the embedded SmolLM2)")
    parser.add_argument("--sources", nargs="+", default=list(CorpusSpec.sources), choices=sorted(SOURCES))
    parser.add_argument("--min-tokens", type=int, default=CorpusSpec.min_tokens)
    parser.add_argument("--max-tokens", type=int, default=CorpusSpec.max_tokens)
    parser.add_argument("--holdout-every", type=int, default=CorpusSpec.holdout_every)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from transformers import AutoTokenizer

    from asr.llm.embedded import embedded_llm_dir

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or embedded_llm_dir())
    spec = CorpusSpec(tuple(args.sources), args.min_tokens, args.max_tokens, args.holdout_every, args.seed)
    corpus = load_or_build(args.out, tokenizer, spec)
    meta = json.loads((Path(args.out) / "corpus.json").read_text())
    print(f"{args.out}: {meta['documents']} documents, {meta['tokens']} tokens, "
          f"{len(meta['skipped_eval_material'])} files skipped as evaluation material; "
          f"{len(corpus.split('heldout'))} held out")


if __name__ == "__main__":
    main()
