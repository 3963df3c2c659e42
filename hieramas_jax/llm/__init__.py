"""LLM backends behind one async interface.

Light imports only: the OpenAI-compatible backend (``llm.openai_backend``) and the
HTTP simulator (``llm.sim_http``) are imported from their modules when needed.
"""

from hieramas_jax.llm.base import Backend, ConfigError, Message, Response, UnknownModelError, Usage, check_models
from hieramas_jax.llm.cache import CachedBackend, ResponseCache, cache_key
from hieramas_jax.llm.pool import PAPER_POOL, ModelSpec, paper_pool, pool_from_config, validate_pool
from hieramas_jax.llm.tokens import approx_tokens, count_message_tokens, count_tokens

__all__ = [
    "Backend", "ConfigError", "Message", "Response", "UnknownModelError", "Usage", "check_models",
    "CachedBackend", "ResponseCache", "cache_key",
    "PAPER_POOL", "ModelSpec", "paper_pool", "pool_from_config", "validate_pool",
    "approx_tokens", "count_message_tokens", "count_tokens",
]
