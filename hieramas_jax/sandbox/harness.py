"""What runs inside the sandbox: the program server, the test driver, and their confinement.

This module uses the standard library only and Python 3.8 syntax: its source is
run as ``python -I -B -c <source> <role>`` by an interpreter the sandbox uid can
read (possibly another Python version). The host imports it too, for the value
codec (``encode_value`` / ``decode_value``).

Two roles, each in its own sandboxed process:

* ``program`` (untrusted): runs the program, then answers calls of its entry
  point that arrive on a pipe, one JSON line each way. It never sees the tests
  nor the expected values, and nothing it writes is read as a verdict.
* ``driver`` (trusted code only): runs the problem's ``check(candidate)`` with a
  proxy candidate that forwards each call to the program and decodes the reply
  into plain values (exactly int, float, str, bool, None, list, tuple, dict,
  set, frozenset, bytes, complex: anything else is refused), then calls the
  candidate on the extra inputs. Only the driver's report is a verdict.

Both confine themselves before running anything else: resource limits, the
switch to the fresh uid (namespaces mode), a seccomp filter (no new processes,
sockets only of the AF_UNIX family, no io_uring, signals only to itself), and a
Landlock ruleset (reading only the interpreter's files, writing only the
working directory, no TCP, signals and abstract sockets scoped to the process).
"""

import json
import os
import struct
import sys

# ------------------------------------------------------------------ value codec
# JSON with tags for what JSON lacks. A dict is always tagged, so an untagged
# dict is malformed; decoding builds exactly the built-in types.
_INT_HEX_BITS = 12000  # above this, ints travel as hex (decimal str() is capped at 4300 digits)


def encode_value(value, depth=0):
  """Tagged JSON form of a value of built-in types (raises TypeError otherwise)."""
  if depth > 200:
    raise TypeError("value nested too deeply")
  kind = type(value)
  if value is None or kind is bool or kind is str:
    return value
  if kind is int:
    if value.bit_length() > _INT_HEX_BITS:
      return {"__int__": hex(value)}
    return value
  if kind is float:
    if value != value or value in (float("inf"), float("-inf")):
      return {"__float__": repr(value)}
    return value
  if kind is list:
    return [encode_value(v, depth + 1) for v in value]
  if kind is tuple:
    return {"__tuple__": [encode_value(v, depth + 1) for v in value]}
  if kind is set or kind is frozenset:
    return {"__set__" if kind is set else "__frozenset__": [encode_value(v, depth + 1) for v in value]}
  if isinstance(value, dict) and type(kind) is type and kind.__module__ in ("builtins", "collections"):
    # Counter, OrderedDict and defaultdict travel as dicts (their values, not their classes).
    return {"__dict__": [[encode_value(k, depth + 1), encode_value(v, depth + 1)] for k, v in dict.items(value)]}
  if kind is complex:
    return {"__complex__": [repr(value.real), repr(value.imag)]}
  if kind is bytes:
    return {"__bytes__": value.hex()}
  raise TypeError("a value of type %s cannot leave the sandbox; return built-in types" % kind.__name__)


class Malformed(ValueError):
  """A message that does not decode to plain values."""


def decode_value(value, depth=0):
  """Plain built-in values from ``encode_value``'s form; refuses anything else."""
  if depth > 200:
    raise Malformed("value nested too deeply")
  kind = type(value)
  if value is None or kind is bool or kind is str or kind is int:
    return value
  if kind is float:
    return value
  if kind is list:
    return [decode_value(v, depth + 1) for v in value]
  if kind is not dict or len(value) != 1:
    raise Malformed("unexpected %s in a value" % kind.__name__)
  (tag, body), = value.items()
  try:
    if tag == "__tuple__" and type(body) is list:
      return tuple(decode_value(v, depth + 1) for v in body)
    if tag in ("__set__", "__frozenset__") and type(body) is list:
      items = [decode_value(v, depth + 1) for v in body]
      return set(items) if tag == "__set__" else frozenset(items)
    if tag == "__dict__" and type(body) is list:
      result = {}
      for pair in body:
        if type(pair) is not list or len(pair) != 2:
          raise Malformed("a dict item is not a pair")
        result[decode_value(pair[0], depth + 1)] = decode_value(pair[1], depth + 1)
      return result
    if tag == "__float__" and body in ("nan", "inf", "-inf"):
      return float(body)
    if tag == "__int__" and type(body) is str:
      return int(body, 16)
    if tag == "__complex__" and type(body) is list and len(body) == 2 and all(type(b) is str for b in body):
      return complex(float(body[0]), float(body[1]))
    if tag == "__bytes__" and type(body) is str:
      return bytes.fromhex(body)
  except TypeError as exc:  # an unhashable set member or dict key
    raise Malformed(str(exc))
  except ValueError as exc:
    raise Malformed(str(exc))
  raise Malformed("unknown tag %r" % (tag,))


