"""The paper's presets: README's table, the configs they give, arg combinations, offline runs."""

import ast
import json
import os
import pathlib
import subprocess
import sys

import ml_collections
import pytest

from hieramas_jax import config as base_config
from hieramas_jax import presets
from hieramas_jax.llm import pool as llm_pool
from hieramas_jax.train import environment

ROOT = pathlib.Path(__file__).resolve().parent.parent
README_SECTION = "## The paper's settings"


def readme_tables() -> list[list[list[str]]]:
  """The tables of README's section "The paper's settings": each a list of rows of cells (header first)."""
  text = (ROOT / "README.md").read_text()
  assert README_SECTION in text, f"README.md has no section {README_SECTION!r}"
  section = text.split(README_SECTION, 1)[1].split("\n## ", 1)[0]
  tables, current = [], []
  for line in section.splitlines() + [""]:
    if line.strip().startswith("|"):
      current.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    elif current:
      tables.append([row for row in current if set("".join(row)) - set("-")])  # without the |---| rule
      current = []
  return tables


def readme_rows() -> list[dict]:
  """The rows of README's preset table (its first), values read back as Python literals."""
  lines = readme_tables()[0]
  header = lines[0]
  assert tuple(header) == presets.TABLE_HEADER
  rows = []
  for cells in lines[1:]:
    assert len(cells) == len(header), cells
    field, layer, preset = cells[0].strip("`"), cells[1], cells[2]
    values = tuple(ast.literal_eval(cell.strip("`")) for cell in cells[3:6])
    rows.append(dict(field=field, layer=layer, preset=preset, values=values))
  return rows


def load(task: str, arg: str) -> ml_collections.ConfigDict:
  return base_config.load_config_file(ROOT / "configs" / f"{task}.py", arg)


def field(config: ml_collections.ConfigDict, name: str):
  section, key = name.split(".")
  value = config[section][key]
  return list(value) if isinstance(value, (list, tuple)) else value


def plain(value):
  return list(value) if isinstance(value, (list, tuple)) else value


def test_readme_table_lists_exactly_the_presets_facts():
  rows = readme_rows()
  in_readme = [(r["field"], r["layer"], r["preset"], tuple(plain(v) for v in r["values"])) for r in rows]
  in_code = [(f.field, f.layer, f.preset, tuple(plain(v) for v in f.values)) for f in presets.FACTS]
  assert in_readme == in_code


@pytest.mark.parametrize("preset", presets.PRESETS)
@pytest.mark.parametrize("task", presets.TASKS)
def test_each_preset_config_has_the_readme_values(task, preset):
  config = load(task, preset)
  column = presets.TASKS.index(task)
  checked = set()
  for row in readme_rows():
    if row["preset"] in ("both", preset):
      assert field(config, row["field"]) == plain(row["values"][column]), (task, preset, row["field"])
      checked.add(row["field"])
  # The paper's key figures, spelled out (the table could be wrong in the same way as the code).
  expected = {"math": (2, 100, 0, 6), "mmlu_redux": (6, 200, 2, 4), "humaneval": (2, 200, 0, 6)}[task]
  assert (config.selector.num_proposers, config.graphs.num_candidates, config.inference.max_skipped_roles,
          config.stage1.batch_size) == expected
  assert config.llm.decision_model == {"paper_gpt": "GPT-5-mini", "paper_qwen": "Qwen3-Next-80B-A3B"}[preset]
  assert (config.llm.temperature, config.llm.max_tokens, config.stage1.steps) == (0.2, 2048, 12)
  assert (config.reward.cost_solved, config.reward.stage2_cost_solved) == (300.0, 500.0)
  assert (config.stage2.graphs_per_query, config.stage2.samples_per_graph, config.stage2.top_k) == (5, 1, 2)
  assert "llm.decision_model" in checked and "graphs.stage2_density_range" in checked


def test_qwen_preset_excludes_every_gpt_model_and_gpt_preset_none():
  assert load("math", "paper_qwen").llm.exclude_models == ["GPT-5-nano", "GPT-5-mini", "GPT-4o-mini"]
  assert load("math", "paper_gpt").llm.exclude_models == []


@pytest.mark.parametrize("task", presets.TASKS)
def test_default_is_the_gpt_setting_with_our_training_recipe(task):
  config = load(task, "")
  ours = base_config.base_config(task)
  for fact in presets.FACTS:
    if fact.preset == "paper_qwen":
      continue
    paper = fact.layer == "setting" or fact.field in presets.PAPER_RECIPE_DEFAULTS
    expected = fact.values[presets.TASKS.index(task)] if paper else field(ours, fact.field)
    assert field(config, fact.field) == plain(expected), fact.field
  # The recipe differs from the paper's somewhere, or the default would be the preset itself.
  assert config.stage1.steps != 12 and config.stage1.baseline != "none"


