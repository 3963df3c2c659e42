"""What runs inside the sandbox: the entry point of each sandboxed process, and the program server.

The host runs this package's stdlib-only modules (``bootstrap.CHILD_MODULES``)
as ``python -I -B -c <bootstrap source> <role>`` with an interpreter the sandbox
uid can read (possibly another Python version, so Python 3.8 syntax), and
``main`` picks the role:

* ``program`` (untrusted): runs the program, then answers calls of its entry
  point that arrive on a pipe, one JSON line each way. It never sees the tests
  nor the expected values, and nothing it writes is read as a verdict.
* ``driver`` (trusted code only, ``driver.py``): runs the problem's
  ``check(candidate)`` with a proxy candidate. Only its report is a verdict.
* ``probe`` (run by the host, unconfined): what confining this interpreter
  needs (its files, Landlock's ABI, whether seccomp works).

Both sandboxed roles confine themselves (``confinement.confine``) before
running anything else, and fail closed when they cannot.
"""

import json
import os
import sys

from .channel import LineChannel, describe, flush_streams
from .codec import decode_value, encode_value
from .confinement import CONFINE_FAILED, apply_seccomp, confine, landlock_abi, seccomp_arch
from .driver import driver_main


# ------------------------------------------------------------------ program role (untrusted)
def _load_program(setup, channel):
  """Runs the program to the end and returns its entry point (None without one); on any error reports and exits."""
  module = type(sys)("solution")
  sys.modules["solution"] = module  # a real module, so that code looking itself up (dataclasses) works
  try:
    exec(compile(setup["code"], "<solution>", "exec", dont_inherit=True), module.__dict__)
    entry_point = setup.get("entry_point")
    candidate = module.__dict__.get(entry_point) if entry_point else None
    if entry_point and not callable(candidate):
      raise AssertionError("the program defines no function %r" % entry_point)
    return candidate
  except MemoryError:
    flush_streams()
    channel.send_raw((json.dumps({"error": "memory limit exceeded (MemoryError)", "kind": "memory"}) + "\n")
                     .encode())
    os._exit(1)
  except SystemExit as exc:
    flush_streams()
    channel.send({"error": "the program called sys.exit(%s) before the checks" % (exc.code,), "kind": "exit"})
    os._exit(1)
  except BaseException as exc:  # noqa: BLE001 (any error of the program fails it)
    flush_streams()
    channel.send({"error": describe(exc), "kind": "error"})
    os._exit(1)


def program_main(setup, channel):
  """Runs the program, reports whether it ran to the end, then serves calls of its entry point."""
  memory_reply = (json.dumps({"fatal": "memory"}) + "\n").encode()  # pre-encoded: no memory may be left
  candidate = _load_program(setup, channel)
  flush_streams()
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
    flush_streams()
    channel.send(reply)
  flush_streams()
  os._exit(0)


# ------------------------------------------------------------------ probe (run by the host, unconfined)
def _mapped_files():
  """Every file this interpreter maps once it loaded all its extensions (so every library they link)."""
  import importlib
  for folder in [d for d in sys.path if d.endswith("lib-dynload")]:
    for name in sorted(os.listdir(folder)):
      if name.endswith(".so"):
        try:
          importlib.import_module(name.split(".")[0])
        except BaseException:  # noqa: BLE001 (some need a display, a database...)
          pass
  with open("/proc/self/maps") as maps:
    mapped = sorted({line.split(None, 5)[5].strip() for line in maps if len(line.split(None, 5)) == 6})
  return [path for path in mapped if path.startswith("/") and os.path.isfile(path)]


def _seccomp_works():
  """Installs the filter on this (probe) process and checks that it refuses a fork and a TCP socket."""
  if seccomp_arch() is None:
    return False
  try:
    apply_seccomp()
    import socket
    import threading
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
    worker = threading.Thread(target=lambda: None)  # threads must still work
    worker.start()
    worker.join()
    return refused == 2
  except (ImportError, OSError, RuntimeError):
    return False


def probe_main():
  """Prints what the host needs to confine this interpreter: its files, Landlock, seccomp."""
  report = {"stdlib": os.path.dirname(os.__file__), "files": _mapped_files() + [os.path.realpath(sys.executable)],
            "landlock_abi": landlock_abi(), "version": list(sys.version_info[:2])}
  report["seccomp"] = _seccomp_works()  # last: it confines this process
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
    os._exit(CONFINE_FAILED)
  if role == "program":
    program_main(setup, LineChannel(fds["requests"], fds["replies"], setup["max_message"]))
  elif role == "driver":
    driver_main(setup, LineChannel(fds["replies"], fds["requests"], setup["max_message"]),
                LineChannel(None, fds["result"], setup["max_message"]))
  else:
    raise SystemExit("unknown role %r" % role)
