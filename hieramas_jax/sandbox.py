"""Isolated execution of untrusted generated code.

``run_program`` runs one program in a separate process and returns a verdict:
``passed``, ``failed`` (an assertion or error, or an exit before the checks
completed), ``timeout`` (wall-clock or CPU time limit) or ``crashed`` (memory
limit, killed by a signal, or no verdict at all). ``run_many`` runs many
programs in parallel, bounded by the number of cores.

Containment, strongest first; ``isolation_mode()`` picks the strongest that works:

* ``namespaces`` (running as root, ``unshare`` usable): the program runs in new
  PID, mount, network, IPC and UTS namespaces under a fresh random unprivileged
  uid. The network namespace has no interface up, so no connection leaves it.
  ``/tmp`` is a private size-limited tmpfs whose only writable folder is the
  working directory; ``/var/tmp``, ``/dev/shm`` and ``/run/lock`` are covered by
  read-only tmpfs, so the uid can write nowhere else. ``RLIMIT_NPROC`` counts
  the processes of that uid alone, which caps fork bombs exactly, and when the
  namespace's first process dies the kernel kills every process left in it
  (even ones that called ``setsid``). The host's processes are invisible.
* ``uid`` (root without namespaces): the same fresh uid and resource limits; a
  private working directory on the host; leftovers of the uid are killed after
  the run. Network, process execution and writes outside the working directory
  are refused by the in-process guard below.
* ``plain`` (not root): resource limits, a private working directory, a kill of
  the process group, and the in-process guard. ``RLIMIT_NPROC`` counts all the
  processes of the user, so it is set to the current count plus ``max_procs``.
  This is the weakest mode: the guard is not a security boundary against a
  program written to escape it.

In every mode: a separate ``python -I -B`` with a scrubbed environment;
``RLIMIT_AS`` (memory), ``RLIMIT_CPU``, ``RLIMIT_FSIZE``, ``RLIMIT_NPROC`` and
no core dumps; a wall-clock deadline after which the whole process group is
killed; a private working directory deleted after the run; and an in-process
guard (a ``sys.addaudithook`` hook, which cannot be removed) that refuses socket
use, frame and garbage-collector introspection, ``ctypes``, reading
``/proc/*/mem`` and writing outside the working directory, plus (outside the
``namespaces`` mode) running other programs, and (``plain``) signalling other
processes.

The verdict cannot be forged by exiting early: the harness passes only when it
writes a random nonce, which it received on a pipe that is closed before the
untrusted code runs, and which it writes only after every check returned. The
introspection the guard refuses is what a program would need to find the
nonce in memory. ``sys.exit`` or ``os._exit`` before the checks, a program that
defines its own ``check``, or one that patches builtins or common standard
modules, fails: the tests run in their own namespace with the builtins as they
were before the program ran, the harness restores those modules after the
program and after each call of the candidate, and a candidate's return values
must be built-in types (an object whose class the program defined, such as one
whose ``__eq__`` is always true, is refused). A program that leaves threads
running that patch modules during the tests is not covered (lazy iterators such
as generators are refused as return values for that reason).

The interpreter is, in the root modes, the first Python the fresh uid can read
(``sys.executable`` when all its folders are world-readable; otherwise e.g.
``/usr/bin/python3``, which may hold the standard library only); ``python=``
chooses another. Reading world-readable files of the host is not prevented.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import inspect
import json
import math
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from typing import Any, Sequence

PASSED = "passed"
FAILED = "failed"
TIMEOUT = "timeout"
CRASHED = "crashed"

ISOLATION_MODES = ("namespaces", "uid", "plain")

_TAIL_BYTES = 8192  # kept from the end of stdout and stderr
_MAX_RESULT_BYTES = 64 << 20  # bound on the verdict message (collected outputs included)
_SETUP_FAILED = 97  # exit code of the namespace setup script when a mount fails
_UID_RANGE = (1_000_000_000, 2_000_000_000)  # fresh uids for sandboxed programs


@dataclasses.dataclass(frozen=True)
class Program:
  """A program to run and what to check.

  With only ``code`` the program passes when it runs to the end. With ``test``
  (code that defines ``check(candidate)``) and ``entry_point``, it passes when
  ``check`` returns for the function ``entry_point`` the program defines; the
  test runs in its own namespace, after the trusted ``context`` (e.g. helper
  functions the test calls). With ``inputs`` (argument lists), the candidate is
  also called on each and its return values come back in
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
  stdout: str  # last few KB
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


