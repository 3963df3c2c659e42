"""Config errors end in one line saying what to change: unknown fields, bad values, bad data lines."""

import gzip
import json
import os
import pathlib
import subprocess
import sys

from absl import flags
from ml_collections import config_flags
import pytest

from hieramas_jax import config as base_config
from hieramas_jax import tasks
from hieramas_jax.train import environment

_REPO = pathlib.Path(__file__).resolve().parent.parent


def _launch_train(tmp_path, *overrides, config="configs/math.py:smoke"):
  cmd = [sys.executable, "-m", "launch.train", f"--config={config}", f"--workdir={tmp_path / 'run'}", *overrides]
  return subprocess.run(cmd, cwd=_REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
                        timeout=180)


# The real command, once per way of failing: absl flag parsing (an unknown field), then validation in
# train_and_evaluate (the others; the list form shows a list field set on the command line reaches it).
@pytest.mark.parametrize("override, expected", [
    ("--config.stage1.foo=1", "unknown config field 'stage1.foo': stage1 has no 'foo'"),
    ("--config.graphs.density_range=0.5", "graphs.density_range=(0.5,); give a pair (low, high)"),
    ("--config.gcn.hidden_dim=0", "gcn.hidden_dim=0; it must be >= 1"),
    ("--config.stage1.learning_rate=0", "stage1.learning_rate=0.0; it must be > 0"),
    ("--config.llm.exclude_models=Llama-3.1-8B,No-Such-Model", "exclude_models names unknown model(s) ['No-Such-Model']"),
])
def test_bad_command_line_config_is_one_line_and_status_1(tmp_path, override, expected):
  out = _launch_train(tmp_path, override, "--config.stages=stage1")
  assert out.returncode == 1, (out.stdout[-2000:], out.stderr[-2000:])
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1, out.stderr
  assert expected in lines[0] and "Traceback" not in out.stdout + out.stderr


def _flag_values(argv):
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "config", flag_values=values, lock_config=True, sys_argv=argv)
  return values


def _parse(argv):
  """The config launch.train would get from ``argv`` (its flag definitions, a private flag registry)."""
  argv = ["prog", "--config=configs/math.py:smoke", *argv]
  values = _flag_values(argv)
  base_config.parse_flags(argv, flag_values=values)
  return values.config


@pytest.mark.parametrize("argv, expected", [
    (["--config=configs/math.py:smoke", "--config.stage1.learning_rat=0.1"],
     "--config.stage1.learning_rat=0.1: unknown config field 'stage1.learning_rat': stage1 has no 'learning_rat'; "
     "did you mean stage1.learning_rate?"),
    (["--config=configs/math.py:smoke", "--config.stage1.steps=many"], "flag --config.stage1.steps=many: "),
    (["--config=configs/math.py:smoke,fast"],
     "--config=configs/math.py:smoke,fast: unknown config arg(s) ['fast']; known: smoke, files, openai"),
    (["--config=configs/nothing.py"], "config file configs/nothing.py does not exist"),
])
def test_flag_errors_print_one_line_and_exit_1(monkeypatch, capsys, argv, expected):
  monkeypatch.chdir(_REPO)
  argv = ["launch/train.py", *argv]
  with pytest.raises(SystemExit) as info:
    base_config.parse_flags(argv, flag_values=_flag_values(argv))
  assert info.value.code == 1
  [line] = capsys.readouterr().err.strip().splitlines()
  assert line.startswith("launch.train: ") and expected in line, line


def test_config_arg_assignments_go_through_the_command_line_parsers(monkeypatch):
  monkeypatch.chdir(_REPO)
  arg = "smoke,seed=3,graphs.density_range=(0.3,0.7),llm.exclude_models=[Llama-3.1-8B,Qwen3-8B],stage1.steps=9"
  from_arg = base_config.load_config_file("configs/math.py", arg)
  from_flags = _parse(["--config.seed=3", "--config.graphs.density_range=(0.3,0.7)",
                       "--config.llm.exclude_models=Llama-3.1-8B,Qwen3-8B", "--config.stage1.steps=9"])
  assert from_arg.to_dict() == from_flags.to_dict()
  assert (from_arg.seed, from_arg.graphs.density_range, from_arg.stage1.steps) == (3, (0.3, 0.7), 9)
  assert from_arg.llm.exclude_models == ["Llama-3.1-8B", "Qwen3-8B"]
  # Assignments come last: after smoke's ceilings and a preset's values.
  assert base_config.load_config_file("configs/math.py", "paper_gpt,smoke,stage1.steps=40").stage1.steps == 40


