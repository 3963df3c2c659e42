"""Trains HieraMAS: stage 1 (LLM selector) then stage 2 (graph classifier).

  python -m launch.train --config=configs/math.py --workdir=runs/math
  python -m launch.train --config=configs/math.py:smoke --workdir=/tmp/smoke

Re-running the same command resumes from the workdir's checkpoints. A run that
cannot work (an endpoint that does not answer, a config error, a step whose LLM
calls failed beyond llm.max_failed_fraction) prints one line on stderr naming
the cause and the fix, and exits with status 1. SIGTERM or SIGINT saves a
checkpoint after the current step, prints where, and exits with status 0.

On several hosts (one process each; ``launch.multihost``'s flags, or a cluster
JAX detects) every process runs the same command with the same --workdir, a
folder all of them see:

  python -m launch.train --config=configs/math.py --workdir=/shared/math --coordinator_address=host0:1234 \\
      --num_processes=2 --process_id=$I

Each process runs its share of the LLM calls against its own endpoints; process
0 alone writes metrics.jsonl, stage2_data/, summary.json and the report; the
checkpoints are written together. A signal to any process stops all of them
after the same step; a process that dies stops the others with one line.
"""


from absl import app
from absl import flags
from ml_collections import config_flags

from launch import common

from hieramas_jax import config as config_lib
from hieramas_jax import executor
from hieramas_jax.llm import base as llm_base
from hieramas_jax.train import driver
from hieramas_jax.train import environment

_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "Where checkpoints, metrics, caches and traces go.")
config_flags.DEFINE_config_file("config", None, "Training configuration file (configs/*.py[:args]).",
                                lock_config=True)
flags.mark_flags_as_required(["config"])

# Failures a user fixes (endpoints, keys, config, a missing stage): one line, no traceback.
EXPECTED_FAILURES = (llm_base.ConfigError, environment.ConfigError, executor.FailedCallsError, FileNotFoundError)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  common.run_training("launch.train", lambda: driver.train_and_evaluate(flags.FLAGS.config, _WORKDIR.value),
                      EXPECTED_FAILURES, lambda summary: print("\n".join(driver.summary_lines(summary))))


if __name__ == "__main__":
  app.run(main, flags_parser=config_lib.parse_flags)  # a bad --config: one line, exit 1