def canonical_json(value):
  """Encoding in which equal values (sets and dicts in any order) give equal text."""
  def order(encoded):
    if type(encoded) is list:
      return [order(v) for v in encoded]
    if type(encoded) is dict:
      (tag, body), = encoded.items()
      if tag in ("__set__", "__frozenset__", "__dict__"):
        return {tag: sorted((order(v) for v in body), key=lambda v: json.dumps(v, sort_keys=True))}
      if type(body) is list:
        return {tag: [order(v) for v in body]}
    return encoded
  return json.dumps(order(encode_value(value)), sort_keys=True)


# ------------------------------------------------------------------ confinement
_LANDLOCK_CREATE, _LANDLOCK_ADD_RULE, _LANDLOCK_RESTRICT = 444, 445, 446  # the same on every architecture
_FS_EXECUTE, _FS_WRITE_FILE, _FS_READ_FILE, _FS_READ_DIR = 1, 2, 4, 8
_FS_TRUNCATE, _FS_IOCTL_DEV = 1 << 14, 1 << 15
_PR_SET_NO_NEW_PRIVS, _PR_SET_DUMPABLE, _PR_SET_SECCOMP = 38, 4, 22

# Syscall numbers per architecture (AUDIT_ARCH value, numbers). Missing: not on that architecture.
_SECCOMP_ARCHES = {
    "x86_64": (0xC000003E, dict(socket=41, clone=56, fork=57, vfork=58, kill=62, tkill=200, tgkill=234,
                                rt_sigqueueinfo=129, rt_tgsigqueueinfo=297, pidfd_send_signal=424,
                                io_uring_setup=425, clone3=435, ptrace=101)),
    "aarch64": (0xC00000B7, dict(socket=198, clone=220, kill=129, tkill=130, tgkill=131, rt_sigqueueinfo=138,
                                 rt_tgsigqueueinfo=240, pidfd_send_signal=424, io_uring_setup=425, clone3=435,
                                 ptrace=117)),
}


def _libc():
  import ctypes
  libc = ctypes.CDLL(None, use_errno=True)
  libc.syscall.restype = ctypes.c_long
  return ctypes, libc


def landlock_abi():
  """The kernel's Landlock ABI version, 0 when unavailable."""
  try:
    ctypes, libc = _libc()
  except (ImportError, OSError):
    return 0
  version = libc.syscall(ctypes.c_long(_LANDLOCK_CREATE), None, ctypes.c_size_t(0), ctypes.c_uint32(1))
  return max(0, int(version))


def seccomp_arch():
  """The architecture key of ``_SECCOMP_ARCHES`` for this machine, or None."""
  machine = os.uname().machine
  return machine if machine in _SECCOMP_ARCHES else None


