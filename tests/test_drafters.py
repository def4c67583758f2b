"""The two drafters (CTranslate2 on the CPU, transformers on CUDA and in training) read the same weights:
on real speech they write the same draft with close word probabilities and log-probabilities, and both
find other readings of a draft they are asked to doubt."""

import json
from pathlib import Path

import pytest

from asr.speech.draft import AlternativeSearch
from asr.speech.encoder import AudioEncoder

pytestmark = pytest.mark.slow
DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "speech_dev"


@pytest.mark.skipif(not (DEV / "manifest.jsonl").is_file(), reason="shared dev set absent")
def test_ctranslate2_and_transformers_drafts_agree():
    from asr.speech.audio import load_audio

    rows = [json.loads(line) for line in (DEV / "manifest.jsonl").read_text().splitlines()[2:4]]
    chunks = [load_audio(DEV / row["audio"]) for row in rows]
    doubt_everything = AlternativeSearch(gate=1.01, count=3)
    drafts = {
        backend: AudioEncoder.load(None, device="cpu", backend=backend, ct2_compute_type="float32",
                                   drafts=True).encode_with_drafts(chunks, search=doubt_everything)[1]
        for backend in ("ctranslate2", "torch")
    }
    for ct2, hf in zip(drafts["ctranslate2"], drafts["torch"]):
        assert ct2.text == hf.text and ct2.text
        assert len(ct2.words) == len(hf.words) == len(ct2.text.split())
        for ours, theirs in zip(ct2.words, hf.words):
            assert (ours.start, ours.end) == (theirs.start, theirs.end)
            assert abs(ours.probability - theirs.probability) < 0.05
        assert ct2.logprob == pytest.approx(hf.logprob, abs=0.3) and ct2.logprob < 0
        assert ct2.alternatives and hf.alternatives
        assert all(other.text != ct2.text for other in ct2.alternatives)
        shared = {other.text for other in ct2.alternatives} & {other.text for other in hf.alternatives}
        assert shared, (ct2.alternatives, hf.alternatives)
