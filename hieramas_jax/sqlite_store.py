"""One SQLite file used as a cache by many coroutines, threads and processes: the base of both on-disk caches.

``llm.cache.ResponseCache`` (LLM responses) and ``encoders.cache.CachedEncoder``
(embeddings) open their files through :class:`SQLiteStore`, so both have the
same behaviour:

* WAL journal (readers never block the one writer; set once per file, retried
  while another opener holds the file), ``synchronous=NORMAL`` (a killed process
  loses at most the write in flight), a busy timeout for concurrent writers;
* one connection per store and process, guarded by a lock (coroutines and
  worker threads share it; a forked child opens its own, never its parent's);
* at open: an integrity check, the write lock taken once (an unwritable file
  fails there, not mid-run), the schema created and the file's format checked
  against the ``meta`` table;
* every SQLite failure as one error naming the file, what was being done and
  the fix (``error_type``, the caller's error class);
* ``read_only=True`` opens an existing file for lookups only (no WAL switch, no
  write lock, no schema or format row written): a file other processes read
  while none writes it, e.g. the merged response cache of a multi-process run.

Keep the file on a local disk: SQLite's locking is unreliable on network file
systems. No JAX here (host side).
"""

from __future__ import annotations

import os
import pathlib
import sqlite3
import threading
import time
from typing import Any, Callable, Iterable, Sequence

# meta(name, value) holds the file's format version under the store's format key.
_META = "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)"


def describe_error(what: str, path: str, error: BaseException, doing: str) -> str:
  """One line naming the file, the SQLite complaint and the fix."""
  name = getattr(error, "sqlite_errorname", "") or ""
  text = str(error)
  if name in ("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_AUTH") or "readonly" in text:
    fix = (f"the file or its directory is not writable: make both writable (SQLite also writes "
           f"{os.path.basename(path)}-wal and -shm next to it) or choose another workdir")
  elif name == "SQLITE_FULL":
    fix = "the disk is full: free space, then resume the run"
  elif name in ("SQLITE_BUSY", "SQLITE_LOCKED") or "locked" in text:
    fix = "another process holds it locked: stop that process or use another workdir"
  elif isinstance(error, sqlite3.ProgrammingError):
    fix = "it was already closed: do not use it after closing it"
  else:
    fix = (f"it is corrupt or not a SQLite database: delete it or move it away (what the {what} held is lost "
           "and will be computed again)")
  return f"{what} {path}: cannot {doing} ({' '.join(text.split())}); {fix}"


