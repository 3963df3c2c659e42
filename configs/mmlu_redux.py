"""HieraMAS on MMLU-Redux (8 roles: Knowledgeable Expert, Critic, Mathematician, Psychologist, Historian, Doctor, Lawyer, Economist).

Run (offline default: simulated LLM pool on the 57 MMLU-Redux CSVs (../shared/data/mmlu_redux or HIERAMAS_DATA)):

  python -m launch.train --config=configs/mmlu_redux.py --workdir=runs/mmlu_redux
  python -m launch.train --config=configs/mmlu_redux.py:openai,paper_qwen --workdir=runs/mmlu_redux_qwen

Config args (smoke, openai, paper_gpt, paper_qwen, field=value) and the values every task
shares: configs/common.py.
"""

import pathlib

from hieramas_jax import config as base

common = base.load_module(pathlib.Path(__file__).with_name("common.py"))


def get_config(arg=None):
  c = common.experiment("mmlu_redux", arg)
  c.task.source = "files"  # no synthetic generator in this format
  # Six proposers and three rotated models per role; two of eight roles may be dropped.
  c.selector.num_proposers = 6
  c.inference.update(max_skipped_roles=2, rotate_top_n=3)
  c.graphs.update(density_range=(0.3, 0.7), stage2_density_range=(0.3, 0.7), num_candidates=200)
  c.stage2.update(batch_size=128, learning_rate=1e-3, weight_decay=2e-5)
  return base.finish(c, arg)
