"""attn_implementation="unique_softmask" in a Hugging Face Llama model built after ``import asr``."""

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import asr  # noqa: F401  (installs the registration hook)
from asr.attention.config import SoftMaskConfig, UniqueConfig
from asr.attention.hf_softmask import set_soft_mask, soft_mask_of

transformers = pytest.importorskip("transformers")

SPARSE = UniqueConfig(page_size=4, budget_tokens=16, sink_pages=1, local_pages=1)


def tiny_llama_pair(seed: int = 0):
    """The same random 2-layer GQA Llama twice: with unique_softmask and with SDPA."""
    config = transformers.LlamaConfig(
        vocab_size=97, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=6,
        num_key_value_heads=2, max_position_embeddings=256,
    )
    torch.manual_seed(seed)
    soft = transformers.AutoModelForCausalLM.from_config(
        copy.deepcopy(config), attn_implementation="unique_softmask"
    )
    sdpa = transformers.AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation="sdpa")
    sdpa.load_state_dict(soft.state_dict())
    return soft.eval(), sdpa.eval()


def test_import_asr_stays_light_and_registers_when_transformers_loads():
    script = (
        "import sys, asr; assert 'torch' not in sys.modules and 'transformers' not in sys.modules;"
        "from transformers import AttentionInterface;"
        "from transformers.masking_utils import AttentionMaskInterface;"
        "assert 'unique_softmask' in AttentionInterface._global_mapping;"
        "assert 'unique_softmask' in AttentionMaskInterface._global_mapping"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=Path(__file__).parents[1],
                   env=dict(os.environ, OMP_NUM_THREADS="1"))


@pytest.mark.parametrize("padding", ["none", "left", "right"])
def test_dense_setting_equals_sdpa_with_padding(padding):
    soft, sdpa = tiny_llama_pair()
    set_soft_mask(soft, SoftMaskConfig(sparse=None, query_block=8))
    ids = torch.randint(0, 97, (3, 37), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 37, dtype=torch.long)
    if padding == "left":
        mask[1, :9], mask[2, :36] = 0, 0
    elif padding == "right":
        mask[1, 20:], mask[2, 1:] = 0, 0
    with torch.no_grad():
        got = soft(ids, attention_mask=mask).logits
        want = sdpa(ids, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], atol=2e-5, rtol=2e-5)


def test_budget_covering_the_context_equals_sdpa_and_a_small_one_does_not():
    soft, sdpa = tiny_llama_pair()
    ids = torch.randint(0, 97, (2, 60), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = sdpa(ids).logits
        set_soft_mask(soft, SoftMaskConfig(UniqueConfig(page_size=4, budget_tokens=64), 0.1, query_block=16))
        torch.testing.assert_close(soft(ids).logits, want, atol=2e-5, rtol=2e-5)
        set_soft_mask(soft, SoftMaskConfig(SPARSE, 0.1, query_block=16))
        masked = soft(ids).logits
    assert (masked[:, 40:] - want[:, 40:]).abs().max() > 1e-3
    torch.testing.assert_close(masked[:, :16], want[:, :16], atol=2e-5, rtol=2e-5)  # within budget


def test_left_padded_row_equals_the_same_row_alone():
    """Pages of a left-padded row start at its first token, as decode's pages do."""
    soft, _ = tiny_llama_pair()
    set_soft_mask(soft, SoftMaskConfig(SPARSE, 0.3, query_block=8))
    ids = torch.randint(0, 97, (1, 41), generator=torch.Generator().manual_seed(3))
    padded = torch.cat([torch.zeros(1, 6, dtype=torch.long), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 6, dtype=torch.long), torch.ones(1, 41, dtype=torch.long)], dim=1)
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        alone = soft(ids).logits
        batched = soft(padded, attention_mask=mask, position_ids=positions).logits[:, 6:]
    torch.testing.assert_close(batched, alone, atol=2e-5, rtol=2e-5)


def test_decoding_after_a_cache_equals_the_full_forward():
    soft, _ = tiny_llama_pair()
    set_soft_mask(soft, SoftMaskConfig(SPARSE, 0.3, query_block=8))
    ids = torch.randint(0, 97, (2, 50), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full = soft(ids).logits
        prefix = soft(ids[:, :44], use_cache=True)
        rest = soft(ids[:, 44:], cache=prefix.past_key_values).logits
    torch.testing.assert_close(rest, full[:, 44:], atol=2e-5, rtol=2e-5)


def test_training_step_with_inputs_embeds_reaches_every_layer():
    soft, _ = tiny_llama_pair()
    soft.train()
    set_soft_mask(soft, SoftMaskConfig(SPARSE, 0.5, query_block=8))
    ids = torch.randint(0, 97, (2, 40), generator=torch.Generator().manual_seed(5))
    mask = torch.ones(2, 40, dtype=torch.long)
    mask[1, 33:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    loss = soft(inputs_embeds=soft.get_input_embeddings()(ids), attention_mask=mask, labels=labels).loss
    loss.backward()
    for layer in soft.model.layers:
        assert layer.self_attn.q_proj.weight.grad.abs().sum() > 0
        assert layer.self_attn.k_proj.weight.grad.abs().sum() > 0
    assert torch.isfinite(loss)


def test_hyper_parameters_live_on_the_config_as_json():
    soft, _ = tiny_llama_pair()
    config = SoftMaskConfig(UniqueConfig(page_size=8, budget_tokens=64, lam=0.5), temperature=0.25)
    set_soft_mask(soft, config)
    assert soft_mask_of(soft.config) == config
    assert '"unique_softmask"' in soft.config.to_json_string()
