"""HieraMAS on MATH (3 roles: Mathematical Analyst, Math Solver, Inspector).

Run (offline default: simulated LLM pool, synthetic problems in the task's format):

  python -m launch.train --config=configs/math.py --workdir=runs/math
  python -m launch.train --config=configs/math.py:smoke,seed=3 --workdir=/tmp/math_smoke

Config args (smoke, files, openai, paper_gpt, paper_qwen, field=value) and the values every task
shares: configs/common.py.
"""

import pathlib

from hieramas_jax import config as base

common = base.load_module(pathlib.Path(__file__).with_name("common.py"))


def get_config(arg=None):
  c = common.experiment("math", arg)
  c.selector.num_proposers = 2  # P proposers (+ 1 synthesizer) per role
  # Roles inference may drop (-1: any); proposers rotate over the top-n models (0: each its argmax).
  c.inference.update(max_skipped_roles=0, rotate_top_n=2)
  # DAG densities of stage 1, of stage 2's data generation, and K candidates scored at inference.
  c.graphs.update(density_range=(0.3, 0.8), stage2_density_range=(0.3, 1.0), num_candidates=100)
  c.stage2.update(batch_size=64, learning_rate=5e-4, weight_decay=1e-5)  # the classifier's AdamW
  # The simulated world's roles, (solo logit, gain scale): an Inspector with nothing to inspect does poorly,
  # with a solution in front of it well; the Analyst's outline helps whoever reads it.
  c.llm.sim_role_effects = {"Inspector": (-1.5, 2.0), "Mathematical Analyst": (-0.5, 1.0),
                            "Math Solver": (0.0, 1.5)}
  return base.finish(c, arg)
