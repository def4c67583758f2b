"""Decoder-only LLM engine on the paged KV cache: loader, model, runner, sampler, generation."""
