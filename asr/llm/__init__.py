"""Decoder-only LLM engine on the paged KV cache: loader, model, runner, sampler, generation.

    from asr.llm import LLMEngine, EngineConfig, SamplingParams, embedded_llm_dir
    engine = LLMEngine.from_pretrained(embedded_llm_dir(), EngineConfig(attention="unique"))
    seq = engine.new_sequence()
    engine.append(seq, token_ids=engine.chat_prompt([{"role": "user", "content": "Hi"}]))
    print(engine.tokenizer.decode(engine.generate(seq, SamplingParams(max_tokens=32))))
"""

from asr.llm.config import EngineConfig, ModelConfig, SamplingParams
from asr.llm.embedded import embedded_llm_dir
from asr.llm.engine import LLMEngine
from asr.llm.sequence import Sequence

__all__ = ["EngineConfig", "LLMEngine", "ModelConfig", "SamplingParams", "Sequence", "embedded_llm_dir"]
