"""Shared pytest fixtures."""

from __future__ import annotations

import contextlib
import os
import pathlib
import secrets
import shutil
import subprocess
import textwrap
import time
from collections.abc import Iterator

import pytest

from hieramas_jax import paths


@pytest.fixture
def shared_data() -> pathlib.Path:
  """The ../shared/data folder; tests that need it skip cleanly without it."""
  root = paths.default_data_dir()
  if root is None or not root.is_dir():
    pytest.skip("needs the benchmark files of ../shared/data (or HIERAMAS_DATA); absent here")
  return root


_PLAIN_SANDBOX_LOADER = textwrap.dedent("""
    import importlib.util, json, os, sys
    spec = importlib.util.spec_from_file_location("sandbox_under_test", sys.argv[1],
                                                  submodule_search_locations=[os.path.dirname(sys.argv[1])])
    sandbox = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = sandbox
    spec.loader.exec_module(sandbox)
    assert sandbox.isolation_mode() == "plain"
    """)


class PlainSandboxUser:
  """A fresh unprivileged uid that runs scripts in which ``sandbox`` is this repository's sandbox package.

  The plain mode is the one a non-root user gets; the script runs under an
  interpreter such a user can read, outside the virtualenv, so it loads the
  package from its files alone.
  """

  def __init__(self, uid: int):
    self.uid = uid

  def run(self, body: str, stdin: str | None = None, timeout_s: float = 60) -> subprocess.CompletedProcess:
    """Runs ``body`` (after the loader, which imports json and asserts the plain mode) as this uid."""
    from hieramas_jax import sandbox
    from hieramas_jax.sandbox import interpreter
    script = _PLAIN_SANDBOX_LOADER + textwrap.dedent(body)
    command = ["setpriv", f"--reuid={self.uid}", f"--regid={self.uid}", "--clear-groups",
               interpreter.python_for_uid(), "-I", "-c", script, os.path.abspath(sandbox.__file__)]
    return subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=timeout_s, cwd="/",
                          check=False)


@pytest.fixture
def plain_sandbox_user() -> Iterator[PlainSandboxUser]:
  """A ``PlainSandboxUser`` of its own (so its process cap is exact); its processes are killed after the test."""
  if os.geteuid() != 0 or not shutil.which("setpriv") or not os.path.exists("/usr/bin/python3"):
    pytest.skip("runs the plain mode as an unprivileged user; needs root, setpriv and /usr/bin/python3")
  from hieramas_jax.sandbox import processes
  user = PlainSandboxUser(processes.UID_RANGE[0] - 1 - secrets.randbelow(1000))
  yield user
  processes.kill_uid(user.uid)


@contextlib.contextmanager
def listening_server(cmd: list[str], *, cwd: pathlib.Path, timeout_s: float = 30.0,
                     env: dict[str, str] | None = None) -> Iterator[str]:
  """Runs a server command line (launch.sim_server, launch.serve_local) until its 'listening on URL' line; yields URL."""
  proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
  try:
    deadline = time.time() + timeout_s
    url = None
    while time.time() < deadline and url is None:
      line = proc.stdout.readline()
      if not line:
        break
      if "listening on" in line:
        url = line.strip().rsplit(" ", 1)[-1]
    if url is None:
      proc.kill()
      pytest.fail(f"server did not start: {proc.stderr.read()[-2000:]}")
    yield url
  finally:
    proc.terminate()
    proc.communicate(timeout=30)  # waits and closes the pipes
