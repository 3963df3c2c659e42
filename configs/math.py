"""HieraMAS on MATH (3 roles: Mathematical Analyst, Math Solver, Inspector).

Run (offline default: simulated LLM pool, synthetic problems in the task's format):

  python -m launch.train --config=configs/math.py --workdir=runs/math

Args (comma-separated): smoke (tiny run), files (the benchmark files), openai
(real endpoints), e.g. --config=configs/math.py:smoke or :files,openai.
"""

from hieramas_jax import config as base


def get_config(arg: str | None = None):
  c = base.base_config("math", arg)
  return c
