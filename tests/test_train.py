"""End-to-end training on a tiny config, resume, config validation."""

import json
import pathlib

import jax
import numpy as np
import pytest

from hieramas_jax import checkpointing, config as base_config
from hieramas_jax import train
from hieramas_jax.train import environment, stage1
from hieramas_jax.train.preemption import StopRequested


def tiny_config(**overrides):
  c = base_config.base_config("math", "smoke")
  c.encoder.kind = "hashing"
  c.llm.cache = True
  # The paper's MATH rule: no role dropped at inference. Without it the tiny selector drops every role, every DAG
  # gives the same plan, and stage 2 (rightly) trains no classifier.
  c.inference.max_skipped_roles = 0
  for key, value in overrides.items():
    node = c
    *path, last = key.split(".")
    for p in path:
      node = node[p]
    node[last] = value
  return c


def _leaves_equal(a, b):
  la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


def test_tiny_end_to_end_run_and_resume_are_exact(tmp_path):
  summary = train.train_and_evaluate(tiny_config(), tmp_path / "run", progress=False)
  assert set(summary["test"]) == {"hieramas", "selector_random_dag", "random_assignment_random_dag"}
  rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if r["stage"] == "stage1"] == list(range(1, 7))
  assert any("val_auc" in r for r in rows if r["stage"] == "stage2")
  assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)
  # Stage 1 interrupted after step 3 (its checkpoint), then resumed, equals the uninterrupted run.
  cut = tiny_config(**{"stage1.steps": 6, "stages": "stage1"})
  run2 = tmp_path / "run2"
  env = environment.build_environment(cut, run2)
  from hieramas_jax.train.metric_writer import MetricWriter
  writer = MetricWriter(run2)

  seen = []

  def stop_at_first_validation(event):
    seen.append((event.stage, event.step, sorted(event.metrics)))
    return True  # the first validation is at step 3 (eval_every=3)

  with pytest.raises(StopRequested, match="stopped by a hook after stage-1 step 3"):
    stage1.train_selector(env, run2, writer, hooks=[stop_at_first_validation], progress=False)
  assert [(stage, step) for stage, step, _ in seen] == [("stage1", 3)]
  assert {"val_reward", "val_accuracy", "reward", "loss"} <= set(seen[0][2])
  ck = checkpointing.Checkpointer(run2 / "checkpoints" / "stage1")
  assert ck.latest_step() == 3
  ck.close()
  resumed = stage1.train_selector(env, run2, writer, None, progress=False)
  writer.close()
  env.close()
  full_env = environment.build_environment(cut, tmp_path / "run")
  _, full_params = stage1.load_selector(full_env, tmp_path / "run")
  full_env.close()
  assert _leaves_equal(resumed.params, full_params)


def test_config_validation_errors_are_clear(tmp_path):
  cases = [
      ({"llm.decision_model": "GPT-9"}, "decision_model='GPT-9' is not in the pool"),
      ({"llm.exclude_models": ["Nope"]}, "unknown model"),
      ({"llm.pool": "config", "llm.models": []}, "pool is empty"),
      ({"stage1.batch_size": 1000}, "exceeds task.num_train"),
      ({"stage2.top_k": 4, "stage2.graphs_per_query": 4}, "must be below"),
      ({"graphs.density_range": (0.0, 0.1)}, "impossible"),
      ({"graphs.density_range": (0.9, 0.2)}, "0 <= low <= high <= 1"),
      ({"llm.backend": "openai", "llm.models": [{"name": "GPT-4o-mini", "base_url": "http://127.0.0.1:9/v1",
                                                  "api_key_env": "HIERAMAS_TEST_MISSING_KEY"}],
        "llm.pool": "config", "llm.decision_model": "GPT-4o-mini"}, "HIERAMAS_TEST_MISSING_KEY"),
      ({"stage1.run_skip_credit": "node"}, "choose 'role' .as published., 'system' or 'role_vs_system'"),
      ({"stage1.run_skip_warmup": 1.5}, "fraction of stage1.steps"),
      ({"stage1.lr_schedule": "linear"}, "choose 'cosine'"),
      ({"stage1.keep_margin": -1.0}, "counts standard errors"),
  ]
  for overrides, message in cases:
    with pytest.raises(environment.ConfigError, match=message):
      environment.build_environment(tiny_config(**overrides), tmp_path / "bad")


