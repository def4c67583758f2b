"""Joined manifests (the hour-long benchmark recording) play the same audio files from anywhere."""

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from asr.corpus import join_manifests, read_manifest


def write_set(folder, name, count, duration_key="duration"):
    """``folder/manifest.jsonl`` of ``count`` silences of 0.1, 0.2, ... s under ``folder/audio``."""
    (folder / "audio").mkdir(parents=True)
    lines = []
    for index in range(count):
        audio = folder / "audio" / f"{name}{index}.flac"
        sf.write(audio, np.zeros(1600 * (index + 1), dtype=np.float32), 16000)
        row = {"id": f"{name}{index}", "audio": f"audio/{audio.name}", "text": f"{name} {index}.",
               duration_key: 0.1 * (index + 1), "voice": "kokoro/af_heart.100"}
        lines.append(json.dumps(row) + "\n")
    (folder / "manifest.jsonl").write_text("".join(lines))
    return folder / "manifest.jsonl"


def test_the_hour_joins_sets_in_order_with_every_field_and_absolute_paths(tmp_path):
    dev = write_set(tmp_path / "dev", "dev", 3, duration_key="duration_s")
    kokoro = write_set(tmp_path / "kokoro", "k", 2)
    out = tmp_path / "elsewhere" / "hour.jsonl"
    out.parent.mkdir()
    rows = join_manifests(out, [dev, kokoro, dev, dev, dev])
    assert [row.text for row in rows] == ["dev 0.", "dev 1.", "dev 2.", "k 0.", "k 1."] + [
        "dev 0.", "dev 1.", "dev 2."
    ] * 3
    assert sum(row.duration for row in rows) == pytest.approx(4 * 0.6 + 0.3)
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert written[4] == {"id": "k1", "audio": str((kokoro.parent / "audio" / "k1.flac").resolve()),
                          "text": "k 1.", "duration": pytest.approx(0.2), "voice": "kokoro/af_heart.100"}
    assert sf.info(str(rows[4].audio)).duration == pytest.approx(0.2)
    assert not out.with_name(out.name + ".partial").exists()


def test_a_symbolic_link_in_the_source_is_resolved_and_a_rerun_writes_the_same_bytes(tmp_path):
    """speechocean762's test100.jsonl names ``audio/X`` beside a link ``audio -> test/audio``."""
    source = write_set(tmp_path / "so762" / "test", "so", 2)
    subset = tmp_path / "so762" / "test100.jsonl"
    subset.write_text(source.read_text())
    (tmp_path / "so762" / "audio").symlink_to("test/audio")
    out = tmp_path / "hour.jsonl"
    rows = join_manifests(out, [subset])
    assert rows[1].audio == (source.parent / "audio" / "so1.flac").resolve()
    first = out.read_bytes()
    command = [sys.executable, "-m", "asr.corpus", str(out), "--join", str(subset), "--expect", "2", "0.3"]
    printed = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    assert printed == f"{out}: 2 utterances, 0.300 s, 0 audio files missing\n"
    assert out.read_bytes() == first and read_manifest(out) == rows


@pytest.mark.parametrize(
    "expect, removed, returncode",
    [
        pytest.param(("3", "0.6"), None, 0, id="as-expected"),
        pytest.param(("2", "0.6"), None, 1, id="count-differs"),
        pytest.param(("3", "0.601"), None, 1, id="a-millisecond-more"),
        pytest.param(("3", "0.6"), "k2.flac", 1, id="audio-missing"),
    ],
)
def test_expect_fails_on_any_difference_in_count_seconds_or_audio(tmp_path, expect, removed, returncode):
    manifest = write_set(tmp_path / "kokoro", "k", 3)
    if removed:
        (manifest.parent / "audio" / removed).unlink()
    command = [sys.executable, "-m", "asr.corpus", str(manifest), "--expect", *expect]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == returncode, result.stderr
    assert result.stdout == f"{manifest}: 3 utterances, 0.600 s, {int(bool(removed))} audio files missing\n"
