"""SIGTERM handling: finish the current step, save, exit cleanly."""

from __future__ import annotations

import signal
import threading


class StopRequested(Exception):
  """Raised after a checkpoint was written because SIGTERM (or SIGINT) arrived."""


class PreemptionWatcher:
  """Turns SIGTERM/SIGINT into a flag the training loops poll between steps."""

  def __init__(self):
    self._event = threading.Event()
    self._previous = {}

  def __enter__(self) -> "PreemptionWatcher":
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame) -> None:  # pylint: disable=unused-argument
    if self._event.is_set():  # a second signal: stop now
      raise KeyboardInterrupt
    self._event.set()

  @property
  def stop_requested(self) -> bool:
    return self._event.is_set()

  def request_stop(self) -> None:
    self._event.set()

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
