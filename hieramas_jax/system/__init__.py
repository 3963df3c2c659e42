"""The user-facing HieraMAS: a trained policy + the text encoder + the LLM backend + the task.

``hieramas.HieraMAS`` plans and runs queries; ``parts`` holds config overrides
and the checks that the parts agree with the policy.
"""

from hieramas_jax.graph_scoring import ShardedGraphScorer, validate_graph_stack
from hieramas_jax.policy import HieraMASPolicy, PolicySpec
from hieramas_jax.results import PlannedQuery, RunResult, critical_path_s, problem_from_text
from hieramas_jax.system.hieramas import CLASSIFIER, RANDOM, HieraMAS
from hieramas_jax.system.parts import apply_overrides

__all__ = ["CLASSIFIER", "RANDOM", "HieraMAS", "HieraMASPolicy", "PlannedQuery", "PolicySpec", "RunResult",
           "ShardedGraphScorer", "apply_overrides", "critical_path_s", "problem_from_text", "validate_graph_stack"]
