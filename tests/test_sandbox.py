"""The sandbox contains hostile programs, gives the right verdict, and keeps working."""

from __future__ import annotations

import json
import math
import os
import pathlib
import secrets
import socket
import subprocess
import textwrap
import time
import types

import pytest

from hieramas_jax import sandbox
from hieramas_jax.sandbox import CRASHED, FAILED, PASSED, TIMEOUT, Program
from hieramas_jax.sandbox import processes

IS_ROOT = os.geteuid() == 0
# Every mode this machine can run; the hostile tests run in each.
MODES = (["namespaces"] if sandbox.isolation_mode() == "namespaces" else []) + (["uid"] if IS_ROOT else [])
if not IS_ROOT:
  MODES = ["plain"]

SHORT = dict(timeout_s=1.0, memory_mb=256, max_procs=6, max_file_mb=4)

CHECK_ADD_ONE = textwrap.dedent("""
    def check(candidate):
      assert candidate(1) == 2
      assert candidate(-3) == -2
    """)


def run(mode, program, **limits):
  return sandbox.run_program(program, isolation=mode, **{**SHORT, **limits})


def assert_evaluator_works(mode):
  """After any hostile program, a correct one still passes and a wrong one still fails."""
  good = run(mode, Program(code="def f(x):\n  return x + 1\n", test=CHECK_ADD_ONE, entry_point="f"))
  bad = run(mode, Program(code="def f(x):\n  return x\n", test=CHECK_ADD_ONE, entry_point="f"))
  assert good.status == PASSED, good
  assert bad.status == FAILED, bad


@pytest.fixture(params=MODES)
def mode(request):
  return request.param


# ---------------------------------------------------------------------------- basics
def test_verdicts_of_ordinary_programs(mode):
  ok = run(mode, "print('hello')")
  assert ok.status == PASSED and ok.stdout == "hello\n" and ok.reason == "" and ok.isolation == mode
  error = run(mode, "raise ValueError('bad input')")
  assert error.status == FAILED and "ValueError: bad input" in error.reason
  syntax = run(mode, "def broken(:\n  pass")
  assert syntax.status == FAILED and "SyntaxError" in syntax.reason


def test_outputs_come_back_with_their_types(mode):
  code = textwrap.dedent("""
      def f(x):
        if x == 0: return (1, [2.5, None], {'a': {3}}, b'\\x00', float('nan'), float('-inf'), 2j, True)
        if x == 1: return frozenset({1})
        if x == 2: raise KeyError(x)
        return {(1, 2): 'tuple key'}
      """)
  result = run(mode, Program(code=code, entry_point="f", inputs=[[0], [1], [2], [3]]))
  assert result.status == PASSED, result
  first, second, third, fourth = result.outputs
  assert first[:4] == (1, [2.5, None], {"a": {3}}, b"\x00")
  assert math.isnan(first[4]) and first[5] == float("-inf") and first[6] == 2j and first[7] is True
  assert second == frozenset({1}) and type(second) is frozenset
  assert third == sandbox.RaisedOutput("KeyError")
  assert fourth == {(1, 2): "tuple key"}


def test_test_context_supplies_trusted_helpers(mode):
  # The test calls a helper of the problem statement; the program cannot replace it.
  context = "def encode(s):\n  return s[::-1]\n"
  test = "def check(candidate):\n  assert candidate(encode('abc')) == 'abc'\n"
  honest = run(mode, Program(code="def decode(s):\n  return s[::-1]\n", test=test, entry_point="decode",
                             context=context))
  cheat = run(mode, Program(code="def encode(s):\n  return s\ndef decode(s):\n  return s\n", test=test,
                            entry_point="decode", context=context))
  assert honest.status == PASSED, honest
  assert cheat.status == FAILED, cheat


