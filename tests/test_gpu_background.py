"""training/gpu_background.sh: a job outlives the call that started it and `wait` ends with it."""

import subprocess
import time
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "training" / "gpu_background.sh"


def run(stage, *args):
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=SCRIPT.parents[1], capture_output=True, text=True,
                          env={"STAGE": str(stage), "PATH": "/usr/bin:/bin"}, check=True).stdout


def test_job_outlives_its_start_and_wait_reports_its_end(tmp_path):
    assert "started" in run(
        tmp_path, "start", "job", "bash", "-c", "echo step 1; sleep 2; echo step 2; exit 3"
    )
    assert run(tmp_path, "wait", "job", "0").strip().endswith("RUNNING")  # start returned at once
    began = time.time()
    out = run(tmp_path, "wait", "job", "30")
    assert time.time() - began < 15  # returns when the job ends, not after the full wait
    assert "step 2" in out and out.strip().endswith("FINISHED (exit 3)")
    assert (tmp_path / "job.tree" / "asr").is_dir()  # it ran in its own copy of the tree


def test_stop_interrupts_the_whole_job_and_only_it(tmp_path):
    # the job's shell and its foreground child both see the SIGINT, as with Ctrl-C
    run(tmp_path, "start", "job", "bash", "-c", "trap 'echo shell interrupted; exit 130' INT; sleep 60")
    time.sleep(1)
    out = run(tmp_path, "stop", "job")  # the calling process survives its own stop
    assert "interrupted job" in out
    assert run(tmp_path, "wait", "job", "20").strip().endswith("FINISHED (exit 130)")
    assert "shell interrupted" in (tmp_path / "job.log").read_text()
    assert "already ended" in run(tmp_path, "stop", "job")
