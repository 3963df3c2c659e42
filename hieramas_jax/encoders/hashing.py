"""A weightless feature-hashing encoder, for the smallest tests only.

Word unigrams and bigrams plus character trigrams of each word are hashed
(with a keyed BLAKE2 hash, so results do not depend on PYTHONHASHSEED) into
``dim`` signed buckets; the vector is L2-normalised. Texts that share words get
similar vectors, which is enough for tests that need *some* query dependence;
it is never a stand-in for a configured encoder that failed to load.
"""

from __future__ import annotations

import hashlib
import re
from typing import Iterator, Sequence

import numpy as np

from hieramas_jax.encoders import base

_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)
_VERSION = 1  # bump when the features change: it is part of encoder_id (cache key)


class HashingEncoder:
  """Deterministic hashed n-gram features, L2-normalised, pure numpy."""

  def __init__(self, dim: int = 256, char_ngram: int = 3, lowercase: bool = True):
    if dim < 2:
      raise ValueError(f"dim must be at least 2, got {dim}")
    if char_ngram < 1:
      raise ValueError(f"char_ngram must be at least 1, got {char_ngram}")
    self._dim = int(dim)
    self.char_ngram = int(char_ngram)
    self.lowercase = lowercase

  @property
  def encoder_id(self) -> str:
    return f"hashing:v{_VERSION}:d{self._dim}:c{self.char_ngram}:l{int(self.lowercase)}"

  @property
  def dim(self) -> int:
    return self._dim

  def _features(self, text: str) -> Iterator[str]:
    words = _WORD.findall(text.lower() if self.lowercase else text)
    if not words:
      # One fixed feature keeps empty texts unit-length like every other text.
      yield "<empty>"
      return
    for i, word in enumerate(words):
      yield "w:" + word
      if i:
        yield f"b:{words[i - 1]} {word}"
      padded = f"<{word}>"
      for j in range(max(1, len(padded) - self.char_ngram + 1)):
        yield "c:" + padded[j:j + self.char_ngram]

  def _bucket(self, feature: str) -> tuple[int, float]:
    digest = hashlib.blake2b(feature.encode("utf-8"), digest_size=8, key=b"hieramas").digest()
    value = int.from_bytes(digest, "little")
    # The lowest bit picks the sign so collisions cancel on average.
    return (value >> 1) % self._dim, (1.0 if value & 1 else -1.0)

  def encode(self, texts: Sequence[str]) -> np.ndarray:
    texts = base.check_texts(texts)
    out = np.zeros((len(texts), self._dim), dtype=np.float64)
    for row, text in enumerate(texts):
      for feature in self._features(text):
        index, sign = self._bucket(feature)
        out[row, index] += sign
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    # All features of a text can cancel out; such a row stays zero.
    out = np.divide(out, norms, out=np.zeros_like(out), where=norms > 0)
    return out.astype(np.float32)