def apply_landlock(read_paths, write_paths, list_paths=()):
  """Restricts this process: read ``read_paths``, read/write ``write_paths``, list the folders under
  ``list_paths`` (names only), no TCP, signals and abstract sockets scoped to the process."""
  ctypes, libc = _libc()
  abi = landlock_abi()
  if abi < 1:
    raise OSError("Landlock is not available")
  handled = (1 << 13) - 1  # ABI 1: execute .. make_sym
  if abi >= 2:
    handled |= 1 << 13  # refer
  if abi >= 3:
    handled |= _FS_TRUNCATE
  if abi >= 5:
    handled |= _FS_IOCTL_DEV
  net = 3 if abi >= 4 else 0  # bind and connect TCP: no rule allows any port
  scoped = 3 if abi >= 6 else 0  # abstract unix sockets and signals stay inside the domain
  attr = struct.pack("<QQQ", handled, net, scoped)[:24 if abi >= 6 else (16 if abi >= 4 else 8)]
  buffer = ctypes.create_string_buffer(attr, len(attr))
  ruleset = libc.syscall(ctypes.c_long(_LANDLOCK_CREATE), buffer, ctypes.c_size_t(len(attr)), ctypes.c_uint32(0))
  if ruleset < 0:
    raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
  file_rights = _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | _FS_TRUNCATE | _FS_IOCTL_DEV
  read_rights = _FS_EXECUTE | _FS_READ_FILE | _FS_READ_DIR
  try:
    rules = ([(p, _FS_READ_DIR) for p in list_paths] + [(p, read_rights) for p in read_paths]
             + [(p, handled) for p in write_paths])
    for path, rights in rules:
      try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
      except OSError:
        continue  # absent here (e.g. outside the namespace's root)
      try:
        if not os.path.isdir(path):
          rights &= file_rights
        rule = ctypes.create_string_buffer(struct.pack("<Qi", rights & handled, fd), 12)
        if libc.syscall(ctypes.c_long(_LANDLOCK_ADD_RULE), ctypes.c_int(ruleset), ctypes.c_int(1), rule,
                        ctypes.c_uint32(0)) < 0:
          raise OSError(ctypes.get_errno(), "landlock_add_rule failed for %s" % path)
      finally:
        os.close(fd)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
      raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS failed")
    if libc.syscall(ctypes.c_long(_LANDLOCK_RESTRICT), ctypes.c_int(ruleset), ctypes.c_uint32(0)) < 0:
      raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
  finally:
    os.close(ruleset)


def seccomp_program(arch, own_pid):
  """The BPF filter (list of (code, jt, jf, k)) of ``apply_seccomp``."""
  audit_arch, nr = _SECCOMP_ARCHES[arch]
  ld_abs, jeq, jset, jge, ret = 0x20, 0x15, 0x45, 0x35, 0x06
  allow, kill_process = 0x7FFF0000, 0x80000000
  def errno(code):
    return 0x00050000 | code
  eperm, eacces, enosys = 1, 13, 38
  arg0 = 16  # offset of the low 32 bits of args[0] in struct seccomp_data (little-endian)
  prog = [(ld_abs, 0, 0, 4), (jeq, 1, 0, audit_arch), (ret, 0, 0, kill_process), (ld_abs, 0, 0, 0)]
  if arch == "x86_64":  # the x32 ABI shares the architecture value: refuse it wholesale
    prog += [(jge, 0, 1, 0x40000000), (ret, 0, 0, kill_process)]
  for name in ("fork", "vfork", "io_uring_setup", "pidfd_send_signal", "tkill", "ptrace"):
    if name in nr:
      prog += [(jeq, 0, 1, nr[name]), (ret, 0, 0, errno(eperm))]
  prog += [(jeq, 0, 1, nr["clone3"]), (ret, 0, 0, errno(enosys))]  # glibc falls back to clone
  # clone: threads only (CLONE_THREAD set), no new processes.
  prog += [(jeq, 0, 4, nr["clone"]), (ld_abs, 0, 0, arg0), (jset, 0, 1, 0x10000), (ret, 0, 0, allow),
           (ret, 0, 0, errno(eperm))]
  # socket: AF_UNIX only (socket pairs); no network of any family.
  prog += [(jeq, 0, 4, nr["socket"]), (ld_abs, 0, 0, arg0), (jeq, 0, 1, 1), (ret, 0, 0, allow),
           (ret, 0, 0, errno(eacces))]
  # signals: only to this process (first argument: pid or tgid).
  for name in ("kill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo"):
    prog += [(jeq, 0, 4, nr[name]), (ld_abs, 0, 0, arg0), (jeq, 0, 1, own_pid), (ret, 0, 0, allow),
             (ret, 0, 0, errno(eperm))]
  prog.append((ret, 0, 0, allow))
  return prog


def apply_seccomp():
  """Installs ``seccomp_program`` for this process and everything it starts (irreversible)."""
  ctypes, libc = _libc()
  arch = seccomp_arch()
  if arch is None:
    raise OSError("no seccomp filter for architecture %s" % os.uname().machine)
  prog = seccomp_program(arch, os.getpid())
  data = b"".join(struct.pack("<HBBI", *instruction) for instruction in prog)
  filters = ctypes.create_string_buffer(data, len(data))
  fprog = ctypes.create_string_buffer(struct.pack("<HxxxxxxQ", len(prog), ctypes.addressof(filters)), 16)
  if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
    raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS failed")
  if libc.prctl(_PR_SET_SECCOMP, 2, fprog, 0, 0) != 0:
    raise OSError(ctypes.get_errno(), "seccomp filter refused")


