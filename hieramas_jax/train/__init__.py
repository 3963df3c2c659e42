"""Training: stage 1 (LLM selector), stage 2 (graph classifier), held-out comparison.

Host side (imports no JAX; ``tests/test_host_imports.py`` checks it): environment,
metric_writer, metrics, preemption. JAX side: rollout, learner, builders, stage1,
stage2, evaluation, workdir (orbax) and driver (``train_and_evaluate``, run by
``launch.train``). ``train.train_and_evaluate`` loads the driver on first use, so
importing a host-side module of this package does not import JAX.
"""

from __future__ import annotations

import importlib
from typing import Any

from hieramas_jax.executor import FailedCallsError

__all__ = ["FailedCallsError", "train_and_evaluate"]

# Attributes loaded on first access: name -> (module, attribute); these modules import JAX.
_LAZY = {"train_and_evaluate": ("hieramas_jax.train.driver", "train_and_evaluate")}


def __getattr__(name: str) -> Any:
  if name in _LAZY:
    module, attribute = _LAZY[name]
    return getattr(importlib.import_module(module), attribute)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
