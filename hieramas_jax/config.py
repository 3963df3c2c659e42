"""Config plumbing: the sections' defaults, config args, overrides, saved configs and flag errors.

``configs/common.py`` and ``configs/<task>.py`` show the values of an experiment;
this module holds what they start from (``defaults``: every field, with the
library's neutral values) and what they end with (``finish``). A config file's
``get_config(arg)`` takes a comma-separated arg string of flags and
``field=value`` assignments:

  (empty)   the offline default: simulated LLM pool, synthetic problems in the task's format
  smoke     tiny sizes: a run that finishes in about a minute on 2 CPU cores
  files     the task's real benchmark files (../shared/data or HIERAMAS_DATA) instead of synthetic ones
  openai    real OpenAI-compatible endpoints from ``llm.models`` instead of the simulator
  paper_gpt, paper_qwen
            the paper's GPT or Qwen setting and its training recipe, as its code runs them
            (hieramas_jax/presets.py; smoke still shrinks the sizes)
  a.b=v     sets field a.b to v, last of all (after a preset and smoke)

e.g. ``--config=configs/math.py:smoke,seed=3`` or ``--config=configs/math.py:files,openai,paper_gpt``.
A value holding commas goes in brackets or quotes: ``:smoke,graphs.density_range=(0.3,0.7)``.

Fields are also overridden on the command line as ``--config.section.field=value``.
Both forms go through the same parsers (``override``): a value is read by the
field's type, list fields take a Python/JSON list, a comma-separated list or
one item (``--config.llm.exclude_models='["Llama-3.1-8B"]'``, ``=Llama-3.1-8B,GPT-5-nano``).
The launchers parse their flags with ``parse_flags``: a config file that does
not load, an unknown field or a value of the wrong type ends in one line on
stderr and exit status 1.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import pathlib
import types
from typing import Any, Sequence

from absl import flags
import ml_collections
from ml_collections import config_flags

from hieramas_jax import config_cli, presets
from hieramas_jax.config_cli import describe_flag_error, one_line, parse_flags  # noqa: F401  (the launchers' names)
from hieramas_jax.llm import base as llm_base

KNOWN_ARGS = ("smoke", "files", "openai", "paper_gpt", "paper_qwen")


class ConfigError(llm_base.ConfigError):
  """A config file, its arg or a command-line override that cannot be used."""


# ---------------------------------------------------------------------------
# Config args and overrides
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ConfigArg:
  """A parsed config arg: its flags (``KNOWN_ARGS``) and its ``field=value`` assignments, in order."""

  flags: frozenset[str] = frozenset()
  assignments: tuple[str, ...] = ()

  def __contains__(self, name: str) -> bool:
    return name in self.flags


def parse_arg(arg: str | ConfigArg | None) -> ConfigArg:
  """The flags and assignments of a config file's arg (ConfigError for an unknown flag or two presets)."""
  if isinstance(arg, ConfigArg):
    return arg
  tokens = _split_arg(arg or "")
  assignments = tuple(t for t in tokens if "=" in t)
  names = {t for t in tokens if "=" not in t}
  unknown = names - set(KNOWN_ARGS)
  if unknown:
    raise ConfigError(f"unknown config arg(s) {sorted(unknown)}; known: {', '.join(KNOWN_ARGS)} or field=value "
                      "(comma-separated, e.g. configs/math.py:smoke,files,seed=3; a value holding commas goes "
                      "in brackets: llm.exclude_models=[A,B])")
  if {"paper_gpt", "paper_qwen"} <= names:
    raise ConfigError("config args paper_gpt and paper_qwen are two settings; name one of them")
  return ConfigArg(frozenset(names), assignments)


def _split_arg(text: str) -> list[str]:
  """Comma-separated tokens, keeping commas inside brackets and quotes: 'a=(1,2),smoke' -> ['a=(1,2)', 'smoke']."""
  tokens, depth, quote, current = [], 0, "", []
  for char in text:
    if quote:
      quote = "" if char == quote else quote
    elif char in "'\"":
      quote = char
    elif char in "([{":
      depth += 1
    elif char in ")]}":
      depth -= 1
    elif char == "," and depth == 0:
      tokens.append("".join(current))
      current = []
      continue
    current.append(char)
  tokens.append("".join(current))
  return [t.strip() for t in tokens if t.strip()]


class ListParser(flags.ArgumentParser):
  """Parses a list field's command-line value (ml_collections has no parser for lists)."""

  def parse(self, argument: Any) -> list:
    if isinstance(argument, (list, tuple)):
      return list(argument)
    text = "" if argument is None else str(argument).strip()
    if not text:
      return []
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):  # bare names: Llama-3.1-8B, A,B or [A,B]
      if text[0] + text[-1] in ("[]", "()"):
        text = text[1:-1]
      return [item.strip() for item in text.split(",") if item.strip()]
    return list(value) if isinstance(value, (list, tuple)) else [value]

  def flag_type(self) -> str:
    return "list"


