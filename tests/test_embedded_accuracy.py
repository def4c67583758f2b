"""The embedded speech model really transcribes: real read speech from the shared dev set (never
trained on) comes out closer to its own transcript than to the other utterances' transcripts."""

import json
from pathlib import Path

import pytest

from asr.corpus import read_manifest
from asr.normalize import error_rates

pytestmark = pytest.mark.slow
MANIFEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "speech_dev" / "manifest.jsonl"
UTTERANCES = 8  # LJ Speech: one clear reader, 2-10 s each


@pytest.mark.skipif(not MANIFEST.exists(), reason="shared dev set absent")
def test_embedded_model_follows_real_speech():
    from asr.speech.pipeline import TranscribeOptions, load_transcriber

    ids = [json.loads(line)["id"] for line in MANIFEST.read_text().splitlines() if line.strip()]
    chosen = [utt for utt, id_ in zip(read_manifest(MANIFEST), ids) if id_.startswith("ljspeech-LJ001")][
        :UTTERANCES
    ]
    transcriber = load_transcriber(None, TranscribeOptions(attention="dense", device="cpu"))
    hypotheses = [transcriber.transcribe(utt.load()).text for utt in chosen]
    references = [utt.text for utt in chosen]
    wer, _ = error_rates(references, hypotheses)
    shifted, _ = error_rates(references[1:] + references[:1], hypotheses)
    assert wer < 0.6, f"WER {wer:.2f} on clear read speech"
    assert wer < shifted - 0.3, f"WER {wer:.2f} against its own transcripts, {shifted:.2f} against others'"