# --------------------------------------------------------------------------- harness
# Everything below runs inside the sandbox, in a separate interpreter (possibly
# another Python version), so it uses the standard library only and plain
# Python 3.8 syntax. Every builtin it needs after the untrusted code starts is
# bound to a local first, since the program may patch the builtins module.


def _harness_main():  # noqa: C901 (one self-contained function by design)
  import builtins
  import copy
  import json
  import os
  import resource
  import sys

  nonce_fd, result_fd = int(sys.argv[1]), int(sys.argv[2])
  nonce = os.read(nonce_fd, 256).decode()
  os.close(nonce_fd)
  payload = json.loads(sys.stdin.buffer.read().decode("utf-8"))
  null_fd = os.open(os.devnull, os.O_RDONLY)
  os.dup2(null_fd, 0)
  os.close(null_fd)

  limits = payload["limits"]
  mode = payload["mode"]
  workdir = payload["workdir"]
  job = payload["job"]

  def send(message):
    data = (json.dumps(message) + "\n").encode()
    while data:
      data = data[os.write(result_fd, data):]

  # Pre-encoded: after a memory bomb there may be no memory left to encode it.
  memory_message = (json.dumps({
      "status": "failed", "kind": "memory", "reason": "memory limit exceeded (MemoryError)"}) + "\n").encode()

  def set_limit(which, soft, hard=None):
    hard = soft if hard is None else hard
    old_soft, old_hard = resource.getrlimit(which)
    if old_hard != resource.RLIM_INFINITY:
      soft, hard = min(soft, old_hard), min(hard, old_hard)
    resource.setrlimit(which, (soft, hard))

  mib = 1 << 20
  set_limit(resource.RLIMIT_CORE, 0)
  set_limit(resource.RLIMIT_CPU, limits["cpu_s"], limits["cpu_s"] + 1)
  set_limit(resource.RLIMIT_FSIZE, limits["file_mb"] * mib)
  set_limit(resource.RLIMIT_NPROC, limits["nproc"])
  if mode == "namespaces":  # root inside the new namespaces: drop to the fresh uid
    uid = payload["uid"]
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
  try:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS: no setuid binaries
    libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE=0: no other process may read our memory
    del libc, ctypes
  except Exception:  # noqa: BLE001 (a Python without ctypes still runs, less hardened)
    pass
  for name in [n for n in sys.modules if n == "ctypes" or n.startswith("ctypes.") or n == "_ctypes"]:
    del sys.modules[name]
  set_limit(resource.RLIMIT_AS, limits["memory_mb"] * mib)
  os.chdir(workdir)
  os.umask(0o077)

  # Modules the tests commonly use, imported now so that their state before the
  # program runs can be restored after it (see restore()).
  import bisect, collections, fractions, functools, hashlib, heapq, itertools  # noqa: E401,F401
  import math, operator, pathlib, random, re, stat, string, typing  # noqa: E401,F401
  guarded_modules = ("builtins", "bisect", "collections", "copy", "fractions", "functools", "hashlib",
                     "heapq", "itertools", "math", "operator", "random", "re", "string", "typing")
  saved_modules = {name: sys.modules[name] for name in guarded_modules}
  saved_dicts = {name: dict(module.__dict__) for name, module in saved_modules.items()}
  pristine_builtins = dict(builtins.__dict__)
  # Standard-library classes defined in Python that a candidate may return (or
  # use as paths); the guard refuses changing them.
  trusted_classes = {collections.Counter, collections.OrderedDict, collections.defaultdict,
                     pathlib.PurePath, pathlib.PurePosixPath, pathlib.Path, pathlib.PosixPath}
  dict_like = (collections.Counter, collections.OrderedDict, collections.defaultdict)

  # Locals for every builtin used after the untrusted code starts.
  _BaseException, _Exception, _MemoryError, _SystemExit = BaseException, Exception, MemoryError, SystemExit
  _TypeError, _AssertionError, _OSError = TypeError, AssertionError, OSError
  _callable, _compile, _exec, _len, _isinstance, _type, _id = callable, compile, exec, len, isinstance, type, id
  _str, _repr, _int, _float, _bool, _complex, _bytes = str, repr, int, float, bool, complex, bytes
  _list, _tuple, _dict, _set, _frozenset, _any = list, tuple, dict, set, frozenset, any
  _deepcopy, _dumps, _sorted, _sha256 = copy.deepcopy, json.dumps, sorted, hashlib.sha256
  digest_above = job.get("digest_above", 65536)
  _modules, _module_type = sys.modules, type(sys)
  _fsdecode, _fspath, _getpid, _write, _exit = os.fsdecode, os.fspath, os.getpid, os.write, os._exit
  _lstat, _stat, _readlink, _getcwd = os.lstat, os.stat, os.readlink, os.getcwd
  _S_ISLNK, _S_ISDIR = stat.S_ISLNK, stat.S_ISDIR
  heap_type_flag = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class created by a `class` statement
  # Values that run program code later, when the test consumes them.
  lazy_types = (type(x for x in ()), type(map(abs, ())), type(filter(None, ())))

  def restore():
    for name, module in saved_modules.items():
      _modules[name] = module
      contents = module.__dict__
      contents.clear()
      contents.update(saved_dicts[name])

  def resolve(path):
    """Absolute path with symlinks resolved; uses no state the program can patch."""
    if _isinstance(path, _bytes):
      path = path.decode("utf-8", "surrogateescape")
    elif not _isinstance(path, _str):
      path = _fsdecode(_fspath(path))
    if not path.startswith("/"):
      path = _getcwd() + "/" + path
    pending = [part for part in path.split("/") if part][::-1]
    parts, hops = [], 0
    while pending:
      part = pending.pop()
      if part == ".":
        continue
      if part == "..":
        if parts:
          parts.pop()
        continue
      candidate = "/" + "/".join(parts + [part])
      try:
        is_link = _S_ISLNK(_lstat(candidate).st_mode)
      except _OSError:
        is_link = False
      if not is_link:
        parts.append(part)
        continue
      hops += 1
      if hops > 40:
        raise _OSError("too many levels of symbolic links")
      target = _readlink(candidate)
      if target.startswith("/"):
        parts = []
      pending.extend([p for p in target.split("/") if p][::-1])
    return "/" + "/".join(parts)

  # ---- the guard (an audit hook: it cannot be removed once added)
  workdir_real = resolve(workdir)
  write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
  frame_attributes = {"tb_frame", "gi_frame", "cr_frame", "ag_frame", "f_back"}
  introspection_events = {
      "sys._current_frames", "sys._current_exceptions", "sys.settrace", "sys.setprofile",
      "sys.addaudithook", "gc.get_objects", "gc.get_referrers", "gc.get_referents",
      "sys.monitoring.register_callback"}
  blocked_imports = {"ctypes", "_ctypes", "_testcapi", "_testinternalcapi", "_testmultiphase",
                     "_xxsubinterpreters", "_xxinterpchannels", "cffi", "_cffi_backend"}
  network_events = {"socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg",
                    "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr",
                    "socket.gethostbyname_ex", "socket.getnameinfo"}
  process_events = {"os.exec", "os.posix_spawn", "os.spawn", "os.system", "subprocess.Popen",
                    "os.startfile", "pty.spawn"}
  path_events = {"os.mkdir": (0,), "os.rmdir": (0,), "os.remove": (0,), "os.rename": (0, 1),
                 "os.symlink": (1,), "os.link": (0, 1), "os.chmod": (0,), "os.chown": (0,),
                 "os.truncate": (0,), "os.utime": (0,), "os.mkfifo": (0,), "os.mknod": (0,),
                 "os.setxattr": (0,), "os.removexattr": (0,), "os.chflags": (0,), "os.lchflags": (0,),
                 "shutil.rmtree": (0,), "shutil.chown": (0,)}
  block_processes = mode != "namespaces"
  guard_signals = mode == "plain"

  def inside(real):
    return real == workdir_real or real.startswith(workdir_real + "/") or real == "/dev/null"

  def guard(event, args):
    if event == "open":
      path, open_mode, flags = args[0], args[1], args[2]
      if _isinstance(path, _int) or path in ("/dev/null", "/dev/stdout", "/dev/stderr"):
        return
      real = resolve(path)
      if real.startswith("/proc/") and real.rsplit("/", 1)[-1] in ("mem", "pagemap"):
        raise PermissionError("the sandbox refuses reading process memory")
      if inside(real):
        return
      writing = (flags or 0) & write_flags or (_isinstance(open_mode, _str) and _any(c in open_mode for c in "wax+"))
      if writing:
        raise PermissionError("the sandbox refuses writing outside its working directory: %s" % real)
      try:
        is_dir = _S_ISDIR(_stat(real).st_mode)
      except _OSError:
        is_dir = False
      if is_dir:  # a directory descriptor would let dir_fd= calls write outside
        raise PermissionError("the sandbox refuses opening folders outside its working directory")
    elif event in path_events:
      for index in path_events[event]:
        if index < _len(args) and args[index] is not None and not _isinstance(args[index], _int):
          if not inside(resolve(args[index])):
            raise PermissionError("the sandbox refuses changing files outside its working directory")
    elif event == "sys._getframe":
      raise ValueError("the sandbox refuses frame introspection")  # ValueError: what stdlib callers expect
    elif event == "object.__getattr__":
      if _len(args) > 1 and args[1] in frame_attributes:
        raise AttributeError("the sandbox refuses frame introspection")
    elif event in ("object.__setattr__", "object.__delattr__"):
      if args and args[0] in trusted_classes:
        raise PermissionError("the sandbox refuses changing standard-library classes")
    elif event in introspection_events or event.startswith("ctypes."):
      raise RuntimeError("the sandbox refuses %s" % event)
    elif event == "import":
      top = _str(args[0]).split(".")[0]
      if top in blocked_imports or (block_processes and top == "_posixsubprocess"):
        raise ImportError("the sandbox refuses importing %s" % args[0])
    elif event == "socket.__new__":
      if _len(args) > 1 and args[1] != 1:  # only AF_UNIX socket pairs
        raise PermissionError("the sandbox has no network")
    elif event in network_events:
      raise PermissionError("the sandbox has no network")
    elif block_processes and event in process_events:
      raise PermissionError("the sandbox refuses running other programs")
    elif guard_signals and event in ("os.kill", "os.killpg"):
      if event == "os.killpg" or args[0] != _getpid():
        raise PermissionError("the sandbox refuses signalling other processes")

  sys.addaudithook(guard)
  del guard

  # ---- checks
  def check_value(value):
    """Refuses values of program-defined classes (e.g. an __eq__ that is always true)."""
    stack, seen, budget = [value], _set(), 10 ** 7
    while stack and budget > 0:
      budget -= 1
      item = stack.pop()
      kind = _type(item)
      if kind not in trusted_classes and (_type(kind) is not _type or kind.__flags__ & heap_type_flag):
        raise _TypeError("the candidate returned an instance of a program-defined class; "
                         "only built-in types are accepted")
      if kind in lazy_types:
        raise _TypeError("the candidate returned a lazy iterator (%s); return a concrete value" % kind.__name__)
      if kind in (_list, _tuple, _set, _frozenset, _dict) or kind in dict_like:
        if _id(item) in seen:
          continue
        seen.add(_id(item))
        if kind is _dict or kind in dict_like:
          stack.extend(item.keys())
          stack.extend(item.values())
        else:
          stack.extend(item)

  def guarded(candidate):
    def call(*args, **kwargs):
      try:
        value = candidate(*args, **kwargs)
      finally:
        restore()
      check_value(value)
      return value
    return call

  def encode(value, canonical=False, depth=0):
    """JSON with tags for what JSON lacks (tuples, sets, bytes, non-finite floats...).

    ``canonical`` orders sets and dicts, so that equal values encode the same.
    """
    if depth > 100:
      raise _TypeError("output nested too deeply")
    kind = _type(value)
    if value is None or kind is _bool or kind is _int or kind is _str:
      return value
    if kind is _float:
      return value if value == value and value not in (float("inf"), float("-inf")) else {"__float__": _repr(value)}
    if kind is _list:
      return [encode(v, canonical, depth + 1) for v in value]
    if kind is _tuple:
      return {"__tuple__": [encode(v, canonical, depth + 1) for v in value]}
    if kind is _set or kind is _frozenset:
      items = [encode(v, canonical, depth + 1) for v in value]
      if canonical:
        items = _sorted(items, key=_dumps)
      return {"__set__" if kind is _set else "__frozenset__": items}
    if kind is _dict or kind in dict_like:
      items = [[encode(k, canonical, depth + 1), encode(v, canonical, depth + 1)] for k, v in value.items()]
      if canonical:
        items = _sorted(items, key=_dumps)
      return {"__dict__": items}
    if kind is _complex:
      return {"__complex__": [_repr(value.real), _repr(value.imag)]}
    if kind is _bytes:
      return {"__bytes__": value.hex()}
    raise _TypeError("output of unsupported type %s" % kind.__name__)

  def encode_output(value):
    """A large output comes back as a digest of its canonical encoding."""
    encoded = encode(value)
    size = _len(_dumps(encoded))
    if size <= digest_above:
      return encoded
    return {"__digest__": _sha256(_dumps(encode(value, True)).encode()).hexdigest(), "__size__": size}

  def run_job():
    # A real module, so that code looking itself up (dataclasses, pickle) works.
    program_module = _module_type("solution")
    program_module.__dict__["__builtins__"] = builtins
    _modules["solution"] = program_module
    program_ns = program_module.__dict__
    _exec(_compile(job["code"], "<solution>", "exec", dont_inherit=True, optimize=0), program_ns)
    restore()
    entry_point = job.get("entry_point")
    candidate = None
    if entry_point:
      candidate = program_ns.get(entry_point)
      if not _callable(candidate):
        raise _AssertionError("the program defines no function %r" % entry_point)
      candidate = guarded(candidate)
    if job.get("test"):
      if candidate is None:
        raise _AssertionError("a test needs an entry point")
      test_ns = {"__name__": "tests", "__builtins__": _dict(pristine_builtins)}
      if job.get("context"):
        _exec(_compile(job["context"], "<context>", "exec", dont_inherit=True, optimize=0), test_ns)
      test_ns[entry_point] = candidate  # tests may call the function by its name, as in one namespace
      _exec(_compile(job["test"], "<tests>", "exec", dont_inherit=True, optimize=0), test_ns)
      check = test_ns.get("check")
      if not _callable(check):
        raise _AssertionError("the test defines no check(candidate)")
      check(candidate)
    outputs = None
    if job.get("inputs"):
      if candidate is None:
        raise _AssertionError("inputs need an entry point")
      outputs = []
      for args in job["inputs"]:
        try:
          outputs.append(encode_output(candidate(*_deepcopy(args))))
        except (_MemoryError, _SystemExit):
          raise
        except _Exception as exc:  # the caller compares; the reference may raise too
          outputs.append({"__raised__": _type(exc).__name__})
    return outputs

  def describe(exc):
    line = 0
    tb = exc.__traceback__
    while tb is not None:
      line, tb = tb.tb_lineno, tb.tb_next
    try:
      text = _str(exc)
    except _BaseException:  # noqa: BLE001 (a program-defined __str__ may raise)
      text = ""
    name = _type(exc).__name__
    return ("%s: %s" % (name, text) if text else name)[:2000] + (" (line %d)" % line if line else "")

  def flush():  # os._exit skips it, and the program's prints should come back
    for stream in (sys.stdout, sys.stderr):
      try:
        stream.flush()
      except _BaseException:  # noqa: BLE001 (the program may have replaced or closed them)
        pass

  try:
    outputs = run_job()
  except _MemoryError:
    flush()
    _write(result_fd, memory_message)
    _exit(1)
  except _SystemExit as exc:
    flush()
    send({"status": "failed", "kind": "exit",
          "reason": "the program called sys.exit(%s) before the checks completed" % (exc.code,)})
    _exit(1)
  except _BaseException as exc:  # noqa: BLE001 (any error of the program is a failed run)
    kind = "assertion" if _isinstance(exc, _AssertionError) else "error"
    flush()
    send({"status": "failed", "kind": kind, "reason": describe(exc)})
    _exit(1)
  flush()
  send({"status": "passed", "nonce": nonce, "outputs": outputs})
  _exit(0)


