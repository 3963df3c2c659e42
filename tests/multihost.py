"""Starts N local processes of one multi-host run (gloo on loopback, forced host devices), for the tests.

``run_processes(argv, n)`` runs ``python <argv...> --coordinator_address=127.0.0.1:<free port>
--num_processes=n --process_id=i`` for i in range(n), each with ``devices`` CPU devices, and returns
their (returncode, stdout, stderr) once all have ended; a run past ``timeout_s`` is killed and fails the test.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Sequence

REPO = pathlib.Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class Finished:
  returncode: int
  stdout: str
  stderr: str


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_env(devices: int, extra: dict[str, str] | None = None) -> dict[str, str]:
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
             PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", PYTHONUNBUFFERED="1")
  env.update(extra or {})
  return env


def start_processes(argv: Sequence[str], n: int = 2, *, devices: int = 2, cwd: str | pathlib.Path = REPO,
                    heartbeat_timeout_s: int | None = None, env: dict[str, str] | None = None,
                    logs: pathlib.Path | None = None) -> list[subprocess.Popen]:
  """The n processes of one run, started (stdout/stderr to files under ``logs`` when given, else pipes)."""
  port = free_port()
  procs = []
  for i in range(n):
    args = [sys.executable, *argv, f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={n}",
            f"--process_id={i}"]
    if heartbeat_timeout_s is not None:
      args.append(f"--heartbeat_timeout_s={heartbeat_timeout_s}")
    # Files, not pipes: a process blocked on a full pipe would stall its peers inside a collective.
    if logs is not None:
      logs.mkdir(parents=True, exist_ok=True)
      out, err = (logs / f"p{i}.out").open("w+"), (logs / f"p{i}.err").open("w+")
    else:
      out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    procs.append(_Process(args, cwd=cwd, env=process_env(devices, env), stdout=out, stderr=err, text=True,
                          start_new_session=True))
  return procs


class _Process(subprocess.Popen):
  """A Popen whose output goes to files; ``communicate`` waits and returns what they hold."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.output_files = (kwargs["stdout"], kwargs["stderr"])
    self._output = None

  def communicate(self, input=None, timeout=None):  # pylint: disable=redefined-builtin
    del input
    self.wait(timeout=timeout)
    if self._output is None:
      self._output = tuple(_read(f) for f in self.output_files)
    return self._output


def _read(f) -> str:
  f.flush()
  f.seek(0)
  text = f.read()
  f.close()
  return text


def wait_all(procs: Sequence[subprocess.Popen], timeout_s: float) -> list[Finished]:
  """Waits for every process; kills all of them and raises TimeoutError past ``timeout_s``."""
  deadline = time.monotonic() + timeout_s
  results = []
  try:
    for p in procs:
      p.wait(timeout=max(0.1, deadline - time.monotonic()))
    for p in procs:
      results.append(Finished(p.returncode, *p.communicate()))
  except subprocess.TimeoutExpired:
    kill_all(procs)
    raise TimeoutError(f"multi-process run still going after {timeout_s} s (a hang); processes killed") from None
  return results


def kill_all(procs: Sequence[subprocess.Popen]) -> None:
  for p in procs:
    if p.poll() is None:
      os.killpg(p.pid, signal.SIGKILL)
  for p in procs:
    p.wait()


def run_processes(argv: Sequence[str], n: int = 2, *, devices: int = 2, timeout_s: float = 300,
                  cwd: str | pathlib.Path = REPO, env: dict[str, str] | None = None) -> list[Finished]:
  return wait_all(start_processes(argv, n, devices=devices, cwd=cwd, env=env), timeout_s)


def run_single(argv: Sequence[str], *, devices: int = 2, timeout_s: float = 300, cwd: str | pathlib.Path = REPO,
               env: dict[str, str] | None = None) -> Finished:
  """The same command as one process (no distributed flags), with ``devices`` CPU devices."""
  p = subprocess.run([sys.executable, *argv], cwd=cwd, env=process_env(devices, env), capture_output=True,
                     text=True, timeout=timeout_s, check=False)
  return Finished(p.returncode, p.stdout, p.stderr)
