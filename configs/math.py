"""HieraMAS on MATH (3 roles: Mathematical Analyst, Math Solver, Inspector).

Run (offline default: simulated LLM pool, synthetic problems in the task's format):

  python -m launch.train --config=configs/math.py --workdir=runs/math

Without a paper_* arg: the paper's GPT setting (pool, GPT-5-mini deciding, densities, K, inference rules)
with this project's training recipe. Args (comma-separated): smoke (tiny run), files (the benchmark files),
openai (real endpoints), paper_gpt / paper_qwen (a paper setting with the paper code's training recipe;
hieramas_jax/presets.py), e.g. --config=configs/math.py:smoke or :files,openai,paper_gpt.
"""

from hieramas_jax import config as base


def get_config(arg: str | None = None):
  # The paper's GPT setting by default (arg paper_gpt/paper_qwen: a paper setting with its training recipe).
  c = base.base_config("math", arg, setting="paper_gpt")
  # The simulated world's roles: an Inspector with nothing to inspect does poorly, with a solution in
  # front of it does well; the Analyst's outline helps whoever reads it. (solo logit, gain scale)
  c.llm.sim_role_effects = {"Inspector": (-1.5, 2.0), "Mathematical Analyst": (-0.5, 1.0),
                            "Math Solver": (0.0, 1.5)}
  return c