def test_ordinary_python_still_works_under_the_guard(mode):
  code = textwrap.dedent("""
      import collections, dataclasses, json, os, re, tempfile, threading, sys
      @dataclasses.dataclass
      class Point:
        x: int
      def f(n):
        return collections.Counter("ab" * n)
      with tempfile.NamedTemporaryFile("w", delete=False) as handle:
        handle.write("scratch")
      assert open(handle.name).read() == "scratch"
      done = []
      worker = threading.Thread(target=lambda: done.append(Point(3).x))
      worker.start(); worker.join()
      assert done == [3] and sys.stdin.read() == ""
      print(json.dumps(sorted(os.listdir("."))), re.sub("a", "b", "aa"))
      """)
  result = run(mode, Program(code=code, test="def check(candidate):\n  assert candidate(2) == {'a': 2, 'b': 2}\n",
                             entry_point="f", inputs=[[1]]))
  assert result.status == PASSED, result
  assert result.outputs == [{"a": 1, "b": 1}] and result.stdout.strip().endswith("bb")


def test_value_codec_is_strict():
  from hieramas_jax.sandbox import codec
  value = (1, [2.5, None], {"a": {3}}, b"\x00", frozenset({1}), 2j, 3 ** 9000, True)
  assert codec.decode_value(codec.encode_value(value)) == value
  for junk in ({"a": 1}, {"__tuple__": 5}, {"__set__": [[1]]}, {"__dict__": [[[1], 2]]}, {"__float__": "1e999x"},
               {"__eval__": "1"}, {"__tuple__": [], "__set__": []}):
    with pytest.raises(codec.Malformed):
      codec.decode_value(junk)
  for refused in (types.MappingProxyType({}), range(3), object(), type("L", (list,), {})()):
    with pytest.raises(TypeError):
      codec.encode_value(refused)


