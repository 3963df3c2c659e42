"""LLMs in JAX: a Llama / Qwen3 decoder, KV-cache generation, weights, tokenizers, GRPO.

JAX side only: the host-side ``hieramas_jax.llm`` package must not import this one at
module level. Import the submodules themselves (``from hieramas_jax.lm import generate``
is the module): ``config`` (DecoderConfig, tiny), ``decoder`` (parameters, forward, the
NNX Decoder, KVCache), ``generate`` (generation, token log-probs). Nothing is re-exported
here, so a function never shadows its submodule.
"""