def confine(setup):
  """Limits, uid, seccomp and Landlock as the host asked; raises when any step fails."""
  import resource
  mib = 1 << 20
  def set_limit(which, soft, hard=None):
    hard = soft if hard is None else hard
    old_soft, old_hard = resource.getrlimit(which)
    if old_hard != resource.RLIM_INFINITY:
      soft, hard = min(soft, old_hard), min(hard, old_hard)
    resource.setrlimit(which, (soft, hard))
  limits = setup["limits"]
  set_limit(resource.RLIMIT_CORE, 0)
  set_limit(resource.RLIMIT_CPU, limits["cpu_s"], limits["cpu_s"] + 1)
  set_limit(resource.RLIMIT_FSIZE, limits["file_mb"] * mib)
  set_limit(resource.RLIMIT_NPROC, limits["nproc"])
  if setup["mode"] == "namespaces":  # root inside the new namespaces: drop to the fresh uid
    os.setgroups([])
    os.setgid(setup["uid"])
    os.setuid(setup["uid"])
  ctypes, libc = _libc()
  libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)  # no process of the same uid may read our memory
  if setup["seccomp"]:
    apply_seccomp()
  if setup["landlock"]:
    apply_landlock(setup["read_paths"], [setup["workdir"]] + ["/dev/null"], setup["list_paths"])
  set_limit(resource.RLIMIT_AS, limits["memory_mb"] * mib)
  os.chdir(setup["workdir"])
  os.umask(0o077)