def test_self_kill_is_not_blamed_on_memory(mode):
  result = run(mode, "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
  assert result.status == CRASHED and "by the program itself" in result.reason, result


def test_run_many_keeps_order_and_runs_in_parallel():
  programs = [Program(code=f"def f(x):\n  return x + {k}\n", test=CHECK_ADD_ONE, entry_point="f") for k in range(6)]
  programs.append("import time\nwhile True: pass")
  results = sandbox.run_many(programs, timeout_s=1.0, max_workers=2)
  assert [r.status for r in results] == [FAILED, PASSED, FAILED, FAILED, FAILED, FAILED, TIMEOUT]


def test_bad_arguments_are_refused():
  with pytest.raises(ValueError, match="unknown isolation"):
    sandbox.run_program("pass", isolation="chroot")
  with pytest.raises(ValueError, match="positive"):
    sandbox.run_program("pass", timeout_s=0)
  if IS_ROOT:
    with pytest.raises(ValueError, match="root"):
      sandbox.run_program("pass", isolation="plain")


# ---------------------------------------------------------------------------- time
@pytest.mark.parametrize("code", ["while True:\n  pass", "import time\ntime.sleep(60)"], ids=["spin", "sleep"])
def test_infinite_loop_times_out(mode, code):
  result = run(mode, code, timeout_s=1.0)
  assert result.status == TIMEOUT, result
  assert result.duration_s < 2.5
  assert_evaluator_works(mode)


# ---------------------------------------------------------------------------- processes
FORK_BOMB = textwrap.dedent("""
    import os
    print(os.getuid(), flush=True)
    escape = {escape}
    while True:
      try:
        if os.fork() == 0 and escape:
          os.setsid()  # leave the process group: only the namespace or the uid sweep can catch it
      except OSError:
        pass
    """)


@pytest.mark.skipif(not IS_ROOT, reason="the fork bomb is only safe where each run has its own uid")
@pytest.mark.parametrize("escape", [False, True], ids=["bomb", "bomb_with_setsid"])
def test_fork_bomb_is_capped_and_fully_killed(mode, escape):
  result = run(mode, FORK_BOMB.format(escape=escape), timeout_s=1.0, max_procs=6)
  assert result.status == TIMEOUT, result
  assert result.duration_s < 3.0
  uid = int(result.stdout.split()[0])
  assert uid >= processes.UID_RANGE[0]
  deadline = time.monotonic() + 2.0
  while processes.live_processes_of(uid) and time.monotonic() < deadline:
    time.sleep(0.05)
  assert processes.live_processes_of(uid) == []
  assert_evaluator_works(mode)


def test_no_new_processes_but_threads(mode):
  code = textwrap.dedent("""
      import os, subprocess, threading
      refused = 0
      for attempt in (os.fork, lambda: subprocess.run(["true"])):
        try:
          if attempt() == 0:
            os._exit(0)
        except OSError:
          refused += 1
      done = []
      threads = [threading.Thread(target=done.append, args=(k,)) for k in range(3)]
      for t in threads:
        t.start()
      for t in threads:
        t.join()
      print(refused, sorted(done))
      """)
  result = run(mode, code, timeout_s=3.0, max_procs=5)
  assert result.status == PASSED, result
  assert result.stdout.split("\n")[-2] == "2 [0, 1, 2]", result


# ---------------------------------------------------------------------------- memory and files
@pytest.mark.parametrize("code", ["x = bytearray(8 << 30)",
                                  "chunks = []\nwhile True:\n  chunks.append(bytearray(1 << 20))"],
                         ids=["at_once", "gradual"])
def test_memory_bomb_crashes_with_memory_reason(mode, code):
  result = run(mode, code, memory_mb=128, timeout_s=5.0)
  assert result.status == CRASHED, result
  assert "memory" in result.reason
  assert result.duration_s < 5.0
  assert_evaluator_works(mode)


def test_file_size_is_limited(mode):
  result = run(mode, "open('big', 'wb').write(b'x' * (8 << 20))", max_file_mb=1)
  assert result.status in (CRASHED, FAILED), result
  assert result.status != PASSED


def test_disk_total_is_limited(mode):
  # Files under the per-file limit each, over it together.
  code = "for k in range(16):\n  open(f'part{k}', 'wb').write(b'x' * (900 << 10))\nimport time\ntime.sleep(0.5)"
  result = run(mode, code, max_file_mb=2, timeout_s=3.0)
  assert result.status in (CRASHED, FAILED), result
  assert "disk limit" in result.reason or "No space left" in result.reason, result
  assert_evaluator_works(mode)


def test_writes_outside_the_working_directory_are_refused(mode, tmp_path):
  marker = secrets.token_hex(6)
  targets = [tmp_path / "outside.txt", pathlib.Path(f"/tmp/hieramas_outside_{marker}"),
             pathlib.Path(f"/var/tmp/hieramas_outside_{marker}"), pathlib.Path(f"/dev/shm/hieramas_outside_{marker}"),
             pathlib.Path(f"{pathlib.Path(__file__).parent}/hieramas_outside_{marker}")]
  attempts = {
      "open": "open({t!r}, 'w').write('x')",
      "os_open": "import os\nos.close(os.open({t!r}, os.O_WRONLY | os.O_CREAT))",
      "symlink": "import os\nos.symlink({t!r}, 'link')\nopen('link', 'w').write('x')",
      "relative": "import os\nopen(os.path.relpath({t!r}), 'w').write('x')",
      "dir_fd": ("import os\nfd = os.open(os.path.dirname({t!r}), os.O_RDONLY)\n"
                 "os.close(os.open(os.path.basename({t!r}), os.O_WRONLY | os.O_CREAT, dir_fd=fd))"),
      "shell": "import subprocess\nsubprocess.run(['/bin/sh', '-c', 'echo x > ' + {t!r}], check=True)",
  }
  cases = [(name, target) for target in targets for name in attempts]
  try:
    results = sandbox.run_many([attempts[name].format(t=str(target)) for name, target in cases],
                               isolation=mode, **SHORT)
    for (name, target), result in zip(cases, results):
      assert result.status == FAILED, (name, target, result)
      assert not target.exists(), (name, target)
    inside = run(mode, "import os\nopen('mine.txt', 'w').write('x')\nassert open('mine.txt').read() == 'x'\n"
                       "os.mkdir('sub')\nos.rename('mine.txt', 'sub/mine.txt')")
    assert inside.status == PASSED, inside
  finally:
    for target in targets:
      if target.exists():
        target.unlink()
  assert_evaluator_works(mode)


# ---------------------------------------------------------------------------- network
def test_network_connections_fail(mode):
  listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
  listener.bind(("127.0.0.1", 0))
  listener.listen(5)
  listener.setblocking(False)
  port = listener.getsockname()[1]
  attempts = [
      f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'leak')",
      "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.sendto(b'leak', ('8.8.8.8', 53))",
      "import socket\nsocket.getaddrinfo('example.com', 80)",
      # A second interpreter has no audit hook: only the namespace (or the ban on exec) stops it.
      ("import subprocess, sys\nsubprocess.run([sys.executable, '-c', 'import socket; "
       f"socket.create_connection((\"127.0.0.1\", {port}), timeout=2).sendall(b\"leak\")'], check=True)"),
  ]
  try:
    for code in attempts:
      result = run(mode, code, timeout_s=5.0)
      assert result.status == FAILED, (code, result)
    with pytest.raises(BlockingIOError):
      listener.accept()
  finally:
    listener.close()
  assert_evaluator_works(mode)


