"""Persistent response cache, so re-runs and resumed runs make no repeated paid calls.

Responses live in one SQLite file (WAL mode) keyed by a digest of (model, messages,
generation params, sample index). Every successful response is committed as soon
as it arrives, so a killed process loses at most the calls in flight. Errors are
never stored. A cached response keeps the cost of the call that produced it (so
rewards of a re-run are the same) and is flagged ``cached``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import sqlite3
import threading
import time
from typing import Any, Collection, Mapping, Sequence

from hieramas_jax.llm.base import Backend, Message, Response


def cache_key(model: str, messages: Sequence[Message], params: Mapping[str, Any], sample_index: int) -> str:
  """A digest that changes whenever anything that shapes the answer changes."""
  payload = json.dumps(
      {"model": model, "messages": [dict(m) for m in messages], "params": dict(params),
       "sample_index": int(sample_index)},
      sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
  return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class ResponseCache:
  """A SQLite table of successful responses (safe for many coroutines and processes)."""

  def __init__(self, path: str | os.PathLike[str]):
    self.path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(self.path))
    os.makedirs(parent, exist_ok=True)
    # One connection guarded by a lock: coroutines run on one thread, but a
    # trainer may also touch the cache from a worker thread.
    self._lock = threading.Lock()
    self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=60.0)
    self._db.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode survives a process kill (the WAL is written before the
    # commit returns); only a power loss can drop the last transactions.
    self._db.execute("PRAGMA synchronous=NORMAL")
    self._db.execute(
        "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, model TEXT NOT NULL, "
        "response TEXT NOT NULL, created REAL NOT NULL)")

  def get(self, key: str) -> Response | None:
    with self._lock:
      row = self._db.execute("SELECT response FROM responses WHERE key = ?", (key,)).fetchone()
    return None if row is None else Response.from_json(json.loads(row[0]), cached=True)

  def put(self, key: str, response: Response) -> None:
    if not response.ok:
      return  # a failure must be retried next time, never replayed
    blob = json.dumps(response.to_json(), ensure_ascii=False)
    with self._lock:
      self._db.execute("INSERT OR REPLACE INTO responses (key, model, response, created) VALUES (?, ?, ?, ?)",
                       (key, response.model, blob, time.time()))

  def __len__(self) -> int:
    with self._lock:
      return int(self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

  def close(self) -> None:
    with self._lock:
      self._db.close()


@dataclasses.dataclass
class CacheStats:
  hits: int = 0  # answered from the table
  shared: int = 0  # answered by an identical request already in flight
  misses: int = 0  # sent to the wrapped backend


class CachedBackend:
  """Wraps a backend with a ResponseCache; identical requests in flight share one call."""

  def __init__(self, backend: Backend, cache: ResponseCache | str | os.PathLike[str]):
    self.backend = backend
    self.cache = cache if isinstance(cache, ResponseCache) else ResponseCache(cache)
    self.stats = CacheStats()
    self._in_flight: dict[str, asyncio.Future[Response]] = {}

  def known_models(self) -> Collection[str]:
    return self.backend.known_models()

  async def complete(self, model: str, messages: Sequence[Message], *, sample_index: int = 0,
                     **params: Any) -> Response:
    key = cache_key(model, messages, params, sample_index)
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
    self.cache.put(key, response)
    future.set_result(response)
    return response

  async def aclose(self) -> None:
    close = getattr(self.backend, "aclose", None)
    if close is not None:
      await close()