@functools.lru_cache(maxsize=1)
def _harness_source() -> str:
  return textwrap.dedent(inspect.getsource(_harness_main)) + "\n_harness_main()\n"


# Run as pid 1 of the new namespaces (root there): private /tmp, read-only
# covers for the other world-writable folders, then the harness as a child so
# that pid 1 stays a plain waiter (its death kills everything in the namespace).
_NAMESPACE_SETUP = r"""
uid="$1"; fs_kb="$2"; shift 2
mount -t tmpfs -o "size=${fs_kb}k,mode=755,nosuid,nodev" tmpfs /tmp || exit 97
mkdir -m 700 /tmp/work && chown "$uid:$uid" /tmp/work || exit 97
for d in /var/tmp /dev/shm /run/lock /run/shm /dev/mqueue; do
  if [ -d "$d" ] && [ ! -L "$d" ]; then
    mount -t tmpfs -o ro,size=4k,mode=755,nosuid,nodev,noexec tmpfs "$d" || exit 97
  fi
done
"$@"
exit $?
"""

_UNSHARE_FLAGS = ("--pid", "--fork", "--kill-child", "--mount-proc", "--net", "--ipc", "--uts",
                  "--propagation", "private")


# --------------------------------------------------------------------------- host side
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
  """Kills every process of ``uid``, repeating until none is left (forks race us)."""
  for _ in range(500):
    pids = _live_processes_of(uid)
    if not pids:
      return
    for pid in pids:
      try:
        os.kill(pid, signal.SIGKILL)
      except OSError:
        pass


