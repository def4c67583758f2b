"""``python -m eval.bench_attention_cpu`` runs end to end on tiny shapes (its numbers are for
BENCHMARKS.md)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_writes_table_json_and_plot(tmp_path):
    out = subprocess.run([sys.executable, "-m", "eval.bench_attention_cpu", "--contexts", "256", "1024",
                          "--budgets", "128", "--repeats", "2", "--output", str(tmp_path)],
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert "copy bandwidth" in out
    result = json.loads((tmp_path / "bench_attention_cpu.json").read_text())
    rows = result["rows"]
    assert [(r["context"], r["method"], r["budget"]) for r in rows] == [
        (256, "dense", None), (256, "unique", 128), (1024, "dense", None), (1024, "unique", 128)]
    assert all(r["time_us"] > 0 and r["floor_us"] > 0 for r in rows)
    assert rows[0]["speedup_vs_dense"] == 1.0
    assert (tmp_path / "bench_attention_cpu.png").stat().st_size > 0
