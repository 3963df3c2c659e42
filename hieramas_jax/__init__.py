"""hieramas_jax: learned LLM selection and learned topologies for multi-agent LLM systems, in JAX."""

__version__ = "0.1.0"