def _namespaces_work() -> bool:
  if os.geteuid() != 0 or not all(shutil.which(tool) for tool in ("unshare", "mount", "chown")):
    return False
  try:
    probe = subprocess.run([shutil.which("unshare"), *_UNSHARE_FLAGS, "--", "/bin/sh", "-c", _NAMESPACE_SETUP, "sh",
                            "12345", "1024", "true"], capture_output=True, timeout=30, check=False)
  except (OSError, subprocess.TimeoutExpired):
    return False
  return probe.returncode == 0


_MODE_LOCK = threading.Lock()
_MODE: str | None = None


def isolation_mode() -> str:
  """The strongest isolation that works here (probed once): see the module doc."""
  global _MODE
  with _MODE_LOCK:
    if _MODE is None:
      if os.geteuid() != 0:
        _MODE = "plain"
      elif _namespaces_work():
        _MODE = "namespaces"
      else:
        _MODE = "uid"
    return _MODE


def _decode_output(value: Any) -> Any:
  if isinstance(value, list):
    return [_decode_output(v) for v in value]
  if isinstance(value, dict) and len(value) == 1:
    (tag, body), = value.items()
    if tag == "__tuple__":
      return tuple(_decode_output(v) for v in body)
    if tag == "__set__":
      return {_decode_output(v) for v in body}
    if tag == "__frozenset__":
      return frozenset(_decode_output(v) for v in body)
    if tag == "__dict__":
      return {_decode_output(k): _decode_output(v) for k, v in body}
    if tag == "__float__":
      return float(body)
    if tag == "__complex__":
      return complex(float(body[0]), float(body[1]))
    if tag == "__bytes__":
      return bytes.fromhex(body)
    if tag == "__raised__":
      return RaisedOutput(str(body))
  if isinstance(value, dict) and set(value) == {"__digest__", "__size__"}:
    return DigestOutput(str(value["__digest__"]), int(value["__size__"]))
  if isinstance(value, dict):
    raise ValueError("malformed sandbox output")
  return value


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
    memory_mb: address-space limit of each process.
    max_procs: processes and threads the program may have at once.
    max_file_mb: largest file it may write (and size of its private /tmp).
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
    raise ValueError("namespaces are not usable here (unshare/mount failed); use 'uid'")
  if timeout_s <= 0 or memory_mb < 32 or max_procs < 1 or max_file_mb < 1:
    raise ValueError("limits must be positive (memory_mb at least 32)")
  if python is None:
    python = _python_for_uid_cached() if mode != "plain" else sys.executable

  uid = secrets.randbelow(_UID_RANGE[1] - _UID_RANGE[0]) + _UID_RANGE[0]
  nproc = max_procs
  if mode == "plain":
    nproc = _count_user_tasks(os.getuid()) + max_procs
  host_workdir = None
  if mode == "namespaces":
    workdir = "/tmp/work"
  else:
    host_workdir = tempfile.mkdtemp(prefix="hieramas_sandbox_")
    workdir = host_workdir
    if mode == "uid":
      os.chown(host_workdir, uid, uid)
  nonce = secrets.token_hex(16)
  payload = json.dumps({
      "mode": mode, "uid": uid, "workdir": workdir,
      "limits": {"cpu_s": int(math.ceil(timeout_s)) + 1, "memory_mb": int(memory_mb),
                 "file_mb": int(max_file_mb), "nproc": int(nproc)},
      "job": {"code": program.code, "test": program.test, "entry_point": program.entry_point,
              "context": program.context, "inputs": [list(args) for args in program.inputs]},
  }).encode()
  env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
         "LC_ALL": "C.UTF-8", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

  nonce_r, nonce_w = os.pipe()
  result_r, result_w = os.pipe()
  os.write(nonce_w, nonce.encode())
  os.close(nonce_w)
  harness = [python, "-I", "-B", "-c", _harness_source(), str(nonce_r), str(result_w)]
  popen_kwargs: dict[str, Any] = dict(stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      pass_fds=(nonce_r, result_w), env=env, start_new_session=True)
  if mode == "namespaces":
    command = [shutil.which("unshare") or "unshare", *_UNSHARE_FLAGS, "--", "/bin/sh", "-c", _NAMESPACE_SETUP,
               "sh", str(uid), str(max_file_mb * 1024), *harness]
    popen_kwargs["cwd"] = "/"
  else:
    command = harness
    popen_kwargs["cwd"] = workdir
    if mode == "uid":
      popen_kwargs.update(user=uid, group=uid, extra_groups=[])
  start = time.monotonic()
  try:
    proc = subprocess.Popen(command, **popen_kwargs)  # noqa: S603 (the command is ours)
  finally:
    os.close(nonce_r)
    os.close(result_w)
  try:
    timed_out, too_large, stdout, stderr, result = _communicate(proc, payload, result_r, start + timeout_s)
  finally:
    os.close(result_r)
    _kill_group(proc)
    if mode == "uid":
      _kill_uid(uid)
    if host_workdir is not None:
      shutil.rmtree(host_workdir, ignore_errors=True)
  duration = time.monotonic() - start
  status, reason, outputs = _verdict(mode, proc.returncode, nonce, result, timed_out, too_large, timeout_s,
                                     stderr.text())
  return SandboxResult(status=status, reason=reason, stdout=stdout.text(), stderr=stderr.text(),
                       duration_s=duration, isolation=mode, outputs=outputs)


