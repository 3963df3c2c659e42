"""The user-facing HieraMAS: a trained policy + the text encoder + the LLM backend + the task.

``hieramas.HieraMAS`` plans queries (``executor.Plan``) and runs them
(``results.QueryResult``, the type every method returns); ``parts`` holds config overrides
and the checks that the parts agree with the policy.
"""

from hieramas_jax.executor import Plan
from hieramas_jax.graph_scoring import ShardedGraphScorer, validate_graph_stack
from hieramas_jax.policy import HieraMASPolicy, PolicySpec
from hieramas_jax.results import QueryResult, critical_path_s, problem_from_text
from hieramas_jax.system.hieramas import CLASSIFIER, RANDOM, HieraMAS
from hieramas_jax.system.parts import apply_overrides

__all__ = ["CLASSIFIER", "RANDOM", "HieraMAS", "HieraMASPolicy", "Plan", "PolicySpec", "QueryResult",
           "ShardedGraphScorer", "apply_overrides", "critical_path_s", "problem_from_text", "validate_graph_stack"]
