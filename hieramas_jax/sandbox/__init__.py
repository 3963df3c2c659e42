"""Isolated execution of untrusted generated code, with verdicts the program cannot forge.

``run_program`` runs one program and returns a verdict: ``passed``, ``failed``
(an assertion or error, or an exit before the checks completed), ``timeout``
(wall-clock or CPU time limit) or ``crashed`` (memory or disk limit, killed by
a signal, or no verdict at all). ``run_many`` runs many in parallel.

Where the verdict comes from. The program runs in one sandboxed process (the
*program* role of ``harness.py``); the problem's ``check(candidate)`` runs in
another (the *driver*), with a proxy candidate that sends each call's arguments
to the program and decodes its reply into plain values (exactly int, float,
str, bool, None, list, tuple, dict, set, frozenset, bytes or complex). The
program never holds the tests, the expected values, or any descriptor that
leads to the host; the host reads a verdict only from the driver, which runs
no program code. So whatever the program does to its own process (signal
handlers reaching frames, patched classes, ctypes, exits, fake markers), the
most it can do is answer calls, and it passes only if its answers are right.
A program-only run (no entry point) passes when the program says it ran to
the end: there is nothing to check but that.

Containment (``isolation_mode()`` picks the strongest that works; the pick and
its guarantees are printed once per process, and ``describe_isolation()``):

* ``namespaces`` (root, ``unshare`` usable): each process runs in new PID,
  mount, network, IPC and UTS namespaces, chrooted into a fresh root that holds
  only read-only binds of the system folders (``/usr``, ``/lib*``, ``/bin``...),
  ``/dev/{null,zero,random,urandom}`` and a size-capped tmpfs ``/tmp`` (the
  disk cap) with the working directory; the project, the benchmark files and the
  host's ``/tmp`` do not exist there. It runs as a fresh unprivileged uid; the
  network namespace has no interface up; the death of the namespace's first
  process kills everything in it.
* ``uid`` (root, no namespaces): a fresh uid, a private working directory on
  the host whose size the host watches (disk cap), and Landlock (below).
* ``plain`` (not root): the same without the uid switch.

In every mode, when the kernel has them: seccomp (no new processes, only
threads, so ``RLIMIT_AS`` caps the program's total memory; no sockets but
AF_UNIX pairs; no io_uring; signals only to itself) and Landlock (reading only
the interpreter's own files, i.e. its standard library without site-packages
and the shared libraries it loads; writing only the working directory; no TCP;
signals and abstract sockets scoped to the process). Plus ``RLIMIT_CPU``,
``RLIMIT_FSIZE``, ``RLIMIT_NPROC``, no core dumps, a non-dumpable process, a
wall-clock deadline after which every process is killed, and a scrubbed
environment for ``python -I -B``. Without seccomp the process cap falls back to
``RLIMIT_NPROC=1`` for the fresh uid (no threads either); without Landlock the
``uid`` and ``plain`` modes can read world-readable files and write where the
uid may (the README states each mode's guarantees).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import math
import os
import pathlib
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Sequence

from . import harness

PASSED = "passed"
FAILED = "failed"
TIMEOUT = "timeout"
CRASHED = "crashed"

ISOLATION_MODES = ("namespaces", "uid", "plain")

_TAIL_BYTES = 8192  # kept from the end of stdout and stderr
_MAX_MESSAGE_BYTES = 64 << 20  # bound on one protocol message (a reply, the driver's report)
_SETUP_FAILED = 97  # exit code of the namespace setup script when a mount fails
_CONFINE_FAILED = 96  # exit code of the harness when it cannot confine itself
_UID_RANGE = (1_000_000_000, 2_000_000_000)  # fresh uids for sandboxed processes
_DISK_POLL_S = 0.02  # how often the host measures a host-side working directory
_MAX_FILES = 4096  # entries a host-side working directory may hold (part of the disk cap)
_HARNESS_SOURCE = pathlib.Path(harness.__file__).read_text(encoding="utf-8")


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


# --------------------------------------------------------------------------- what this machine offers
@dataclasses.dataclass(frozen=True)
class _Interpreter:
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


def _world_accessible(path: str) -> bool:
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


def _python_for_uid() -> str:
  """An interpreter an unprivileged uid can run, with a readable standard library."""
  candidates = [sys.executable, getattr(sys, "_base_executable", ""), "/usr/bin/python3",
                "/usr/local/bin/python3", shutil.which("python3") or ""]
  for python in candidates:
    if not python or not os.path.exists(python) or not _world_accessible(python):
      continue
    probe = subprocess.run([python, "-I", "-B", "-c", "import os, sys; print(os.path.dirname(os.__file__))"],
                           capture_output=True, text=True, timeout=30, check=False)
    if probe.returncode == 0 and _world_accessible(probe.stdout.strip()):
      return python
  raise RuntimeError("no Python interpreter that an unprivileged user can read was found; pass python= "
                     "with one whose folders are world-readable (e.g. /usr/bin/python3)")


@functools.lru_cache(maxsize=8)
def _interpreter(python: str) -> _Interpreter:
  """Probes ``python`` once: its files (for Landlock and the binds), Landlock's ABI, seccomp."""
  probe = subprocess.run([python, "-I", "-B", "-c", _HARNESS_SOURCE, "probe"], capture_output=True, text=True,
                         timeout=120, check=False, cwd="/", env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"})
  if probe.returncode != 0:
    raise RuntimeError(f"probing the sandbox interpreter {python} failed: {probe.stderr.strip()[-1000:]}; "
                       "pass python= with a working Python 3.8+")
  found = json.loads(probe.stdout.strip().splitlines()[-1])
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
  return _Interpreter(python=python, read_paths=tuple(dict.fromkeys(read)), list_paths=(stdlib,),
                      bind_paths=tuple(binds),
                      landlock_abi=int(found["landlock_abi"]), seccomp=bool(found["seccomp"]))


@functools.lru_cache(maxsize=1)
def _python_for_uid_cached() -> str:
  return _python_for_uid()


# Run as pid 1 of the new namespaces (root there): a fresh root that holds only
# read-only binds of the system folders, a few devices and a size-capped /tmp
# with the working directory; then the harness, chrooted, as a child, so that
# pid 1 stays a plain waiter (its death kills everything in the namespace).
_NAMESPACE_SETUP = r"""
uid="$1"; fs_kb="$2"; binds="$3"; chroot_bin="$4"; shift 4
mount -t tmpfs -o size=1m,mode=755,nosuid,nodev tmpfs /tmp || exit 97
root=/tmp/root
mkdir -m 755 "$root" "$root/dev" "$root/tmp" "$root/etc" || exit 97
for d in $binds; do
  if [ -L "$d" ]; then
    mkdir -p "$root$(dirname "$d")" && ln -s "$(readlink "$d")" "$root$d" || exit 97
  elif [ -d "$d" ]; then
    mkdir -p "$root$d" && mount --bind "$d" "$root$d" && mount -o remount,bind,ro,nosuid,nodev "$root$d" || exit 97
  elif [ -f "$d" ]; then
    mkdir -p "$root$(dirname "$d")" && touch "$root$d" && mount --bind "$d" "$root$d" \
      && mount -o remount,bind,ro,nosuid,nodev "$root$d" || exit 97
  fi
done
for f in null zero random urandom; do
  touch "$root/dev/$f" && mount --bind "/dev/$f" "$root/dev/$f" || exit 97
done
mount -t tmpfs -o "size=${fs_kb}k,mode=755,nosuid,nodev" tmpfs "$root/tmp" || exit 97
mkdir -m 700 "$root/tmp/work" && chown "$uid:$uid" "$root/tmp/work" || exit 97
"$chroot_bin" "$root" "$@"
exit $?
"""

_UNSHARE_FLAGS = ("--pid", "--fork", "--kill-child", "--mount-proc", "--net", "--ipc", "--uts",
                  "--propagation", "private")


def _namespaces_work(interpreter: _Interpreter) -> bool:
  if os.geteuid() != 0 or not all(shutil.which(tool) for tool in ("unshare", "mount", "chown", "chroot")):
    return False
  try:
    probe = subprocess.run([shutil.which("unshare"), *_UNSHARE_FLAGS, "--", "/bin/sh", "-c", _NAMESPACE_SETUP, "sh",
                            "12345", "1024", " ".join(interpreter.bind_paths), shutil.which("chroot"), interpreter.python, "-I", "-B", "-c",
                            "import os; assert os.listdir('/tmp') == ['work']"],
                           capture_output=True, timeout=30, check=False, cwd="/")
  except (OSError, subprocess.TimeoutExpired):
    return False
  return probe.returncode == 0


_MODE_LOCK = threading.Lock()
_MODE: str | None = None
_ANNOUNCED = False


def isolation_mode() -> str:
  """The strongest isolation that works here (probed once): see the module doc."""
  global _MODE
  with _MODE_LOCK:
    if _MODE is None:
      if os.geteuid() != 0:
        _MODE = "plain"
      elif _namespaces_work(_interpreter(_python_for_uid_cached())):
        _MODE = "namespaces"
      else:
        _MODE = "uid"
    return _MODE


def describe_isolation(mode: str | None = None, python: str | None = None) -> str:
  """One line: the mode and the guarantees it gives on this machine."""
  mode = mode or isolation_mode()
  interpreter = _interpreter(python or (_python_for_uid_cached() if mode != "plain" else sys.executable))
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


def _announce(mode: str, python: str | None) -> None:
  global _ANNOUNCED
  with _MODE_LOCK:
    if _ANNOUNCED:
      return
    _ANNOUNCED = True
  print(describe_isolation(mode, python), file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes of the host
def _count_user_tasks(uid: int) -> int:
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


def _live_processes_of(uid: int) -> list[int]:
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


def _kill_uid(uid: int) -> None:
  """Kills every process of ``uid``, repeating until none is left."""
  for _ in range(500):
    pids = _live_processes_of(uid)
    if not pids:
      return
    for pid in pids:
      try:
        os.kill(pid, signal.SIGKILL)
      except OSError:
        pass


def _fresh_uid() -> int:
  return secrets.randbelow(_UID_RANGE[1] - _UID_RANGE[0]) + _UID_RANGE[0]


class _Tail:
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


def _disk_usage(folder: str, max_entries: int) -> tuple[int, int]:
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


@dataclasses.dataclass
class _Sandboxed:
  """One sandboxed process (program or driver) of a run."""

  role: str
  uid: int
  host_workdir: str | None
  proc: subprocess.Popen | None = None
  exit_code: int | None = None  # before the host killed what was left (None: still running then)
  stdout: _Tail = dataclasses.field(default_factory=lambda: _Tail(_TAIL_BYTES))
  stderr: _Tail = dataclasses.field(default_factory=lambda: _Tail(_TAIL_BYTES))

  def signal_number(self, mode: str) -> int | None:
    code = self.exit_code
    if code is None:
      return None
    if code < 0:
      return -code
    if mode == "namespaces" and 128 < code < 128 + 65:
      return code - 128  # the namespace's shell reports a signal as 128 + n
    return None


def _spawn(role: str, sandboxed: _Sandboxed, mode: str, interpreter: _Interpreter, setup: dict[str, Any],
           pass_fds: tuple[int, ...], max_file_mb: int) -> None:
  env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": setup["workdir"], "TMPDIR": setup["workdir"],
         "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
         "MKL_NUM_THREADS": "1"}
  command = [interpreter.python, "-I", "-B", "-c", _HARNESS_SOURCE, role]
  kwargs: dict[str, Any] = dict(stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                pass_fds=pass_fds, env=env, start_new_session=True)
  if mode == "namespaces":
    command = [shutil.which("unshare") or "unshare", *_UNSHARE_FLAGS, "--", "/bin/sh", "-c", _NAMESPACE_SETUP, "sh",
               str(sandboxed.uid), str(max_file_mb * 1024), " ".join(interpreter.bind_paths),
               shutil.which("chroot") or "/usr/sbin/chroot", *command]
    kwargs["cwd"] = "/"
  else:
    kwargs["cwd"] = setup["workdir"]
    if mode == "uid":
      kwargs.update(user=sandboxed.uid, group=sandboxed.uid, extra_groups=[])
  sandboxed.proc = subprocess.Popen(command, **kwargs)  # noqa: S603 (the command is ours)


# --------------------------------------------------------------------------- one run
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
  if timeout_s <= 0 or memory_mb < 32 or max_procs < 1 or max_file_mb < 1:
    raise ValueError("limits must be positive (memory_mb at least 32)")
  if program.test and not program.entry_point:
    raise ValueError("a Program with a test needs its entry_point (the function check() is given)")
  if program.inputs and not program.entry_point:
    raise ValueError("a Program with inputs needs its entry_point (the function called on them)")
  if python is None:
    python = _python_for_uid_cached() if mode != "plain" else sys.executable
  interpreter = _interpreter(python)
  _announce(mode, python)

  with_driver = program.entry_point is not None
  if interpreter.seccomp:
    nproc = max_procs  # threads only: seccomp refuses new processes
  else:
    nproc = 1 if mode != "plain" else _count_user_tasks(os.getuid()) + max_procs
  roles = ["program"] + (["driver"] if with_driver else [])
  runs: dict[str, _Sandboxed] = {}
  for role in roles:
    host_workdir = None
    uid = _fresh_uid()
    if mode != "namespaces":
      host_workdir = tempfile.mkdtemp(prefix=f"hieramas_sandbox_{role}_")
      if mode == "uid":
        os.chown(host_workdir, uid, uid)
    runs[role] = _Sandboxed(role=role, uid=uid, host_workdir=host_workdir)

  requests_r, requests_w = os.pipe()  # driver -> program: calls
  replies_r, replies_w = os.pipe()  # program -> driver (or host): replies
  result_r, result_w = os.pipe() if with_driver else (None, None)  # driver -> host: the verdict
  child_ends = [requests_r, replies_w] + ([requests_w, replies_r, result_w] if with_driver else [])
  host_reads = result_r if with_driver else replies_r
  if not with_driver:
    os.close(requests_w)  # nothing calls a program-only run: it sees the end of the stream
  payloads: dict[str, bytes] = {}
  start = time.monotonic()
  try:
    for role, sandboxed in runs.items():
      workdir = "/tmp/work" if mode == "namespaces" else sandboxed.host_workdir
      setup = {
          "mode": mode, "uid": sandboxed.uid, "workdir": workdir, "seccomp": interpreter.seccomp,
          "landlock": interpreter.landlock_abi > 0, "read_paths": list(interpreter.read_paths),
          "list_paths": list(interpreter.list_paths),
          "max_message": _MAX_MESSAGE_BYTES,
          "limits": {"cpu_s": int(math.ceil(timeout_s)) + 1, "memory_mb": int(memory_mb),
                     "file_mb": int(max_file_mb), "nproc": int(nproc)},
      }
      if role == "program":
        setup.update(code=program.code, entry_point=program.entry_point,
                     fds={"requests": requests_r, "replies": replies_w})
        fds = (requests_r, replies_w)
      else:
        # The driver runs trusted code: it gets the memory to hold the inputs and its own limits.
        setup["limits"].update(memory_mb=max(int(memory_mb), 1024), nproc=max(int(nproc), 4))
        setup.update(test=program.test, context=program.context, entry_point=program.entry_point,
                     inputs=[list(args) for args in program.inputs], digest_above=65536,
                     fds={"requests": requests_w, "replies": replies_r, "result": result_w})
        fds = (requests_w, replies_r, result_w)
      payloads[role] = json.dumps(setup).encode()
      _spawn(role, sandboxed, mode, interpreter, setup, fds, max_file_mb)
  except BaseException:
    for sandboxed in runs.values():
      if sandboxed.proc is not None:
        _kill_group(sandboxed.proc)
    raise
  finally:
    for fd in child_ends:
      os.close(fd)
  try:
    timed_out, disk_full, message = _communicate(runs, payloads, host_reads, start + timeout_s, mode, max_file_mb,
                                                 primary="driver" if with_driver else "program")
  finally:
    os.close(host_reads)
    for sandboxed in runs.values():
      _kill_group(sandboxed.proc)
      if mode == "uid":
        _kill_uid(sandboxed.uid)
      if sandboxed.host_workdir is not None:
        shutil.rmtree(sandboxed.host_workdir, ignore_errors=True)
  duration = time.monotonic() - start
  status, reason, outputs = _verdict(mode, runs, with_driver, message, timed_out, disk_full, timeout_s)
  program_run = runs["program"]
  stderr = program_run.stderr.text()
  if with_driver and status == CRASHED and runs["driver"].stderr.text().strip():
    stderr += "\n[test driver]\n" + runs["driver"].stderr.text()
  return SandboxResult(status=status, reason=reason, stdout=program_run.stdout.text(), stderr=stderr,
                       duration_s=duration, isolation=mode, outputs=outputs)


def _communicate(runs: dict[str, _Sandboxed], payloads: dict[str, bytes], host_reads: int, deadline: float,
                 mode: str, max_file_mb: int, primary: str) -> tuple[bool, bool, bytes]:
  """Feeds the setups, collects output tails and the verdict stream until the primary exits or the deadline."""
  message = bytearray()
  timed_out = disk_full = False
  selector = selectors.DefaultSelector()
  views: dict[int, memoryview] = {}
  for role, sandboxed in runs.items():
    proc = sandboxed.proc
    os.set_blocking(proc.stdin.fileno(), False)
    views[proc.stdin.fileno()] = memoryview(payloads[role])
    selector.register(proc.stdin.fileno(), selectors.EVENT_WRITE, (sandboxed, "stdin"))
    selector.register(proc.stdout.fileno(), selectors.EVENT_READ, (sandboxed, "stdout"))
    selector.register(proc.stderr.fileno(), selectors.EVENT_READ, (sandboxed, "stderr"))
  selector.register(host_reads, selectors.EVENT_READ, (None, "message"))
  watched = runs["program"].host_workdir
  next_disk_check = 0.0
  exited_at = None
  try:
    while selector.get_map():
      now = time.monotonic()
      if exited_at is None and runs[primary].proc.poll() is not None:
        exited_at = now
      if exited_at is not None and now - exited_at > 0.3:
        break  # leftovers hold pipes open; everything is killed after
      if now >= deadline:
        timed_out = runs[primary].proc.poll() is None
        break
      if watched is not None and now >= next_disk_check:
        next_disk_check = now + _DISK_POLL_S
        used, entries = _disk_usage(watched, _MAX_FILES)
        if used > max_file_mb << 20 or entries > _MAX_FILES:
          disk_full = True
          break
      for key, _ in selector.select(timeout=min(_DISK_POLL_S, max(0.0, deadline - now))):
        sandboxed, what = key.data
        fd = key.fd
        if what == "stdin":
          try:
            written = os.write(fd, views[fd][:65536])
          except OSError:
            written = len(views[fd])
          views[fd] = views[fd][written:]
          if not len(views[fd]):
            selector.unregister(fd)
            sandboxed.proc.stdin.close()
          continue
        try:
          chunk = os.read(fd, 65536)
        except (BlockingIOError, InterruptedError):
          continue
        if not chunk:
          selector.unregister(fd)
          continue
        if what == "stdout":
          sandboxed.stdout.add(chunk)
        elif what == "stderr":
          sandboxed.stderr.add(chunk)
        elif len(message) + len(chunk) <= _MAX_MESSAGE_BYTES:
          message += chunk
  finally:
    selector.close()
    for sandboxed in runs.values():
      if not (timed_out or disk_full):  # its streams may close just before it is reaped
        try:
          sandboxed.proc.wait(timeout=0.3)
        except subprocess.TimeoutExpired:
          pass
      sandboxed.exit_code = sandboxed.proc.poll()
      if sandboxed.proc.stdin and not sandboxed.proc.stdin.closed:
        try:
          sandboxed.proc.stdin.close()
        except OSError:
          pass
  return timed_out, disk_full, bytes(message)


def _kill_group(proc: subprocess.Popen) -> None:
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


def _decode_output(value: Any) -> Any:
  if isinstance(value, dict) and set(value) == {"__raised__"}:
    return RaisedOutput(str(value["__raised__"]))
  if isinstance(value, dict) and set(value) == {"__digest__", "__size__"}:
    return DigestOutput(str(value["__digest__"]), int(value["__size__"]))
  return harness.decode_value(value)


def _first_message(data: bytes) -> dict[str, Any] | None:
  line = data.split(b"\n", 1)[0]
  try:
    parsed = json.loads(line.decode("utf-8"))
  except (ValueError, RecursionError):
    return None
  return parsed if isinstance(parsed, dict) else None


def _verdict(mode: str, runs: dict[str, _Sandboxed], with_driver: bool, data: bytes, timed_out: bool,
             disk_full: bool, timeout_s: float) -> tuple[str, str, list[Any] | None]:
  """Status, reason and outputs: a pass comes only from the driver's report (or, without one, 'ready')."""
  message = _first_message(data)
  if with_driver and message is not None and message.get("status") == PASSED:
    try:
      outputs = message.get("outputs")
      return PASSED, "", None if outputs is None else [_decode_output(v) for v in outputs]
    except (harness.Malformed, ValueError, TypeError, KeyError):
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
    if sandboxed.exit_code == _CONFINE_FAILED or (mode == "namespaces" and sandboxed.exit_code == _SETUP_FAILED):
      return CRASHED, f"sandbox setup failed: {sandboxed.stderr.text().strip()[-500:]}", None
  if program.exit_code == 0:
    return FAILED, "the program exited (code 0) before the checks completed", None
  last = program.stderr.text().strip().splitlines()[-1] if program.stderr.text().strip() else ""
  return CRASHED, f"exited with code {program.exit_code} without a verdict {last}".strip(), None


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
  isolation_mode()  # probe once before the threads start
  with concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox") as pool:
    return list(pool.map(lambda p: run_program(p, **limits), programs))
