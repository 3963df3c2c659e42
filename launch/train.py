"""Trains HieraMAS: stage 1 (LLM selector) then stage 2 (graph classifier).

  python -m launch.train --config=configs/math.py --workdir=runs/math
  python -m launch.train --config=configs/math.py:smoke --workdir=/tmp/smoke

Re-running the same command resumes from the workdir's checkpoints.
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from hieramas_jax import train

_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "Where checkpoints, metrics, caches and traces go.")
config_flags.DEFINE_config_file("config", None, "Training configuration file (configs/*.py[:args]).",
                                lock_config=True)
flags.mark_flags_as_required(["config"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO; --verbosity=0 brings it back
  train.train_and_evaluate(flags.FLAGS.config, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
