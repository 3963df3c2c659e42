"""A multi-host program for tests/test_leader_multihost.py: MLPO leader training in bench/leader_grpo.py's toy world.

The toy world (one-letter answers, scripted majority-right peers, a tiny random leader) runs through
``train.leader.train_leader`` inside ``launch.common.run_training``, as ``launch.train_leader`` does, so joining,
stopping and one-line failures are the launcher's. Process 0 prints the summary as one JSON line.
"""

import json
import types

from absl import app
from absl import flags

from bench import leader_grpo as bench  # the toy world (bench/ is a namespace package)
from launch import common

from hieramas_jax import distributed
from hieramas_jax.llm import base as llm_base
from hieramas_jax.train import leader

_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and the leader go.", required=True)
_STEPS = flags.DEFINE_integer("steps", 3, "Leader steps.")
_QUERIES = flags.DEFINE_integer("queries", 3, "mlpo.queries_per_step (odd: the 2 processes' shares differ).")
_KL = flags.DEFINE_float("kl_coef", 0.04, "mlpo.kl_coef (> 0: the update reads the frozen reference).")
_GROUP = flags.DEFINE_integer("group_size", 4, "mlpo.group_size.")
_UPDATES = flags.DEFINE_integer("updates_per_batch", 1, "mlpo.updates_per_batch.")
_LOSS_LEVEL = flags.DEFINE_string("loss_level", "sequence", "mlpo.loss_level.")
_UNREACHABLE_ON = flags.DEFINE_integer("unreachable_on", -1, "The process whose peer endpoint fails its preflight.")


class DenseVoteTask(bench.VoteTask):
  """The toy task with a denser reward: any letter is an answer (format reward) and case does not matter.

  A random tiny leader starts a completion with a letter about a fifth of the time, so most groups of the first
  steps differ in reward and every step has a gradient to compare.
  """

  def extract(self, text):
    stripped = (text or "").strip()
    return stripped[0].upper() if stripped and stripped[0].isascii() and stripped[0].isalpha() else None


class UnreachablePeers(bench.ScriptedPeers):
  """Scripted peers behind an endpoint that refuses the preflight probe (one host's endpoint is down)."""

  async def probe(self, model, *, timeout_s):
    del model, timeout_s
    return types.SimpleNamespace(cause="connection refused (scripted)")

  def base_url(self, model):
    del model
    return "http://127.0.0.1:9/v1"


def _train():
  task = DenseVoteTask()
  problems = task.load("train", n=64, seed=0)
  config = bench.toy_config(_STEPS.value, 0, rounds=2, group_size=_GROUP.value, queries_per_step=_QUERIES.value,
                            kl_coef=_KL.value, updates_per_batch=_UPDATES.value, loss_level=_LOSS_LEVEL.value)
  config.checkpoint.every_steps = 2
  peers = UnreachablePeers if distributed.process_index() == _UNREACHABLE_ON.value else bench.ScriptedPeers
  return leader.train_leader(config, _WORKDIR.value, backend=peers(problems), task=task,
                             problems=problems, model=leader.tiny_leader(0), progress=False)


def main(argv):
  del argv

  def report(summary):
    print(json.dumps({"steps": summary["steps"], "leader_dir": summary["leader_dir"]}))

  common.run_training("leader_toy", _train, (leader.NonFiniteLossError, leader.ConfigError, llm_base.ConfigError),
                      report)


if __name__ == "__main__":
  app.run(main)
