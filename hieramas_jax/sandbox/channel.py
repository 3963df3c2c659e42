"""JSON lines between the sandboxed processes, and error descriptions that hostile objects cannot break.

Runs inside the sandbox (see ``bootstrap``): standard library only, Python 3.8
syntax.
"""

import json
import os
import sys

from .codec import Malformed


class LineChannel:
  """JSON lines over a pair of file descriptors."""

  def __init__(self, read_fd, write_fd, max_line):
    self.reader = os.fdopen(read_fd, "rb", buffering=1 << 16) if read_fd is not None else None
    self.write_fd = write_fd
    self.max_line = max_line

  def send(self, message):
    self.send_raw((json.dumps(message) + "\n").encode())

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


def flush_streams():
  """Flushes stdout and stderr, whatever the program did to them."""
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except BaseException:  # noqa: BLE001 (the program may have replaced or closed them)
      pass
