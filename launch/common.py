"""What the training launchers share: a run that stops cleanly, or fails in one line with status 1."""

from __future__ import annotations

import sys
from typing import Any, Callable

from absl import flags
from absl import logging

from hieramas_jax import config as config_lib
from hieramas_jax.train.preemption import StopRequested


def run_training(name: str, train: Callable[[], Any], expected_failures: tuple[type[BaseException], ...],
                 report: Callable[[Any], None]) -> None:
  """Runs ``train()`` and hands its summary to ``report``.

  A requested stop (SIGTERM, a hook) exits 0 with its checkpoint saved, so re-running resumes; a failure a
  user fixes (``expected_failures``) exits 1 with ``<name>: <Type>: <message>`` as the last stderr line.
  """
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO; --verbosity=0 brings it back
  try:
    summary = train()
  except StopRequested as stop:
    print(str(stop))
    sys.exit(0)
  except expected_failures as e:
    sys.stdout.flush()
    sys.exit(f"{name}: {type(e).__name__}: {config_lib.one_line(e)}")
  report(summary)
