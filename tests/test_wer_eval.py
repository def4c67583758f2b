"""eval/wer.py: item building (plain and long-form), resumable CSV, two-rank shards merged by rank 0,
summary.json; with a deterministic stand-in transcriber on real wav files. Then the whisper-hf
system (``WhisperReference``) on real speech, short and long-form."""

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.normalize import error_rates
from asr.speech.audio import SAMPLE_RATE, load_audio
from eval import wer

DEV = Path("/work/shared/data/speech_dev")
# Five utterances of distinct lengths (the stand-in transcriber tells them apart by length).
SECONDS = (1.0, 1.3, 1.7, 2.2, 2.9)
TEXTS = ("the cat sat", "on the mat today", "a quick brown fox", "jumps over the lazy dog", "and runs away")
# The stand-in's one mistake: utterance 3 ("jumps over the lazy dog") loses its last word.
WRONG = {3: "jumps over the lazy"}




@pytest.fixture()
def manifest(tmp_path) -> Path:
    """wav files of tones (one frequency each) and a manifest with ids u0..u4, texts and durations."""
    rng = np.random.default_rng(0)
    lines = []
    for index, (seconds, text) in enumerate(zip(SECONDS, TEXTS)):
        t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
        audio = 0.3 * np.sin(2 * np.pi * (200 + 100 * index) * t) + 0.01 * rng.standard_normal(t.size)
        sf.write(tmp_path / f"u{index}.wav", audio.astype(np.float32), SAMPLE_RATE, subtype="FLOAT")
        lines.append(
            json.dumps({"id": f"u{index}", "audio": f"u{index}.wav", "text": text, "duration_s": seconds})
        )
    path = tmp_path / "manifest.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


