"""int8 linear layers on the CPU: close to the float32 engine, refused where they cannot run."""

import pytest
import torch

from asr.llm.config import EngineConfig, SamplingParams
from asr.llm.engine import LLMEngine
from asr.llm.loader import load_model
from asr.llm.quantize import is_quantized, quantize_linear_layers
from tests.test_llm_engine import save_tiny_model, token_ids


def test_int8_engine_logits_follow_float32(tmp_path):
    save_tiny_model("llama", tmp_path)
    ids = token_ids(40, seed=4)
    engines = [LLMEngine(load_model(tmp_path)[0], EngineConfig(int8_weights=flag)) for flag in (False, True)]
    assert is_quantized(engines[1].model) and not is_quantized(engines[0].model)
    logits = []
    for engine in engines:
        seq = engine.new_sequence()
        engine.append(seq, token_ids=ids)
        engine.generate(seq, SamplingParams(max_tokens=4, ignore_eos=True))
        logits.append(seq.next_logits)
    exact, quantized = logits
    error = (quantized - exact).norm() / exact.norm()
    assert 0 < error < 0.05, error  # changed (it is int8), but only slightly


def test_int8_needs_a_float32_cpu_model(tmp_path):
    save_tiny_model("llama", tmp_path)
    model, _ = load_model(tmp_path, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="float32"):
        quantize_linear_layers(model)
