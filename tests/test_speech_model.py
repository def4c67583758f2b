"""Who owns what in a speech model: weights loaded once, one engine per recording (or one shared by live
sessions), one sequence per session. A tiny random LLM stands in for the real one (no audio here)."""

from __future__ import annotations

import re
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from asr.attention import UniqueConfig
from asr.llm.config import EngineConfig
from asr.llm.loader import load_model
from asr.speech.draft import Draft, DraftWord, Hypothesis
from asr.speech.draft_decoding import DraftDecoding
from asr.speech.model import SpeechModel, context_tokens
from asr.speech.projector import FrameStackProjector, ProjectorConfig
from asr.speech.prompt import PromptIds
from tests.test_llm_engine import save_tiny_model

PROMPT = PromptIds(
    session_start=[1, 2, 3],
    before_audio=[4],
    after_audio=[5, 6],
    after_transcript=[7],
    end_of_turn=8,
    before_draft=[5, 9],
    after_draft=[6],
)
CONFIG = EngineConfig(sparse=UniqueConfig(page_size=4, budget_tokens=16), max_batch=1, extend_context=True)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> SpeechModel:
    directory = tmp_path_factory.mktemp("llama")
    save_tiny_model("llama", directory)
    llm, _ = load_model(directory)
    projector = FrameStackProjector(ProjectorConfig(llm_dim=llm.embed_tokens.weight.shape[1], hidden=32))
    return SpeechModel(llm, Tokenizer(), FrameEncoder(), projector, PROMPT, {})


class Tokenizer:
    """Words are their token ids ("12 40" -> [12, 40]), each spelling its own characters."""

    def __call__(self, text, add_special_tokens=False, return_offsets_mapping=False):
        spans = [(match.start(), match.end()) for match in re.finditer(r"\S+", text)]
        return SimpleNamespace(input_ids=[int(text[start:end]) for start, end in spans], offset_mapping=spans)

    def decode(self, token_ids, skip_special_tokens=True):
        return " ".join(map(str, token_ids))


