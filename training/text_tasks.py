"""Synthetic copy and retrieval sequences built from natural text, and the needle probe run during
training.

Mixed into soft-mask fine-tuning so that exact copying learns to go through pages the selector can
pick: a passage quoted again at the end of its document (found by its opening words), and short
records inserted between a document's lines, one of which is looked up at the end. Both are built
from the training documents and this module's own templates; neither uses the evaluation's
haystack, needles or wording (eval/longqa.py). The loss stays the plain LM loss over the whole
sequence. The probe is a record lookup in a held-out document, scored by teacher forcing.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

THINGS = ("copper kettle", "walnut cabinet", "linen map", "brass compass", "glass lantern", "oak ledger",
          "iron anchor", "silk banner", "clay pitcher", "tin whistle", "wool blanket", "cedar chest",
          "slate tablet", "bone comb", "jade button", "felt hat", "cork board", "steel spoon")
QUOTE_CUE = 6  # opening tokens of a quoted passage that locate it
QUOTE_TOKENS = (24, 64)  # length range of a quoted passage
RECORDS = (1, 4)  # records inserted per document
LOCAL_TOKENS = 256  # a quoted passage or record lies at least this far before the end


def record_text(thing: str, value: str) -> str:
    return f"\nRecord: the {thing} is filed under number {value}.\n"


def lookup_text(thing: str) -> str:
    return f"\nLookup: the {thing} is filed under number"


@dataclass(frozen=True)
class TextPieces:
    """Token ids of the fixed texts, and which ids end a line (insertion points)."""

    quote_open: list[int]
    quote_middle: list[int]
    quote_close: list[int]
    line_end: np.ndarray  # [vocab] bool

    @classmethod
    def from_tokenizer(cls, tokenizer) -> TextPieces:
        encode = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
        tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        line_end = np.array([tokenizer.convert_tokens_to_string([t]).endswith("\n") for t in tokens])
        return cls(encode('\n\nThe passage that begins "'), encode('" reads in full: "'), encode('"\n'),
                   line_end)


def random_value(rng: random.Random) -> str:
    return str(rng.randint(10_000, 99_999_999))


def quote_again(ids: np.ndarray, room: int, pieces: TextPieces, rng: random.Random) -> np.ndarray:
    """``ids`` cut to leave ``room`` tokens, then a passage from well before the end quoted again."""
    length = rng.randint(*QUOTE_TOKENS)
    fixed = len(pieces.quote_open) + len(pieces.quote_middle) + len(pieces.quote_close)
    overhead = fixed + QUOTE_CUE + length
    body = ids[: len(ids) - max(0, overhead - room)]
    start = rng.randint(0, max(0, len(body) - length - LOCAL_TOKENS))
    passage = body[start : start + length].tolist()
    tail = pieces.quote_open + passage[:QUOTE_CUE] + pieces.quote_middle + passage + pieces.quote_close
    return np.concatenate([body, np.asarray(tail, dtype=body.dtype)])


def insert_records(
    ids: np.ndarray, room: int, tokenizer, pieces: TextPieces, rng: random.Random, count: int | None = None
) -> tuple[np.ndarray, list[int]]:
    """Records inserted after random line ends (all but the last ``LOCAL_TOKENS`` tokens), and one of
    them looked up at the end; the result is at most ``len(ids) + room`` tokens long. Returns the
    sequence and the token ids of the looked-up value (the sequence's last tokens before the '.')."""
    count = count or rng.randint(*RECORDS)
    things = rng.sample(THINGS, count)
    records = [(thing, random_value(rng)) for thing in things]
    asked_thing, asked_value = rng.choice(records)
    encoded = [tokenizer.encode(record_text(t, v), add_special_tokens=False) for t, v in records]
    value_ids = tokenizer.encode(" " + asked_value, add_special_tokens=False)
    query = tokenizer.encode(lookup_text(asked_thing), add_special_tokens=False) + value_ids
    query += tokenizer.encode(".\n", add_special_tokens=False)
    overhead = sum(map(len, encoded)) + len(query)
    body = ids[: len(ids) - max(0, overhead - room)]
    ends = np.flatnonzero(pieces.line_end[body[: max(1, len(body) - LOCAL_TOKENS)]]) + 1
    points = sorted(rng.choice(ends.tolist()) if len(ends) else 0 for _ in records)
    parts, previous = [], 0
    for point, record in zip(points, encoded):
        parts += [body[previous:point], np.asarray(record, dtype=body.dtype)]
        previous = point
    parts += [body[previous:], np.asarray(query, dtype=body.dtype)]
    return np.concatenate(parts), value_ids


def probe_sample(ids: np.ndarray, length: int, tokenizer, pieces: TextPieces, rng: random.Random):
    """A held-out document cut to ``length`` tokens with one record and its lookup: (sequence [length']
    int64, the positions whose next token is a value token [value tokens], those tokens)."""
    sequence, value_ids = insert_records(ids[:length], 0, tokenizer, pieces, rng, count=1)
    closing = len(tokenizer.encode(".\n", add_special_tokens=False))
    first = len(sequence) - closing - len(value_ids)
    positions = np.arange(first - 1, first - 1 + len(value_ids))
    return sequence.astype(np.int64), positions, np.asarray(value_ids)