# ------------------------------------------------------------------ channel
class LineChannel:
  """JSON lines over a pair of file descriptors."""

  def __init__(self, read_fd, write_fd, max_line):
    self.reader = os.fdopen(read_fd, "rb", buffering=1 << 16) if read_fd is not None else None
    self.write_fd = write_fd
    self.max_line = max_line

  def send(self, message):
    data = (json.dumps(message) + "\n").encode()
    view = memoryview(data)
    while view:
      view = view[os.write(self.write_fd, view):]

  def send_raw(self, data):
    view = memoryview(data)
    while view:
      view = view[os.write(self.write_fd, view):]

  def receive(self):
    """The next message, or None at end of stream; raises Malformed on junk."""
    line = self.reader.readline(self.max_line + 1)
    if not line:
      return None
    if len(line) > self.max_line or not line.endswith(b"\n"):
      raise Malformed("message over %d bytes" % self.max_line)
    try:
      return json.loads(line.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
      raise Malformed("not JSON: %s" % str(exc)[:200])


def describe(exc):
  """``Name: message (line n)`` of an exception, robust to hostile ``__str__``."""
  line = 0
  tb = exc.__traceback__
  while tb is not None:
    line, tb = tb.tb_lineno, tb.tb_next
  try:
    text = str(exc)
  except BaseException:  # noqa: BLE001 (a program-defined __str__ may raise)
    text = ""
  name = type(exc).__name__
  return ("%s: %s" % (name, text) if text else name)[:2000] + (" (line %d)" % line if line else "")


def _flush_streams():
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except BaseException:  # noqa: BLE001 (the program may have replaced or closed them)
      pass


# ------------------------------------------------------------------ program role (untrusted)
def program_main(setup, channel):
  """Runs the program, reports whether it ran to the end, then serves calls of its entry point."""
  memory_reply = (json.dumps({"fatal": "memory"}) + "\n").encode()  # pre-encoded: no memory may be left
  module = type(sys)("solution")
  sys.modules["solution"] = module  # a real module, so that code looking itself up (dataclasses) works
  try:
    exec(compile(setup["code"], "<solution>", "exec", dont_inherit=True), module.__dict__)
    entry_point = setup.get("entry_point")
    candidate = module.__dict__.get(entry_point) if entry_point else None
    if entry_point and not callable(candidate):
      raise AssertionError("the program defines no function %r" % entry_point)
  except MemoryError:
    _flush_streams()
    channel.send_raw((json.dumps({"error": "memory limit exceeded (MemoryError)", "kind": "memory"}) + "\n")
                     .encode())
    os._exit(1)
  except SystemExit as exc:
    _flush_streams()
    channel.send({"error": "the program called sys.exit(%s) before the checks" % (exc.code,), "kind": "exit"})
    os._exit(1)
  except BaseException as exc:  # noqa: BLE001 (any error of the program fails it)
    _flush_streams()
    channel.send({"error": describe(exc), "kind": "error"})
    os._exit(1)
  _flush_streams()
  channel.send({"ready": True})
  while True:
    request = channel.receive()
    if request is None:
      break
    try:
      args, kwargs = decode_value(request["call"]), decode_value(request["kwargs"])
      value = candidate(*args, **kwargs)
      reply = {"value": encode_value(value)}
    except MemoryError:
      channel.send_raw(memory_reply)
      os._exit(1)
    except Exception as exc:  # noqa: BLE001 (the driver raises it in the test)
      try:
        message = str(exc)[:500]
      except BaseException:  # noqa: BLE001 (a program-defined __str__ may raise)
        message = ""
      reply = {"raised": str(type(exc).__name__), "message": message}
    _flush_streams()
    channel.send(reply)
  _flush_streams()
  os._exit(0)


# ------------------------------------------------------------------ driver role (trusted)
class ProgramFailure(BaseException):
  """The program broke the protocol (exited, sent junk): fatal, and not catchable by ``except Exception``."""

  def __init__(self, reason, kind="error"):
    BaseException.__init__(self, reason)
    self.reason, self.kind = reason, kind


def _builtin_exception(name, message):
  import builtins
  cls = getattr(builtins, name, None)
  if isinstance(cls, type) and issubclass(cls, Exception):
    return cls(message)
  return type(str(name)[:100], (Exception,), {})(message)


def driver_main(setup, channel, result):
  """Runs the test with a proxy candidate; reports to ``result`` (the only verdict the host reads)."""
  failure = []  # set once the program broke the protocol; a test catching the error cannot hide it

  def exchange(message):
    if failure:
      raise failure[0]
    try:
      channel.send(message)
    except OSError:
      failure.append(ProgramFailure("the program exited before the checks completed", "exit"))
      raise failure[0]
    try:
      reply = channel.receive()
    except Malformed as exc:
      failure.append(ProgramFailure("the program sent a malformed reply (%s)" % exc))
      raise failure[0]
    if reply is None:
      failure.append(ProgramFailure("the program exited before the checks completed", "exit"))
      raise failure[0]
    return reply

  def call(args, kwargs):
    """(True, value) or (False, exception) of one call of the program's function."""
    reply = exchange({"call": encode_value(list(args)), "kwargs": encode_value(dict(kwargs))})
    try:
      if type(reply) is dict and set(reply) == {"value"}:
        return True, decode_value(reply["value"])
      if type(reply) is dict and set(reply) == {"raised", "message"} and type(reply["raised"]) is str:
        return False, _builtin_exception(reply["raised"], str(reply["message"])[:500])
      if type(reply) is dict and reply.get("fatal") == "memory":
        failure.append(ProgramFailure("memory limit exceeded (MemoryError)", "memory"))
        raise failure[0]
    except Malformed as exc:
      failure.append(ProgramFailure("the program returned a malformed value (%s)" % exc))
      raise failure[0]
    failure.append(ProgramFailure("the program sent an unexpected reply"))
    raise failure[0]

  def candidate(*args, **kwargs):
    ok, value = call(args, kwargs)
    if not ok:
      raise value
    return value

  def report(message):
    result.send(message)
    _flush_streams()
    os._exit(0)

  try:
    first = channel.receive()
  except Malformed as exc:
    report({"status": "failed", "kind": "error", "reason": "the program sent junk (%s)" % exc})
  if first is None:
    report({"status": "failed", "kind": "exit", "reason": "the program exited before the checks completed"})
  if first != {"ready": True}:
    if type(first) is dict and type(first.get("error")) is str:  # its own account, shown as the reason
      kind = "memory" if first.get("kind") == "memory" else "error"
      report({"status": "failed", "kind": kind, "reason": first["error"][:2000]})
    report({"status": "failed", "kind": "error", "reason": "the program sent an unexpected first message"})

  entry_point = setup["entry_point"]
  outputs = None
  try:
    if setup.get("test"):
      import builtins
      test_ns = {"__name__": "tests", "__builtins__": builtins}
      if setup.get("context"):
        exec(compile(setup["context"], "<context>", "exec", dont_inherit=True), test_ns)
      test_ns[entry_point] = candidate  # tests may call the function by its name
      exec(compile(setup["test"], "<tests>", "exec", dont_inherit=True), test_ns)
      check = test_ns.get("check")
      if not callable(check):
        raise AssertionError("the test defines no check(candidate)")
      check(candidate)
    if failure:
      raise failure[0]
    if setup.get("inputs"):
      outputs, digest_above = [], setup["digest_above"]
      for args in setup["inputs"]:
        ok, value = call(args, {})
        if not ok:
          outputs.append({"__raised__": type(value).__name__})
          continue
        encoded = encode_value(value)
        size = len(json.dumps(encoded))
        if size > digest_above:
          import hashlib
          encoded = {"__digest__": hashlib.sha256(canonical_json(value).encode()).hexdigest(), "__size__": size}
        outputs.append(encoded)
  except ProgramFailure as exc:
    report({"status": "failed", "kind": exc.kind, "reason": exc.reason})
  except AssertionError as exc:
    report({"status": "failed", "kind": "assertion", "reason": describe(exc)})
  except Exception as exc:  # noqa: BLE001 (the candidate's errors surface here)
    report({"status": "failed", "kind": "error", "reason": describe(exc)})
  if failure:
    report({"status": "failed", "kind": failure[0].kind, "reason": failure[0].reason})
  report({"status": "passed", "outputs": outputs})


# ------------------------------------------------------------------ probe (run by the host, unconfined)
def probe_main():
  """Prints what the host needs to confine this interpreter: its files, Landlock, seccomp."""
  import importlib
  import threading
  stdlib = os.path.dirname(os.__file__)
  dynload = [d for d in sys.path if d.endswith("lib-dynload")]
  for folder in dynload:  # load every extension, so that every library they link shows in the maps
    for name in sorted(os.listdir(folder)):
      if name.endswith(".so"):
        try:
          importlib.import_module(name.split(".")[0])
        except BaseException:  # noqa: BLE001 (some need a display, a database...)
          pass
  with open("/proc/self/maps") as maps:
    mapped = sorted({line.split(None, 5)[5].strip() for line in maps if len(line.split(None, 5)) == 6})
  files = [path for path in mapped if path.startswith("/") and os.path.isfile(path)]
  report = {"stdlib": stdlib, "files": files + [os.path.realpath(sys.executable)], "landlock_abi": landlock_abi(),
            "seccomp": False, "version": list(sys.version_info[:2])}
  if seccomp_arch() is not None:
    try:
      apply_seccomp()
      import socket
      refused = 0
      try:
        pid = os.fork()
        if pid == 0:
          os._exit(0)
        os.waitpid(pid, 0)
      except OSError:
        refused += 1
      try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()
      except OSError:
        refused += 1
      worker = threading.Thread(target=lambda: None)
      worker.start()
      worker.join()
      report["seccomp"] = refused == 2
    except (ImportError, OSError, RuntimeError):
      pass
  sys.stdout.write(json.dumps(report) + "\n")


# ------------------------------------------------------------------ entry
def main():
  role = sys.argv[1]
  if role == "probe":
    probe_main()
    return
  setup = json.loads(sys.stdin.buffer.read().decode("utf-8"))
  null_fd = os.open(os.devnull, os.O_RDONLY)
  os.dup2(null_fd, 0)
  os.close(null_fd)
  fds = setup["fds"]
  try:
    confine(setup)
  except BaseException as exc:  # noqa: BLE001 (fail closed: nothing runs unconfined)
    sys.stderr.write("sandbox confinement failed: %s\n" % describe(exc))
    os._exit(96)
  if role == "program":
    program_main(setup, LineChannel(fds["requests"], fds["replies"], setup["max_message"]))
  elif role == "driver":
    driver_main(setup, LineChannel(fds["replies"], fds["requests"], setup["max_message"]),
                LineChannel(None, fds["result"], setup["max_message"]))
  else:
    raise SystemExit("unknown role %r" % role)


if __name__ == "__main__":
  main()
