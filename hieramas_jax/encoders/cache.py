"""An on-disk embedding cache in front of any encoder.

Vectors are stored in one SQLite file keyed by (encoder_id, sha256(text)), so
training and evaluation embed each text once per encoder, across runs. The file
is a ``sqlite_store.SQLiteStore``: WAL mode lets any number of processes read
while one writes; concurrent writers wait for each other (``timeout_s``). Files
written before the format row existed open as format 1. Keep the file on a local
disk: SQLite's locking is unreliable on network file systems.
"""

from __future__ import annotations

import hashlib
import pathlib
from typing import Sequence

import numpy as np

from hieramas_jax.encoders import base
from hieramas_jax.sqlite_store import SQLiteStore

_SCHEMA = """
CREATE TABLE IF NOT EXISTS embeddings (
  encoder_id TEXT NOT NULL,
  text_sha256 TEXT NOT NULL,
  dim INTEGER NOT NULL,
  vector BLOB NOT NULL,
  PRIMARY KEY (encoder_id, text_sha256)
) WITHOUT ROWID
"""
FORMAT = 1  # the embeddings table as above (meta row "format")
# Below SQLite's smallest default limit on bound parameters (999).
_LOOKUP_CHUNK = 900


def text_key(text: str) -> str:
  """The cache key of a text (surrogates kept, so every Python str has one)."""
  return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class EmbeddingCacheError(ValueError):
  """The embedding cache file cannot be used (corrupt, unreadable or unwritable)."""


class CachedEncoder:
  """Wraps an encoder; encodes only texts not yet cached, all misses in one batch.

  Attributes:
    num_hits: texts answered from the cache so far (duplicates counted).
    num_encoded: distinct texts passed to the wrapped encoder so far.
    path: the SQLite file.
    encoder_id, dim: the wrapped encoder's (dim read on first use).

  Raises:
    EmbeddingCacheError: if the file cannot be created, read or written (naming it and the fix).
  """

  def __init__(self,
               encoder: base.Encoder,
               cache_dir: str | pathlib.Path,
               *,
               filename: str = "embeddings.sqlite",
               timeout_s: float = 60.0):
    self.encoder = encoder
    self.path = pathlib.Path(cache_dir).expanduser() / filename
    self.timeout_s = timeout_s
    self.num_hits = 0
    self.num_encoded = 0
    self.encoder_id = encoder.encoder_id
    self._store = SQLiteStore(self.path, what="embedding cache", schema=(_SCHEMA,), format_key="format",
                              format_version=FORMAT, error_type=EmbeddingCacheError, timeout_s=timeout_s)

  @property
  def dim(self) -> int:
    return self.encoder.dim  # some encoders learn it on first use (a probe request)

  def _lookup(self, encoder_id: str, keys: list[str], dim: int) -> dict[str, np.ndarray]:
    found: dict[str, np.ndarray] = {}
    for start in range(0, len(keys), _LOOKUP_CHUNK):
      chunk = keys[start:start + _LOOKUP_CHUNK]
      rows = self._store.read(
          "SELECT text_sha256, dim, vector FROM embeddings WHERE encoder_id = ? AND text_sha256 IN "
          f"({','.join('?' * len(chunk))})", [encoder_id, *chunk])
      for key, row_dim, blob in rows:
        # A row of another size is stale (written by a different build of the
        # same id); treat it as a miss and overwrite it.
        if row_dim == dim and len(blob) == 4 * dim:
          found[key] = np.frombuffer(blob, dtype="<f4")
    return found

  def encode(self, texts: Sequence[str]) -> np.ndarray:
    texts = base.check_texts(texts)
    dim = self.dim
    if not texts:
      return base.empty_embeddings(dim)
    encoder_id = self.encoder_id
    keys = [text_key(t) for t in texts]
    found = self._lookup(encoder_id, list(dict.fromkeys(keys)), dim)
    missing: dict[str, str] = {}
    for key, text in zip(keys, texts):
      if key not in found:
        missing.setdefault(key, text)
    self.num_hits += sum(key in found for key in keys)
    if missing:
      vectors = np.asarray(self.encoder.encode(list(missing.values())), dtype=np.float32)
      if vectors.shape != (len(missing), dim):
        raise ValueError(f"encoder {encoder_id} returned shape {vectors.shape}, expected "
                         f"({len(missing)}, {dim})")
      self.num_encoded += len(missing)
      self._store.write("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?)",
                        [(encoder_id, key, dim, vec.astype("<f4").tobytes()) for key, vec in zip(missing, vectors)])
      found.update(zip(missing, vectors))
    return np.stack([found[key] for key in keys]).astype(np.float32, copy=False)

  def __len__(self) -> int:
    """Vectors stored for this encoder."""
    return int(self._store.read("SELECT COUNT(*) FROM embeddings WHERE encoder_id = ?", [self.encoder_id])[0][0])

  def close(self) -> None:
    """Closes the file (a second close does nothing)."""
    self._store.close()