def test_stage2_without_stage1_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="run stage 1 first"):
    train.train_and_evaluate(tiny_config(stages="stage2"), tmp_path / "fresh", progress=False)


def _task_config(name):
  c = base_config.load_config_file(pathlib.Path(__file__).resolve().parent.parent / "configs" / f"{name}.py", "smoke")
  c.encoder.kind = "hashing"
  return c


@pytest.mark.slow  # 17 s; the tiny end-to-end run stays in the default suite
def test_mmlu_redux_config_trains_end_to_end(tmp_path, shared_data):
  del shared_data  # the MMLU-Redux CSVs must be there
  summary = train.train_and_evaluate(_task_config("mmlu_redux"), tmp_path / "mmlu", progress=False)
  assert summary["test"]["hieramas"]["calls"] > 0


@pytest.mark.slow
def test_humaneval_config_trains_end_to_end(tmp_path):
  summary = train.train_and_evaluate(_task_config("humaneval"), tmp_path / "he", progress=False)
  assert summary["test"]["hieramas"]["calls"] > 0


def test_saved_config_from_an_older_version_gets_new_defaults():
  saved = tiny_config().to_dict()
  del saved["stage1"]["val_samples"]  # a field this checkpoint predates
  saved["stage1"]["steps"] = 77
  restored = base_config.from_saved(saved)
  assert restored.stage1.val_samples == base_config.base_config("math").stage1.val_samples
  assert restored.stage1.steps == 77 and restored.encoder.kind == "hashing"


def test_saved_config_from_before_the_skip_gate_rebuilds_the_shared_skip_selector():
  saved = tiny_config().to_dict()
  del saved["selector"]["skip_head"], saved["selector"]["input_scale"]
  restored = base_config.from_saved(saved)
  assert restored.selector.skip_head == "shared" and restored.selector.input_scale is False
  gated = tiny_config()
  gated.selector.skip_head, gated.selector.input_scale = "gate", True
  assert base_config.from_saved(gated.to_dict()).selector.skip_head == "gate"


def test_validation_keeps_later_parameters_unless_clearly_worse():
  history = [{"step": 50, "val_reward": 0.30, "val_reward_se": 0.05},
             {"step": 100, "val_reward": 0.10, "val_reward_se": 0.05}]
  # The highest seen is 0.30 (se 0.05): within 2 standard errors of the difference (2 * 0.0707) is kept.
  assert stage1.keeps_latest(history, 0.20, 0.05, margin=2.0)
  assert not stage1.keeps_latest(history, 0.15, 0.05, margin=2.0)
  assert not stage1.keeps_latest(history, 0.29, 0.05, margin=0.0)  # margin 0: the plain maximum
  assert stage1.keeps_latest(history, 0.31, 0.05, margin=0.0)
  assert stage1.keeps_latest([], 0.0, float("nan"), margin=2.0)  # the first validation is always kept
  assert not stage1.keeps_latest(history, float("nan"), 0.05, margin=2.0)  # every call failed


def test_stage1_runs_with_the_other_credit_and_schedule_options(tmp_path):
  from hieramas_jax.train.metric_writer import MetricWriter
  c = tiny_config(**{"stages": "stage1", "stage1.run_skip_credit": "system", "stage1.run_skip_warmup": 0.0,
                     "stage1.baseline": "none", "stage1.lr_schedule": "constant", "stage1.keep_margin": 0.0})
  env = environment.build_environment(c, tmp_path / "run")
  writer = MetricWriter(tmp_path / "run")
  try:
    result = stage1.train_selector(env, tmp_path / "run", writer, progress=False)
  finally:
    writer.close()
    env.close()
  assert [h["step"] for h in result.history] == [3, 6]
  # keep_margin 0: the kept parameters are those of the highest validation reward.
  assert result.best_val_reward == max(h["val_reward"] for h in result.history)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(result.params))
