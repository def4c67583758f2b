"""The training data stream of training/train_asr.py: batches of sessions cut from length-sorted pools."""

import itertools
import json

import numpy as np
import soundfile as sf

from asr.corpus import read_corpus
from training.train_asr import POOL_BATCHES, SessionStream


def _corpus(tmp_path, count=12):
    rows = []
    for index in range(count):
        seconds = 0.5 + 0.25 * index
        sf.write(
            tmp_path / f"u{index}.wav", np.full(int(seconds * 16000), 0.01 * (index + 1), np.float32), 16000
        )
        rows.append(json.dumps({"audio": f"u{index}.wav", "text": f"utterance {index}", "duration": seconds}))
    (tmp_path / "manifest.jsonl").write_text("\n".join(rows) + "\n")
    return read_corpus(tmp_path / "manifest.jsonl")


def test_batches_from_one_pool_do_not_overlap_in_length(tmp_path):
    stream = SessionStream(_corpus(tmp_path), augment=False, seed=3, batch=5)
    batches = list(itertools.islice(iter(stream), POOL_BATCHES))
    assert all(len(batch) == 5 for batch in batches)
    lengths = sorted([sorted(sum(len(w) for w, _, _ in s) for s in batch) for batch in batches])
    for shorter, longer in zip(lengths, lengths[1:]):
        assert shorter[-1] <= longer[0]


def test_sessions_pair_each_waveform_with_its_transcript(tmp_path):
    stream = SessionStream(_corpus(tmp_path), augment=False, seed=0, batch=4)
    for batch in itertools.islice(iter(stream), 2 * POOL_BATCHES):
        for session in batch:
            assert 1 <= len(session)
            for wave, text, supervised in session:
                assert supervised
                assert wave.dtype == np.float32
                if text:  # silent chunks carry noise and no words
                    index = int(text.split()[1])
                    assert len(wave) == int((0.5 + 0.25 * index) * 16000)
                    assert np.allclose(wave, 0.01 * (index + 1), atol=1e-3)


def test_noisy_history_corrupts_only_earlier_turns_and_unsupervises_them(tmp_path):
    corpus = _corpus(tmp_path)
    references = {u.text for u in corpus}
    stream = SessionStream(corpus, augment=False, seed=1, batch=8, noisy_history=1.0)
    noisy = 0
    for batch in itertools.islice(iter(stream), 2 * POOL_BATCHES):
        for session in batch:
            *earlier, (_, last_text, last_supervised) = session
            assert last_supervised and (last_text in references or last_text == "")
            for _, text, supervised in earlier:
                assert not supervised
                noisy += text not in references
    assert noisy > 0