class FrameEncoder:
    """Stands in for Whisper: [frames, 512] per chunk, 50 frames per second of 16 kHz audio; its draft
    of a chunk is a few token ids as words, each as sure as ``word_probability``."""

    def __init__(self, word_probability: float = 0.5) -> None:
        self.word_probability = word_probability

    def encode_with_drafts(self, chunks, drafts=True, search=None, margin_s=None):
        frames = [torch.randn(len(chunk) // 320, 512) for chunk in chunks]
        words = tuple(DraftWord(start, start + 2, self.word_probability) for start in (0, 3, 6))
        return frames, [Draft("11 12 13", words, end_probability=1.0) for _ in chunks] if drafts else []


def test_each_recording_gets_its_own_engine_sized_for_it(model):
    short, long = (
        model.open_engine(CONFIG, expected_seconds=10),
        model.open_engine(CONFIG, expected_seconds=600),
    )
    assert short is not long and short.cache is not long.cache
    assert short.model is long.model is model.llm  # weights shared, never copied
    assert (short.max_context, long.max_context) == (context_tokens(10), context_tokens(600))
    assert long.cache.shape.num_pages > short.cache.shape.num_pages
    assert model.open_engine(replace(CONFIG, max_context=64)).max_context == 64  # no duration: the config's


def test_sessions_sharing_an_engine_own_only_their_sequence(model):
    engine = model.open_engine(replace(CONFIG, max_batch=2), expected_seconds=5)
    first, second = model.open_session(engine), model.open_session(engine)
    assert first.engine is second.engine is engine and first.seq.seq_id != second.seq.seq_id
    for session in (first, second):
        assert engine.cache.length(session.seq.seq_id) == len(PROMPT.session_start)
    free_before = engine.cache.allocator.num_free
    first.close()
    # its one page back, the other session untouched
    assert engine.cache.allocator.num_free == free_before + 1
    assert engine.cache.length(second.seq.seq_id) == len(PROMPT.session_start)
    second.close()


def test_a_session_refuses_an_engine_over_other_weights(model, tmp_path):
    save_tiny_model("llama", tmp_path, seed=1)
    other, _ = load_model(tmp_path)
    from asr.llm.engine import LLMEngine

    with pytest.raises(ValueError, match="open_engine"):
        model.open_session(LLMEngine(other, CONFIG))


def test_caller_encodes_and_the_session_takes_embeddings(model):
    """``encode_chunks`` (the one encoder call) gives [audio_tokens, hidden] in the LLM's dtype; a
    session appends them with its prompt pieces and never encodes itself."""
    from asr.speech.repetition import LoopConfig

    audio = np.zeros(16000, dtype=np.float32)
    (encoded,) = model.encode_chunks([audio])
    embeds = encoded.embeds
    assert (
        encoded.draft is None
        and embeds.dtype == model.dtype
        and embeds.shape == (13, model.llm.embed_tokens.weight.shape[1])
    )
    without_encoder = replace(model, encoder=None)  # an encoder call from inside the session would fail
    engine = without_encoder.open_engine(CONFIG, 5)
    with without_encoder.open_session(
        engine, LoopConfig(tokens_per_second=1.0, extra_tokens=1), None
    ) as session:
        before = session.seq.num_tokens
        session.transcribe_chunk(audio, 0.0, encoded=encoded)
        appended = len(PROMPT.before_audio) + embeds.shape[0] + len(PROMPT.after_audio)
        assert session.seq.num_tokens >= before + appended and session.stats.chunks == 1


def test_a_drafted_chunk_reads_its_draft_and_verifies_it_as_the_proposal(model):
    """With drafts, the chunk's user turn holds the draft's ids, and the greedy decode first checks the
    draft (plus the end of the turn) as its proposal."""
    from asr.speech.repetition import LoopConfig

    drafted = replace(model, drafts=True)
    audio = np.zeros(16000, dtype=np.float32)
    (encoded,) = drafted.encode_chunks([audio])
    assert encoded.draft.text == "11 12 13"
    engine = drafted.open_engine(CONFIG, 5)
    correcting = DraftDecoding(rescore=False)
    with drafted.open_session(engine, LoopConfig(tokens_per_second=1.0, extra_tokens=3), None,
                              correcting) as session:
        before = session.seq.num_tokens
        session.transcribe_chunk(audio, 0.0, encoded=encoded)
        turn_end = PROMPT.before_draft + [11, 12, 13] + PROMPT.after_draft
        assert session.seq.num_tokens >= before + len(PROMPT.before_audio) + encoded.embeds.shape[0] + len(
            turn_end
        )
        assert session.stats.draft_tokens == 4  # three draft tokens and the end of the turn
        assert 0 <= session.stats.accepted_tokens <= 4


def test_a_draft_whisper_was_sure_of_is_kept_whole_and_prefilled_with_the_next_chunk(model):
    """Every word and the end at or above the gate: the draft is the transcript and the LLM decodes
    nothing for it; its tokens (and the turn's end) go into the context with the next chunk."""
    from asr.speech.repetition import LoopConfig

    sure = replace(model, drafts=True, encoder=FrameEncoder(word_probability=0.99))
    audio = np.zeros(16000, dtype=np.float32)
    engine = sure.open_engine(CONFIG, 5)
    with sure.open_session(engine, LoopConfig(tokens_per_second=1.0, extra_tokens=3), None) as session:
        (encoded,) = sure.encode_chunks([audio])
        before = session.seq.num_tokens
        segment = session.transcribe_chunk(audio, 0.0, encoded=encoded)
        # rescoring (the default) reads the audio alone: no draft in the user turn
        chunk_prompt = len(PROMPT.before_audio) + encoded.embeds.shape[0] + len(PROMPT.after_audio)
        assert segment.text == "11 12 13" and session.stats.drafts_kept == 1
        assert session.seq.num_tokens == before + chunk_prompt  # nothing decoded
        assert session.pending == [11, 12, 13] + PROMPT.after_transcript
        after_first = session.seq.num_tokens
        session.transcribe_chunk(audio, 1.0, encoded=encoded)
        kept_turn = len([11, 12, 13] + PROMPT.after_transcript)
        assert session.seq.num_tokens == after_first + kept_turn + chunk_prompt


def test_kept_drafts_wait_for_the_next_chunk_the_llm_reads_and_leave_the_same_context(model):
    """With ``defer_kept``, chunks whose drafts are kept whole are not prefilled until a chunk the LLM must
    read: the transcripts, the context and its next-token logits are those of prefilling each at once."""
    from asr.speech.model import EncodedChunk
    from asr.speech.repetition import LoopConfig

    sure = replace(model, drafts=True, encoder=FrameEncoder(word_probability=0.99))
    audio = np.zeros(16000, dtype=np.float32)
    torch.manual_seed(0)
    kept = [sure.encode_chunks([audio])[0] for _ in range(2)]
    unsure_words = tuple(DraftWord(start, start + 2, 0.6) for start in (0, 3, 6))
    unsure = EncodedChunk(sure.encode_chunks([audio])[0].embeds, Draft(
        "11 12 13", unsure_words, 1.0, logprob=-5.0, alternatives=(Hypothesis("11 14 13", -1.0),)))
    loop = LoopConfig(tokens_per_second=5.0, extra_tokens=3)
    outcomes = []
    for defer_kept in (0, 2):
        engine = sure.open_engine(CONFIG, 10)
        with sure.open_session(engine, loop, None, defer_kept=defer_kept) as session:
            started = session.seq.num_tokens
            texts = [session.transcribe_chunk(audio, float(index), encoded=chunk).text
                     for index, chunk in enumerate(kept)]
            held_back = session.seq.num_tokens == started
            texts.append(session.transcribe_chunk(audio, 2.0, encoded=unsure).text)
            assert not session.deferred and session.stats.drafts_kept == 2
            outcomes.append((texts, held_back, list(session.seq.token_ids), session.seq.next_logits.clone()))
    (texts, held_back, context, logits), (deferred_texts, deferred_held_back, deferred_context,
                                          deferred_logits) = outcomes
    assert texts == deferred_texts and texts[0] == "11 12 13"
    assert (held_back, deferred_held_back) == (False, True)
    assert context == deferred_context
    torch.testing.assert_close(deferred_logits, logits, rtol=1e-4, atol=1e-4)


def test_deferred_chunks_are_bounded_and_flushed_with_the_last_transcript(model):
    """At most ``defer_kept`` kept chunks wait: the next one goes in with them; ``flush`` prefills the
    waiting ones and the last transcript's closing tokens, so the context holds everything."""
    from asr.speech.repetition import LoopConfig

    sure = replace(model, drafts=True, encoder=FrameEncoder(word_probability=0.99))
    audio = np.zeros(16000, dtype=np.float32)
    (encoded,) = sure.encode_chunks([audio])
    chunk_prompt = len(PROMPT.before_audio) + encoded.embeds.shape[0] + len(PROMPT.after_audio)
    kept_turn = len([11, 12, 13] + PROMPT.after_transcript)
    engine = sure.open_engine(CONFIG, 10)
    with sure.open_session(engine, LoopConfig(tokens_per_second=5.0, extra_tokens=3), None,
                           defer_kept=2) as session:
        started = session.seq.num_tokens
        for index in range(3):
            session.transcribe_chunk(audio, float(index), encoded=encoded)
        assert not session.deferred  # the third could not wait: all three went in together
        assert session.seq.num_tokens == started + 3 * chunk_prompt + 2 * kept_turn
        session.transcribe_chunk(audio, 3.0, encoded=encoded)
        assert len(session.deferred) == 1
        session.flush()
        assert not session.deferred and not session.pending
        assert session.seq.num_tokens == started + 4 * chunk_prompt + 4 * kept_turn
        session.flush()  # nothing waits: nothing changes
        assert session.seq.num_tokens == started + 4 * chunk_prompt + 4 * kept_turn


def _picked(model, draft, decoding):
    """The transcript a session writes for one chunk whose draft is ``draft``; and the LLM's scores of
    the draft and its readings from the same context."""
    from asr.speech.model import EncodedChunk
    from asr.speech.repetition import LoopConfig

    drafted = replace(model, drafts=True)
    audio = np.zeros(16000, dtype=np.float32)
    torch.manual_seed(0)
    encoded = EncodedChunk(drafted.encode_chunks([audio])[0].embeds, draft)
    engine = drafted.open_engine(CONFIG, 5)
    loop = LoopConfig(tokens_per_second=5.0, extra_tokens=3)
    with drafted.open_session(engine, loop, None, decoding) as session:
        segment = session.transcribe_chunk(audio, 0.0, encoded=encoded)
        readings = [draft, *draft.alternatives]
        ids = [[int(word) for word in reading.text.split()] + [PROMPT.end_of_turn] for reading in readings]
        llm = engine.score_continuations(session.seq, ids)
        return segment.text, llm, readings


def test_an_unsure_chunk_takes_the_reading_whisper_and_the_llm_like_best(model):
    """Rescoring: the draft and Whisper's other readings are scored by Whisper's log-probability plus
    llm_weight times the LLM's; weight 0 is Whisper's favourite, a huge weight the LLM's."""
    words = tuple(DraftWord(start, start + 2, 0.6) for start in (0, 3, 6))
    draft = Draft("11 12 13", words, 1.0, logprob=-5.0,
                  alternatives=(Hypothesis("11 14 13", -1.0), Hypothesis("20 21", -3.0)))
    text, _, _ = _picked(model, draft, DraftDecoding(gate=0.9, llm_weight=0.0))
    assert text == "11 14 13"
    text, llm, readings = _picked(model, draft, DraftDecoding(gate=0.9, llm_weight=1e6))
    assert text == readings[int(np.argmax(llm))].text


def test_readings_that_change_a_sure_word_are_never_picked(model):
    words = (DraftWord(0, 2, 0.99), DraftWord(3, 5, 0.6), DraftWord(6, 8, 0.6))  # "11" sure
    draft = Draft("11 12 13", words, 1.0, logprob=-5.0,
                  alternatives=(Hypothesis("20 21", -0.1), Hypothesis("11 14 13", -1.0)))
    text, _, _ = _picked(model, draft, DraftDecoding(gate=0.9, llm_weight=0.0))
    assert text == "11 14 13"  # "20 21" is Whisper's favourite but drops the sure "11"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_converted_weights_are_cached_and_loaded_as_built(tmp_path, dtype):
    """The first load adapts, fuses and converts the weights and writes them to ``converted_dir``; the
    next load reads them from there without adapting again and gives the same model."""
    from asr.llm.loader import CONVERTED_FILE

    save_tiny_model("llama", tmp_path / "llm")
    adapted = []

    def adapt(weights):  # stands in for merging a speech adapter's LoRA
        adapted.append(True)
        weights["model.layers.0.mlp.down_proj.weight"] += 1.0

    cache = tmp_path / "converted"
    first, _ = load_model(tmp_path / "llm", dtype=dtype, adapt_weights=adapt, converted_dir=cache)
    assert adapted == [True] and (cache / CONVERTED_FILE).is_file()
    second, _ = load_model(tmp_path / "llm", dtype=dtype, adapt_weights=adapt, converted_dir=cache)
    assert adapted == [True], "the cached weights were adapted again"
    plain, _ = load_model(tmp_path / "llm", dtype=dtype)
    for (name, a), (_, b), (_, c) in zip(first.state_dict().items(), second.state_dict().items(),
                                         plain.state_dict().items()):
        assert a.dtype == b.dtype == dtype and torch.equal(a, b), name
        if name == "layers.0.mlp.down_proj.weight":
            assert torch.allclose(a.float(), c.float() + 1.0, atol=1e-2), "the adaptation was lost"
    assert second.lm_head.weight is second.embed_tokens.weight or not second.config.tie_word_embeddings


def test_merged_weights_dir_changes_with_adapter_dtype_and_llm(tmp_path, monkeypatch):
    from asr.speech.adapter import SpeechAdapter
    from asr.speech.model import merged_weights_dir

    monkeypatch.setenv("ASR_CACHE_DIR", str(tmp_path / "cache"))
    save_tiny_model("llama", tmp_path / "llm")
    projector = FrameStackProjector(ProjectorConfig(llm_dim=64, hidden=32))
    from asr.llm.lora import LoraConfig

    SpeechAdapter(projector.config, LoraConfig(rank=2), projector.state_dict(), {}, {"steps": 1}).save(
        tmp_path / "a")
    SpeechAdapter(projector.config, LoraConfig(rank=2), projector.state_dict(), {}, {"steps": 2}).save(
        tmp_path / "b")
    llm = str(tmp_path / "llm")
    base = merged_weights_dir(tmp_path / "a", llm, torch.float32)
    assert base.parent == tmp_path / "cache" / "merged"
    assert base == merged_weights_dir(tmp_path / "a", llm, torch.float32)
    assert base != merged_weights_dir(tmp_path / "b", llm, torch.float32)
    assert base != merged_weights_dir(tmp_path / "a", llm, torch.bfloat16)
    save_tiny_model("llama", tmp_path / "llm", seed=3)  # the LLM's weights rewritten
    assert base != merged_weights_dir(tmp_path / "a", llm, torch.float32)
