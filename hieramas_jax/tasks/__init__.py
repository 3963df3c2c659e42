"""Benchmarks: data, role prompts and deterministic graders.

``get_task(name, **kwargs)`` builds a task by name: 'math', 'mmlu_redux',
'humaneval', 'humaneval_plus' or 'synthetic'. Modules are imported on demand,
so asking for the synthetic task never imports math-verify or the sandbox.
"""

from __future__ import annotations

import hashlib
import importlib
from typing import Sequence

from hieramas_jax.tasks.base import Message, Problem, RoleSpec, Task

# name -> (module, class, fixed keyword arguments)
_REGISTRY: dict[str, tuple[str, str, dict]] = {
    "math": ("hieramas_jax.tasks.math", "MathTask", {}),
    "mmlu_redux": ("hieramas_jax.tasks.mmlu_redux", "MMLUReduxTask", {}),
    "humaneval": ("hieramas_jax.tasks.humaneval", "HumanEvalTask", {"plus": False}),
    "humaneval_plus": ("hieramas_jax.tasks.humaneval", "HumanEvalTask", {"plus": True}),
    "synthetic": ("hieramas_jax.tasks.synthetic", "SyntheticTask", {}),
}
TASK_NAMES = tuple(_REGISTRY)


def get_task(name: str, **kwargs) -> Task:
  """A new task object by name; ``kwargs`` go to its constructor."""
  key = name.strip().lower().replace("-", "_")
  if key not in _REGISTRY:
    raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(TASK_NAMES)}")
  module_name, class_name, fixed = _REGISTRY[key]
  cls = getattr(importlib.import_module(module_name), class_name)
  return cls(**{**kwargs, **fixed})


def split_problems(problems: Sequence[Problem], fractions: Sequence[float] = (0.8, 0.1, 0.1),
                   salt: str = "") -> tuple[list[Problem], ...]:
  """Disjoint parts of ``problems`` (e.g. train/val/test) decided by a hash of each uid.

  Deterministic, independent of the order of ``problems``, and stable when
  problems are added or removed; ``salt`` gives another partition.
  """
  if not fractions or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-9:
    raise ValueError(f"fractions must be non-negative and sum to 1, got {tuple(fractions)}")
  bounds, total = [], 0.0
  for fraction in fractions:
    total += fraction
    bounds.append(total)
  parts: tuple[list[Problem], ...] = tuple([] for _ in fractions)
  for problem in problems:
    digest = hashlib.blake2b(f"{salt}/{problem.uid}".encode(), digest_size=8).digest()
    position = int.from_bytes(digest, "big") / 2 ** 64
    index = next((i for i, bound in enumerate(bounds) if position < bound), len(bounds) - 1)
    parts[index].append(problem)
  return parts


__all__ = ["Message", "Problem", "RoleSpec", "Task", "TASK_NAMES", "get_task", "split_problems"]
