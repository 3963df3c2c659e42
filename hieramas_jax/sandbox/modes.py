"""Which isolation mode a run gets, and the one line that says what it guarantees on this machine."""

from __future__ import annotations

import os
import sys
import threading

from . import interpreter as interpreter_lib
from . import namespaces

ISOLATION_MODES = ("namespaces", "uid", "plain")

_MODE_LOCK = threading.Lock()
_MODE: str | None = None
_ANNOUNCED = False


def isolation_mode() -> str:
  """The strongest isolation that works here (probed once): see the package doc."""
  global _MODE
  with _MODE_LOCK:
    if _MODE is None:
      if os.geteuid() != 0:
        _MODE = "plain"
      elif namespaces.usable(interpreter_lib.probe(interpreter_lib.default_python("namespaces"))):
        _MODE = "namespaces"
      else:
        _MODE = "uid"
    return _MODE


def resolve(isolation: str) -> str:
  """The mode a run asking for ``isolation`` gets; refuses one this process cannot give."""
  mode = isolation_mode() if isolation == "auto" else isolation
  if mode not in ISOLATION_MODES:
    raise ValueError(f"unknown isolation {isolation!r}; use 'auto' or one of {', '.join(ISOLATION_MODES)}")
  if mode == "plain" and os.geteuid() == 0:
    raise ValueError("refusing to run untrusted code as root without dropping privileges; "
                     "use isolation='auto', 'namespaces' or 'uid'")
  if mode != "plain" and os.geteuid() != 0:
    raise ValueError(f"isolation {mode!r} needs root (to switch to a fresh uid); use 'plain'")
  if mode == "namespaces" and isolation != "auto" and isolation_mode() != "namespaces":
    raise ValueError("namespaces are not usable here (unshare/mount/chroot failed); use 'uid'")
  return mode


def describe_isolation(mode: str | None = None, python: str | None = None) -> str:
  """One line: the mode and the guarantees it gives on this machine."""
  mode = mode or isolation_mode()
  interpreter = interpreter_lib.probe(python or interpreter_lib.default_python(mode))
  parts = {"namespaces": "own PID/mount/net namespaces, a root with only system folders and a capped tmpfs, "
                         "fresh uid",
           "uid": "fresh uid, host-side working directory with a watched size",
           "plain": "same user, host-side working directory with a watched size"}[mode]
  if interpreter.seccomp:
    parts += "; seccomp: one process (total memory = RLIMIT_AS), no network sockets, signals only to itself"
  else:
    parts += "; no seccomp: " + ("RLIMIT_NPROC=1 (no threads)" if mode != "plain" else
                                 "processes capped by RLIMIT_NPROC only (memory per process)")
  if interpreter.landlock_abi:
    parts += (f"; Landlock ABI {interpreter.landlock_abi}: reads only the interpreter's files, writes only the "
              "working directory" + (", no TCP" if interpreter.landlock_abi >= 4 else ""))
  elif mode != "namespaces":
    parts += "; no Landlock: world-readable host files are readable and world-writable folders writable"
  return f"sandbox isolation: {mode} ({parts})"


def announce(mode: str, python: str | None) -> None:
  """Prints ``describe_isolation`` to stderr, once per process."""
  global _ANNOUNCED
  with _MODE_LOCK:
    if _ANNOUNCED:
      return
    _ANNOUNCED = True
  print(describe_isolation(mode, python), file=sys.stderr, flush=True)