@functools.lru_cache(maxsize=1)
def _python_for_uid_cached() -> str:
  return _python_for_uid()


def _communicate(proc: subprocess.Popen, payload: bytes, result_r: int, deadline: float):
  """Feeds stdin, collects stdout/stderr tails and the verdict pipe until exit or deadline."""
  stdout, stderr = _Tail(_TAIL_BYTES), _Tail(_TAIL_BYTES)
  result = bytearray()
  too_large = False
  timed_out = False
  selector = selectors.DefaultSelector()
  os.set_blocking(proc.stdin.fileno(), False)
  selector.register(proc.stdin.fileno(), selectors.EVENT_WRITE, "stdin")
  selector.register(proc.stdout.fileno(), selectors.EVENT_READ, "stdout")
  selector.register(proc.stderr.fileno(), selectors.EVENT_READ, "stderr")
  selector.register(result_r, selectors.EVENT_READ, "result")
  view = memoryview(payload)
  exited_at = None
  try:
    while selector.get_map():
      now = time.monotonic()
      if exited_at is None and proc.poll() is not None:
        exited_at = now
      if exited_at is not None and now - exited_at > 0.5:
        break  # leftovers of the program hold the pipes open; they are killed below
      if now >= deadline:
        timed_out = proc.poll() is None
        break
      for key, _ in selector.select(timeout=min(0.05, deadline - now)):
        fd = key.fd
        if key.data == "stdin":
          try:
            written = os.write(fd, view[:65536])
          except (BrokenPipeError, BlockingIOError, OSError):
            written = len(view)
          view = view[written:]
          if not len(view):
            selector.unregister(fd)
            proc.stdin.close()
          continue
        try:
          chunk = os.read(fd, 65536)
        except (BlockingIOError, InterruptedError):
          continue
        if not chunk:
          selector.unregister(fd)
          continue
        if key.data == "stdout":
          stdout.add(chunk)
        elif key.data == "stderr":
          stderr.add(chunk)
        elif len(result) + len(chunk) > _MAX_RESULT_BYTES:
          too_large = True  # the run is stopped below; its verdict cannot be read
          return timed_out, too_large, stdout, stderr, bytes(result)
        else:
          result += chunk
  finally:
    selector.close()
    if proc.stdin and not proc.stdin.closed:
      try:
        proc.stdin.close()
      except OSError:
        pass
  return timed_out, too_large, stdout, stderr, bytes(result)


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
  for stream in (proc.stdout, proc.stderr):
    if stream is not None:
      stream.close()


