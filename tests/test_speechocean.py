"""speechocean762's Kaldi lists become manifests the training and eval code read."""

import numpy as np
import soundfile as sf

from asr.corpus import read_corpus
from training.speechocean import convert_half, sentence_case


def test_sentence_case_keeps_the_pronoun_upper_case():
    assert sentence_case("MARK IS GOING TO SEE ELEPHANT") == "Mark is going to see elephant."
    assert sentence_case("I THINK I'M IN TIME") == "I think I'm in time."
    assert sentence_case("   ") == ""


def test_a_half_becomes_a_manifest_with_its_audio(tmp_path):
    root = tmp_path / "so762"
    (root / "WAVE" / "SPEAKER0001").mkdir(parents=True)
    (root / "train").mkdir()
    lines = {"000010011": "WE CALL IT BEAR", "000010035": "ZERO THREE FIVE ONE"}
    for index, utt_id in enumerate(lines):
        tone = np.sin(np.arange(8000 * (index + 1)) / 16000 * 2 * np.pi * 200).astype(np.float32) * 0.3
        sf.write(root / "WAVE" / "SPEAKER0001" / f"{utt_id}.WAV", tone, 16000, subtype="PCM_16")
    (root / "train" / "text").write_text("".join(f"{k}\t{v}\n" for k, v in lines.items()))
    (root / "train" / "wav.scp").write_text("".join(f"{k}\tWAVE/SPEAKER0001/{k}.WAV\n" for k in lines))
    assert convert_half(root, "train", tmp_path / "out", "flac") == 2
    rows = read_corpus(tmp_path / "out" / "train")
    assert [row.text for row in rows] == ["We call it bear.", "Zero three five one."]
    assert [round(row.duration, 2) for row in rows] == [0.5, 1.0]
    assert np.abs(rows[1].load()).max() > 0.25  # the audio itself came along