config_flags.register_flag_parser_for_type(list, ListParser())


def override(config: ml_collections.ConfigDict, assignments: Sequence[str]) -> ml_collections.ConfigDict:
  """Sets ``field=value`` assignments in place, parsed as ``--config.field=value`` is; returns ``config``.

  ConfigError names an unknown field (with the closest names) or a value its field's type cannot take.
  """
  for assignment in assignments:
    field, eq, text = assignment.partition("=")
    problem = config_cli.unknown_field(config, field.strip()) if eq else "expected field=value, e.g. seed=3"
    if problem:
      raise ConfigError(f"{assignment}: {problem}")
    argv = ["config", f"--config.{field.strip()}={text}"]
    values = flags.FlagValues()
    # The command line's own machinery: the same parsers and type checks as --config.field=value.
    config_flags.DEFINE_config_dict("config", config, flag_values=values, sys_argv=argv, lock_config=False)
    try:
      values(argv)
    except (flags.Error, TypeError, ValueError, KeyError, AttributeError) as e:
      raise ConfigError(f"{assignment}: {one_line(e)}") from None
  return config


# ---------------------------------------------------------------------------
# Sections: every field, with the library's neutral values (configs/*.py set an experiment's)
# ---------------------------------------------------------------------------


def task_section(name: str, source: str = "synthetic") -> ml_collections.ConfigDict:
  """Data: the synthetic generator (offline) or the task's own files (``data_path``, empty: ../shared/data)."""
  # Synthetic problems cost nothing to make: a test split whose accuracies are not noise.
  return ml_collections.ConfigDict(dict(name=name, source=source, data_path="", num_train=256, num_val=64,
                                        num_test=512 if source == "synthetic" else 128))


def llm_section(backend: str = "sim") -> ml_collections.ConfigDict:
  """The LLM pool and backend: `models` entries (name, base_url, api_key_env, prices, ...) override the pool's."""
  return ml_collections.ConfigDict(dict(
      backend=backend, pool="paper", models=[], exclude_models=[], decision_model="GPT-4o-mini", temperature=0.7,
      max_tokens=1024, timeout_s=120.0, max_retries=5, max_concurrency=64,
      send_seed=True,  # each call's sample index as `seed`: repeated samples differ, re-runs repeat
      cache=True,  # SQLite response cache in the workdir
      max_failed_fraction=0.5,  # a batch with more failed queries (or all) stops the run
      sim_seed=0, sim_latency_s=0.0,
      sim_world="invented",  # or "anchored": skills from published scores (llm/sim_facts.py)
      sim_role_effects={}))  # role name -> (solo logit, gain scale): llm/sim/world.py RoleEffect


def encoder_section() -> ml_collections.ConfigDict:
  """Text encoder: 'minilm', 'sentence_transformer' (``path``), 'openai' (``model``, ``base_url``), 'hashing'."""
  return ml_collections.ConfigDict(dict(kind="minilm", path="", model="", base_url="", api_key_env="OPENAI_API_KEY",
                                        dim=0, cache=True))  # dim 0: the endpoint says


def selector_section() -> ml_collections.ConfigDict:
  """The LLM selector (models/selector.py; its defaults are these): P proposers + 1 synthesizer per role."""
  return ml_collections.ConfigDict(dict(num_proposers=2, hidden_dim=256, synthesizer_may_skip=True,
                                        proposer_may_skip=True, init_skip_bias=1.0, skip_head="gate",
                                        input_scale=True))


def gcn_section() -> ml_collections.ConfigDict:
  """The graph classifier; ``impl`` is the scoring form ('dense' or the jraph 'segment', same function)."""
  # model: the classifier's name in policy.CLASSIFIER_MODELS (another GNN: one module + one entry there).
  return ml_collections.ConfigDict(dict(model="gcn", role_dim=32, hidden_dim=128, num_layers=2, mlp_dim=64,
                                        impl="dense"))


def graphs_section() -> ml_collections.ConfigDict:
  """DAG pools: stage 1's, stage 2's data generation and the K candidates scored at inference."""
  return ml_collections.ConfigDict(dict(density_range=(0.0, 1.0), stage2_density_range=(0.0, 1.0),
                                        candidate_density_range=(0.0, 1.0), train_pool_size=64, num_candidates=100))