@pytest.mark.parametrize("arg, message", [
    ("smoke,seed=three", r"seed=three: flag --config.seed=three: invalid literal for int\(\)"),
    ("smoke,stage1.learning_rat=0.1", "unknown config field 'stage1.learning_rat'.*did you mean stage1.learning_rate"),
    ("smoke,stage1.steps", r"unknown config arg\(s\) \['stage1.steps'\]"),
])
def test_bad_config_arg_assignments_say_what_to_change(monkeypatch, arg, message):
  monkeypatch.chdir(_REPO)
  with pytest.raises(base_config.ConfigError, match=message):
    base_config.load_config_file("configs/math.py", arg)


@pytest.mark.parametrize("text, expected", [
    ('["Llama-3.1-8B"]', ["Llama-3.1-8B"]),
    ("Llama-3.1-8B,GPT-5-nano", ["Llama-3.1-8B", "GPT-5-nano"]),
    ("Llama-3.1-8B", ["Llama-3.1-8B"]),
    ("('Qwen3-8B', 'GPT-5-nano')", ["Qwen3-8B", "GPT-5-nano"]),
    ("", []),
])
def test_list_fields_can_be_set_on_the_command_line(monkeypatch, text, expected):
  monkeypatch.chdir(_REPO)
  config = _parse([f"--config.llm.exclude_models={text}"])
  assert config.llm.exclude_models == expected
  environment.validate_config(config)


def test_list_of_dicts_on_the_command_line(monkeypatch):
  monkeypatch.chdir(_REPO)
  models = [{"name": "Local", "base_url": "http://127.0.0.1:8000/v1", "price_in_per_m": 0.1, "price_out_per_m": 0.4}]
  config = _parse([f"--config.llm.models={json.dumps(models)}"])
  assert config.llm.models == models
  assert "Local" in [s.name for s in environment.validate_config(config)]


def _config(**overrides):
  c = base_config.base_config("math", "smoke")
  for key, value in overrides.items():
    section, _, field = key.rpartition(".")
    (c[section] if section else c)[field] = value
  return c


@pytest.mark.parametrize("overrides, message", [
    ({"selector.hidden_dim": 0}, r"selector.hidden_dim=0; it must be >= 1"),
    ({"gcn.role_dim": -1}, r"gcn.role_dim=-1; it must be >= 1"),
    ({"gcn.num_layers": 0}, r"gcn.num_layers=0; it must be >= 1"),
    ({"stage1.learning_rate": -1e-3}, r"stage1.learning_rate=-0.001; it must be > 0"),
    ({"stage2.learning_rate": 0.0}, r"stage2.learning_rate=0.0; it must be > 0"),
    ({"stage1.weight_decay": -1.0}, r"stage1.weight_decay=-1.0; it must be >= 0"),
    ({"stage1.ema_decay": 1.0}, r"stage1.ema_decay=1.0; it must be in \[0, 1\)"),
    ({"llm.timeout_s": 0.0}, r"llm.timeout_s=0.0; it must be > 0"),
    ({"graphs.density_range": (0.8, 0.3)}, r"density_range=\(0.8, 0.3\); give a pair"),
    ({"graphs.density_range": (0.3, 1.5)}, r"0 <= low <= high <= 1"),
    ({"graphs.density_range": (0.1, 0.2, 0.3)}, r"give a pair"),
    ({"reward.system_cost": "all"}, r"reward.system_cost='all'; choose one of 'total', 'decision'"),
    ({"gcn.impl": "sparse"}, r"choose one of 'dense', 'segment'"),
    ({"encoder.kind": "bert"}, r"encoder.kind='bert'; choose one of 'minilm'"),
    ({"task.num_train": None}, r"task.num_train=None; it must be a number"),
])
def test_bad_values_name_the_field_and_what_it_must_be(overrides, message):
  with pytest.raises(environment.ConfigError, match=message):
    environment.validate_config(_config(**overrides), num_roles=3)


