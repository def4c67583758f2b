"""Question answering over a long text document: read it, place it in the chat template, stream the answer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from asr.attention.config import UniSparseConfig
from asr.errors import ContextLengthError, DocumentError
from asr.llm.config import SamplingParams
from asr.llm.engine import LLMEngine

# Larger files are refused before reading: far beyond any supported context (~4 bytes per token).
MAX_DOCUMENT_BYTES = 8 * 1024 * 1024
# A file whose first block holds a NUL byte is binary (the test `file` and git use).
BINARY_PROBE_BYTES = 8192
# A block-sparse prefill of a document keeps the question's blocks dense: the answer reads them directly,
# and with pooled estimates alone it lost a key-named needle among four. Two blocks, since the last one
# may hold only a few tokens of the question (BENCHMARKS.md, "QA with UniSparse prefill on the GPU" and
# "QA with UniSparse prefill, 160 prompts per cell").
QA_UNISPARSE = UniSparseConfig(dense_last_blocks=2)
SYSTEM_PROMPT = (
    "You answer questions about the document the user gives. Answer briefly, from the document only."
)


def read_document(path: str | Path, max_bytes: int = MAX_DOCUMENT_BYTES) -> str:
    """The text of a UTF-8 document; DocumentError for missing, unreadable, binary, empty or
    oversized files."""
    path = Path(path)
    if not path.is_file():
        raise DocumentError(
            f"document {path} does not exist (or is not a file); give the path of a text file"
        )
    size = path.stat().st_size
    if size > max_bytes:
        raise DocumentError(
            f"document {path} is {size:,} bytes, above the {max_bytes:,}-byte limit; "
            "give a shorter text (or the part that holds the answer)"
        )
    data = path.read_bytes()
    if b"\x00" in data[:BINARY_PROBE_BYTES]:
        raise DocumentError(f"document {path} is a binary file; convert it to plain text (UTF-8) first")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DocumentError(
            f"document {path} is not UTF-8 text (byte {error.start}); convert it to UTF-8 plain text first"
        ) from error
    if not text.strip():
        raise DocumentError(f"document {path} is empty; give a file with text in it")
    return text


def qa_prompt(engine: LLMEngine, document: str, question: str) -> list[int]:
    """Token ids of the chat prompt holding the document and then the question."""
    user = f"Document:\n\n{document.strip()}\n\nQuestion: {question.strip()}"
    return engine.chat_prompt(
        [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]
    )


class TextStream:
    """Turns streamed token ids into text pieces (holding back incomplete UTF-8 characters)."""

    def __init__(self, tokenizer, on_text: Callable[[str], None]) -> None:
        self.tokenizer, self.on_text = tokenizer, on_text
        self.token_ids: list[int] = []
        self.emitted = 0

    def __call__(self, token_id: int) -> None:
        self.token_ids.append(token_id)
        text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return
        if len(text) > self.emitted:
            self.on_text(text[self.emitted :])
            self.emitted = len(text)


class _LoopFound(Exception):
    """Raised from the token callback to end generation at a repetition loop."""

    def __init__(self, cut: int) -> None:
        self.cut = cut


def answer(
    engine: LLMEngine,
    document: str,
    question: str,
    params: SamplingParams = SamplingParams(max_tokens=256),
    on_text: Callable[[str], None] | None = None,
    loop_start: Callable[[list[int]], int | None] | None = None,
) -> str:
    """Answer ``question`` about ``document``; ``on_text`` receives the answer as it is generated.

    ``loop_start(token_ids)``: where a repetition loop at the end of the answer so far starts its
    second copy (None: no loop); generation stops there and the returned answer keeps one copy
    (small models repeat themselves until the token limit otherwise; text already streamed stays)."""
    prompt = qa_prompt(engine, document, question)
    needed = len(prompt) + 1
    if needed > engine.max_context:
        raise ContextLengthError(
            f"the document and question take {len(prompt)} tokens, above the model's context limit of "
            f"{engine.max_context} tokens; shorten the document by about "
            f"{len(prompt) + params.max_tokens - engine.max_context} tokens (keep the part that holds the "
            "answer) or use a model with a longer context (--model)"
        )
    seq = engine.new_sequence()
    try:
        engine.append(seq, token_ids=prompt)
        stream = TextStream(engine.tokenizer, on_text or (lambda _text: None))

        def on_token(token_id: int) -> None:
            stream(token_id)
            if loop_start is not None and (cut := loop_start(stream.token_ids)) is not None:
                raise _LoopFound(cut)

        try:
            tokens = engine.generate(seq, params, on_token=on_token)
        except _LoopFound as found:
            tokens = stream.token_ids[: found.cut]
    finally:
        engine.free(seq)
    return engine.tokenizer.decode(tokens, skip_special_tokens=True).strip()