def inference_section() -> ml_collections.ConfigDict:
  """Inference rules on the selector's argmax (inference_rules.py): -1 / 0 apply none."""
  return ml_collections.ConfigDict(dict(max_skipped_roles=-1, rotate_top_n=0))


def reward_section() -> ml_collections.ConfigDict:
  """The cost-aware reward of a graded output (reward_formula.py), for training, stage-2 labels and evaluation.

  solved: max(exp(-cost_solved * cost), 0.5); failed: max(-exp(cost_failed * cost), -2.5); ``system_cost`` is the
  cost the system reward counts ('total' or the reference code's 'decision'); stage 2's labels take their own c_s.
  """
  return ml_collections.ConfigDict(dict(cost_solved=300.0, cost_failed=300.0, system_cost="total",
                                        stage2_cost_solved=300.0))


def stage1_section() -> ml_collections.ConfigDict:
  """Stage 1's REINFORCE (train/stage1.py); configs/common.py says what each value does."""
  return ml_collections.ConfigDict(dict(
      steps=1800, batch_size=16, learning_rate=3e-4, weight_decay=1e-5, lr_schedule="cosine", grad_clip=1.0,
      entropy_coef=1.0, temperature_start=10.0, temperature_end=0.8, alpha=0.5, baseline="group", group_size=4,
      run_skip_credit="role_vs_system", run_skip_warmup=0.5, ema_decay=0.9, eval_every=50, val_samples=1,
      keep_margin=0.0))


def stage2_section() -> ml_collections.ConfigDict:
  """Stage 2's labels (G DAGs x samples per query, top k positive) and classifier training."""
  return ml_collections.ConfigDict(dict(graphs_per_query=32, top_k=8, samples_per_graph=8, epochs=20, batch_size=64,
                                        learning_rate=5e-4, weight_decay=1e-5))


def defaults(task: str, arg: str | ConfigArg | None = None) -> ml_collections.ConfigDict:
  """Every field of a config for ``task`` (a name known to hieramas_jax.tasks), before ``finish``.

  The arg's flags ``files`` and ``openai`` choose the data source and the backend.
  """
  arg = parse_arg(arg)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.stages = "both"  # 'both', 'stage1' or 'stage2'
  c.task = task_section(task, "files" if "files" in arg else "synthetic")
  c.llm = llm_section("openai" if "openai" in arg else "sim")
  c.encoder = encoder_section()
  c.selector = selector_section()
  c.gcn = gcn_section()
  c.graphs = graphs_section()
  c.inference = inference_section()
  c.reward = reward_section()
  c.stage1 = stage1_section()
  c.stage2 = stage2_section()
  c.checkpoint = ml_collections.ConfigDict(dict(every_steps=50, max_to_keep=3))
  return c


def finish(c: ml_collections.ConfigDict, arg: str | ConfigArg | None = None) -> ml_collections.ConfigDict:
  """Applies the arg to a config file's values: a named preset, then smoke's sizes, then its assignments."""
  arg = parse_arg(arg)
  preset = next((name for name in presets.PRESETS if name in arg), None)
  if preset is not None:
    presets.apply(c, preset)
  if "smoke" in arg:
    _shrink_for_smoke(c)
  return override(c, arg.assignments)


def base_config(task: str, arg: str | ConfigArg | None = None, setting: str | None = None) -> ml_collections.ConfigDict:
  """``defaults`` finished with ``arg``: the library's values (tests, and loading saved configs, start here).

  ``setting``: a preset whose *setting* layer (and ``presets.PAPER_RECIPE_DEFAULTS``) applies when ``arg`` names
  no preset, for config files that do not start from configs/common.py.
  """
  c, arg = defaults(task, arg), parse_arg(arg)
  if setting is not None and not arg.flags & set(presets.PRESETS):
    presets.apply(c, setting, layers=("setting",))
    presets.apply(c, setting, fields=presets.PAPER_RECIPE_DEFAULTS)
  return finish(c, arg)


# The smoke arg's sizes: each is a ceiling, so a preset's smaller values (stage 2's 5 DAGs x 1 run) stay.
_SMOKE_SIZES = {"task.num_train": 24, "task.num_val": 8, "task.num_test": 8, "selector.hidden_dim": 32,
                "gcn.role_dim": 8, "gcn.hidden_dim": 16, "gcn.mlp_dim": 16, "graphs.train_pool_size": 8,
                "graphs.num_candidates": 8, "stage1.steps": 6, "stage1.batch_size": 4, "stage1.eval_every": 3,
                "stage1.group_size": 2, "stage2.graphs_per_query": 4, "stage2.top_k": 1, "stage2.epochs": 3,
                "stage2.samples_per_graph": 2, "checkpoint.every_steps": 3}