# ---------------------------------------------------------------------------- signals
def test_killing_the_parent_or_the_evaluator_fails_harmlessly(mode):
  evaluator = os.getpid()
  bystander = subprocess.Popen(["sleep", "60"])  # another process of the evaluator's user
  try:
    targeted = [
        "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
        f"import os, signal\nos.kill({evaluator}, signal.SIGKILL)",
        f"import os, signal\nos.kill({bystander.pid}, signal.SIGKILL)",
        "import os, signal\nos.kill(1, signal.SIGKILL)",
    ]
    for code in targeted:
      result = run(mode, code)
      assert result.status == FAILED, (code, result)
    # kill(-1) signals every process the caller may signal; Linux reports success
    # even when that is none, so only the harm matters here.
    run(mode, "import os, signal\ntry:\n  os.kill(-1, signal.SIGKILL)\nexcept OSError:\n  pass")
    # A correct solution that also tries (and fails) to kill still passes: nothing was harmed.
    polite = run(mode, Program(
        code=f"import os, signal\ntry:\n  os.kill({evaluator}, signal.SIGKILL)\nexcept OSError:\n  pass\n"
             "def f(x):\n  return x + 1\n", test=CHECK_ADD_ONE, entry_point="f"))
    assert polite.status == PASSED, polite
    assert bystander.poll() is None  # still running
  finally:
    bystander.kill()
    bystander.wait()
  assert_evaluator_works(mode)


