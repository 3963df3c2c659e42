"""The host's side of sandboxed processes: fresh uids, spawning, output tails, and killing what is left."""

from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
import signal
import subprocess
from typing import Any

from . import bootstrap
from . import namespaces
from .interpreter import Interpreter

UID_RANGE = (1_000_000_000, 2_000_000_000)  # fresh uids for sandboxed processes
_TAIL_BYTES = 8192  # kept from the end of stdout and stderr
# A scrubbed environment for `python -I -B`; numeric libraries keep to one thread.
_BASE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "OMP_NUM_THREADS": "1",
             "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def fresh_uid() -> int:
  return secrets.randbelow(UID_RANGE[1] - UID_RANGE[0]) + UID_RANGE[0]


def count_user_tasks(uid: int) -> int:
  """Processes and threads of ``uid`` (what RLIMIT_NPROC counts)."""
  count = 0
  for entry in os.listdir("/proc"):
    if entry.isdigit():
      try:
        if os.stat(f"/proc/{entry}").st_uid == uid:
          count += len(os.listdir(f"/proc/{entry}/task"))
      except OSError:
        pass
  return count


def live_processes_of(uid: int) -> list[int]:
  """Processes of ``uid`` that are not zombies (a zombie only waits to be reaped)."""
  found = []
  for entry in os.listdir("/proc"):
    if not entry.isdigit():
      continue
    try:
      if os.stat(f"/proc/{entry}").st_uid != uid:
        continue
      with open(f"/proc/{entry}/stat", "rb") as stat_file:
        state = stat_file.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
      continue
    if state not in (b"Z", b"X"):
      found.append(int(entry))
  return found


def kill_uid(uid: int) -> None:
  """Kills every process of ``uid``, repeating until none is left."""
  for _ in range(500):
    pids = live_processes_of(uid)
    if not pids:
      return
    for pid in pids:
      try:
        os.kill(pid, signal.SIGKILL)
      except OSError:
        pass


class Tail:
  """The last ``limit`` bytes of a stream."""

  def __init__(self, limit: int):
    self.limit = limit
    self.data = bytearray()

  def add(self, chunk: bytes) -> None:
    self.data += chunk
    if len(self.data) > 2 * self.limit:
      del self.data[:-self.limit]

  def text(self) -> str:
    return bytes(self.data[-self.limit:]).decode("utf-8", errors="replace")


@dataclasses.dataclass
class Sandboxed:
  """One sandboxed process (program or driver) of a run."""

  role: str
  uid: int
  host_workdir: str | None  # None in namespaces mode (its working directory is inside its own root)
  proc: subprocess.Popen | None = None
  exit_code: int | None = None  # before the host killed what was left (None: still running then)
  stdout: Tail = dataclasses.field(default_factory=lambda: Tail(_TAIL_BYTES))
  stderr: Tail = dataclasses.field(default_factory=lambda: Tail(_TAIL_BYTES))

  @property
  def workdir(self) -> str:
    """Its working directory as it sees it."""
    return self.host_workdir if self.host_workdir is not None else namespaces.WORKDIR

  def signal_number(self, mode: str) -> int | None:
    code = self.exit_code
    if code is None:
      return None
    if code < 0:
      return -code
    if mode == "namespaces" and 128 < code < 128 + 65:
      return code - 128  # the namespace's shell reports a signal as 128 + n
    return None


def spawn(sandboxed: Sandboxed, mode: str, interpreter: Interpreter, pass_fds: tuple[int, ...],
          max_file_mb: int) -> None:
  """Starts the harness in ``sandboxed.role`` in its own session; it reads its setup from stdin."""
  env = {**_BASE_ENV, "HOME": sandboxed.workdir, "TMPDIR": sandboxed.workdir}
  command = [interpreter.python, "-I", "-B", "-c", bootstrap.child_source(), sandboxed.role]
  kwargs: dict[str, Any] = dict(stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                pass_fds=pass_fds, env=env, start_new_session=True)
  if mode == "namespaces":
    command = namespaces.command(interpreter, sandboxed.uid, max_file_mb * 1024, command)
    kwargs["cwd"] = "/"
  else:
    kwargs["cwd"] = sandboxed.host_workdir
    if mode == "uid":
      kwargs.update(user=sandboxed.uid, group=sandboxed.uid, extra_groups=[])
  sandboxed.proc = subprocess.Popen(command, **kwargs)  # noqa: S603 (the command is ours)


def kill_group(proc: subprocess.Popen) -> None:
  """Kills ``proc``'s session, reaps it and closes its streams."""
  try:
    os.killpg(proc.pid, signal.SIGKILL)
  except (ProcessLookupError, PermissionError):
    pass
  try:
    proc.wait(timeout=10)
  except subprocess.TimeoutExpired:
    proc.kill()
    proc.wait()
  for stream in (proc.stdin, proc.stdout, proc.stderr):
    if stream is not None and not stream.closed:
      stream.close()


def clean_up(sandboxed: Sandboxed, mode: str) -> None:
  """Kills everything the run left (its session; in uid mode every process of its uid) and its folder."""
  if sandboxed.proc is not None:
    kill_group(sandboxed.proc)
  if mode == "uid":
    kill_uid(sandboxed.uid)
  if sandboxed.host_workdir is not None:
    shutil.rmtree(sandboxed.host_workdir, ignore_errors=True)
