"""int8 weights for the decoder's linear layers on the CPU.

Decoding one token reads every weight once, so on a CPU it is bound by memory bandwidth: int8 weights
(per output channel, dynamically quantised float32 activations, fbgemm's kernels) halve the bytes of
bfloat16 and quarter float32's. They are the speech LLM's default on CPUs without native bf16
(``asr.llm.cpu_defaults``): 2-2.5x faster than float32 there at the same WER on native speech; on
accented speech the LLM's guesses at chunks Whisper could not read move with any numeric change
(``BENCHMARKS.md``, CPU speed).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from asr.llm.model import CausalLM


def is_quantized(model: CausalLM) -> bool:
    return isinstance(model.lm_head, torch.ao.nn.quantized.dynamic.Linear)


def quantize_linear_layers(model: CausalLM) -> CausalLM:
    """Replace ``model``'s nn.Linear layers (the LM head too; the input embedding stays) by int8 ones in
    place; the model must be float32 on the CPU. Returns the model; a second call changes nothing."""
    if is_quantized(model):
        return model
    weight = model.embed_tokens.weight
    if weight.device.type != "cpu" or weight.dtype != torch.float32:
        raise ValueError(
            f"int8 weights need a float32 model on the CPU, not {weight.dtype} on {weight.device}"
        )
    qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
    with warnings.catch_warnings():  # eager-mode quantisation announces its move to torchao
        warnings.simplefilter("ignore")
        torch.ao.quantization.quantize_dynamic(model, {nn.Linear: qconfig}, dtype=torch.qint8, inplace=True)
    return model