def test_max_failed_fraction_lies_in_0_1():
  c = _config()
  if "max_failed_fraction" not in c.llm:
    c.llm.max_failed_fraction = 0.5  # the field another part of the project adds
  environment.validate_config(c)
  c.llm.max_failed_fraction = 1.5
  with pytest.raises(environment.ConfigError, match=r"llm.max_failed_fraction=1.5; it must be in \[0, 1\]"):
    environment.validate_config(c)


# ---------------------------------------------------------------------------
# Data files with an invalid line: the loaders name the file and the line
# ---------------------------------------------------------------------------


def test_math_jsonl_with_an_invalid_line(tmp_path):
  path = tmp_path / "math.jsonl"
  good = json.dumps({"problem": "1+1?", "answer": "2"})
  path.write_text(f"{good}\n\n{good}\n{{\"problem\": \"cut\n")
  with pytest.raises(ValueError, match=rf"{path} line 4 is not valid JSON"):
    tasks.get_task("math").load(path=path)
  path.write_text(f"{good}\n[1, 2]\n")
  with pytest.raises(ValueError, match=rf"{path} line 2 is not a MATH record"):
    tasks.get_task("math").load(path=path)
  # Through a run's config: one ConfigError naming the task, the file and the line.
  c = _config(**{"task.source": "files", "task.data_path": str(path)})
  with pytest.raises(environment.ConfigError, match=rf"task 'math': {path} line 2"):
    environment.load_splits(c, tasks.get_task("math"))


def test_humaneval_jsonl_gz_with_an_invalid_or_cut_line(tmp_path):
  record = {"task_id": "T/0", "prompt": "def f():\n", "entry_point": "f", "test": "", "canonical_solution": " pass"}
  path = tmp_path / "he.jsonl.gz"
  with gzip.open(path, "wt") as f:
    f.write(json.dumps(record) + "\n" + json.dumps({"task_id": "T/1"}) + "\n")
  with pytest.raises(ValueError, match=rf"{path} line 2 is not a HumanEval record \(no prompt, entry_point"):
    tasks.get_task("humaneval").load(path=path)
  with gzip.open(path, "wt") as f:
    f.write(json.dumps(record) + "\nnot json\n")
  with pytest.raises(ValueError, match=rf"{path} line 2 is not valid JSON"):
    tasks.get_task("humaneval").load(path=path)
  with gzip.open(path, "wt") as f:
    f.write((json.dumps(record) + "\n") * 50)
  path.write_bytes(path.read_bytes()[:-30])  # a download cut short
  with pytest.raises(ValueError, match=rf"{path} cannot be read after line \d+ .*download it again"):
    tasks.get_task("humaneval").load(path=path)


def test_mmlu_csv_with_an_invalid_row(tmp_path):
  path = tmp_path / "mmlu_anatomy.csv"
  header = "question,choices,answer,error_type\n"
  good = "\"What?\",\"['a', 'b', 'c', 'd']\",1,ok\n"
  path.write_text(header + good + "\"Why?\",\"['a', 'b'\",0,ok\n")
  with pytest.raises(ValueError, match=rf"{path} line 3: choices .* is not a list literal"):
    tasks.get_task("mmlu_redux").load(path=path)
  path.write_text(header + good + good + "\"Why?\",\"['a', 'b']\",B,ok\n")
  with pytest.raises(ValueError, match=rf"{path} line 4: answer 'B' is not a choice index"):
    tasks.get_task("mmlu_redux").load(path=path)
  path.write_text(header + good + "\"Why?\",\"['a', 'b']\",5,ok\n")
  with pytest.raises(ValueError, match=rf"{path} line 3: answer index 5 is out of range for 2 choices"):
    tasks.get_task("mmlu_redux").load(path=path)
