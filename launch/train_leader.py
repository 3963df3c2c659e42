"""Trains an MLPO leader (a JAX decoder) with GRPO on K peers' answers over T rounds.

  python -m launch.train_leader --config=configs/mlpo.py --workdir=runs/mlpo
  python -m launch.train_leader --config=configs/mlpo.py:smoke --workdir=/tmp/mlpo_smoke

Re-running the same command resumes from the workdir's checkpoints. The trained leader is written to
<workdir>/leader: a pool entry {"name": "leader", "backend": "local", "path": "<workdir>/leader"} serves it
(e.g. as the MLPO baseline's leader in launch.evaluate). A run that cannot work (a peer endpoint that does not
answer, a config error, too many failed peer calls, a non-finite loss) prints one line on stderr naming the
cause and the fix, and exits with status 1. SIGTERM or SIGINT saves a checkpoint after the current step,
prints where, and exits with status 0.

Several hosts (``launch.multihost`` flags; one process per host, each with its own peer endpoints):

  python -m launch.train_leader --config=configs/mlpo.py --workdir=/shared/runs/mlpo \
      --coordinator_address=host0:8476 --num_processes=2 --process_id=<0 or 1>

Each process runs its share of every step's queries (peer calls, the leader's sampling on its devices,
grading); the GRPO update runs data-parallel over every device of every process. The draws do not depend on
the number of processes, so the run trains the leader one process trains (to float rounding). Process 0 alone
prints progress, writes metrics.jsonl and the leader folder; checkpoints are written collectively into the
workdir every process sees. SIGTERM to any process stops all of them after the same step.
"""


from absl import app
from absl import flags
from ml_collections import config_flags

from launch import common

from hieramas_jax import config as config_lib
from hieramas_jax import executor
from hieramas_jax.llm import base as llm_base
from hieramas_jax.train import environment
from hieramas_jax.train import leader

_WORKDIR = flags.DEFINE_string("workdir", "runs/mlpo", "Where checkpoints, metrics, the cache and the leader go.")
config_flags.DEFINE_config_file("config", None, "MLPO configuration file (configs/mlpo.py[:args]).",
                                lock_config=True)
flags.mark_flags_as_required(["config"])

# Failures a user fixes (endpoints, keys, config, failed peers, a diverged loss): one line, no traceback.
EXPECTED_FAILURES = (llm_base.ConfigError, environment.ConfigError, executor.FailedCallsError, FileNotFoundError,
                     leader.NonFiniteLossError)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")

  def report(summary):
    print(f"trained {summary['steps']} steps; leader written to {summary['leader_dir']} (pool entry: "
          f"backend='local', path='{summary['leader_dir']}')")

  common.run_training("launch.train_leader", lambda: leader.train_leader(flags.FLAGS.config, _WORKDIR.value),
                      EXPECTED_FAILURES, report)


if __name__ == "__main__":
  app.run(main, flags_parser=config_lib.parse_flags)  # a bad --config: one line, exit 1
