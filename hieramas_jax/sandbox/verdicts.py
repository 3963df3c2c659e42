"""What a run is asked (``Program``) and what it answers (``SandboxResult``), and how the host decides the verdict.

A pass comes only from the trusted driver's report (or, for a program-only run,
from the program's 'ready'); everything else is read from how the processes
ended: the deadline, the disk watch, a signal, the program's own account of its
failure, or a setup that failed.
"""

from __future__ import annotations

import dataclasses
import json
import signal
from typing import Any, Sequence

from . import codec
from . import namespaces
from .confinement import CONFINE_FAILED
from .processes import Sandboxed

PASSED = "passed"
FAILED = "failed"
TIMEOUT = "timeout"
CRASHED = "crashed"


@dataclasses.dataclass(frozen=True)
class Program:
  """A program to run and what to check.

  With only ``code`` the program passes when it runs to the end. With ``test``
  (code that defines ``check(candidate)``) and ``entry_point``, it passes when
  ``check`` returns, called (in a separate trusted process, after the trusted
  ``context``, e.g. helpers the test calls) with a proxy of the function
  ``entry_point`` the program defines. With ``inputs`` (argument lists), the
  candidate is also called on each and its return values come back in
  ``SandboxResult.outputs`` for the caller to compare.
  """

  code: str
  test: str | None = None
  entry_point: str | None = None
  context: str | None = None
  inputs: Sequence[Sequence[Any]] = ()


@dataclasses.dataclass(frozen=True)
class SandboxResult:
  """Verdict of one run."""

  status: str  # PASSED, FAILED, TIMEOUT or CRASHED
  reason: str  # empty when passed
  stdout: str  # last few KB of the program's output
  stderr: str  # last few KB
  duration_s: float
  isolation: str  # the mode it ran in
  # Return values of the candidate on Program.inputs (when passed); an input on
  # which it raised gives a RaisedOutput, a large value (encoded over 64 KB) a
  # DigestOutput.
  outputs: list[Any] | None = None

  @property
  def passed(self) -> bool:
    return self.status == PASSED


@dataclasses.dataclass(frozen=True)
class DigestOutput:
  """Stands for a large output: the SHA-256 of its canonical encoding, and its size."""

  digest: str
  size: int


@dataclasses.dataclass(frozen=True)
class RaisedOutput:
  """Stands for the output of a call that raised ``exception`` (a class name)."""

  exception: str


def decode_output(value: Any) -> Any:
  """One of the driver's encoded outputs as a plain value, ``RaisedOutput`` or ``DigestOutput``."""
  if isinstance(value, dict) and set(value) == {"__raised__"}:
    return RaisedOutput(str(value["__raised__"]))
  if isinstance(value, dict) and set(value) == {"__digest__", "__size__"}:
    return DigestOutput(str(value["__digest__"]), int(value["__size__"]))
  return codec.decode_value(value)


def first_message(data: bytes) -> dict[str, Any] | None:
  """The first JSON line of ``data`` when it is an object, else None."""
  line = data.split(b"\n", 1)[0]
  try:
    parsed = json.loads(line.decode("utf-8"))
  except (ValueError, RecursionError):
    return None
  return parsed if isinstance(parsed, dict) else None


def verdict(mode: str, runs: dict[str, Sandboxed], with_driver: bool, data: bytes, timed_out: bool,
            disk_full: bool, timeout_s: float) -> tuple[str, str, list[Any] | None]:
  """Status, reason and outputs: a pass comes only from the driver's report (or, without one, 'ready')."""
  message = first_message(data)
  if with_driver and message is not None and message.get("status") == PASSED:
    try:
      outputs = message.get("outputs")
      return PASSED, "", None if outputs is None else [decode_output(v) for v in outputs]
    except (codec.Malformed, ValueError, TypeError, KeyError):
      return CRASHED, "the test driver returned malformed outputs", None
  if not with_driver and message == {"ready": True}:
    return PASSED, "", None
  if timed_out:
    return TIMEOUT, f"wall-clock time limit of {timeout_s:g} s exceeded", None
  if disk_full:
    return CRASHED, "disk limit exceeded (the working directory grew over max_file_mb or too many files)", None
  program = runs["program"]
  signum = program.signal_number(mode)
  if signum == signal.SIGXCPU:
    return TIMEOUT, "CPU time limit exceeded", None
  if signum is not None:
    name = signal.Signals(signum).name if signum in signal.valid_signals() else f"signal {signum}"
    why = {signal.SIGXFSZ: "file size limit exceeded", signal.SIGSEGV: "segmentation fault",
           signal.SIGKILL: "killed (by the program itself: the memory limit raises MemoryError instead)"}
    return CRASHED, f"{why.get(signum, 'killed')} ({name})", None
  if message is not None and (message.get("status") == FAILED or "error" in message):
    kind, reason = message.get("kind"), str(message.get("reason", message.get("error", "failed")))[:2000]
    if kind == "memory":
      return CRASHED, reason, None
    if kind == "exit" and program.exit_code not in (None, 0, 1):
      reason += f" (exit code {program.exit_code})"
    if kind == "exit" and program.exit_code == 0:
      reason = "the program exited (code 0) before the checks completed"
    return FAILED, reason, None
  for sandboxed in runs.values():
    if sandboxed.exit_code == CONFINE_FAILED or (mode == "namespaces" and sandboxed.exit_code == namespaces.SETUP_FAILED):
      return CRASHED, f"sandbox setup failed: {sandboxed.stderr.text().strip()[-500:]}", None
  if program.exit_code == 0:
    return FAILED, "the program exited (code 0) before the checks completed", None
  last = program.stderr.text().strip().splitlines()[-1] if program.stderr.text().strip() else ""
  return CRASHED, f"exited with code {program.exit_code} without a verdict {last}".strip(), None