def _verdict(mode: str, returncode: int, nonce: str, result: bytes, timed_out: bool, too_large: bool,
             timeout_s: float, stderr: str) -> tuple[str, str, list[Any] | None]:
  """Status, reason and outputs from what the run left behind."""
  message = None
  for line in result.decode("utf-8", errors="replace").splitlines():
    try:
      parsed = json.loads(line)
    except ValueError:
      continue
    if not isinstance(parsed, dict):
      continue
    if parsed.get("status") == PASSED and parsed.get("nonce") == nonce:
      try:
        outputs = parsed.get("outputs")
        return PASSED, "", None if outputs is None else _decode_output(outputs)
      except (ValueError, TypeError, KeyError, IndexError):
        return CRASHED, "the sandbox returned malformed outputs", None
    if parsed.get("status") == FAILED:
      message = parsed  # advisory only: a program can write these too, but never a pass
  if timed_out:
    return TIMEOUT, f"wall-clock time limit of {timeout_s:g} s exceeded", None
  if too_large:
    return CRASHED, "the program's outputs exceeded the size limit", None
  signum = None
  if returncode < 0:
    signum = -returncode
  elif mode == "namespaces" and 128 < returncode < 128 + 65:
    signum = returncode - 128  # the shell of the namespace reports a signal as 128 + n
  if signum == signal.SIGXCPU:
    return TIMEOUT, "CPU time limit exceeded", None
  if message is not None:
    status = CRASHED if message.get("kind") == "memory" else FAILED
    return status, str(message.get("reason", "failed")), None
  if signum is not None:
    name = signal.Signals(signum).name if signum in signal.valid_signals() else f"signal {signum}"
    why = {signal.SIGXFSZ: "file size limit exceeded", signal.SIGSEGV: "segmentation fault",
           signal.SIGKILL: "killed (likely the memory limit)"}.get(signum, "killed")
    return CRASHED, f"{why} ({name})", None
  if mode == "namespaces" and returncode == _SETUP_FAILED:
    return CRASHED, f"sandbox setup failed: {stderr.strip()[-500:]}", None
  if returncode == 0:
    return FAILED, "the program exited (code 0) before the checks completed", None
  last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
  return CRASHED, f"exited with code {returncode} without a verdict {last}".strip(), None


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
