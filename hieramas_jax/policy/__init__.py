"""The one trained artifact: ``HieraMASPolicy``, its ``PolicySpec`` and its checkpoint schema.

    from hieramas_jax.policy import HieraMASPolicy
    policy = HieraMASPolicy.load("runs/math")
    actions = policy.act(query_role_emb)              # [B, R, P+1] option indices (M = skip)
    scores = policy.score(query_emb, policy.candidate_pool())

Modules: ``spec`` (PolicySpec, the models and the graph-classifier registry),
``schema`` (what the stage-1 and stage-2 checkpoints hold, restoring them),
``artifact`` (HieraMASPolicy).
"""

from hieramas_jax.policy.artifact import HieraMASPolicy, choose_actions, sample_actions
from hieramas_jax.policy.schema import (SCHEMA_VERSION, STAGE1, STAGE2, checkpoint_dir, checkpoint_metadata,
                                        classifier_train_state, optimizer_template, read_metadata, read_spec,
                                        restore_train_state,
                                        selector_train_state, written_by)
from hieramas_jax.policy.spec import (CLASSIFIER_MODELS, PolicyLoadError, PolicySpec, abstract_module,
                                      classifier_hparams, draw_pool, new_classifier, new_selector, pool_settings,
                                      selector_hparams, split_module)

__all__ = ["CLASSIFIER_MODELS", "draw_pool", "pool_settings", "HieraMASPolicy", "PolicyLoadError", "PolicySpec", "SCHEMA_VERSION", "STAGE1",
           "STAGE2", "abstract_module", "checkpoint_dir", "checkpoint_metadata", "choose_actions",
           "classifier_hparams", "classifier_train_state", "new_classifier", "new_selector", "optimizer_template",
           "read_metadata", "read_spec", "restore_train_state", "sample_actions", "selector_hparams", "selector_train_state", "split_module",
           "written_by"]
