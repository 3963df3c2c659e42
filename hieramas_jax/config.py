"""Shared configuration defaults; the files in configs/ start from ``base_config``.

A config file's ``get_config(arg)`` takes a comma-separated arg string:

  (empty)   the offline default: simulated LLM pool, synthetic problems in the task's format
  smoke     tiny sizes: a run that finishes in about a minute on 2 CPU cores
  files     the task's real benchmark files (../shared/data or HIERAMAS_DATA) instead of synthetic ones
  openai    real OpenAI-compatible endpoints from ``llm.models`` instead of the simulator
  paper_gpt, paper_qwen
            the paper's GPT or Qwen setting and its training recipe, as its code runs them
            (hieramas_jax/presets.py; smoke still shrinks the sizes)

e.g. ``--config=configs/math.py:smoke`` or ``--config=configs/math.py:files,openai,paper_gpt``.

Fields are overridden on the command line as ``--config.section.field=value``;
list fields take a Python/JSON list, a comma-separated list or one item
(``--config.llm.exclude_models='["Llama-3.1-8B"]'``, ``=Llama-3.1-8B,GPT-5-nano``).
The launchers parse their flags with ``parse_flags``: a config file that does
not load, an unknown field or a value of the wrong type ends in one line on
stderr and exit status 1.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import pathlib
import sys
import traceback
from typing import Any, Sequence

from absl import flags
import ml_collections
from ml_collections import config_flags

from hieramas_jax import presets
from hieramas_jax.llm import base as llm_base

KNOWN_ARGS = ("smoke", "files", "openai", "paper_gpt", "paper_qwen")


class ConfigError(llm_base.ConfigError):
  """A config file, its arg or a command-line override that cannot be used."""


def parse_arg(arg: str | None) -> set[str]:
  tokens = {t.strip() for t in (arg or "").split(",") if t.strip()}
  unknown = tokens - set(KNOWN_ARGS)
  if unknown:
    raise ConfigError(f"unknown config arg(s) {sorted(unknown)}; known: {', '.join(KNOWN_ARGS)} "
                      "(comma-separated, e.g. configs/math.py:smoke,files)")
  if {"paper_gpt", "paper_qwen"} <= tokens:
    raise ConfigError("config args paper_gpt and paper_qwen are two settings; name one of them")
  return tokens


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
    except (ValueError, SyntaxError):  # bare names: Llama-3.1-8B or A,B
      return [item.strip() for item in text.split(",") if item.strip()]
    return list(value) if isinstance(value, (list, tuple)) else [value]

  def flag_type(self) -> str:
    return "list"


config_flags.register_flag_parser_for_type(list, ListParser())


def base_config(task: str, arg: str | None = None, setting: str | None = None) -> ml_collections.ConfigDict:
  """Defaults shared by every task; ``task`` is a name known to hieramas_jax.tasks.

  Args:
    task: the task name.
    arg: the config file's comma-separated arg (see the module doc).
    setting: a preset of hieramas_jax.presets whose *setting* layer applies when
      ``arg`` names no preset (configs/*.py pass 'paper_gpt'); None: none.
  """
  tokens = parse_arg(arg)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.stages = "both"  # 'both', 'stage1' or 'stage2'

  # Data: the synthetic generator (offline default) or the task's own files.
  c.task = ml_collections.ConfigDict()
  c.task.name = task
  c.task.source = "files" if "files" in tokens else "synthetic"
  c.task.data_path = ""  # empty: ../shared/data or HIERAMAS_DATA
  c.task.num_train = 256
  c.task.num_val = 64
  # Synthetic problems cost nothing to make: a test split whose accuracies are not noise (EXPERIMENTS.md).
  c.task.num_test = 512 if c.task.source == "synthetic" else 128

  # LLM pool and backend.
  c.llm = ml_collections.ConfigDict()
  c.llm.backend = "openai" if "openai" in tokens else "sim"
  c.llm.pool = "paper"  # the paper's pool from hieramas_jax.llm.pool; `models` entries override by name
  c.llm.models = []  # list of dicts: name, base_url, api_key_env, price_in_per_m, price_out_per_m, ...
  c.llm.exclude_models = []  # names the selector may never choose
  c.llm.decision_model = "GPT-4o-mini"
  c.llm.temperature = 0.7
  c.llm.max_tokens = 1024
  c.llm.timeout_s = 120.0
  c.llm.max_retries = 5
  c.llm.max_concurrency = 64
  c.llm.send_seed = True  # send each call's sample index as `seed`: repeated samples differ, re-runs repeat
  c.llm.cache = True  # SQLite response cache in the workdir
  c.llm.max_failed_fraction = 0.5  # a training/evaluation batch with more failed queries (or all) stops the run
  c.llm.sim_seed = 0
  c.llm.sim_latency_s = 0.0
  c.llm.sim_world = "invented"  # or "anchored": skills from published scores, shared wrong answers (llm/sim_facts.py)
  # Role effects of the simulated world: role name -> (solo logit, gain scale); see llm/sim/world.py RoleEffect.
  c.llm.sim_role_effects = {}

  # Encoder of query, role and profile texts.
  c.encoder = ml_collections.ConfigDict()
  c.encoder.kind = "minilm"  # 'minilm', 'sentence_transformer', 'openai', 'hashing' (tests only)
  c.encoder.path = ""  # model directory for 'sentence_transformer'
  c.encoder.model = ""  # embedding model for 'openai' (default text-embedding-3-small)
  c.encoder.base_url = ""  # OpenAI-compatible endpoint for 'openai' (empty: api.openai.com)
  c.encoder.api_key_env = "OPENAI_API_KEY"
  c.encoder.dim = 0  # embedding size for 'openai' models the encoder does not know (0: ask the endpoint once)
  c.encoder.cache = True

  # Selector: P proposers + 1 synthesizer per role.
  c.selector = ml_collections.ConfigDict()
  c.selector.num_proposers = 2
  c.selector.hidden_dim = 256
  c.selector.synthesizer_may_skip = True
  c.selector.proposer_may_skip = True
  # Initial offset of every position's `skip` logit (learnable; with the gate head p(skip) = sigmoid(offset) at
  # T = 1 to start): cheaper early exploration, by measurement (EXPERIMENTS.md; paper: 0.0).
  c.selector.init_skip_bias = 1.0
  # Skip parametrisation (models/selector.py): 'gate' (a run/skip gate per position, p(skip) independent of which
  # model is preferred) or 'shared' (skip scored like one more model). input_scale gives the unit-norm text and
  # profile embeddings unit-variance components; without it the logits hardly depend on the query: one assignment
  # for every query, where the simulator's best models differ by subject. Both are defaults by measurement, with
  # stage 1's schedule below (see its comment).
  c.selector.skip_head = "gate"
  c.selector.input_scale = True

  # Graph classifier.
  c.gcn = ml_collections.ConfigDict()
  c.gcn.role_dim = 32
  c.gcn.hidden_dim = 128
  c.gcn.num_layers = 2
  c.gcn.mlp_dim = 64
  c.gcn.impl = "dense"  # same function as the jraph 'segment' form; faster on CPU per bench/graph_scoring.py

  # Candidate DAG pools.
  c.graphs = ml_collections.ConfigDict()
  c.graphs.density_range = (0.0, 1.0)  # stage 1's pool
  c.graphs.stage2_density_range = (0.0, 1.0)  # DAGs of stage-2 data generation (paper: MATH 0.3-1.0)
  # The candidates scored at inference and the random-DAG baselines (paper: 0.3-0.7).
  c.graphs.candidate_density_range = (0.0, 1.0)
  c.graphs.train_pool_size = 64
  c.graphs.num_candidates = 100  # K scored at inference (paper: 100-200)

  # Inference rules on the selector's argmax (HieraMAS.plan/run, evaluation; see train/rollout.inference_actions).
  c.inference = ml_collections.ConfigDict()
  # Roles whose synthesizer argmax is `skip` are dropped, at most this many (highest p(skip) first) and never every
  # answer-giving role; the others run their best model. -1: no cap, every such role dropped (paper: MATH 0, MMLU 2).
  c.inference.max_skipped_roles = -1
  # Proposer i of a role takes model top[i mod N] of the top-N models of one seeded proposer row (0: argmax each;
  # paper: MATH 2, HumanEval 2, MMLU 3).
  c.inference.rotate_top_n = 0

  # Stage 1: REINFORCE on the selector.
  c.stage1 = ml_collections.ConfigDict()
  # Defaults by measurement (EXPERIMENTS.md): a higher rate locks the selector on its first good assignment;
  # 3e-4 over 1800 steps with a cosine decay to 0 keeps improving to the end (paper: 12 steps at 2e-3).
  c.stage1.steps = 1800
  c.stage1.batch_size = 16
  c.stage1.learning_rate = 3e-4
  c.stage1.weight_decay = 1e-5  # the paper's value (no measurement says otherwise); AdamW, the paper's is L2
  c.stage1.lr_schedule = "cosine"  # 'cosine' (decay to 0 over the steps) or 'constant'
  c.stage1.grad_clip = 1.0
  # The paper's entropy bonus and cosine temperature (no measurement on record says otherwise).
  c.stage1.entropy_coef = 1.0
  c.stage1.temperature_start = 10.0
  c.stage1.temperature_end = 0.8
  c.stage1.alpha = 0.5  # multi-level credit: alpha * node reward + (1 - alpha) * system reward
  # Reward baseline: 'none' (as published), 'ema' (per role), 'batch_mean' (leave-one-out over the batch) or
  # 'group' (each query sampled group_size times, leave-one-out within the query): the default by measurement
  # against 'ema' (EXPERIMENTS.md).
  c.stage1.baseline = "group"
  c.stage1.group_size = 4  # samples per query with the 'group' baseline (batch_size must be a multiple)
  # What trains each role's run/skip decision (the synthesizer's skip; see learner.reinforce_loss):
  #   'role'            as published: the role's credit when it ran; a skipped role's credit is 0, so a role whose
  #                     own credit is negative (hard queries) is dropped even where it helps the final answer;
  #   'system'          the system reward, whether the role ran or not (unbiased for the system reward, slow);
  #   'role_vs_system'  running is rated by the role's credit, skipping by the system reward (what the system got
  #                     without the role).
  # 'role' is used for the first run_skip_warmup of the steps either way: the worth of running a role depends on
  # which models fill it, which the role's own credit teaches fastest. 'role_vs_system' by measurement
  # (EXPERIMENTS.md).
  c.stage1.run_skip_credit = "role_vs_system"
  c.stage1.run_skip_warmup = 0.5
  c.stage1.reward_cost_solved = 300.0  # c_s
  c.stage1.reward_cost_failed = 300.0  # c_f
  c.stage1.system_cost = "total"  # cost counted by the system reward: 'total' or 'decision' (reference code)
  c.stage1.ema_decay = 0.9
  c.stage1.eval_every = 50
  c.stage1.val_samples = 1  # runs per validation query when picking the best parameters
  # Later parameters replace the kept ones unless their validation reward is below the highest seen by more than
  # this many standard errors (0, the paper's: keep the plain maximum).
  c.stage1.keep_margin = 0.0

  # Stage 2: graph classifier on ranked random DAGs.
  c.stage2 = ml_collections.ConfigDict()
  # G DAGs per query, each run samples_per_graph times; labels rank the mean reward (paper: 5 DAGs x 1 run, top 2).
  # With very few runs the top-k cut falls to the cheapest solved DAGs; 32 x 8 (top 8) by measurement (EXPERIMENTS.md).
  c.stage2.graphs_per_query = 32  # G
  c.stage2.top_k = 8
  c.stage2.samples_per_graph = 8
  c.stage2.reward_cost_solved = 300.0  # c_s of the labels' system reward (paper: 500); c_f is stage1's
  # The paper's MATH values (presets.PAPER_RECIPE_DEFAULTS sets each task's in configs/*.py).
  c.stage2.epochs = 20
  c.stage2.batch_size = 64
  c.stage2.learning_rate = 5e-4
  c.stage2.weight_decay = 1e-5

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 50
  c.checkpoint.max_to_keep = 3

  preset = next((name for name in presets.PRESETS if name in tokens), None)
  if preset is not None:
    presets.apply(c, preset)
  elif setting is not None:
    presets.apply(c, setting, layers=("setting",))
    presets.apply(c, setting, fields=presets.PAPER_RECIPE_DEFAULTS)
  if "smoke" in tokens:
    _shrink_for_smoke(c)
  return c


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


def _merge(defaults: dict, saved: dict) -> dict:
  out = dict(defaults)
  for key, value in saved.items():
    if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "sim_role_effects":
      out[key] = _merge(out[key], value)
    else:
      out[key] = value
  return out


# Fields added after a checkpoint was written take, for that checkpoint, the value that reproduces how it was
# trained (its parameters' structure above all), not today's default, which may differ.
_BEFORE_FIELD_EXISTED = {("selector", "skip_head"): "shared", ("selector", "input_scale"): False,
                         ("stage1", "lr_schedule"): "constant", ("stage1", "run_skip_credit"): "role",
                         ("stage1", "keep_margin"): 0.0}


# Fields added after a checkpoint was written whose role another field played until then: that field's saved value.
_COPIED_BEFORE_FIELD_EXISTED = {("graphs", "stage2_density_range"): ("graphs", "density_range"),
                                ("graphs", "candidate_density_range"): ("graphs", "density_range"),
                                ("stage2", "reward_cost_solved"): ("stage1", "reward_cost_solved")}


def from_saved(saved: dict) -> ml_collections.ConfigDict:
  """The config a checkpoint was trained with, on top of today's defaults.

  Fields added to the defaults after the checkpoint was written take today's
  default, except those of ``_BEFORE_FIELD_EXISTED``, which take the value the
  checkpoint was trained with (so its parameters rebuild), and those of
  ``_COPIED_BEFORE_FIELD_EXISTED``, which take the saved value of the field that
  did their work then; every saved value wins.
  """
  task = (saved.get("task") or {}).get("name") or "math"
  saved = {key: dict(value) if isinstance(value, dict) else value for key, value in saved.items()}
  for (section, field), value in _BEFORE_FIELD_EXISTED.items():
    if isinstance(saved.get(section), dict):
      saved[section].setdefault(field, value)
  for (section, field), (from_section, from_field) in _COPIED_BEFORE_FIELD_EXISTED.items():
    source = saved.get(from_section)
    if isinstance(saved.get(section), dict) and isinstance(source, dict) and from_field in source:
      saved[section].setdefault(field, source[from_field])
  return ml_collections.ConfigDict(_merge(base_config(task).to_dict(), saved))



def load_config_file(path: str | pathlib.Path, arg: str | None = None) -> ml_collections.ConfigDict:
  """``get_config(arg)`` of a config file, as ``--config=path:arg`` gives it to the launchers."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"config file {path} does not exist; pass one of configs/*.py, e.g. "
                            "--config=configs/math.py:smoke")
  spec = importlib.util.spec_from_file_location(f"config_{path.stem}", path)
  if spec is None or spec.loader is None:
    raise FileNotFoundError(f"cannot load config file {path}; it must be a Python file with get_config(arg)")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"config file {path} defines no get_config(arg)")
  return module.get_config(arg)


# ---------------------------------------------------------------------------
# Command-line errors as one line
# ---------------------------------------------------------------------------


def parse_flags(argv: Sequence[str], config_flag: str = "config",
                flag_values: flags.FlagValues | None = None) -> list[str]:
  """absl ``flags_parser`` of the launchers: ``app.run(main, flags_parser=config.parse_flags)``.

  A flag error (a config file that fails to load, an unknown field, a value of
  the wrong type) prints one line on stderr and exits with status 1.
  ``flag_values`` defaults to absl's global FLAGS.
  """
  values = flags.FLAGS if flag_values is None else flag_values
  try:
    args = values(list(argv))
    # A config file that fails to import leaves a placeholder that raises only when first read: read it now.
    value = values[config_flag].value if config_flag in values else None
    if type(value).__name__ == "_ErrorConfig":  # ml_collections' private placeholder class
      value.lock()  # raises the deferred loading error
    return args
  except Exception as e:  # pylint: disable=broad-except  # any failure while reading the user's flags
    print(f"{_program(argv)}: {describe_flag_error(argv, e, config_flag)}", file=sys.stderr)
    raise SystemExit(1) from None


def _program(argv: Sequence[str]) -> str:
  """'launch.train' for .../launch/train.py (as ``python -m launch.train`` runs it)."""
  path = pathlib.Path(argv[0]) if argv else pathlib.Path("launch")
  return f"{path.parent.name}.{path.stem}" if path.parent.name else path.stem


def describe_flag_error(argv: Sequence[str], error: BaseException, config_flag: str = "config") -> str:
  """One line saying what is wrong with the command line's config flags and what to change."""
  spec, overrides = _config_args(argv, config_flag)
  if spec is not None:
    path, _, arg = spec.partition(":")
    try:
      config = load_config_file(path, arg or None)
    except Exception as e:  # pylint: disable=broad-except  # the config file is the user's code
      if isinstance(e, (ConfigError, FileNotFoundError)):
        return f"--{config_flag}={spec}: {one_line(e)}"
      lines = [f.lineno for f in traceback.extract_tb(e.__traceback__)
               if pathlib.Path(f.filename).resolve() == pathlib.Path(path).resolve()]
      where = f" (line {lines[-1]} of {path})" if lines else ""
      return f"--{config_flag}={spec}: {type(e).__name__}{where}: {one_line(e)}"
    for field, text in overrides:
      problem = _unknown_field(config, field)
      if problem:
        return f"--{config_flag}.{field}{'=' + text if text is not None else ''}: {problem}"
  return one_line(error)


def one_line(error: BaseException) -> str:
  """The message of ``error`` on one line (for an embedded traceback, its last line)."""
  lines = [" ".join(line.split()) for line in str(error).splitlines() if line.strip()]
  if any(line.startswith("Traceback (most recent call last)") for line in lines):
    lines = lines[-1:]
  text = "; ".join(line for line in lines if not line.startswith("Pass --helpshort"))
  return text or type(error).__name__


def _config_args(argv: Sequence[str], config_flag: str) -> tuple[str | None, list[tuple[str, str | None]]]:
  """(--config value, [(overridden field, value)]) from the raw command line."""
  spec, overrides = None, []
  prefix = f"--{config_flag}"
  args = list(argv[1:])
  for i, token in enumerate(args):
    if token == "--":
      break
    name, eq, value = token.partition("=")
    following = args[i + 1] if not eq and i + 1 < len(args) and not args[i + 1].startswith("-") else None
    if name == prefix:
      spec = value if eq else following
    elif name.startswith(prefix + "."):
      overrides.append((name[len(prefix) + 1:], value if eq else following))
  return spec, overrides


def _unknown_field(config: ml_collections.ConfigDict, field: str) -> str | None:
  """Why ``field`` names no field of ``config`` (with the closest names), or None when it does."""
  node: Any = config
  walked = []
  for key in field.split("."):
    if isinstance(node, (list, tuple)) and key.isdigit() and int(key) < len(node):
      node = node[int(key)]
    elif isinstance(node, ml_collections.ConfigDict) and key in node:
      node = node[key]
    elif isinstance(node, ml_collections.ConfigDict):
      where = ".".join(walked) or "the config"
      names = sorted(node.keys())
      close = difflib.get_close_matches(key, names, n=1)
      hint = f"did you mean {'.'.join(walked + close)}? " if close else ""
      return f"unknown config field {field!r}: {where} has no {key!r}; {hint}its fields: {', '.join(names)}"
    else:
      return None  # inside a plain value (a dict entry, say): ml_collections' own message says more
    walked.append(key)
  return None
