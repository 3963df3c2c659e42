"""A multi-host program for tests/test_distributed.py: every collective of hieramas_jax.distributed.

Prints one JSON line (process 0 only) with what each collective returned; ``--die_at=<process>`` makes that
process exit hard after the first collective while the others wait in the next one.
"""

import json
import os
import time

from absl import app
from absl import flags

from launch import multihost

from hieramas_jax import distributed

_DIE = flags.DEFINE_integer("die_at", -1, "Process that exits hard after the first collective.")
_FAIL = flags.DEFINE_bool("fail_all", False, "Every process ends with distributed.fail_fast after the first collective.")
_SKIP = flags.DEFINE_integer("skip_at", -1, "Process that skips the 'squares' collective (out of step).")
_WAIT = flags.DEFINE_float("busy_s", 0.0, "Seconds the survivors spend outside any collective before the next one.")


def main(argv):
  del argv
  multihost.join("collectives")
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  me, count = distributed.process_index(), distributed.process_count()
  gathered = distributed.gather_objects({"me": me}, "hello")
  if me == _DIE.value:
    os._exit(3)  # pylint: disable=protected-access
  if _FAIL.value:  # process 0 first, as when it reaches the failure sooner
    time.sleep(0.0 if me == 0 else 0.5)
    distributed.fail_fast(f"collectives: process {me} failed like the others", 1)
  time.sleep(_WAIT.value)
  if me == _SKIP.value:
    shares = None
  else:
    shares = distributed.run_shares(list(range(11)), lambda xs: [x * x for x in xs], "squares")
  told = distributed.broadcast_object("from 0" if me == 0 else None, "told")
  total = distributed.total_devices()
  batch = np.arange(total * 3, dtype=np.float32).reshape(total, 3)
  w = np.full((2,), 2.0, np.float32)
  fn = jax.jit(lambda w, b: (jnp.mean(b @ jnp.ones(3)) * w, jnp.sum(b)))
  scaled, summed = distributed.data_parallel(fn, [w], batch)
  try:
    distributed.run_shares([1, 2, 3], lambda xs: [1 / (x - 3) for x in xs], "fails")
    error = None
  except ZeroDivisionError as e:
    error = f"ZeroDivisionError: {e}"
  try:  # fails on the last process only: every process raises it
    distributed.alike(lambda: 1 / 0 if me == count - 1 else me, "alike")
    alike_error = None
  except ZeroDivisionError as e:
    alike_error = f"ZeroDivisionError: {e}"
  stop = distributed.any_process(me == count - 1, "stop")
  if distributed.is_primary():
    print(json.dumps({"count": count, "gathered": gathered, "shares": shares, "told": told, "devices": total,
                      "scaled": np.asarray(scaled).tolist(), "summed": float(summed), "error": error,
                      "alike_error": alike_error, "stop": stop}))
  distributed.finish()


if __name__ == "__main__":
  app.run(main)
