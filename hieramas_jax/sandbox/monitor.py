"""The host's watch over a run: setups in, output tails and the verdict stream out, deadline and disk cap."""

from __future__ import annotations

import os
import selectors
import subprocess
import time

from .limits import MAX_MESSAGE_BYTES
from .processes import Sandboxed

_DISK_POLL_S = 0.02  # how often the host measures a host-side working directory
_MAX_FILES = 4096  # entries a host-side working directory may hold (part of the disk cap)
_EXIT_GRACE_S = 0.3  # after the primary exits, how long its last output may take to arrive


def disk_usage(folder: str, max_entries: int) -> tuple[int, int]:
  """(bytes allocated, entries) under ``folder``; stops counting entries past ``max_entries``."""
  total, entries, pending = 0, 0, [folder]
  while pending and entries <= max_entries:
    try:
      with os.scandir(pending.pop()) as listing:
        for entry in listing:
          entries += 1
          try:
            info = entry.stat(follow_symlinks=False)
          except OSError:
            continue
          total += info.st_blocks * 512
          if entry.is_dir(follow_symlinks=False):
            pending.append(entry.path)
    except OSError:
      continue
  return total, entries


class _Streams:
  """Non-blocking I/O with a run's processes: each setup to its stdin; stdout, stderr and the verdict back."""

  def __init__(self, runs: dict[str, Sandboxed], payloads: dict[str, bytes], host_reads: int):
    self.selector = selectors.DefaultSelector()
    self.unsent: dict[int, memoryview] = {}
    self.message = bytearray()
    for role, sandboxed in runs.items():
      proc = sandboxed.proc
      os.set_blocking(proc.stdin.fileno(), False)
      self.unsent[proc.stdin.fileno()] = memoryview(payloads[role])
      self.selector.register(proc.stdin.fileno(), selectors.EVENT_WRITE, (sandboxed, "stdin"))
      self.selector.register(proc.stdout.fileno(), selectors.EVENT_READ, (sandboxed, "stdout"))
      self.selector.register(proc.stderr.fileno(), selectors.EVENT_READ, (sandboxed, "stderr"))
    self.selector.register(host_reads, selectors.EVENT_READ, (None, "message"))

  def open(self) -> bool:
    return bool(self.selector.get_map())

  def pump(self, timeout: float) -> None:
    """Moves what is ready within ``timeout``."""
    for key, _ in self.selector.select(timeout=timeout):
      sandboxed, what = key.data
      if what == "stdin":
        self._feed(key.fd, sandboxed)
      else:
        self._read(key.fd, sandboxed, what)

  def _feed(self, fd: int, sandboxed: Sandboxed) -> None:
    try:
      written = os.write(fd, self.unsent[fd][:65536])
    except OSError:
      written = len(self.unsent[fd])  # it exited: nothing more to send
    self.unsent[fd] = self.unsent[fd][written:]
    if not len(self.unsent[fd]):
      self.selector.unregister(fd)
      sandboxed.proc.stdin.close()

  def _read(self, fd: int, sandboxed: Sandboxed | None, what: str) -> None:
    try:
      chunk = os.read(fd, 65536)
    except (BlockingIOError, InterruptedError):
      return
    if not chunk:
      self.selector.unregister(fd)
    elif what == "stdout":
      sandboxed.stdout.add(chunk)
    elif what == "stderr":
      sandboxed.stderr.add(chunk)
    elif len(self.message) + len(chunk) <= MAX_MESSAGE_BYTES:
      self.message += chunk

  def close(self) -> None:
    self.selector.close()


def _reap(runs: dict[str, Sandboxed], wait: bool) -> None:
  """Records each exit code (None: still running) and closes the stdins left open."""
  for sandboxed in runs.values():
    if wait:  # its streams may close just before it is reaped
      try:
        sandboxed.proc.wait(timeout=_EXIT_GRACE_S)
      except subprocess.TimeoutExpired:
        pass
    sandboxed.exit_code = sandboxed.proc.poll()
    if sandboxed.proc.stdin and not sandboxed.proc.stdin.closed:
      try:
        sandboxed.proc.stdin.close()
      except OSError:
        pass


def communicate(runs: dict[str, Sandboxed], payloads: dict[str, bytes], host_reads: int, deadline: float,
                max_file_mb: int, primary: str) -> tuple[bool, bool, bytes]:
  """Feeds the setups, collects output tails and the verdict stream until the primary exits or the deadline.

  Returns (timed out, disk cap exceeded, the verdict stream's bytes).
  """
  streams = _Streams(runs, payloads, host_reads)
  timed_out = disk_full = False
  watched = runs["program"].host_workdir  # None in namespaces mode: its tmpfs is the cap
  next_disk_check = 0.0
  exited_at = None
  try:
    while streams.open():
      now = time.monotonic()
      if exited_at is None and runs[primary].proc.poll() is not None:
        exited_at = now
      if exited_at is not None and now - exited_at > _EXIT_GRACE_S:
        break  # leftovers hold pipes open; everything is killed after
      if now >= deadline:
        timed_out = runs[primary].proc.poll() is None
        break
      if watched is not None and now >= next_disk_check:
        next_disk_check = now + _DISK_POLL_S
        used, entries = disk_usage(watched, _MAX_FILES)
        if used > max_file_mb << 20 or entries > _MAX_FILES:
          disk_full = True
          break
      streams.pump(timeout=min(_DISK_POLL_S, max(0.0, deadline - now)))
  finally:
    streams.close()
    _reap(runs, wait=not (timed_out or disk_full))
  return timed_out, disk_full, bytes(streams.message)
