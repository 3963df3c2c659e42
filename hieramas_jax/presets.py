"""The HieraMAS paper's two settings as config presets: ``paper_gpt`` and ``paper_qwen``.

Every value below is what the paper's public code runs (github.com/tianyao-aka/HieraMAS, commit cacb988f08a1),
with the file and flag it comes from. A preset has two layers:

- ``setting``: what the system is (pool and exclusions, decision model, roles' proposers, generation options,
  DAG density ranges per pool, c_s per stage, K, the inference rules, the simulated world);
- ``recipe``: how stage 1 and stage 2 train (optimizer, sizes, entropy, temperature, baseline, credit, labels,
  model widths).

``--config=configs/<task>.py:paper_gpt`` applies both layers; the configs' default (no arg) is the ``paper_gpt``
setting with this project's training recipe, both written out in ``configs/common.py`` and ``configs/<task>.py``
(why: README, "Deviations from the paper"; tests/test_presets.py checks they agree with this module). What our config cannot express is listed in ``NOT_EXPRESSED``. README's table "The paper's
settings" is ``markdown_table()``; tests/test_presets.py checks the README against this module.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import ml_collections

from hieramas_jax.llm import base as llm_base

TASKS = ("math", "mmlu_redux", "humaneval")  # the columns of every fact, in this order
TASK_TITLES = ("MATH", "MMLU-Redux", "HumanEval")
PRESETS = ("paper_gpt", "paper_qwen")
LAYERS = ("setting", "recipe")
# Task names that take another task's column (HumanEval+ runs the HumanEval setting).
_TASK_ALIASES = {"humaneval_plus": "humaneval"}

# The models of the paper's pool that the Qwen setting leaves out (`--use_qwen3_80b`).
GPT_MODELS = ["GPT-5-nano", "GPT-5-mini", "GPT-4o-mini"]


class PresetError(llm_base.ConfigError):
  """A preset that cannot be applied to a config (unknown name, task or field)."""


@dataclasses.dataclass(frozen=True)
class Fact:
  """One config field's value in the paper's code, per task.

  Attributes:
    field: 'section.name' of the config.
    layer: 'setting' or 'recipe' (see the module doc).
    values: the value for MATH, MMLU-Redux and HumanEval (``TASKS`` order).
    source: where the paper's code sets it (file and flag), or why the value is ours.
    preset: 'both', or the one preset it belongs to.
  """

  field: str
  layer: str
  values: tuple[Any, Any, Any]
  source: str
  preset: str = "both"


def _all(value: Any) -> tuple[Any, Any, Any]:
  return (value, value, value)


FACTS: tuple[Fact, ...] = (
    # ---- setting: pool and decision node
    Fact("llm.pool", "setting", _all("paper"),
         "prompt/llm_profiles.py LLM_OPTIONS; deepseek-r1-14b is dropped by --exclude_llms in every run_*.py"),
    Fact("llm.exclude_models", "setting", _all([]), "run_*.py --exclude_llms default (deepseek-r1-14b only)",
         preset="paper_gpt"),
    Fact("llm.exclude_models", "setting", _all(list(GPT_MODELS)),
         "run_stage2_inference*.py main(), --use_qwen3_80b adds the GPT models to exclude_llms",
         preset="paper_qwen"),
    Fact("llm.decision_model", "setting", _all("GPT-5-mini"), "--decision_llm default gpt-5-mini in every script",
         preset="paper_gpt"),
    Fact("llm.decision_model", "setting", _all("Qwen3-Next-80B-A3B"),
         "run_stage2_inference*.py main(), --use_qwen3_80b switches decision_llm to qwen3-80b", preset="paper_qwen"),
    # ---- setting: generation
    Fact("llm.temperature", "setting", _all(0.2), "llm/llm.py LLM.DEFAULT_TEMPERATURE (openrouter_chat.py agen)"),
    Fact("llm.max_tokens", "setting", _all(2048), "llm/llm.py LLM.DEFAULT_MAX_TOKENS (openrouter_chat.py agen)"),
    Fact("llm.sim_world", "setting", _all("anchored"),
         "ours: the offline simulator calibrated to published scores (llm/sim_facts.py); the paper ran endpoints"),
    # ---- setting: roles
    Fact("selector.num_proposers", "setting", (2, 6, 2),
         "DEFAULT_MULTI_NODE_CONFIGS num_workers in run_{math,mmlu,humaneval}_learnable_graph.py"),
    Fact("selector.proposer_may_skip", "setting", _all(True),
         "model/llm_selector.py compute_logits: skip is masked only for the aggregator row"),
    Fact("selector.synthesizer_may_skip", "setting", _all(True),
         "--enable_skip_learning in */bash/stage1_train*.sh (unmasks the aggregator's skip)"),
    # ---- setting: DAG pools
    Fact("graphs.density_range", "setting", ((0.3, 0.8), (0.3, 0.7), (0.3, 0.75)),
         "stage 1: --graph_{min,max}_density defaults (MATH, MMLU), humaneval/bash/stage1_train.sh"),
    Fact("graphs.train_pool_size", "setting", _all(100), "--num_graph_candidates 100 in */bash/stage1_train*.sh"),
    Fact("graphs.stage2_density_range", "setting", ((0.3, 1.0), (0.3, 0.7), (0.3, 0.8)),
         "*/bash/stage2_datagen.sh density flags"),
    Fact("graphs.candidate_density_range", "setting", _all((0.3, 0.7)),
         "run_stage2_inference*.py density defaults (bash sets none)"),
    Fact("graphs.num_candidates", "setting", (100, 200, 200), "--num_random_graphs in */bash/stage2_inference.sh"),
    # ---- setting: rewards
    Fact("reward.cost_solved", "setting", _all(300.0), "--cost_sensitivity default 300 in run_*_learnable_graph.py"),
    Fact("reward.cost_failed", "setting", _all(300.0), "utils/reward.py reward_v2: c_f = 300 hard-coded"),
    Fact("reward.stage2_cost_solved", "setting", _all(500.0),
         "LearnableMultiNodeGraph(cost_sensitivity=500.0) default; datagen passes none"),
    Fact("stage1.alpha", "setting", _all(0.5), "--alpha 0.5 (utils/graph_reward.py compute_mixed_reward)"),
    # ---- setting: inference rules
    Fact("inference.max_skipped_roles", "setting", (0, 2, 0), "--topK_roles_removed in */bash/stage2_inference.sh"),
    Fact("inference.rotate_top_n", "setting", (2, 3, 2), "rotation_top_n of run_stage2_inference*.py (bash / default)"),
    # ---- recipe: stage 1
    Fact("stage1.steps", "recipe", _all(12), "--num_iterations 12 in */bash/stage1_train*.sh"),
    Fact("stage1.batch_size", "recipe", (6, 4, 6), "--batch_size in */bash/stage1_train*.sh"),
    Fact("stage1.learning_rate", "recipe", (2e-3, 3.125e-3, 2e-3),
         "--lr_start/--lr_end; MMLU 5e-3 -> 2e-3 over 6 of 12 iterations: its mean rate (see NOT_EXPRESSED)"),
    Fact("stage1.lr_schedule", "recipe", _all("constant"), "get_cosine_warmup_lr: constant after the warm-up"),
    Fact("stage1.weight_decay", "recipe", _all(1e-5), "Adam(selector params, weight_decay=1e-5) in run_*_learnable_graph.py"),
    Fact("stage1.grad_clip", "recipe", _all(1.0), "clip_grad_norm_(graph.parameters(), 1.0)"),
    Fact("stage1.entropy_coef", "recipe", _all(1.0), "--entropy_coef default 1.0 (HumanEval bash: 1.0)"),
    Fact("stage1.temperature_start", "recipe", _all(10.0), "--initial_temp 10 (TemperatureScheduler, cosine)"),
    Fact("stage1.temperature_end", "recipe", _all(0.8), "--min_temp 0.8"),
    Fact("stage1.baseline", "recipe", _all("none"), "compute_loss: no baseline or advantage normalisation"),
    Fact("stage1.run_skip_credit", "recipe", _all("role"), "a skipped role gets reward 0 (learnable_multi_node_graph.py)"),
    Fact("reward.system_cost", "recipe", _all("decision"), "the final reward counts decision_cost only"),
    Fact("stage1.keep_margin", "recipe", _all(0.0), "best validation solve rate -> bestModel/best_valid_model.pt"),
    Fact("stage1.eval_every", "recipe", (2, 3, 2), "--eval_steps in */bash/stage1_train*.sh"),
    Fact("stage1.val_samples", "recipe", _all(1), "run_validation: one argmax pass per query"),
    Fact("checkpoint.every_steps", "recipe", (2, 1, 2), "--checkpoint_interval in */bash/stage1_train*.sh"),
    # ---- recipe: selector form
    Fact("selector.skip_head", "recipe", _all("shared"), "llm_selector.py: skip is one more column of the logits"),
    Fact("selector.input_scale", "recipe", _all(False), "model/embeddings.py: sentence embeddings as they come"),
    Fact("selector.init_skip_bias", "recipe", _all(0.0), "llm_selector.py: no offset on the skip column"),
    Fact("selector.hidden_dim", "recipe", _all(256), "--hidden_dim default 256 in run_*_learnable_graph.py"),
    # ---- recipe: stage 2
    Fact("stage2.graphs_per_query", "recipe", _all(5), "num_graphs_per_task 5 in run_stage2_datagen*.py"),
    Fact("stage2.samples_per_graph", "recipe", _all(1), "run_stage2_datagen*.py: each graph runs once"),
    Fact("stage2.top_k", "recipe", _all(2), "top_k_positive 2 (and final_reward > 0)"),
    Fact("stage2.epochs", "recipe", _all(20), "*/bash/stage2_classifier.sh"),
    Fact("stage2.batch_size", "recipe", (64, 128, 32), "*/bash/stage2_classifier.sh"),
    Fact("stage2.learning_rate", "recipe", (5e-4, 1e-3, 5e-4), "*/bash/stage2_classifier.sh"),
    Fact("stage2.weight_decay", "recipe", (1e-5, 2e-5, 1e-4), "*/bash/stage2_classifier.sh (HumanEval: default)"),
    Fact("gcn.hidden_dim", "recipe", _all(128), "model/graph_classifier.py gcn_output_dim 128"),
    Fact("gcn.num_layers", "recipe", _all(2), "gnn/simple_gcn.py: two mean-aggregation layers"),
    Fact("gcn.mlp_dim", "recipe", _all(64), "model/graph_classifier.py classifier_hidden_dim 64"),
)

# Recipe fields where configs/*.py's default takes the paper's value although it keeps our recipe otherwise: no
# measurement supported a value of our own (README, "Deviations from the paper").
PAPER_RECIPE_DEFAULTS = ("stage1.keep_margin", "selector.hidden_dim", "stage2.epochs", "stage2.batch_size",
                         "stage2.learning_rate", "stage2.weight_decay", "gcn.hidden_dim", "gcn.mlp_dim")

# What the paper's code does that these presets cannot set, and what they do instead.
NOT_EXPRESSED = (
    "Qwen setting: the code trains stage 1 and the stage-2 data with the GPT pool and GPT-5-mini deciding, and only "
    "masks the GPT models and switches the decision model at inference; here one pool and one decision model serve "
    "every stage, so `paper_qwen` trains within the Qwen pool with Qwen3-Next-80B-A3B deciding.",
    "MMLU proposers: the code trains with 6 per role and infers with 2; the selector's positions are fixed, so "
    "`paper_*` keeps 6 at inference too (rotation over the top 3 then fills 6 proposers).",
    "MMLU stage-1 learning rate: the code ramps 5e-3 -> 2e-3 over the first 6 of 12 iterations "
    "(5.0, 5.0, 4.8, 4.25, 3.5, 2.75, 2.2, then 2.0 e-3); the schedules here are constant or a cosine to 0, so the "
    "preset uses the constant with the same total, 3.125e-3.",
    "Optimizers: the code's Adam adds weight_decay * w to the gradient (L2); here AdamW decays the weights apart "
    "from the gradient. At 1e-5 and 12 steps either changes the weights by about 1e-7 of their size.",
    "Temperature: the code's cosine reaches min_temp only after the last iteration (0.96 at iteration 12); ours "
    "reaches temperature_end at the last step.",
    "DAG edge counts: the code draws d ~ U(low, high) and takes int(d * N(N-1)/2) edges (so MATH's 3 roles never "
    "get 3 edges below d = 1); here the count is drawn uniformly from the counts inside the range.",
    "Encoder: the code embeds texts with gte-large-en-v1.5 (1024-d) plus a task-metadata embedding written by "
    "gpt-4o-mini; the offline default here is all-MiniLM-L6-v2 (384-d), no metadata (`encoder.kind` selects others).",
    "GCN form: the code's two mean aggregations have no weights (one projection after them) and its role features "
    "start from role-description embeddings; ours has a weight per layer and random role embeddings. Dropout and "
    "ReduceLROnPlateau of the classifier's training have no field here.",
    "Judging: the code grades MATH and MMLU with a gpt-4o-mini judge and falls back to a gpt-4o-mini worker when "
    "every proposer is skipped; here graders are deterministic and a role with every proposer skipped runs its "
    "synthesizer alone.",
    "Order quirk: the code runs roles in config order and silently drops DAG edges that point backwards in it; "
    "here every edge of the DAG is used in its own topological order.",
    "Datagen checkpoint bug: MATH and MMLU datagen never load the trained selector (wrong key); here stage 2 always "
    "uses the stage-1 selector.",
)


# OpenRouter model ids of the pool (openrouter_chat.py OPENROUTER_MODELS in the paper's code).
OPENROUTER_BASE_URL = "https://openrouter.ai/api/v1"
OPENROUTER_IDS = {
    "Qwen3-8B": "qwen/qwen3-8b",
    "Qwen3-Next-80B-A3B": "qwen/qwen3-next-80b-a3b-instruct",
    "Llama-3.1-8B": "meta-llama/llama-3.1-8b-instruct",
    "DeepSeek-V3.2": "deepseek/deepseek-v3.2",
    "Gemma-3-27B": "google/gemma-3-27b-it",
    "GPT-5-nano": "openai/gpt-5-nano",
    "GPT-5-mini": "openai/gpt-5-mini",
    "GPT-4o-mini": "openai/gpt-4o-mini",
}


def openrouter_models(api_key_env: str = "OPENROUTER_API_KEY", paper_request: bool = True) -> list[dict[str, Any]]:
  """``llm.models`` entries that serve the paper's pool through OpenRouter (prices stay the pool's).

  Args:
    api_key_env: the environment variable holding the OpenRouter key.
    paper_request: send GPT-5 models what the paper's code sent every model
      (``max_tokens`` and llm.temperature); False keeps the pool's OpenAI-style
      request for them (``max_completion_tokens``, temperature 1).
  """
  entries = []
  for name, served in OPENROUTER_IDS.items():
    entry = dict(name=name, base_url=OPENROUTER_BASE_URL, api_key_env=api_key_env, served_name=served)
    if paper_request and name.startswith("GPT-5"):
      entry.update(max_tokens_param="max_tokens", fixed_temperature=None)
    entries.append(entry)
  return entries


def task_column(task: str) -> int:
  """Index of ``task`` in ``TASKS`` (HumanEval+ takes HumanEval's); PresetError for other tasks."""
  name = _TASK_ALIASES.get(task, task)
  if name not in TASKS:
    raise PresetError(f"the paper's presets cover the tasks {', '.join(TASKS)}; task {task!r} has none "
                      "(drop paper_gpt/paper_qwen from the config arg)")
  return TASKS.index(name)


def facts_for(name: str, layers: tuple[str, ...] = LAYERS) -> list[Fact]:
  """The facts preset ``name`` applies, in ``FACTS`` order."""
  if name not in PRESETS:
    raise PresetError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
  unknown = set(layers) - set(LAYERS)
  if unknown:
    raise PresetError(f"unknown preset layer(s) {sorted(unknown)}; known: {', '.join(LAYERS)}")
  return [f for f in FACTS if f.layer in layers and f.preset in ("both", name)]


def values(name: str, task: str, layers: tuple[str, ...] = LAYERS) -> dict[str, Any]:
  """{field: value} of preset ``name`` for ``task``."""
  column = task_column(task)
  return {f.field: f.values[column] for f in facts_for(name, layers)}


def apply(config: ml_collections.ConfigDict, name: str, layers: tuple[str, ...] = LAYERS,
          fields: tuple[str, ...] | None = None) -> ml_collections.ConfigDict:
  """Sets the fields of preset ``name`` (both layers by default, or only ``fields`` of any layer) for
  ``config.task.name``; returns ``config``.

  Raises PresetError naming a field the config lacks, rather than adding a field no code reads.
  """
  chosen = values(name, config.task.name, LAYERS if fields is not None else layers)
  if fields is not None:
    unknown = sorted(set(fields) - set(chosen))
    if unknown:
      raise PresetError(f"preset {name!r} has no value for {', '.join(unknown)}; its fields: {', '.join(chosen)}")
    chosen = {f: chosen[f] for f in fields}
  for field, value in chosen.items():
    section, key = field.split(".")
    if section not in config or key not in config[section]:
      raise PresetError(f"preset {name!r} sets {field}, which this config does not have; the config must "
                        "come from hieramas_jax.config.defaults")
    config[section][key] = copy.deepcopy(value)  # lists are not shared between configs
  return config


# ---------------------------------------------------------------------------
# README table
# ---------------------------------------------------------------------------

TABLE_HEADER = ("field", "layer", "preset") + TASK_TITLES + ("source in the paper's code",)


def format_value(value: Any) -> str:
  """A table cell: the Python literal in backticks (``ast.literal_eval`` reads it back)."""
  return f"`{value!r}`"


def markdown_table() -> str:
  """The README table "The paper's settings": one row per fact."""
  lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
  for f in FACTS:
    source = f.source.replace("*", "\\*")  # globs, not emphasis
    cells = [f"`{f.field}`", f.layer, f.preset] + [format_value(v) for v in f.values] + [source]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)
