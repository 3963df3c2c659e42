"""Training entry point used by launch/train.py."""

from __future__ import annotations

import pathlib

import jax
import ml_collections
import numpy as np
from flax import nnx

from hieramas_jax import checkpointing
from hieramas_jax.models import gcn, selector

# Embedding size used until the encoders are wired in (all-MiniLM-L6-v2 gives 384).
_PLACEHOLDER_DIM = 384


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Builds the models and writes an initial checkpoint. Training itself is not implemented yet."""
  workdir_path = pathlib.Path(workdir).absolute()
  num_roles = {"math": 3, "mmlu_redux": 8, "humaneval": 5}.get(config.task.name, 8)
  num_models = 8
  rngs = nnx.Rngs(config.seed)
  sel = selector.LLMSelector(config.selector.num_proposers, _PLACEHOLDER_DIM, _PLACEHOLDER_DIM,
                             hidden_dim=config.selector.hidden_dim, rngs=rngs)
  cls = gcn.GraphClassifier(num_roles, _PLACEHOLDER_DIM, role_dim=config.gcn.role_dim,
                            hidden_dim=config.gcn.hidden_dim, num_layers=config.gcn.num_layers,
                            mlp_dim=config.gcn.mlp_dim, rngs=rngs)
  state = {"selector": nnx.to_pure_dict(nnx.state(sel, nnx.Param)),
           "classifier": nnx.to_pure_dict(nnx.state(cls, nnx.Param))}
  logits = sel(jax.numpy.zeros((1, num_roles, _PLACEHOLDER_DIM)), jax.numpy.zeros((num_models + 1, _PLACEHOLDER_DIM)))
  with checkpointing.Checkpointer(workdir_path / "checkpoints") as ck:
    ck.save(0, state, {"config": config.to_dict(), "note": "untrained initial models"})
  print(f"Built the selector (logits {tuple(np.shape(logits))}) and the graph classifier for "
        f"{config.task.name!r}; wrote an untrained checkpoint to {workdir_path / 'checkpoints'}.")
  print("Training is NOT implemented yet (see the open training issue): no model was trained.")
