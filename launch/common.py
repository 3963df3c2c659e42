"""What the training launchers share: a run that stops cleanly, or fails in one line with status 1."""

from __future__ import annotations

import sys
from typing import Any, Callable

from absl import flags
from absl import logging

from hieramas_jax import config as config_lib
from hieramas_jax import distributed
from hieramas_jax.train.preemption import StopRequested
from launch import multihost


def run_training(name: str, train: Callable[[], Any], expected_failures: tuple[type[BaseException], ...],
                 report: Callable[[Any], None]) -> None:
  """Runs ``train()`` and hands its summary to ``report``.

  A requested stop (SIGTERM, a hook) exits 0 with its checkpoint saved, so re-running resumes; a failure a
  user fixes (``expected_failures``) exits 1 with ``<name>: <Type>: <message>`` as the last stderr line.
  In a multi-host run (``launch.multihost``) every process does the same; process 0 alone reports.
  """
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO; --verbosity=0 brings it back
  multihost.join(name)
  try:
    summary = train()
  except StopRequested as stop:
    print(str(stop))
    distributed.finish()  # every process agreed on the stop (distributed.any_process) and saved the same step
    sys.exit(0)
  except expected_failures as e:
    line = f"{name}: {type(e).__name__}: {config_lib.one_line(e)}"
    if distributed.is_multi_process():
      distributed.fail_fast(line)  # every process raised the same error; none waits for the others
    sys.stdout.flush()
    sys.exit(line)
  except distributed.PeerLostError as e:
    distributed.fail_fast(f"{name}: PeerLostError: {config_lib.one_line(e)}")
  primary = distributed.is_primary()
  distributed.finish()
  if primary:
    report(summary)
