"""training/gpu_stage.sh: inputs travel there in parts and come back whole; what comes back is only
what was written there after unpacking."""

import os
import subprocess
import time
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "training" / "gpu_stage.sh"


def run(stage, *args, back_mb="1"):
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], cwd=SCRIPT.parents[1], capture_output=True,
                          text=True, check=True,
                          env={"STAGE": str(stage), "BACK_MB": back_mb, "PATH": "/usr/bin:/bin"}).stdout


def test_inputs_travel_in_parts_and_new_files_come_back(tmp_path):
    source = tmp_path / "here" / "speech"
    (source / "kokoro" / "audio").mkdir(parents=True)
    staged = os.urandom(2_500_000)
    (source / "kokoro" / "audio" / "old.ogg").write_bytes(staged)
    (source / "kokoro" / "manifest.jsonl").write_text('{"id": "old"}\n')
    hour_ago = time.time() - 3600  # staged files were made long before (tar keeps their times)
    for path in source.rglob("*"):
        os.utime(path, (hour_ago, hour_ago))
    parts = tmp_path / "parts"
    run(tmp_path / "unused", "pack", parts, 1, source)
    part_files = sorted(parts.glob("p*/part"))
    assert len(part_files) == 3  # 2.5 MB of audio in parts of 1 MB

    there = tmp_path / "there"
    for part in part_files:  # one call each
        run(there, "part", part)
    run(there, "unpack", (parts / "SHA256").read_text().strip())
    assert (there / "speech" / "kokoro" / "audio" / "old.ogg").read_bytes() == staged

    made = os.urandom(5_500_000)  # what the job writes there: a new file, and a line on the manifest
    (there / "speech" / "kokoro" / "audio" / "new.ogg").write_bytes(made)
    with (there / "speech" / "kokoro" / "manifest.jsonl").open("a") as manifest:
        manifest.write('{"id": "new"}\n')
    minute_ago = time.time() - 60  # unpacked before the job wrote (file times may be coarse)
    os.utime(there / "unpacked", (minute_ago, minute_ago))
    calls = []
    while True:
        out = tmp_path / f"out{len(calls)}"
        out.mkdir()
        calls.append(out)
        left = int(run(there, "back", out, "speech").split("parts left:")[1])
        if left == 0:
            break
    # 5.5 MB and a manifest in parts of 1 MB: 4 in the first call, 2 in the second
    assert [len(list(out.glob("part-*"))) for out in calls] == [4, 2]
    back = [str(p) for out in calls for p in out.glob("part-*")]

    here = tmp_path / "joined"
    run(tmp_path, "join", here, calls[-1] / "SHA256", *reversed(back))  # any order of arguments
    kokoro = here / "speech" / "kokoro"
    assert (kokoro / "audio" / "new.ogg").read_bytes() == made
    assert (kokoro / "manifest.jsonl").read_text().splitlines() == ['{"id": "old"}', '{"id": "new"}']
    assert not (kokoro / "audio" / "old.ogg").exists()  # it was there already: not brought back


def test_join_refuses_parts_that_do_not_match(tmp_path):
    (tmp_path / "part-00").write_bytes(b"not the tar")
    (tmp_path / "SHA256").write_text("0" * 64 + "\n")
    result = subprocess.run(["bash", str(SCRIPT), "join", str(tmp_path / "dest"), str(tmp_path / "SHA256"),
                             str(tmp_path / "part-00")], capture_output=True, text=True)
    assert result.returncode != 0 and not (tmp_path / "dest").exists()
