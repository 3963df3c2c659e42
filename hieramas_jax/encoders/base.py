"""The encoder interface: texts in, float32 vectors out.

Every encoder (the Flax sentence encoder, OpenAI embeddings, the hashing
encoder, the cache wrapper) has the same three members, so models only ever see
``dim`` and arrays of shape ``[n, dim]``.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class Encoder(Protocol):
  """Maps texts to fixed-size float32 vectors."""

  @property
  def encoder_id(self) -> str:
    """Identifies the encoder and every setting that changes its vectors (cache key)."""
    ...

  @property
  def dim(self) -> int:
    """Size of one embedding."""
    ...

  def encode(self, texts: Sequence[str]) -> np.ndarray:
    """Embeds ``texts``: float32 array of shape ``[len(texts), dim]``, in input order."""
    ...


def check_texts(texts: Sequence[str]) -> list[str]:
  """The texts as a list, with a clear error for the common mistakes."""
  if isinstance(texts, str):
    # A bare string is a sequence of characters: encoding it would silently
    # embed every character on its own.
    raise TypeError("encode() takes a sequence of texts; wrap a single text in a list: [text]")
  texts = list(texts)
  for i, text in enumerate(texts):
    if not isinstance(text, str):
      raise TypeError(f"text {i} is a {type(text).__name__}, not a str")
  return texts


def empty_embeddings(dim: int) -> np.ndarray:
  """The result of encoding no texts."""
  return np.zeros((0, dim), dtype=np.float32)
