"""MLPO leader training on a task where the peers' answers carry the answer: the leader's reward curve.

A toy world with no files and no network: problems "Item <n>." whose answer is one letter of ABCD; three
scripted peers (a ``Backend``) answer with a letter, and in every round at least two of them are right
(all three with probability 1/2, else one random peer names a wrong letter). A tiny random leader (2
layers, width 64, byte tokenizer) reads them through the MLPO baseline's prompts and is trained with
GRPO by ``train.leader.train_leader``, the loop ``launch.train_leader`` runs. A leader that copies the
majority is always right; one that guesses a letter is right a quarter of the time. The reward is 1 for the
right letter, plus ``--format_reward`` for any letter (0 by default: the reward is the accuracy).

  python bench/leader_grpo.py [--steps=150] [--seed=0] [--rounds=2] [--format_reward=0] [--learning_rate=3e-3]

Prints one JSON line per step ({"step", "reward", "accuracy", "final_accuracy", "peer_accuracy", "kl",
"seconds"}), then a summary line with the mean reward of the first and last ten steps.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import random
import sys
import tempfile
from typing import Any, Collection, Sequence

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from hieramas_jax.baselines.core import ROUND_STRIDE  # noqa: E402
from hieramas_jax.llm.base import Message, Response, Usage  # noqa: E402
from hieramas_jax.tasks.base import Problem, Task  # noqa: E402

LETTERS = "ABCD"
PEER_MODEL = "scripted-peer"


class VoteTask(Task):
  """One-letter answers; the first non-space character of an output is its answer."""

  name = "vote"
  roles = ()
  answer_instruction = "Answer with one letter."

  def load(self, split: str = "train", *, n: int = 64, seed: int = 0, **_: Any) -> list[Problem]:
    rng = random.Random(f"{split}/{seed}")
    return [Problem(uid=f"vote-{split}-{i}", question=f"Item {i}.", answer=rng.choice(LETTERS)) for i in range(n)]

  def extract(self, text: str) -> str | None:
    stripped = (text or "").strip()
    return stripped[0] if stripped and stripped[0] in LETTERS else None

  def grade(self, problem: Problem, text: str) -> bool:
    return self.extract(text) == problem.answer

  def render_answer(self, problem: Problem, correct: bool, rng: random.Random) -> str:
    return problem.answer if correct else rng.choice([c for c in LETTERS if c != problem.answer])


class ScriptedPeers:
  """A ``Backend`` whose peers are right by majority: per (problem, step, round) at most one of them is wrong.

  The peer is ``sample_index % ROUND_STRIDE`` and the draw ``sample_index // ROUND_STRIDE`` (as
  ``train.leader.peer_sample_index`` numbers them), so answers are deterministic and resumed runs see the
  same ones. ``dead`` makes every call fail (a dead endpoint).
  """

  def __init__(self, problems: Sequence[Problem], *, dead: bool = False):
    self.answers = {p.question: p.answer for p in problems}
    self.dead = dead
    self.calls = 0

  def known_models(self) -> Collection[str]:
    return (PEER_MODEL,)

  async def complete(self, model: str, messages: Sequence[Message], *, sample_index: int = 0,
                     **params: Any) -> Response:
    del params
    self.calls += 1
    if self.dead:
      return Response(model=model, text=None, error="connection refused (scripted dead peer)")
    user = messages[-1]["content"]
    question = user.split("Problem:\n", 1)[1].split("\n", 1)[0]
    answer = self.answers[question]
    draw, peer = divmod(sample_index, ROUND_STRIDE)
    rng = random.Random(f"{question}/{draw}")
    wrong_peer = rng.randrange(6)  # 0-2: that peer is wrong; 3-5: all right
    text = answer
    if peer == wrong_peer:
      text = rng.choice([c for c in LETTERS if c != answer])
    return Response(model=model, text=text, usage=Usage(len(user), 1), finish_reason="stop")


def toy_config(steps: int, seed: int = 0, **mlpo: Any):
  """configs/mlpo.py with the toy world's sizes (the task and backend are passed to train_leader)."""
  from hieramas_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config_file(pathlib.Path(__file__).resolve().parents[1] / "configs" / "mlpo.py")
  config.seed = seed
  config.llm.pool = "config"
  config.llm.models = [{"name": PEER_MODEL, "price_in_per_m": 0.0, "price_out_per_m": 0.0}]
  config.llm.decision_model = PEER_MODEL
  config.llm.cache = False
  config.task.num_train = 64
  config.checkpoint.every_steps = 10
  m = config.mlpo
  m.steps, m.group_size, m.queries_per_step, m.rounds, m.max_new_tokens = steps, 8, 4, 2, 2
  m.learning_rate, m.kl_coef, m.loss_level, m.format_reward = 3e-3, 0.0, "token", 0.5
  for key, value in mlpo.items():
    m[key] = value
  return config


def run(steps: int, seed: int, workdir: str, log=print, **mlpo: Any) -> list[dict[str, Any]]:
  """Trains the toy leader (``mlpo`` overrides config.mlpo fields); returns the metric rows of the steps."""
  from hieramas_jax.train import leader  # pylint: disable=g-import-not-at-top
  task = VoteTask()
  problems = task.load("train", n=64, seed=seed)
  leader.train_leader(toy_config(steps, seed, **mlpo), workdir, backend=ScriptedPeers(problems), task=task,
                      problems=problems, model=leader.tiny_leader(seed), progress=False)
  rows = [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]
  rows = [r for r in rows if r.get("stage") == leader.STAGE]
  for r in rows:
    log(json.dumps({k: (round(r[k], 4) if isinstance(r[k], float) else r[k])
                    for k in ("step", "reward", "accuracy", "final_accuracy", "peer_accuracy", "kl", "seconds")}))
  return rows


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=150)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--format_reward", type=float, default=0.0, help="reward for writing any letter")
  parser.add_argument("--learning_rate", type=float, default=3e-3)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as workdir:
    rows = run(args.steps, args.seed, workdir, rounds=args.rounds, format_reward=args.format_reward,
               learning_rate=args.learning_rate)
  head, tail = rows[:10], rows[-10:]
  mean = lambda rs, k: sum(r[k] for r in rs) / len(rs)  # noqa: E731
  print(json.dumps({"summary": True, "steps": args.steps, "seed": args.seed, "rounds": args.rounds,
                    "format_reward": args.format_reward, "learning_rate": args.learning_rate,
                    "reward_first10": round(mean(head, "reward"), 4), "reward_last10": round(mean(tail, "reward"), 4),
                    "accuracy_first10": round(mean(head, "accuracy"), 4),
                    "accuracy_last10": round(mean(tail, "accuracy"), 4), "chance_accuracy": 0.25,
                    "majority_accuracy": 1.0}))


if __name__ == "__main__":
  main()
