"""Where audio embeddings and transcripts sit in the LLM's context (ChatML, as SmolLM2 chats).

A session is one growing context: a system turn, then per audio chunk a user turn holding the
chunk's audio embeddings and an assistant turn holding its transcript:

    <|im_start|>system\\n{SYSTEM}<|im_end|>\\n
    <|im_start|>user\\n<audio>[audio embeddings]</audio><|im_end|>\\n<|im_start|>assistant\\n{transcript}<|im_end|>\\n
    ... next chunk ...

A model trained with Whisper drafts (``asr.speech.draft``) reads each chunk's draft in its user turn:

    <|im_start|>user\\n<audio>[audio embeddings]</audio>\\nDraft: {draft}<|im_end|>\\n<|im_start|>assistant\\n...
"""

from __future__ import annotations

from dataclasses import dataclass

SYSTEM = "Transcribe the speech in each audio clip exactly, with punctuation."
SESSION_START = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
BEFORE_AUDIO = "<|im_start|>user\n<audio>"
AFTER_AUDIO = "</audio><|im_end|>\n<|im_start|>assistant\n"
END_OF_TURN = "<|im_end|>"
AFTER_TRANSCRIPT = "<|im_end|>\n"
BEFORE_DRAFT = "</audio>\nDraft:"
AFTER_DRAFT = "<|im_end|>\n<|im_start|>assistant\n"


@dataclass(frozen=True)
class PromptIds:
    """Token ids of the fixed text pieces, tokenized once per tokenizer."""

    session_start: list[int]
    before_audio: list[int]
    after_audio: list[int]
    after_transcript: list[int]
    end_of_turn: int
    before_draft: list[int]
    after_draft: list[int]

    def after_audio_with(self, draft_ids: list[int] | None) -> list[int]:
        """The user turn's end after the audio embeddings: plain (``draft_ids`` None) or holding a draft
        (its ids from ``draft_token_ids``)."""
        return self.after_audio if draft_ids is None else self.before_draft + draft_ids + self.after_draft

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "PromptIds":
        def ids(text: str) -> list[int]:
            return tokenizer(text, add_special_tokens=False).input_ids

        end = ids(END_OF_TURN)
        if len(end) != 1:
            raise ValueError(f"tokenizer has no single token for {END_OF_TURN!r}: not a ChatML model")
        return cls(ids(SESSION_START), ids(BEFORE_AUDIO), ids(AFTER_AUDIO), ids(AFTER_TRANSCRIPT), end[0],
                   ids(BEFORE_DRAFT), ids(AFTER_DRAFT))


def draft_token_ids(tokenizer, draft: str) -> list[int]:
    """The LLM's ids of a draft as it sits after ``Draft:`` (one space apart; none when empty)."""
    return tokenizer(" " + draft, add_special_tokens=False).input_ids if draft else []
