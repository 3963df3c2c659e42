"""Benchmarks: data, role prompts and deterministic graders.

``get_task(name, **kwargs)`` builds a task by name: 'math', 'mmlu_redux',
'humaneval', 'humaneval_plus' or 'synthetic', or one added with
``register_task`` (docs/extending.md: the Task contract and what the simulator
needs). Built-in modules are imported on demand, so asking for the synthetic
task never imports math-verify or the sandbox.
"""

from __future__ import annotations

import hashlib
import importlib
from typing import Any, Callable, Sequence

from hieramas_jax.tasks.base import Message, Problem, RoleSpec, Task

# name -> (the task class as "module:Class", imported on first use, or a callable making a Task; fixed kwargs)
_REGISTRY: dict[str, tuple[str | Callable[..., Task], dict[str, Any]]] = {
    "math": ("hieramas_jax.tasks.math:MathTask", {}),
    "mmlu_redux": ("hieramas_jax.tasks.mmlu_redux:MMLUReduxTask", {}),
    "humaneval": ("hieramas_jax.tasks.humaneval:HumanEvalTask", {"plus": False}),
    "humaneval_plus": ("hieramas_jax.tasks.humaneval:HumanEvalTask", {"plus": True}),
    "synthetic": ("hieramas_jax.tasks.synthetic:SyntheticTask", {}),
}
TASK_NAMES = tuple(_REGISTRY)  # the built-in tasks; task_names() adds registered ones


def _key(name: str) -> str:
  return name.strip().lower().replace("-", "_")


def task_names() -> tuple[str, ...]:
  """Every name ``get_task`` knows, built-in and registered."""
  return tuple(_REGISTRY)


def register_task(name: str, factory: str | Callable[..., Task], *, replace: bool = False, **fixed: Any) -> None:
  """Makes ``get_task(name, **kwargs)`` return ``factory(**kwargs, **fixed)``.

  Args:
    name: the task's name in configs (``task.name``); it should equal the task's ``name`` attribute.
    factory: a Task subclass (or any callable returning a Task), or ``"module:Class"`` imported on first use.
    replace: allow replacing a registered name (otherwise a clash raises ValueError).
    **fixed: keyword arguments always passed to ``factory`` (e.g. ``plus=True``).
  """
  key = _key(name)
  if not key:
    raise ValueError("register_task needs a non-empty task name")
  if isinstance(factory, str) and factory.count(":") != 1:
    raise ValueError(f"task {name!r}: factory {factory!r} must be 'package.module:ClassName' or a callable")
  if key in _REGISTRY and not replace:
    raise ValueError(f"task {key!r} is registered already; pick another name or pass replace=True")
  _REGISTRY[key] = (factory, dict(fixed))


def get_task(name: str, **kwargs) -> Task:
  """A new task object by name; ``kwargs`` go to its constructor."""
  key = _key(name)
  if key not in _REGISTRY:
    raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(task_names())} (add one with "
                   "hieramas_jax.tasks.register_task)")
  factory, fixed = _REGISTRY[key]
  if isinstance(factory, str):
    module_name, class_name = factory.split(":")
    factory = getattr(importlib.import_module(module_name), class_name)
  return factory(**{**kwargs, **fixed})


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


__all__ = ["Message", "Problem", "RoleSpec", "Task", "TASK_NAMES", "get_task", "register_task", "split_problems",
           "task_names"]
