"""HieraMAS on MMLU-Redux (8 roles: Knowledgeable Expert, Critic, Mathematician, Psychologist, Historian, Doctor, Lawyer, Economist).

Run (offline default: simulated LLM pool on the 57 MMLU-Redux CSVs (../shared/data/mmlu_redux or HIERAMAS_DATA)):

  python -m launch.train --config=configs/mmlu_redux.py --workdir=runs/mmlu_redux

Without a paper_* arg: the paper's GPT setting (pool, GPT-5-mini deciding, densities, K, inference rules)
with this project's training recipe. Args (comma-separated): smoke (tiny run), openai (real endpoints),
paper_gpt / paper_qwen (a paper setting with the paper code's training recipe; hieramas_jax/presets.py),
e.g. --config=configs/mmlu_redux.py:smoke or :smoke,openai or :paper_qwen.
"""

from hieramas_jax import config as base


def get_config(arg: str | None = None):
  # The paper's GPT setting by default (arg paper_gpt/paper_qwen: a paper setting with its training recipe).
  c = base.base_config("mmlu_redux", arg, setting="paper_gpt")
  # No synthetic generator exists in this format: the real problems are the default.
  c.task.source = "files"
  return c