def _shrink_for_smoke(c: ml_collections.ConfigDict) -> None:
  """Tiny sizes: a run that finishes in about a minute on 2 CPU cores."""
  for field, ceiling in _SMOKE_SIZES.items():
    section, key = field.split(".")
    c[section][key] = min(c[section][key], ceiling)


# ---------------------------------------------------------------------------
# Configs saved in checkpoints
# ---------------------------------------------------------------------------


def _merge(defaults_: dict, saved: dict) -> dict:
  out = dict(defaults_)
  for key, value in saved.items():
    if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "sim_role_effects":
      out[key] = _merge(out[key], value)
    else:
      out[key] = value
  return out


# Fields renamed or moved: old (section, field) -> new. Configs saved before the reward section held the reward's
# fields under stage1 and stage2.
RENAMED_FIELDS = {("stage1", "reward_cost_solved"): ("reward", "cost_solved"),
                  ("stage1", "reward_cost_failed"): ("reward", "cost_failed"),
                  ("stage1", "system_cost"): ("reward", "system_cost"),
                  ("stage2", "reward_cost_solved"): ("reward", "stage2_cost_solved")}

# Fields added after a checkpoint was written take, for that checkpoint, the value that reproduces how it was
# trained (its parameters' structure above all), not today's default, which may differ.
_BEFORE_FIELD_EXISTED = {("selector", "skip_head"): "shared", ("selector", "input_scale"): False,
                         ("stage1", "lr_schedule"): "constant", ("stage1", "run_skip_credit"): "role",
                         ("stage1", "keep_margin"): 0.0}


# Fields added after a checkpoint was written whose role another field played until then: that field's saved value.
_COPIED_BEFORE_FIELD_EXISTED = {("graphs", "stage2_density_range"): ("graphs", "density_range"),
                                ("graphs", "candidate_density_range"): ("graphs", "density_range"),
                                ("reward", "stage2_cost_solved"): ("reward", "cost_solved")}


def migrate_saved(saved: dict) -> dict:
  """A saved config dict in today's layout: ``RENAMED_FIELDS`` moved to their new place (a copy)."""
  saved = {key: dict(value) if isinstance(value, dict) else value for key, value in saved.items()}
  for (section, field), (to_section, to_field) in RENAMED_FIELDS.items():
    if isinstance(saved.get(section), dict) and field in saved[section]:
      value = saved[section].pop(field)
      target = saved.setdefault(to_section, {})
      if not isinstance(target, dict):
        raise ConfigError(f"the saved config's {to_section!r} is {target!r}, not a section; it was written by "
                          "another hieramas_jax version: load it with that version or train again")
      target.setdefault(to_field, value)
  return saved


def from_saved(saved: dict) -> ml_collections.ConfigDict:
  """The config a checkpoint was trained with, in today's layout, on top of today's defaults.

  Renamed fields move first (``migrate_saved``). Fields added to the defaults
  after the checkpoint was written take today's default, except those of
  ``_BEFORE_FIELD_EXISTED``, which take the value the checkpoint was trained
  with (so its parameters rebuild), and those of ``_COPIED_BEFORE_FIELD_EXISTED``,
  which take the saved value of the field that did their work then; every
  saved value wins.
  """
  task = (saved.get("task") or {}).get("name") or "math"
  saved = migrate_saved(saved)
  for (section, field), value in _BEFORE_FIELD_EXISTED.items():
    if isinstance(saved.get(section), dict):
      saved[section].setdefault(field, value)
  for (section, field), (from_section, from_field) in _COPIED_BEFORE_FIELD_EXISTED.items():
    source = saved.get(from_section)
    if isinstance(saved.get(section), dict) and isinstance(source, dict) and from_field in source:
      saved[section].setdefault(field, source[from_field])
  return ml_collections.ConfigDict(_merge(base_config(task).to_dict(), saved))


def load_module(path: str | pathlib.Path) -> types.ModuleType:
  """The Python module of a config file (configs/<task>.py loads configs/common.py with it)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"config file {path} does not exist; pass one of configs/*.py, e.g. "
                            "--config=configs/math.py:smoke")
  spec = importlib.util.spec_from_file_location(f"config_{path.stem}", path)
  if spec is None or spec.loader is None:
    raise FileNotFoundError(f"cannot load config file {path}; it must be a Python file with get_config(arg)")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_config_file(path: str | pathlib.Path, arg: str | None = None) -> ml_collections.ConfigDict:
  """``get_config(arg)`` of a config file, as ``--config=path:arg`` gives it to the launchers."""
  module = load_module(path)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"config file {path} defines no get_config(arg)")
  return module.get_config(arg)
