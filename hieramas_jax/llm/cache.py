"""Persistent response cache, so re-runs and resumed runs make no repeated paid calls.

Responses live in one SQLite file (``sqlite_store.SQLiteStore``: WAL mode) keyed by a digest of everything that
shapes the answer: the model's wire identity (from the backend: base URL, served
name, ...), the messages, every generation parameter and the sample index. Every
successful response is committed as soon as it arrives, so a killed process loses
at most the calls in flight. Errors are never stored. A cached response keeps the
cost of the call that produced it (so rewards of a re-run are the same) and is
flagged ``cached``.

Keys of format 1 (before the wire identity was part of the key) are never looked
up again: such rows stay in the file, unused, and a warning says how many (delete
the file to reclaim the space). A file that is not a readable SQLite database, or
that cannot be written, raises :class:`CacheError` at construction, naming the
file and what to do.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import os
import sqlite3
import time
from typing import Any, Collection, Mapping, Sequence

from hieramas_jax.llm.base import Backend, ConfigError, Message, Response
from hieramas_jax.sqlite_store import SQLiteStore

_LOG = logging.getLogger(__name__)

KEY_FORMAT = 2  # 1: (model, messages, params, sample_index); 2: adds the format and the wire identity


class CacheError(ConfigError):
  """The response cache file cannot be used (corrupt, unreadable or unwritable)."""


def cache_key(model: str, messages: Sequence[Message], params: Mapping[str, Any], sample_index: int, *,
              identity: Mapping[str, Any] | None = None) -> str:
  """A digest that changes whenever anything that shapes the answer changes.

  Args:
    model: the pool name.
    messages: the chat messages.
    params: every generation parameter sent (temperature, top_p, max_tokens, seed, stop, ...).
    sample_index: which independent sample of the same request.
    identity: what else decides the answer, from the backend's ``cache_identity(model)``
      (base URL, served name, ...); None for backends without one.
  """
  payload = json.dumps(
      {"format": KEY_FORMAT, "model": model, "identity": dict(identity or {}),
       "messages": [dict(m) for m in messages], "params": dict(params), "sample_index": int(sample_index)},
      sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
  return hashlib.sha256(payload.encode("utf-8")).hexdigest()


_SCHEMA = ("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, model TEXT NOT NULL, "
           "response TEXT NOT NULL, created REAL NOT NULL)",)


class ResponseCache:
  """A SQLite table of successful responses (safe for many coroutines, threads and processes).

  The file is a ``sqlite_store.SQLiteStore``: WAL, one locked connection per
  process, checked at open.

  Raises:
    CacheError: at construction, if the file cannot be created, read or written;
      on use, if it cannot be read or written any more (or was closed).
  """

  def __init__(self, path: str | os.PathLike[str]):
    self.path = os.fspath(path)
    self._store = SQLiteStore(path, what="response cache", schema=_SCHEMA, format_key="key_format",
                              format_version=KEY_FORMAT, on_format=self._old_keys, error_type=CacheError)

  def _old_keys(self, found: str | None, db: sqlite3.Connection) -> None:
    """Rows of another key format stay in the file, unused; the format row is rewritten."""
    if found is None:
      old = int(db.execute("SELECT COUNT(*) FROM responses").fetchone()[0])
      if old:
        _LOG.warning("response cache %s: %d responses were stored under key format 1, which ignored the "
                     "endpoint and served name; they are not used (delete the file to reclaim the space)",
                     self.path, old)
    else:
      _LOG.warning("response cache %s: written with key format %s; entries of that format are not used",
                   self.path, found)

  def get(self, key: str) -> Response | None:
    rows = self._store.read("SELECT response FROM responses WHERE key = ?", (key,))
    return Response.from_json(json.loads(rows[0][0]), cached=True) if rows else None

  def put(self, key: str, response: Response) -> None:
    if not response.ok:
      return  # a failure must be retried next time, never replayed
    blob = json.dumps(response.to_json(), ensure_ascii=False)
    self._store.write("INSERT OR REPLACE INTO responses (key, model, response, created) VALUES (?, ?, ?, ?)",
                      [(key, response.model, blob, time.time())])

  def __len__(self) -> int:
    return int(self._store.read("SELECT COUNT(*) FROM responses")[0][0])

  def close(self) -> None:
    """Closes the file (a second close does nothing)."""
    self._store.close()


@dataclasses.dataclass
class CacheStats:
  hits: int = 0  # answered from the table
  shared: int = 0  # answered by an identical request already in flight
  misses: int = 0  # sent to the wrapped backend


class CachedBackend:
  """Wraps a backend with a ResponseCache; identical requests in flight share one call.

  The key includes the wrapped backend's ``cache_identity(model)`` when it has one
  (OpenAIBackend: base URL and served name), so pointing a pool name at another
  server or model is a cache miss, not a replay of the old answers.
  """

  def __init__(self, backend: Backend, cache: ResponseCache | str | os.PathLike[str]):
    self.backend = backend
    self.cache = cache if isinstance(cache, ResponseCache) else ResponseCache(cache)
    self.stats = CacheStats()
    self._in_flight: dict[str, asyncio.Future[Response]] = {}
    self._identity = getattr(backend, "cache_identity", None)

  def known_models(self) -> Collection[str]:
    return self.backend.known_models()

  def key(self, model: str, messages: Sequence[Message], params: Mapping[str, Any], sample_index: int) -> str:
    """The cache key of a request to the wrapped backend."""
    identity = self._identity(model) if self._identity is not None else None
    return cache_key(model, messages, params, sample_index, identity=identity)

  async def complete(self, model: str, messages: Sequence[Message], *, sample_index: int = 0,
                     **params: Any) -> Response:
    key = self.key(model, messages, params, sample_index)
    hit = self.cache.get(key)
    if hit is not None:
      self.stats.hits += 1
      return hit
    pending = self._in_flight.get(key)
    if pending is not None:
      self.stats.shared += 1
      shared = await asyncio.shield(pending)
      return dataclasses.replace(shared, cached=True, attempts=0) if shared.ok else shared
    self.stats.misses += 1
    future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
    self._in_flight[key] = future
    try:
      response = await self.backend.complete(model, messages, sample_index=sample_index, **params)
    except asyncio.CancelledError:
      future.cancel()
      raise
    except Exception as e:
      future.set_exception(e)
      future.exception()  # mark retrieved: no "never retrieved" warning when nobody shares it
      raise
    finally:
      del self._in_flight[key]
    try:
      self.cache.put(key, response)
    finally:  # waiters get the answer even when storing it failed
      future.set_result(response)
    return response

  async def aclose(self) -> None:
    """Closes the wrapped backend (its HTTP sessions) and the cache file."""
    try:
      close = getattr(self.backend, "aclose", None)
      if close is not None:
        await close()
      elif hasattr(self.backend, "close"):
        self.backend.close()
    finally:
      self.cache.close()

  def close(self) -> None:
    """Closes the wrapped backend (its HTTP sessions) and the cache file; call where no loop runs."""
    try:
      close = getattr(self.backend, "close", None)
      if close is not None:
        close()
      elif hasattr(self.backend, "aclose"):
        from hieramas_jax.executor import run_sync  # pylint: disable=g-import-not-at-top  # executor imports llm
        run_sync(self.backend.aclose())
    finally:
      self.cache.close()