def test_presets_combine_with_files_openai_and_smoke():
  config = load("math", "files,openai,paper_qwen,smoke")
  assert (config.task.source, config.llm.backend) == ("files", "openai")
  assert config.llm.decision_model == "Qwen3-Next-80B-A3B"
  # smoke's sizes are ceilings: K and stage 1 shrink, the preset's smaller values stay.
  assert (config.graphs.num_candidates, config.stage1.steps, config.task.num_train) == (8, 6, 24)
  assert (config.stage2.samples_per_graph, config.stage1.eval_every, config.stage1.entropy_coef) == (1, 2, 1.0)
  assert config.stage2.top_k < config.stage2.graphs_per_query


def test_preset_args_that_cannot_work_are_refused():
  with pytest.raises(base_config.ConfigError, match="name one of them"):
    load("math", "paper_gpt,paper_qwen")
  with pytest.raises(base_config.ConfigError, match="unknown config arg.*paper_gpt, paper_qwen"):
    load("math", "paper_claude")
  with pytest.raises(presets.PresetError, match="task 'synthetic' has none"):
    base_config.base_config("synthetic", "paper_gpt")
  with pytest.raises(presets.PresetError, match="unknown preset"):
    presets.apply(base_config.base_config("math"), "paper")
  partial = base_config.base_config("math")
  del partial.inference["rotate_top_n"]
  with pytest.raises(presets.PresetError, match="inference.rotate_top_n, which this config does not have"):
    presets.apply(partial, "paper_gpt")


def test_openrouter_entries_serve_the_whole_pool_with_the_papers_request(monkeypatch):
  monkeypatch.setenv("OPENROUTER_API_KEY", "test-key")
  config = load("humaneval", "openai,paper_gpt")
  config.llm.models = presets.openrouter_models()
  specs = {s.name: s for s in environment.validate_config(config, num_roles=5)}
  assert set(specs) == set(presets.OPENROUTER_IDS)
  assert all(s.base_url == "https://openrouter.ai/api/v1" and s.api_key_env == "OPENROUTER_API_KEY"
             for s in specs.values())
  assert specs["Qwen3-Next-80B-A3B"].wire_name == "qwen/qwen3-next-80b-a3b-instruct"
  gpt5 = specs["GPT-5-mini"]
  assert (gpt5.max_tokens_param, gpt5.fixed_temperature, gpt5.price_out_per_m) == ("max_tokens", None, 2.0)
  openai_style = {e["name"]: e for e in presets.openrouter_models(paper_request=False)}["GPT-5-mini"]
  assert "fixed_temperature" not in openai_style


def test_readme_openrouter_table_matches_the_ids_and_the_pools_prices():
  table = [t for t in readme_tables() if t[0][0] == "pool name"]
  assert len(table) == 1, "README's OpenRouter table is missing"
  by_name = llm_pool.paper_pool_by_name()
  rows = {name: (served.strip("`"), price) for name, served, price in table[0][1:]}
  assert rows == {name: (served, f"{by_name[name].price_in_per_m:g} / {by_name[name].price_out_per_m:g}")
                  for name, served in presets.OPENROUTER_IDS.items()}


def run_train(task: str, preset: str, workdir: pathlib.Path) -> dict:
  """launch.train on the preset at smoke size (hashing encoder, fewer steps and queries), offline."""
  command = [sys.executable, "-m", "launch.train", f"--config=configs/{task}.py:{preset},smoke",
             f"--workdir={workdir}", "--config.encoder.kind=hashing", "--config.task.num_train=8",
             "--config.task.num_val=4", "--config.task.num_test=4", "--config.stage1.steps=2",
             "--config.stage1.eval_every=2", "--config.stage2.epochs=1"]
  env = dict(os.environ, OPENROUTER_API_KEY="", OPENAI_API_KEY="")  # nothing may need a key
  done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  return json.loads((workdir / "summary.json").read_text())


@pytest.mark.slow  # about 14 s per preset
@pytest.mark.parametrize("preset", presets.PRESETS)
def test_math_presets_train_offline(tmp_path, preset):
  summary = run_train("math", preset, tmp_path / "run")
  assert summary["test"]["hieramas"]["calls"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("preset", presets.PRESETS)
@pytest.mark.parametrize("task", ["mmlu_redux", "humaneval"])
def test_mmlu_and_humaneval_presets_train_offline(tmp_path, task, preset, request):
  if task == "mmlu_redux":
    request.getfixturevalue("shared_data")  # the MMLU-Redux CSVs must be there
  summary = run_train(task, preset, tmp_path / "run")
  assert summary["test"]["hieramas"]["calls"] > 0
