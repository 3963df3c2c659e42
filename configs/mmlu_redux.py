"""HieraMAS on MMLU-Redux (8 roles: Knowledgeable Expert, Critic, Mathematician, Psychologist, Historian, Doctor, Lawyer, Economist).

Run (offline default: simulated LLM pool on the 57 MMLU-Redux CSVs (../shared/data/mmlu_redux or HIERAMAS_DATA)):

  python -m launch.train --config=configs/mmlu_redux.py --workdir=runs/mmlu_redux

Args (comma-separated): smoke (tiny run), openai
(real endpoints), e.g. --config=configs/mmlu_redux.py:smoke or :smoke,openai.
"""

from hieramas_jax import config as base


def get_config(arg: str | None = None):
  c = base.base_config("mmlu_redux", arg)
  # No synthetic generator exists in this format: the real problems are the default.
  c.task.source = "files"
  return c
