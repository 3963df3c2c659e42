"""The interpreter sandboxed processes run, probed once for what confining it needs."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import subprocess
import sys

from . import bootstrap


@dataclasses.dataclass(frozen=True)
class Interpreter:
  """An interpreter for sandboxed processes and what confining it needs."""

  python: str
  read_paths: tuple[str, ...]  # what Landlock lets it read
  list_paths: tuple[str, ...]  # folders whose names (not contents) it may list
  bind_paths: tuple[str, ...]  # what the namespaces mode binds into its root
  landlock_abi: int
  seccomp: bool


_EXTRA_READ_PATHS = ("/etc/ld.so.cache", "/etc/localtime", "/usr/share/zoneinfo", "/dev/zero", "/dev/urandom",
                     "/dev/random", "/usr/lib/locale/C.utf8", "/usr/lib/locale/C.UTF-8")
_SYSTEM_BINDS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc/ld.so.cache",
                 "/etc/localtime")


def world_accessible(path: str) -> bool:
  """Whether any user can reach and read ``path`` (every parent folder o+x)."""
  path = os.path.realpath(path)
  try:
    if not os.stat(path).st_mode & 0o004:
      return False
    parent = os.path.dirname(path)
    while True:
      if not os.stat(parent).st_mode & 0o001:
        return False
      if parent == "/":
        return True
      parent = os.path.dirname(parent)
  except OSError:
    return False


def python_for_uid() -> str:
  """An interpreter an unprivileged uid can run, with a readable standard library."""
  candidates = [sys.executable, getattr(sys, "_base_executable", ""), "/usr/bin/python3",
                "/usr/local/bin/python3", shutil.which("python3") or ""]
  for python in candidates:
    if not python or not os.path.exists(python) or not world_accessible(python):
      continue
    probe = subprocess.run([python, "-I", "-B", "-c", "import os, sys; print(os.path.dirname(os.__file__))"],
                           capture_output=True, text=True, timeout=30, check=False)
    if probe.returncode == 0 and world_accessible(probe.stdout.strip()):
      return python
  raise RuntimeError("no Python interpreter that an unprivileged user can read was found; pass python= "
                     "with one whose folders are world-readable (e.g. /usr/bin/python3)")


@functools.lru_cache(maxsize=1)
def _python_for_uid_cached() -> str:
  return python_for_uid()


def default_python(mode: str) -> str:
  """The interpreter of a run in ``mode``: one the fresh uid can read, or this one in plain mode."""
  return sys.executable if mode == "plain" else _python_for_uid_cached()


@functools.lru_cache(maxsize=8)
def probe(python: str) -> Interpreter:
  """Probes ``python`` once: its files (for Landlock and the binds), Landlock's ABI, seccomp."""
  completed = subprocess.run([python, "-I", "-B", "-c", bootstrap.child_source(), "probe"], capture_output=True,
                             text=True, timeout=120, check=False, cwd="/",
                             env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"})
  if completed.returncode != 0:
    raise RuntimeError(f"probing the sandbox interpreter {python} failed: {completed.stderr.strip()[-1000:]}; "
                       "pass python= with a working Python 3.8+")
  found = json.loads(completed.stdout.strip().splitlines()[-1])
  stdlib = found["stdlib"]
  # The standard library, less any installed packages (they may bundle benchmark data).
  read = [os.path.join(stdlib, entry) for entry in sorted(os.listdir(stdlib))
          if entry not in ("site-packages", "dist-packages")]
  read += found["files"] + [p for p in _EXTRA_READ_PATHS if os.path.exists(p)]
  binds = [p for p in _SYSTEM_BINDS if os.path.lexists(p)]
  system = tuple(p.rstrip("/") + "/" for p in binds)
  for path in [stdlib, os.path.realpath(python)] + found["files"]:
    if not (path + "/").startswith(system):  # an interpreter outside the system folders: bind its folder
      top = "/" + "/".join(path.split("/")[1:3])
      if top not in binds:
        binds.append(top)
  return Interpreter(python=python, read_paths=tuple(dict.fromkeys(read)), list_paths=(stdlib,),
                     bind_paths=tuple(binds), landlock_abi=int(found["landlock_abi"]), seccomp=bool(found["seccomp"]))
