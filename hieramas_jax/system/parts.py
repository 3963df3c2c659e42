"""How a HieraMAS is put together: config overrides, the parts' agreement with the policy, simulator registration."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import ml_collections

from hieramas_jax.policy import PolicySpec
from hieramas_jax.tasks.base import Problem, Task

# Config fields that are the policy's inference settings (``HieraMASPolicy.with_inference_rules``).
RULE_FIELDS = {"inference.max_skipped_roles": "max_skipped_roles", "inference.rotate_top_n": "rotate_top_n",
               "graphs.candidate_density_range": "candidate_density_range", "graphs.num_candidates": "num_candidates"}


def config_value(config: ml_collections.ConfigDict, key: str) -> Any:
  section, field = key.split(".")
  return config[section][field]


def register_with_simulator(backend: Any, problems: Sequence[Problem]) -> None:
  """Tells a simulated pool (possibly behind caches) about new problems; other backends need nothing."""
  seen = set()
  while backend is not None and id(backend) not in seen:
    seen.add(id(backend))
    register = getattr(backend, "register", None)
    if callable(register):
      register(problems)
      return
    backend = getattr(backend, "backend", None)


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> None:
  """Sets dotted config fields in place; ``llm.models`` entries merge by name into the saved ones.

  ``{"llm.models": [{"name": "A", "base_url": "http://new/v1"}]}`` moves model A
  to another endpoint and keeps its other fields (a new name adds a model).
  """
  for key, value in overrides.items():
    section, _, field = str(key).rpartition(".")
    try:
      target = config
      for part in section.split(".") if section else []:
        target = target[part]
      if field not in target:
        raise KeyError(field)
    except (KeyError, AttributeError, TypeError):
      raise ValueError(f"override {key!r}: the config has no such field; give a dotted path such as "
                       "'llm.max_concurrency' or 'llm.models'") from None
    if key == "llm.models":
      merged = {m["name"]: dict(m) for m in config.llm.models}
      for entry in value:
        if "name" not in entry:
          raise ValueError(f"override llm.models entry {entry} has no 'name'")
        merged.setdefault(entry["name"], {}).update(entry)
      value = list(merged.values())
    with target.ignore_type():
      target[field] = value


def check_parts(spec: PolicySpec, task: Task, pool: Sequence[Any], encoder: Any) -> None:
  """The task, pool and encoder are the ones the policy was trained with (ValueError naming the difference)."""
  if list(spec.roles) != [r.name for r in task.roles]:
    raise ValueError(f"the policy was trained for roles {list(spec.roles)}, not task {task.name!r}'s "
                     f"{[r.name for r in task.roles]}")
  if list(spec.model_names) != [s.name for s in pool]:
    raise ValueError(f"the policy was trained for models {list(spec.model_names)}, not {[s.name for s in pool]}; "
                     "an override may change a model's endpoint or prices, not the pool's names or order")
  if spec.encoder_id and encoder.encoder_id != spec.encoder_id:
    raise ValueError(f"the policy was trained on encoder {spec.encoder_id!r}, not {encoder.encoder_id!r}")
  if encoder.dim != spec.embedding_dim:
    raise ValueError(f"the policy takes {spec.embedding_dim}-d embeddings; the encoder gives {encoder.dim}-d ones")