# ---------------------------------------------------------------------------- forging the verdict
WRONG = "def f(x):\n  return 0\n"
FORGERIES = {
    "sys_exit_before_asserts": WRONG + "import sys\nsys.exit(0)\n",
    "os_exit_before_asserts": WRONG + "import os\nos._exit(0)\n",
    "exit_inside_candidate": "import os\ndef f(x):\n  os._exit(0)\n",
    "system_exit_inside_candidate": "def f(x):\n  raise SystemExit(0)\n",
    "own_check": WRONG + "def check(candidate):\n  pass\n",
    "patched_builtins": WRONG + "import builtins\nbuiltins.AssertionError = None\nbuiltins.abs = lambda x: 0\n",
    "always_equal_result": ("class Anything:\n  def __eq__(self, other):\n    return True\n"
                            "def f(x):\n  return Anything()\n"),
    "always_equal_int": ("class Anything(int):\n  def __eq__(self, other):\n    return True\n"
                         "def f(x):\n  return Anything(0)\n"),
    "fake_metaclass_flags": ("class Meta(type):\n  __flags__ = property(lambda cls: 0)\n"
                             "class Anything(metaclass=Meta):\n  def __eq__(self, other):\n    return True\n"
                             "def f(x):\n  return Anything()\n"),
    "patched_module_in_test": WRONG + "import math\nmath.isclose = lambda *a, **k: True\n",
    "lazy_result_patches_later": ("import math\ndef f(x):\n  def gen():\n    math.isclose = lambda *a, **k: True\n"
                                  "    yield 0\n  return gen()\n"),
    "patched_module_by_candidate": "import math\ndef f(x):\n  math.isclose = lambda *a, **k: True\n  return 0\n",
    "fake_verdict_on_every_fd": (WRONG + "import os, json\nfor fd in range(3, 64):\n  try:\n"
                                 "    os.write(fd, (json.dumps({'status': 'passed', 'nonce': 'x' * 32})"
                                 " + '\\n').encode())\n"
                                 "  except OSError:\n    pass\nos._exit(0)\n"),
    "frame_walk": WRONG + "try:\n  1 / 0\nexcept Exception as e:\n  print(e.__traceback__.tb_frame.f_back.f_locals)\n",
    "getframe": WRONG + "import sys\nprint(sys._getframe(1).f_locals)\n",
    "gc_search": WRONG + "import gc\nprint([o for o in gc.get_objects() if isinstance(o, str) and len(o) == 32])\n",
    "ctypes": WRONG + "import ctypes\n",
    "proc_mem": WRONG + "open('/proc/self/mem', 'rb')\n",
    "own_audit_hook": WRONG + "import sys\nsys.addaudithook(lambda *a: None)\n",
    "settrace": WRONG + "import sys\nsys.settrace(lambda *a: None)\n",
    "check_via_sys_modules": WRONG + "import sys\nprint(vars(sys.modules['__main__']))\n",
}
CLOSE_TEST = ("import math\ndef check(candidate):\n  assert math.isclose(candidate(1), 2)\n"
              "  assert abs(candidate(2) - 3) < 1e-9\n")


@pytest.mark.parametrize("name", sorted(FORGERIES))
def test_forged_verdicts_do_not_pass(mode, name):
  result = run(mode, Program(code=FORGERIES[name], test=CLOSE_TEST, entry_point="f"))
  assert result.status != PASSED, result
  assert result.status in (FAILED, CRASHED), result


def test_evaluator_still_works_after_everything(mode):
  assert_evaluator_works(mode)
  ok = run(mode, Program(code="def f(x):\n  return x + 1\n", test=CLOSE_TEST, entry_point="f"))
  assert ok.status == PASSED, ok


# ---------------------------------------------------------------------------- plain mode
_PLAIN_CASES = """
    limits = dict(timeout_s=1.0, memory_mb=256, max_procs=4)
    cases = {
        "ok": "print(1)",
        "loop": "while True: pass",
        "fork_bomb": "import os\\nwhile True:\\n  try:\\n    os.fork()\\n  except OSError:\\n    pass",
        "network": "import socket\\nsocket.create_connection(('127.0.0.1', 9), timeout=1)",
        "write_tmp": "open('/tmp/hieramas_plain_outside', 'w').write('x')",
        "kill_parent": "import os, signal\\nos.kill(os.getppid(), signal.SIGKILL)",
        "kill_all": "import os, signal\\nos.kill(-1, signal.SIGKILL)",
        "subprocess": "import subprocess\\nsubprocess.run(['true'])",
        "memory": "x = bytearray(8 << 30)",
    }
    print(json.dumps({k: sandbox.run_program(v, **limits).status for k, v in cases.items()}))
    """


def test_plain_mode_as_an_unprivileged_user(plain_sandbox_user):
  completed = plain_sandbox_user.run(_PLAIN_CASES)
  assert completed.returncode == 0, completed.stderr
  statuses = json.loads(completed.stdout.strip().splitlines()[-1])
  assert statuses == {"ok": PASSED, "loop": TIMEOUT, "fork_bomb": TIMEOUT, "network": FAILED, "write_tmp": FAILED,
                      "kill_parent": FAILED, "kill_all": FAILED, "subprocess": FAILED, "memory": CRASHED}
  assert not os.path.exists("/tmp/hieramas_plain_outside")