class StandIn:
    """Transcribes a run of consecutive manifest utterances (joined with the long-form gap) by its
    length; raises ``RuntimeError`` on call number ``fail_at`` (1-based) when given."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.calls, self.fail_at = 0, fail_at
        lengths = [round(seconds * SAMPLE_RATE) for seconds in SECONDS]
        gap = round(wer.LONGFORM_GAP_S * SAMPLE_RATE)
        said = [WRONG.get(index, text) for index, text in enumerate(TEXTS)]
        runs = [(first, last) for first in range(len(TEXTS)) for last in range(first, len(TEXTS))]
        self.by_samples = {
            sum(lengths[a : b + 1]) + gap * (b - a): " ".join(said[a : b + 1]) for a, b in runs
        }
        assert len(self.by_samples) == len(runs), "two runs of utterances have one length: change SECONDS"

    def __call__(self, audio: np.ndarray) -> str:
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("killed mid-way")
        return self.by_samples[len(audio)]


def _args(manifest: Path, longform: float = 0) -> argparse.Namespace:
    return argparse.Namespace(
        system="stand-in",
        attention="dense",
        budget=0,
        max_distance=0,
        dtype="bfloat16",
        model=None,
        longform=longform,
        device="cpu",
        drafts=False,
        draft_gate=0.9,
        draft_tolerance=0.0,
        draft_end_tolerance=5.0,
        manifest=manifest,
    )


def _rows(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_items_are_the_utterances_in_manifest_order(manifest):
    items = wer.build_items(manifest, 0, None)
    assert [item.id for item in items] == ["u0", "u1", "u2", "u3", "u4"]
    assert [item.text for item in items] == list(TEXTS)
    assert [item.id for item in wer.build_items(manifest, 0, 3)] == ["u0", "u1", "u2"]
    np.testing.assert_array_equal(items[2].load(), load_audio(str(manifest.parent / "u2.wav")))


@pytest.mark.parametrize("with_durations", [True, False], ids=["durations", "no-durations"])
def test_longform_joins_consecutive_utterances_in_order(manifest, with_durations):
    if not with_durations:  # durations then come from the files
        rows = [json.loads(line) for line in manifest.read_text().splitlines()]
        manifest.write_text("".join(json.dumps({k: v for k, v in row.items() if k != "duration_s"}) + "\n"
                                    for row in rows))
    # 4 s recordings: u0+u1+u2 reach 1.0+1.3+1.7 s plus three 0.5 s gaps = 5.5 s; u3+u4 are the rest.
    items = wer.build_items(manifest, 4 / 60, None)
    assert [item.id for item in items] == ["u0..u2", "u3..u4"]
    assert items[0].text == "the cat sat on the mat today a quick brown fox"
    assert items[1].text == "jumps over the lazy dog and runs away"
    gap = np.zeros(int(wer.LONGFORM_GAP_S * SAMPLE_RATE), np.float32)
    parts = [load_audio(str(manifest.parent / f"u{index}.wav")) for index in range(3)]
    joined = items[0].load()
    np.testing.assert_array_equal(joined, np.concatenate([parts[0], gap, parts[1], gap, parts[2]]))
    assert len(joined) == round((1.0 + 1.3 + 1.7 + 2 * wer.LONGFORM_GAP_S) * SAMPLE_RATE)


def test_longform_rows_carry_the_joined_duration_and_text(manifest, tmp_path):
    items = wer.build_items(manifest, 4 / 60, None)
    wer.run_shard(items, StandIn(), tmp_path / "utterances.rank0.csv", "test")
    rows = _rows(tmp_path / "utterances.rank0.csv")
    assert [float(row["duration"]) for row in rows] == [5.0, 5.6]  # the gap between, not after
    assert rows[0]["hypothesis"] == rows[0]["reference"] == items[0].text and float(rows[0]["wer"]) == 0
    assert rows[1]["hypothesis"] == "jumps over the lazy and runs away"
    assert float(rows[1]["wer"]) == pytest.approx(1 / 8, abs=1e-4)


def test_a_killed_run_resumes_with_the_unfinished_items(manifest, tmp_path):
    items, path = wer.build_items(manifest, 0, None), tmp_path / "utterances.rank0.csv"
    with pytest.raises(RuntimeError, match="killed mid-way"):
        wer.run_shard(items, StandIn(fail_at=3), path, "test")
    assert [row["id"] for row in _rows(path)] == ["u0", "u1"]
    resumed = StandIn()
    wer.run_shard(items, resumed, path, "test")
    assert resumed.calls == 3
    rerun = StandIn()
    wer.run_shard(items, rerun, path, "test")  # all finished: nothing transcribed again
    assert rerun.calls == 0
    rows = _rows(path)
    assert [row["id"] for row in rows] == ["u0", "u1", "u2", "u3", "u4"]
    assert [row["hypothesis"] for row in rows] == [WRONG.get(i, text) for i, text in enumerate(TEXTS)]


def test_resume_repairs_a_half_written_row_and_an_empty_file(manifest, tmp_path):
    items, path = wer.build_items(manifest, 0, None), tmp_path / "utterances.rank0.csv"
    path.write_text("")  # killed before the header reached the disk
    wer.run_shard(items[:2], StandIn(), path, "test")
    with path.open("a") as f:
        f.write("u2,2.0,0.1,0.0")  # killed mid-row
    wer.run_shard(items, StandIn(), path, "test")
    rows = _rows(path)
    assert [row["id"] for row in rows] == ["u0", "u1", "u2", "u3", "u4"]
    assert all(row["hypothesis"] for row in rows)


def test_two_ranks_merge_into_the_single_rank_result(manifest, tmp_path):
    items = wer.build_items(manifest, 0, None)
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    single.mkdir(), sharded.mkdir()
    wer.run_shard(items, StandIn(), single / "utterances.rank0.csv", "rank 0")
    expected = wer.merge(single, 1, items, _args(manifest))
    rank_calls = []
    for rank in (1, 0):  # rank 1 finishing first must not change the order
        transcribe = StandIn()
        wer.run_shard(items[rank::2], transcribe, sharded / f"utterances.rank{rank}.csv", f"rank {rank}")
        rank_calls.append(transcribe.calls)
    assert rank_calls == [2, 3]
    summary = wer.merge(sharded, 2, items, _args(manifest))
    merged = _rows(sharded / "utterances.csv")
    assert [row["id"] for row in merged] == ["u0", "u1", "u2", "u3", "u4"]
    assert [row["hypothesis"] for row in merged] == [
        row["hypothesis"] for row in _rows(single / "utterances.csv")
    ]
    assert {key: summary[key] for key in ("wer", "cer", "items", "audio_seconds")} == \
           {key: expected[key] for key in ("wer", "cer", "items", "audio_seconds")}
    assert json.loads((sharded / "summary.json").read_text()) == json.loads(json.dumps(summary))


def test_summary_holds_corpus_wer_and_cer_as_fractions(manifest, tmp_path):
    items = wer.build_items(manifest, 0, None)
    wer.run_shard(items, StandIn(), tmp_path / "utterances.rank0.csv", "test")
    wer.merge(tmp_path, 1, items, _args(manifest))
    summary = json.loads((tmp_path / "summary.json").read_text())
    hypotheses = [WRONG.get(i, text) for i, text in enumerate(TEXTS)]
    total_words = sum(len(text.split()) for text in TEXTS)
    assert summary["wer"] == pytest.approx(1 / total_words)  # one deleted word: a fraction, not a percentage
    assert summary["cer"] == pytest.approx(error_rates(list(TEXTS), hypotheses)[1])
    assert 0 < summary["cer"] < summary["wer"] < 1
    assert summary["items"] == 5 and summary["audio_seconds"] == pytest.approx(sum(SECONDS))
    rows = _rows(tmp_path / "utterances.csv")
    compute_s = sum(float(row["seconds"]) for row in rows)
    assert summary["rtf"] == pytest.approx(compute_s / sum(SECONDS)) and summary["system"] == "stand-in"


def test_an_item_with_an_empty_reference_is_kept_unscored(manifest, tmp_path):
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    rows[1]["text"] = "Um, uh."  # fillers: normalises to nothing
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    items = wer.build_items(manifest, 0, None)
    wer.run_shard(items, StandIn(), tmp_path / "utterances.rank0.csv", "test")
    scored = _rows(tmp_path / "utterances.rank0.csv")
    assert scored[1]["wer"] == "" and scored[0]["wer"] == "0.0"
    summary = wer.merge(tmp_path, 1, items, _args(manifest))
    assert summary["items"] == 5 and 0 < summary["wer"] < 1


@pytest.fixture(scope="module")
def reference():
    if not (DEV / "manifest.jsonl").is_file():
        pytest.skip("the shared dev set is absent")
    from asr.speech.whisper_reference import WhisperReference

    return WhisperReference(None, device="cpu")


def _dev_rows(count: int) -> list[dict]:
    return [json.loads(line) for line in (DEV / "manifest.jsonl").read_text().splitlines()[:count]]


@pytest.mark.slow
def test_whisper_reference_transcribes_real_speech(reference):
    row = _dev_rows(3)[2]  # "you don't mean that you thought me so silly", 2.8 s
    text = reference.transcribe(load_audio(str(DEV / row["audio"])))
    assert "silly" in text.lower()
    assert error_rates([row["text"]], [text])[0] <= 0.15


@pytest.mark.slow
def test_whisper_reference_transcribes_past_30_seconds(reference):
    """Three utterances joined (30.5 s, over one window): long-form generation keeps all three."""
    rows = _dev_rows(3)
    audio = np.concatenate([load_audio(str(DEV / row["audio"])) for row in rows])
    assert len(audio) > 30 * SAMPLE_RATE
    text = reference.transcribe(audio)
    assert "iron" in text.lower() and "thornton" in text.lower() and "silly" in text.lower()
    assert error_rates([" ".join(row["text"] for row in rows)], [text])[0] <= 0.15


def test_an_output_directory_resumes_only_the_same_run(manifest, tmp_path):
    config = wer.run_config(_args(manifest))
    wer.claim_output(tmp_path, config)
    wer.claim_output(tmp_path, config)  # the same run: resumes
    with pytest.raises(SystemExit, match="budget: 0 -> 512"):
        wer.claim_output(tmp_path, {**config, "budget": 512})
    unrecorded = tmp_path / "old"
    unrecorded.mkdir()
    (unrecorded / "utterances.rank0.csv").write_text("id\n")
    with pytest.raises(SystemExit, match="did not record"):
        wer.claim_output(unrecorded, config)


def test_a_retrained_adapter_is_another_run(manifest, tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter.json").write_text("{}")
    args = _args(manifest)
    args.system, args.model = "speech-llm", str(adapter)
    before = wer.run_config(args)
    (adapter / "adapter.json").write_text('{"steps": 2}')
    assert wer.run_config(args)["model"] != before["model"]
