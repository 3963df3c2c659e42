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

Several processes (a multi-host run, ``hieramas_jax.distributed``): every process
writes the calls it pays for only to its own file beside the shared one
(``llm_cache.process-<i>-of-<n>.sqlite`` next to ``llm_cache.sqlite``), so no two
processes write one file (SQLite's locking is unreliable on the network file
systems a multi-host workdir lives on). A lookup reads the process's own file,
then the shared file, opened read-only. When ``CachedBackend`` opens the cache,
process 0 merges every per-process file beside the shared one into it (any
process count, so a restart with another count finds every paid call) while the
others wait; a restart with the same count replays each process's own answers
exactly. A one-process run merges such files too before it uses the shared file.
``python -m launch.merge_cache`` merges by hand (``merge_files``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import glob
import hashlib
import json
import logging
import os
import pathlib
import re
import sqlite3
import time
from typing import Any, Collection, Mapping, Sequence

from hieramas_jax import distributed
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

  def __init__(self, path: str | os.PathLike[str], *, read_only: bool = False):
    """Opens (or creates) the file; ``read_only`` opens an existing one for lookups only."""
    self.path = os.fspath(path)
    self.other_format: str | None = None  # the key format the file was written with, when not KEY_FORMAT
    self._store = SQLiteStore(path, what="response cache", schema=_SCHEMA, format_key="key_format",
                              format_version=KEY_FORMAT, on_format=self._old_keys, error_type=CacheError,
                              read_only=read_only)
    if read_only and not self._store.read("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'responses'"):
      self._store.close()
      raise CacheError(f"response cache {self.path} has no responses table: it is not a response cache; check the "
                       "path (or delete the file)")

  def _old_keys(self, found: str | None, db: sqlite3.Connection) -> None:
    """Rows of another key format stay in the file, unused; the format row is rewritten."""
    self.other_format = "1" if found is None else found
    has_rows = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'responses'").fetchone()
    if not has_rows or not db.execute("SELECT 1 FROM responses LIMIT 1").fetchone():
      self.other_format = None  # an empty file (new, or one only read) has no keys of another format
      return
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

  def rows_after(self, rowid: int, limit: int) -> list[tuple[int, str, str, str, float]]:
    """Up to ``limit`` stored rows (rowid, key, model, response, created) past ``rowid``, in write order."""
    return self._store.read("SELECT rowid, key, model, response, created FROM responses WHERE rowid > ? "
                            "ORDER BY rowid LIMIT ?", (int(rowid), int(limit)))

  def payloads(self, keys: Sequence[str]) -> dict[str, str]:
    """The stored response JSON of each of ``keys`` that is in the file."""
    found: dict[str, str] = {}
    for start in range(0, len(keys), 500):  # SQLite caps the host parameters of one statement
      part = keys[start:start + 500]
      found.update(self._store.read(f"SELECT key, response FROM responses WHERE key IN ({','.join('?' * len(part))})",
                                    part))
    return found

  def add_rows(self, rows: Sequence[tuple[str, str, str, float]]) -> None:
    """Stores (key, model, response, created) rows as they are; a key already stored keeps its row."""
    if rows:
      self._store.write("INSERT OR IGNORE INTO responses (key, model, response, created) VALUES (?, ?, ?, ?)", rows)

  def close(self) -> None:
    """Closes the file (a second close does nothing)."""
    self._store.close()


# ---------------------------------------------------------------------------
# One file per process, and their merge into the shared file
# ---------------------------------------------------------------------------

_MERGE_CHUNK = 2000  # rows read and compared at a time (memory stays flat for any file size)


def process_file(path: str | os.PathLike[str], index: int, count: int) -> pathlib.Path:
  """The file process ``index`` of ``count`` writes, beside the shared ``path``."""
  shared = pathlib.Path(path)
  return shared.with_name(f"{shared.stem}.process-{index}-of-{count}{shared.suffix}")


def process_files(path: str | os.PathLike[str]) -> list[pathlib.Path]:
  """Every per-process file beside ``path`` (of any process count), by count, then index."""
  shared = pathlib.Path(path)
  pattern = re.compile(rf"{re.escape(shared.stem)}\.process-(\d+)-of-(\d+){re.escape(shared.suffix)}")
  found = []
  for candidate in shared.parent.glob(f"{glob.escape(shared.stem)}.process-*-of-*{glob.escape(shared.suffix)}"):
    match = pattern.fullmatch(candidate.name)
    if match and candidate.is_file():
      found.append(((int(match.group(2)), int(match.group(1))), candidate))
  return [f for _, f in sorted(found)]


@dataclasses.dataclass
class MergedFile:
  """What one source file gave the merge."""

  path: str
  rows: int = 0  # responses in the file
  added: int = 0  # new in the target
  duplicates: int = 0  # already there with the same payload
  conflicts: int = 0  # already there with another payload (the target's row is kept)
  skipped: str | None = None  # why the file was not read (written with another key format)


@dataclasses.dataclass
class MergeReport:
  """A merge of per-process files into the shared response cache."""

  target: str
  rows_before: int
  rows_after: int
  files: list[MergedFile]

  @property
  def duplicates(self) -> int:
    return sum(f.duplicates for f in self.files)

  @property
  def conflicts(self) -> int:
    return sum(f.conflicts for f in self.files)

  @property
  def added(self) -> int:
    return sum(f.added for f in self.files)

  def lines(self) -> list[str]:
    """One line per source file, then the totals."""
    out = []
    for f in self.files:
      if f.skipped:
        out.append(f"{f.path}: skipped ({f.skipped})")
      else:
        out.append(f"{f.path}: {f.rows} rows, {f.added} merged, {f.duplicates} duplicates, "
                   f"{f.conflicts} conflicting (kept the earlier answer)")
    out.append(f"{self.target}: {self.rows_before} -> {self.rows_after} rows; {self.added} merged, "
               f"{self.duplicates} duplicates, {self.conflicts} conflicting from {len(self.files)} files")
    return out


def merge_files(target: str | os.PathLike[str], sources: Sequence[str | os.PathLike[str]] | None = None
                ) -> MergeReport:
  """Copies every response of ``sources`` (default: the per-process files beside ``target``) into ``target``.

  Idempotent: a key already in ``target`` keeps its row. When its payload
  differs (two processes paid for the same request and got different answers)
  the earlier one stays (``target``'s, then the sources in order) and the
  conflict is counted and logged. Sources are only read; ``target`` is created
  when missing. Sources written with another key format are skipped (their keys
  never match).

  Raises:
    CacheError: a file that is missing, corrupt, or (the target) not writable.
  """
  sources = process_files(target) if sources is None else [pathlib.Path(s) for s in sources]
  shared = ResponseCache(target)
  try:
    before = len(shared)
    merged = []
    for source in sources:
      merged.append(_merge_one(shared, source))
    report = MergeReport(os.fspath(target), before, len(shared), merged)
  finally:
    shared.close()
  if report.conflicts:
    _LOG.warning("response cache %s: %d responses of the per-process files differ from the ones already merged "
                 "(the same request paid twice); kept the earlier answers", report.target, report.conflicts)
  return report


def _merge_one(shared: ResponseCache, source: pathlib.Path) -> MergedFile:
  source_cache = ResponseCache(source, read_only=True)
  merged = MergedFile(os.fspath(source))
  try:
    if source_cache.other_format is not None:
      merged.rows = len(source_cache)
      merged.skipped = f"written with key format {source_cache.other_format}; this code reads {KEY_FORMAT}"
      return merged
    last = 0
    while rows := source_cache.rows_after(last, _MERGE_CHUNK):
      last = rows[-1][0]
      there = shared.payloads([r[1] for r in rows])
      new = []
      for _, key, model, payload, created in rows:
        if key not in there:
          new.append((key, model, payload, created))
        elif there[key] == payload:
          merged.duplicates += 1
        else:
          merged.conflicts += 1
      shared.add_rows(new)
      merged.rows += len(rows)
      merged.added += len(new)
  finally:
    source_cache.close()
  return merged


class ProcessCache:
  """The response cache of one process of several: its own file, then the shared file (read-only)."""

  def __init__(self, own: ResponseCache, shared: ResponseCache):
    self.own, self.shared = own, shared
    self.path = own.path

  def get(self, key: str) -> Response | None:
    hit = self.own.get(key)  # this process's own answer first: a restart replays exactly what it got
    return hit if hit is not None else self.shared.get(key)

  def put(self, key: str, response: Response) -> None:
    self.own.put(key, response)

  def __len__(self) -> int:
    """Responses in this process's file plus the shared file (a key merged from this file counts twice)."""
    return len(self.own) + len(self.shared)

  def close(self) -> None:
    try:
      self.own.close()
    finally:
      self.shared.close()


def open_cache(path: str | os.PathLike[str]) -> ResponseCache | ProcessCache:
  """The response cache at ``path`` for this process (call on every process at the same point).

  One process: the per-process files of an earlier multi-process run beside
  ``path`` are merged into it, then ``path`` is the cache. Several: process 0
  merges them while the others wait (a collective); then each process writes its
  own file and reads the shared one.
  """
  count, index = distributed.process_count(), distributed.process_index()

  def merge() -> MergeReport | None:
    if not process_files(path) and (count == 1 or os.path.exists(path)):
      return None
    report = merge_files(path)  # also creates the shared file the other processes open read-only
    for line in report.lines() if report.files else ():
      _LOG.info("response cache merge: %s", line)
    return report

  if count == 1:
    merge()
    return ResponseCache(path)
  # on_primary returns on every process only once process 0 is done: it is the barrier before anyone opens a file.
  distributed.on_primary(merge, "llm_cache_merge")
  opened: ProcessCache | None = None
  problem = None
  try:
    if not os.path.isfile(path):
      raise CacheError(f"response cache {path}: process 0 merged it but process {index} of {count} cannot see it; "
                       "put the workdir on a file system every host mounts (checkpoints need that too)")
    own = ResponseCache(process_file(path, index, count))
    try:
      opened = ProcessCache(own, ResponseCache(path, read_only=True))
    except BaseException:
      own.close()
      raise
  except CacheError as e:
    problem = str(e)
  # Every process fails alike (with the lowest process's reason) rather than one leaving the others waiting.
  problems = [p for p in distributed.gather_objects(problem, "llm_cache_opened") if p is not None]
  if problems:
    if opened is not None:
      opened.close()
    raise CacheError(problems[0])
  return opened


@dataclasses.dataclass
class CacheStats:
  hits: int = 0  # answered from the table
  shared: int = 0  # answered by an identical request already in flight
  misses: int = 0  # sent to the wrapped backend


class CachedBackend:
  """Wraps a backend with a ResponseCache; identical requests in flight share one call.

  The key includes the wrapped backend's ``cache_identity(model)`` when it has one
  (OpenAIBackend: base URL and served name), so pointing a pool name at another
  server or model is a cache miss, not a replay of the old answers. Given a path
  in a multi-process run, each process writes its own file (``open_cache``).
  """

  def __init__(self, backend: Backend, cache: ResponseCache | ProcessCache | str | os.PathLike[str]):
    """Wraps ``backend``; a path is opened with ``open_cache`` (in a multi-process run, on every process at once)."""
    self.backend = backend
    self.cache = cache if isinstance(cache, (ResponseCache, ProcessCache)) else open_cache(cache)
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
