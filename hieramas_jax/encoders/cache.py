"""An on-disk embedding cache in front of any encoder.

Vectors are stored in one SQLite file keyed by (encoder_id, sha256(text)), so
training and evaluation embed each text once per encoder, across runs. SQLite in
WAL mode lets any number of processes read while one writes; concurrent writers
wait for each other (``timeout_s``). Keep the file on a local disk: SQLite's
locking is unreliable on network file systems.
"""

from __future__ import annotations

import contextlib
import hashlib
import pathlib
import sqlite3
import time
from typing import Iterator, Sequence

import numpy as np

from hieramas_jax.encoders import base

_SCHEMA = """
CREATE TABLE IF NOT EXISTS embeddings (
  encoder_id TEXT NOT NULL,
  text_sha256 TEXT NOT NULL,
  dim INTEGER NOT NULL,
  vector BLOB NOT NULL,
  PRIMARY KEY (encoder_id, text_sha256)
) WITHOUT ROWID
"""
# Below SQLite's smallest default limit on bound parameters (999).
_LOOKUP_CHUNK = 900


def text_key(text: str) -> str:
  """The cache key of a text (surrogates kept, so every Python str has one)."""
  return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class CachedEncoder:
  """Wraps an encoder; encodes only texts not yet cached, all misses in one batch.

  Attributes:
    num_hits: texts answered from the cache so far (duplicates counted).
    num_encoded: distinct texts passed to the wrapped encoder so far.
    path: the SQLite file.
  """

  def __init__(self,
               encoder: base.Encoder,
               cache_dir: str | pathlib.Path,
               *,
               filename: str = "embeddings.sqlite",
               timeout_s: float = 60.0):
    self.encoder = encoder
    cache_dir = pathlib.Path(cache_dir).expanduser()
    cache_dir.mkdir(parents=True, exist_ok=True)
    self.path = cache_dir / filename
    self.timeout_s = timeout_s
    self.num_hits = 0
    self.num_encoded = 0
    self._init_database()

  def _init_database(self) -> None:
    # WAL is a property of the file: set once, readers never block on writers.
    # Switching the journal mode needs the database to itself and SQLite does not
    # wait for that (no busy handler), so a cache opened by several users at once
    # retries with backoff instead of failing with "database is locked".
    deadline = time.monotonic() + self.timeout_s
    delay = 0.01
    while True:
      try:
        with self._connect() as conn:
          if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            conn.execute("PRAGMA journal_mode=WAL")
          conn.execute(_SCHEMA)
          conn.commit()
        return
      except sqlite3.OperationalError as err:
        if "locked" not in str(err) or time.monotonic() > deadline:
          raise
        time.sleep(delay)
        delay = min(delay * 2, 0.5)

  @property
  def encoder_id(self) -> str:
    return self.encoder.encoder_id

  @property
  def dim(self) -> int:
    return self.encoder.dim

  @contextlib.contextmanager
  def _connect(self) -> Iterator[sqlite3.Connection]:
    # One short-lived connection per call: safe across threads and forked
    # workers, which must never share a connection.
    conn = sqlite3.connect(self.path, timeout=self.timeout_s)
    try:
      conn.execute("PRAGMA synchronous=NORMAL")
      yield conn
    finally:
      conn.close()

  def _lookup(self, conn: sqlite3.Connection, encoder_id: str, keys: list[str],
              dim: int) -> dict[str, np.ndarray]:
    found: dict[str, np.ndarray] = {}
    for start in range(0, len(keys), _LOOKUP_CHUNK):
      chunk = keys[start:start + _LOOKUP_CHUNK]
      rows = conn.execute(
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
    unique_keys = list(dict.fromkeys(keys))
    with self._connect() as conn:
      found = self._lookup(conn, encoder_id, unique_keys, dim)
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
      rows = [(encoder_id, key, dim, vec.astype("<f4").tobytes())
              for key, vec in zip(missing, vectors)]
      with self._connect() as conn:
        conn.executemany("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?)", rows)
        conn.commit()
      found.update(zip(missing, vectors))
    return np.stack([found[key] for key in keys]).astype(np.float32, copy=False)

  def __len__(self) -> int:
    """Vectors stored for this encoder."""
    with self._connect() as conn:
      (count,) = conn.execute("SELECT COUNT(*) FROM embeddings WHERE encoder_id = ?",
                              [self.encoder_id]).fetchone()
    return int(count)
