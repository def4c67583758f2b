"""What soft-mask fine-tuning reads: batches of long text documents or of speech sessions, as the keyword
arguments of a Hugging Face causal LM's forward pass (``input_ids`` or ``inputs_embeds``,
``attention_mask``, ``labels``; right-padded)."""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import torch

from asr.speech.sessions import IGNORE
from training.text_corpus import TextCorpus
from training.text_tasks import TextPieces, insert_records, probe_sample, quote_again


def pad_rows(rows: list[np.ndarray], device) -> dict[str, torch.Tensor]:
    """Token id rows -> input_ids, attention_mask, labels [batch, longest] (labels IGNORE on padding)."""
    longest = max(len(row) for row in rows)
    input_ids = torch.zeros(len(rows), longest, dtype=torch.long)
    mask = torch.zeros(len(rows), longest, dtype=torch.long)
    for index, row in enumerate(rows):
        input_ids[index, : len(row)] = torch.from_numpy(np.asarray(row, dtype=np.int64))
        mask[index, : len(row)] = 1
    labels = input_ids.masked_fill(mask == 0, IGNORE)
    return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


class TextBatches:
    """Endless batches of training documents, each a random window of a length drawn per batch from
    ``seq_lens``; a batch holds ``batch`` windows of the longest length's worth of tokens (more,
    shorter ones at a shorter length). In ``synthetic_share`` of the windows a passage is quoted again
    at the end or records are inserted and one looked up (``training.text_tasks``), within the same
    length. ``rank`` gives each data-parallel process its own stream."""

    def __init__(self, corpus: TextCorpus, tokenizer, seq_lens: list[int], batch: int, synthetic_share: float,
                 seed: int, rank: int = 0) -> None:
        self.corpus, self.tokenizer, self.seq_lens, self.batch = corpus, tokenizer, seq_lens, batch
        self.synthetic_share, self.seed, self.rank = synthetic_share, seed, rank
        self.documents = corpus.split("train")
        self.pieces = TextPieces.from_tokenizer(tokenizer)

    def sequence(self, rng: random.Random, seq_len: int) -> np.ndarray:
        ids = self.corpus.ids(rng.choice(self.documents))
        start = rng.randint(0, max(0, len(ids) - seq_len))
        window = ids[start : start + seq_len]
        if rng.random() >= self.synthetic_share:
            return window
        if rng.random() < 0.5:
            return quote_again(window, seq_len - len(window), self.pieces, rng)
        return insert_records(window, seq_len - len(window), self.tokenizer, self.pieces, rng)[0]

    def batches(self, device) -> Iterator[dict[str, torch.Tensor]]:
        rng = random.Random(f"{self.seed}-{self.rank}")
        while True:
            seq_len = rng.choice(self.seq_lens)
            rows = max(1, self.batch * max(self.seq_lens) // seq_len)
            yield pad_rows([self.sequence(rng, seq_len) for _ in range(rows)], device)


def heldout_text(corpus: TextCorpus, seq_len: int, count: int, device) -> list[dict[str, torch.Tensor]]:
    """The first ``seq_len`` tokens of the first ``count`` held-out documents, one per batch."""
    return [pad_rows([corpus.ids(doc)[:seq_len]], device) for doc in corpus.split("heldout")[:count]]


def text_probes(corpus: TextCorpus, tokenizer, seq_len: int, count: int, seed: int) -> list[tuple]:
    """``count`` record lookups in held-out documents (``training.text_tasks.probe_sample``)."""
    rng = random.Random(f"probe-{seed}")
    pieces = TextPieces.from_tokenizer(tokenizer)
    documents = corpus.split("heldout")
    return [probe_sample(corpus.ids(documents[i % len(documents)]), seq_len, tokenizer, pieces, rng)
            for i in range(count)]


class SpeechBatches:
    """Endless batches of speech sessions laid out as ``training.train_asr`` lays them out (audio
    embeddings from the frozen encoder and projector, transcripts supervised)."""

    def __init__(self, stream, models: tuple, workers: int) -> None:
        self.stream, self.models, self.workers = stream, models, workers

    def batches(self, device) -> Iterator[dict[str, torch.Tensor]]:
        from torch.utils.data import DataLoader

        from training.train_asr import keep_batch

        loader = DataLoader(self.stream, batch_size=None, collate_fn=keep_batch, num_workers=self.workers,
                            prefetch_factor=4 if self.workers else None)
        for sessions in loader:
            yield speech_inputs(sessions, self.models)


@torch.no_grad()
def speech_inputs(sessions: list, models: tuple) -> dict[str, torch.Tensor]:
    """Sessions (``training.train_asr.SessionStream``) -> forward keyword arguments; ``models``:
    (tokenizer, prompt, llm, encoder, projector)."""
    from training.train_asr import session_batch

    (embeds, labels, mask), _ = session_batch(sessions, *models)
    return {"inputs_embeds": embeds, "attention_mask": mask, "labels": labels}
