"""Embeddings from any OpenAI-compatible ``/v1/embeddings`` endpoint.

Works with OpenAI, OpenRouter, vLLM, SGLang, Ollama, llama.cpp and the like.
Texts are sent in batches (several batches in flight at once); the ``openai``
client retries 408/409/429/5xx responses and connection errors with exponential
backoff and jitter, honouring ``Retry-After``.
"""

from __future__ import annotations

import concurrent.futures
import os
from typing import Sequence

import numpy as np
import openai

from hieramas_jax.encoders import base

# Sizes of well-known models, so ``dim`` needs no request for them.
KNOWN_DIMS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}


class EmbeddingRequestError(RuntimeError):
  """An embeddings request failed for good (after the client's retries)."""


class OpenAIEmbeddingEncoder:
  """Encoder over an OpenAI-compatible embeddings API (synchronous interface)."""

  def __init__(self,
               model: str = "text-embedding-3-small",
               *,
               base_url: str | None = None,
               api_key_env: str | None = "OPENAI_API_KEY",
               dim: int | None = None,
               dimensions: int | None = None,
               batch_size: int = 256,
               max_concurrency: int = 4,
               max_retries: int = 5,
               timeout_s: float = 60.0):
    """Builds the client.

    Args:
      model: the embedding model name the endpoint serves.
      base_url: endpoint root including ``/v1``; None: the client's default
        (``OPENAI_BASE_URL`` or api.openai.com).
      api_key_env: the environment variable that holds the API key; None for
        keyless local servers.
      dim: embedding size when known in advance (spares the probe request for
        models not in ``KNOWN_DIMS``).
      dimensions: ask the API for shortened embeddings (text-embedding-3 only).
      batch_size: texts per request.
      max_concurrency: requests in flight at once.
      max_retries: retries per request on 429/5xx/timeouts/connection errors.
      timeout_s: per-request timeout.
    """
    if api_key_env is None:
      api_key = "none"  # the client insists on a key; keyless servers ignore it
    else:
      api_key = os.environ.get(api_key_env, "")
      if not api_key:
        raise EnvironmentError(
            f"the OpenAI embeddings encoder reads its API key from the environment variable "
            f"{api_key_env}, which is not set; export {api_key_env}=<key>, or set api_key_env to "
            "the variable that holds the key (None for a keyless local server)")
    if batch_size < 1 or max_concurrency < 1:
      raise ValueError("batch_size and max_concurrency must be positive")
    self.model = model
    self.dimensions = dimensions
    self.batch_size = batch_size
    self.max_concurrency = max_concurrency
    self.client = openai.OpenAI(
        api_key=api_key, base_url=base_url, max_retries=max_retries, timeout=timeout_s)
    self._dim = dim or dimensions or KNOWN_DIMS.get(model)
    suffix = f":d{dimensions}" if dimensions else ""
    self._encoder_id = f"openai:{str(self.client.base_url).rstrip('/')}:{model}{suffix}"

  @property
  def encoder_id(self) -> str:
    return self._encoder_id

  @property
  def dim(self) -> int:
    """Embedding size; for an unknown model, found with one request on first use."""
    if self._dim is None:
      self._dim = self._request(["dimension probe"]).shape[1]
    return self._dim

  def _request(self, batch: list[str]) -> np.ndarray:
    kwargs = {"dimensions": self.dimensions} if self.dimensions else {}
    try:
      response = self.client.embeddings.create(
          model=self.model, input=batch, encoding_format="float", **kwargs)
    except openai.OpenAIError as err:
      raise EmbeddingRequestError(
          f"embeddings request to {self.client.base_url} (model {self.model!r}, "
          f"{len(batch)} texts) failed: {err}") from err
    items = sorted(response.data, key=lambda item: item.index)
    if [item.index for item in items] != list(range(len(batch))):
      raise EmbeddingRequestError(
          f"{self.client.base_url} returned embeddings for indices "
          f"{[item.index for item in items][:10]}... for a batch of {len(batch)} texts")
    vectors = np.asarray([item.embedding for item in items], dtype=np.float32)
    if vectors.ndim != 2 or (self._dim is not None and vectors.shape[1] != self._dim):
      raise EmbeddingRequestError(
          f"{self.client.base_url} returned embeddings of shape {vectors.shape}; expected "
          f"{self._dim} values each")
    return vectors

  def encode(self, texts: Sequence[str]) -> np.ndarray:
    texts = base.check_texts(texts)
    if not texts:
      return base.empty_embeddings(self.dim)
    # The API rejects empty strings; a single space embeds "nothing" instead.
    texts = [t if t.strip() else " " for t in texts]
    batches = [texts[i:i + self.batch_size] for i in range(0, len(texts), self.batch_size)]
    results = []
    if self._dim is None:
      # The first answer fixes the size that every later batch is checked against.
      results.append(self._request(batches.pop(0)))
      self._dim = results[0].shape[1]
    if len(batches) <= 1 or self.max_concurrency == 1:
      results.extend(self._request(b) for b in batches)
    else:
      with concurrent.futures.ThreadPoolExecutor(self.max_concurrency) as pool:
        results.extend(pool.map(self._request, batches))
    return np.concatenate(results, axis=0)