class SQLiteStore:
  """A SQLite file with a schema and a format version, opened and checked once.

  Args:
    path: the file (its directory is created).
    what: what the file is, for messages (e.g. "response cache").
    schema: CREATE statements, run at open (``IF NOT EXISTS``).
    format_key, format_version: the ``meta`` row that says which format wrote
      the file, and the one this code writes.
    on_format: called as ``on_format(found, connection)`` inside the opening
      transaction when the file's format is not ``format_version`` (``found`` is
      None for a file written before the meta row existed); it may migrate the
      file or raise. Default: a file without the row is taken as this format,
      another version raises ``error_type`` naming both versions.
    error_type: the exception class every failure is raised as.
    timeout_s: how long a writer waits for another process's write lock.
    read_only: open an existing file for reads only (``write`` raises); a missing
      file raises ``error_type``.
  """

  def __init__(self, path: str | os.PathLike[str], *, what: str, schema: Sequence[str], format_key: str,
               format_version: int, error_type: Callable[[str], Exception],
               on_format: Callable[[str | None, sqlite3.Connection], None] | None = None,
               timeout_s: float = 60.0, read_only: bool = False):
    self.path = os.fspath(path)
    self.read_only = bool(read_only)
    self.what = what
    self.error_type = error_type
    self.timeout_s = float(timeout_s)
    self._schema = tuple(schema)
    self._format_key, self._format_version = format_key, int(format_version)
    self._on_format = on_format or self._refuse_other_format
    parent = os.path.dirname(os.path.abspath(self.path))
    if self.read_only and not os.path.isfile(self.path):
      raise error_type(f"{what} {self.path}: cannot open it for reading (no such file); check the path")
    try:
      os.makedirs(parent, exist_ok=True)
    except OSError as e:
      raise error_type(f"{what} {self.path}: cannot create its directory {parent} ({e.strerror}); choose a "
                       "writable workdir or fix the permissions") from e
    self._lock = threading.Lock()
    self._db: sqlite3.Connection | None = None
    self._pid = os.getpid()
    self._closed = False
    self._db = self._connect(setup=True)

  # ---- opening ------------------------------------------------------------
  def _connect(self, setup: bool) -> sqlite3.Connection:
    db = None
    try:
      if self.read_only:  # a URI, so SQLite never creates the file nor writes to it
        db = sqlite3.connect(f"{pathlib.Path(self.path).absolute().as_uri()}?mode=ro", uri=True,
                             check_same_thread=False, isolation_level=None, timeout=self.timeout_s)
        if setup:
          self._check_read_only(db)
        return db
      db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=self.timeout_s)
      if setup:
        self._set_wal(db)
      # NORMAL in WAL mode survives a process kill (the WAL is written before the commit returns).
      db.execute("PRAGMA synchronous=NORMAL")
      if setup:
        self._set_up(db)
      return db
    except BaseException as e:
      if db is not None:
        db.close()
      if isinstance(e, sqlite3.Error):
        raise self.error_type(describe_error(self.what, self.path, e, "open it")) from e
      raise

  def _set_wal(self, db: sqlite3.Connection) -> None:
    # Switching the journal mode needs the file to itself and SQLite does not wait for that (no busy
    # handler), so several openers at once retry with backoff instead of failing with "database is locked".
    deadline, delay = time.monotonic() + self.timeout_s, 0.01
    while True:
      try:
        if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
          db.execute("PRAGMA journal_mode=WAL")
        return
      except sqlite3.OperationalError as e:
        if "locked" not in str(e) or time.monotonic() > deadline:
          raise
        time.sleep(delay)
        delay = min(delay * 2, 0.5)

  def _set_up(self, db: sqlite3.Connection) -> None:
    """Checks the file is sound and writable, creates the schema, checks the format."""
    verdict = db.execute("PRAGMA quick_check").fetchone()[0]
    if verdict != "ok":
      raise sqlite3.DatabaseError(f"quick_check: {verdict}")
    db.execute("BEGIN IMMEDIATE")  # takes the write lock: an unwritable file fails here, not mid-run
    try:
      for statement in (*self._schema, _META):
        db.execute(statement)
      row = db.execute("SELECT value FROM meta WHERE name = ?", (self._format_key,)).fetchone()
      found = None if row is None else str(row[0])
      if found != str(self._format_version):
        self._on_format(found, db)
        db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)",
                   (self._format_key, str(self._format_version)))
      db.execute("COMMIT")
    except BaseException:
      if db.in_transaction:
        db.execute("ROLLBACK")
      raise

  def _check_read_only(self, db: sqlite3.Connection) -> None:
    """Checks the file is sound and tells ``on_format`` its format; writes nothing."""
    verdict = db.execute("PRAGMA quick_check").fetchone()[0]
    if verdict != "ok":
      raise sqlite3.DatabaseError(f"quick_check: {verdict}")
    has_meta = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
    row = db.execute("SELECT value FROM meta WHERE name = ?", (self._format_key,)).fetchone() if has_meta else None
    found = None if row is None else str(row[0])
    if found != str(self._format_version):
      self._on_format(found, db)

  def _refuse_other_format(self, found: str | None, db: sqlite3.Connection) -> None:
    del db  # nothing to migrate
    if found is not None:
      raise self.error_type(
          f"{self.what} {self.path} has format {found} ({self._format_key}); this hieramas_jax reads format "
          f"{self._format_version}: delete it or move it away (its entries are computed again)")

  # ---- use ----------------------------------------------------------------
  def _connection(self) -> sqlite3.Connection:
    if self._closed:
      raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
    if os.getpid() != self._pid:  # a forked child never uses its parent's connection
      self._db, self._pid = self._connect(setup=False), os.getpid()
    return self._db

  def read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """The rows of one query."""
    try:
      with self._lock:
        return self._connection().execute(sql, params).fetchall()
    except sqlite3.Error as e:
      raise self.error_type(describe_error(self.what, self.path, e, "read it")) from e

  def write(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
    """One statement for each row, committed together (one transaction)."""
    if self.read_only:
      raise self.error_type(f"{self.what} {self.path} is open read-only: write through a store opened without "
                            "read_only")
    try:
      with self._lock:
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
          db.executemany(sql, rows)
          db.execute("COMMIT")
        except BaseException:
          if db.in_transaction:
            db.execute("ROLLBACK")
          raise
    except sqlite3.Error as e:
      raise self.error_type(describe_error(self.what, self.path, e, "write to it")) from e

  def close(self) -> None:
    """Closes the file (a second close does nothing)."""
    with self._lock:
      if not self._closed and self._db is not None:
        self._db.close()
      self._closed = True
