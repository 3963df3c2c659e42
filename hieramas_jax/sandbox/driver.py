"""The trusted test driver: runs the problem's check against a proxy of the program's function.

Runs inside the sandbox (see ``bootstrap``), in its own process, and runs no
program code: the proxy candidate sends each call's arguments to the program
and decodes its reply into plain values (exactly int, float, str, bool, None,
list, tuple, dict, set, frozenset, bytes, complex: anything else is refused).
After ``check(candidate)`` it calls the candidate on the extra inputs. Its
report on the result channel is the only verdict the host reads. Standard
library only, Python 3.8 syntax.
"""

import json
import os

from .channel import describe, flush_streams
from .codec import Malformed, canonical_json, decode_value, encode_value

_EXITED = "the program exited before the checks completed"


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


class ProgramProxy:
  """Calls of the program's entry point over the channel.

  The first protocol break sticks: every later call raises it again, and the
  run fails even when the test caught the error.
  """

  def __init__(self, channel):
    self.channel = channel
    self.failure = None

  def fail(self, reason, kind="error"):
    if self.failure is None:
      self.failure = ProgramFailure(reason, kind)
    raise self.failure

  def exchange(self, message):
    if self.failure is not None:
      raise self.failure
    try:
      self.channel.send(message)
    except OSError:
      self.fail(_EXITED, "exit")
    try:
      reply = self.channel.receive()
    except Malformed as exc:
      self.fail("the program sent a malformed reply (%s)" % exc)
    if reply is None:
      self.fail(_EXITED, "exit")
    return reply

  def call(self, args, kwargs):
    """(True, value) or (False, exception) of one call of the program's function."""
    reply = self.exchange({"call": encode_value(list(args)), "kwargs": encode_value(dict(kwargs))})
    try:
      if type(reply) is dict and set(reply) == {"value"}:
        return True, decode_value(reply["value"])
      if type(reply) is dict and set(reply) == {"raised", "message"} and type(reply["raised"]) is str:
        return False, _builtin_exception(reply["raised"], str(reply["message"])[:500])
      if type(reply) is dict and reply.get("fatal") == "memory":
        self.fail("memory limit exceeded (MemoryError)", "memory")
    except Malformed as exc:
      self.fail("the program returned a malformed value (%s)" % exc)
    self.fail("the program sent an unexpected reply")

  def candidate(self):
    """A plain function the test calls in place of the program's (raises what the program raised)."""
    call = self.call

    def candidate(*args, **kwargs):
      ok, value = call(args, kwargs)
      if not ok:
        raise value
      return value
    return candidate


def _report(result, message):
  result.send(message)
  flush_streams()
  os._exit(0)


def _await_ready(channel, result):
  """Returns once the program ran to the end; otherwise reports its failure (and exits)."""
  try:
    first = channel.receive()
  except Malformed as exc:
    _report(result, {"status": "failed", "kind": "error", "reason": "the program sent junk (%s)" % exc})
  if first is None:
    _report(result, {"status": "failed", "kind": "exit", "reason": _EXITED})
  if first != {"ready": True}:
    if type(first) is dict and type(first.get("error")) is str:  # its own account, shown as the reason
      kind = "memory" if first.get("kind") == "memory" else "error"
      _report(result, {"status": "failed", "kind": kind, "reason": first["error"][:2000]})
    _report(result, {"status": "failed", "kind": "error", "reason": "the program sent an unexpected first message"})


def _run_check(setup, candidate):
  """Runs the trusted context and test, then ``check(candidate)``; raises what the check raises."""
  import builtins
  test_ns = {"__name__": "tests", "__builtins__": builtins}
  if setup.get("context"):
    exec(compile(setup["context"], "<context>", "exec", dont_inherit=True), test_ns)
  test_ns[setup["entry_point"]] = candidate  # tests may call the function by its name
  exec(compile(setup["test"], "<tests>", "exec", dont_inherit=True), test_ns)
  check = test_ns.get("check")
  if not callable(check):
    raise AssertionError("the test defines no check(candidate)")
  check(candidate)


def _outputs_on(proxy, inputs, digest_above):
  """Encoded return values on ``inputs``: raised calls by exception name, large values by digest."""
  outputs = []
  for args in inputs:
    ok, value = proxy.call(args, {})
    if not ok:
      outputs.append({"__raised__": type(value).__name__})
      continue
    encoded = encode_value(value)
    size = len(json.dumps(encoded))
    if size > digest_above:
      import hashlib
      encoded = {"__digest__": hashlib.sha256(canonical_json(value).encode()).hexdigest(), "__size__": size}
    outputs.append(encoded)
  return outputs


def driver_main(setup, channel, result):
  """Runs the test with a proxy candidate; reports to ``result`` (the only verdict the host reads)."""
  _await_ready(channel, result)
  proxy = ProgramProxy(channel)
  outputs = None
  try:
    if setup.get("test"):
      _run_check(setup, proxy.candidate())
    if proxy.failure is not None:
      raise proxy.failure
    if setup.get("inputs"):
      outputs = _outputs_on(proxy, setup["inputs"], setup["digest_above"])
  except ProgramFailure as exc:
    _report(result, {"status": "failed", "kind": exc.kind, "reason": exc.reason})
  except AssertionError as exc:
    _report(result, {"status": "failed", "kind": "assertion", "reason": describe(exc)})
  except Exception as exc:  # noqa: BLE001 (the candidate's errors surface here)
    _report(result, {"status": "failed", "kind": "error", "reason": describe(exc)})
  if proxy.failure is not None:
    _report(result, {"status": "failed", "kind": proxy.failure.kind, "reason": proxy.failure.reason})
  _report(result, {"status": "passed", "outputs": outputs})
