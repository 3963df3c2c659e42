"""Runs untrusted programs: ``run_program`` (one, with its verdict) and ``run_many`` (in parallel).

A run starts the program (untrusted) and, when there is an entry point to
check, the driver (trusted), each confined in its own sandboxed process and
joined by pipes: calls driver -> program, replies program -> driver, and the
verdict driver -> host. The host reads only that last pipe (or, for a
program-only run, the program's 'ready'), watches the deadline and the disk,
then kills everything that is left.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import tempfile
import time
from typing import Any, Sequence

from . import interpreter as interpreter_lib
from . import modes
from . import monitor
from . import processes
from .interpreter import Interpreter
from .limits import DIGEST_ABOVE, MAX_MESSAGE_BYTES, Limits
from .processes import Sandboxed
from .verdicts import CRASHED, Program, SandboxResult, verdict


class _Pipes:
  """A run's pipes: calls (driver -> program), replies (program -> driver or host), verdict (driver -> host)."""

  def __init__(self, with_driver: bool):
    self.requests = os.pipe()
    self.replies = os.pipe()
    self.result = os.pipe() if with_driver else None
    if not with_driver:
      os.close(self.requests[1])  # nothing calls a program-only run: it sees the end of the stream
    self.host_reads = self.result[0] if with_driver else self.replies[0]

  def fds_of(self, role: str) -> dict[str, int]:
    """The descriptors ``role`` inherits, by the names the harness reads them under."""
    if role == "program":
      return {"requests": self.requests[0], "replies": self.replies[1]}
    return {"requests": self.requests[1], "replies": self.replies[0], "result": self.result[1]}

  def close_child_ends(self) -> None:
    for fd in self.fds_of("program").values():
      os.close(fd)
    if self.result is not None:
      for fd in self.fds_of("driver").values():
        os.close(fd)


def _new_sandboxed(role: str, mode: str) -> Sandboxed:
  """A fresh uid and, outside the namespaces mode, a private host-side working directory it owns."""
  uid = processes.fresh_uid()
  host_workdir = None
  if mode != "namespaces":
    host_workdir = tempfile.mkdtemp(prefix=f"hieramas_sandbox_{role}_")
    if mode == "uid":
      os.chown(host_workdir, uid, uid)
  return Sandboxed(role=role, uid=uid, host_workdir=host_workdir)


def _setup(sandboxed: Sandboxed, program: Program, mode: str, interpreter: Interpreter, limits: Limits,
           process_cap: int, fds: dict[str, int]) -> dict[str, Any]:
  """What the harness of ``sandboxed.role`` reads from stdin: how to confine itself and what to run."""
  setup = {"mode": mode, "uid": sandboxed.uid, "workdir": sandboxed.workdir, "seccomp": interpreter.seccomp,
           "landlock": interpreter.landlock_abi > 0, "read_paths": list(interpreter.read_paths),
           "list_paths": list(interpreter.list_paths), "max_message": MAX_MESSAGE_BYTES,
           "limits": limits.rlimits(sandboxed.role, process_cap), "fds": fds}
  if sandboxed.role == "program":
    setup.update(code=program.code, entry_point=program.entry_point)
  else:
    setup.update(test=program.test, context=program.context, entry_point=program.entry_point,
                 inputs=[list(args) for args in program.inputs], digest_above=DIGEST_ABOVE)
  return setup


def _check_program(program: Program) -> None:
  if program.test and not program.entry_point:
    raise ValueError("a Program with a test needs its entry_point (the function check() is given)")
  if program.inputs and not program.entry_point:
    raise ValueError("a Program with inputs needs its entry_point (the function called on them)")


def _run(program: Program, mode: str, interpreter: Interpreter, limits: Limits) -> SandboxResult:
  """Spawns the run's processes, watches them, kills what is left and decides the verdict."""
  with_driver = program.entry_point is not None
  roles = ("program", "driver") if with_driver else ("program",)
  process_cap = limits.process_cap(mode, interpreter.seccomp)
  runs: dict[str, Sandboxed] = {}
  pipes = None
  try:
    for role in roles:
      runs[role] = _new_sandboxed(role, mode)
    pipes = _Pipes(with_driver)
    payloads: dict[str, bytes] = {}
    start = time.monotonic()
    try:
      for role, sandboxed in runs.items():
        fds = pipes.fds_of(role)
        payloads[role] = json.dumps(_setup(sandboxed, program, mode, interpreter, limits, process_cap, fds)).encode()
        processes.spawn(sandboxed, mode, interpreter, tuple(fds.values()), limits.max_file_mb)
    finally:
      pipes.close_child_ends()
    timed_out, disk_full, message = monitor.communicate(runs, payloads, pipes.host_reads, start + limits.timeout_s,
                                                        limits.max_file_mb, primary=roles[-1])
  finally:
    if pipes is not None:
      os.close(pipes.host_reads)
    for sandboxed in runs.values():
      processes.clean_up(sandboxed, mode)
  duration = time.monotonic() - start
  status, reason, outputs = verdict(mode, runs, with_driver, message, timed_out, disk_full, limits.timeout_s)
  program_run = runs["program"]
  stderr = program_run.stderr.text()
  if with_driver and status == CRASHED and runs["driver"].stderr.text().strip():
    stderr += "\n[test driver]\n" + runs["driver"].stderr.text()
  return SandboxResult(status=status, reason=reason, stdout=program_run.stdout.text(), stderr=stderr,
                       duration_s=duration, isolation=mode, outputs=outputs)


def run_program(
    program: str | Program,
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    max_procs: int = 16,
    max_file_mb: int = 16,
    isolation: str = "auto",
    python: str | None = None,
) -> SandboxResult:
  """Runs one untrusted program under limits and returns its verdict.

  Args:
    program: source code (passes when it runs to the end) or a ``Program``.
    timeout_s: wall-clock limit from spawn to verdict; CPU time is capped too.
    memory_mb: address-space limit of the program (its total: it may start
      threads but no processes, where seccomp is available).
    max_procs: threads the program may have at once (where seccomp is not
      available: 1, no threads).
    max_file_mb: disk the program may use (its whole working directory).
    isolation: 'auto' (strongest available), 'namespaces', 'uid' or 'plain'.
    python: interpreter to run it with (default: one the sandbox uid can read).
  """
  if isinstance(program, str):
    program = Program(code=program)
  mode = modes.resolve(isolation)
  limits = Limits(timeout_s=timeout_s, memory_mb=memory_mb, max_procs=max_procs, max_file_mb=max_file_mb)
  _check_program(program)
  if python is None:
    python = interpreter_lib.default_python(mode)
  interpreter = interpreter_lib.probe(python)
  modes.announce(mode, python)
  return _run(program, mode, interpreter, limits)


def run_many(
    programs: Sequence[str | Program],
    *,
    max_workers: int | None = None,
    **limits: Any,
) -> list[SandboxResult]:
  """Runs many programs in parallel (at most ``max_workers``, default: the cores); same order."""
  if not programs:
    return []
  workers = max(1, min(len(programs), max_workers or os.cpu_count() or 1))
  if workers == 1:
    return [run_program(p, **limits) for p in programs]
  modes.isolation_mode()  # probe once before the threads start
  with concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox") as pool:
    return list(pool.map(lambda p: run_program(p, **limits), programs))
