"""State on disk: the workdir lock, a read-only workdir, resuming with another config, a damaged checkpoint."""

import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

from hieramas_jax import checkpointing
from hieramas_jax import config as base_config
from hieramas_jax import train
from hieramas_jax.train import workdir as workdir_lib

_REPO = pathlib.Path(__file__).resolve().parent.parent
_ENV = dict(os.environ, JAX_PLATFORMS="cpu")


def tiny_config(**overrides):
  c = base_config.base_config("math", "smoke")
  c.encoder.kind = "hashing"
  c.stages = "stage1"
  for key, value in overrides.items():
    section, _, field = key.rpartition(".")
    (c[section] if section else c)[field] = value
  return c


def _hold_lock(workdir: pathlib.Path) -> subprocess.Popen:
  """Another process holding the workdir's lock (it prints 'locked' once it has it)."""
  script = textwrap.dedent(f"""
      import sys, time
      from hieramas_jax.train import workdir
      workdir.lock({str(workdir)!r})
      print("locked", flush=True)
      time.sleep(120)
  """)
  proc = subprocess.Popen([sys.executable, "-c", script], cwd=_REPO, env=_ENV, stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == "locked"
  return proc


def test_second_run_on_a_locked_workdir_stops_at_once_naming_the_holder(tmp_path):
  workdir = tmp_path / "run"
  holder = _hold_lock(workdir)
  try:
    with pytest.raises(workdir_lib.WorkdirError, match=f"{workdir} is in use .*pid {holder.pid}"):
      workdir_lib.lock(workdir)
    # The real command: one line on stderr, status 1, within seconds (no checkpoint folder touched).
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "launch.train", "--config=configs/math.py:smoke",
                          f"--workdir={workdir}"], cwd=_REPO, env=_ENV, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and f"pid {holder.pid}" in lines[0] and str(workdir) in lines[0], out.stderr
    assert time.monotonic() - start < 60
    assert not (workdir / "checkpoints").exists()
  finally:
    holder.kill()
    holder.wait()
  # The holder is gone: its lock went with it.
  assert workdir_lib.lock(workdir) == workdir.absolute()
  assert workdir_lib.lock(workdir) == workdir.absolute()  # taking it again in the same process is a no-op
  assert (workdir / workdir_lib.LOCK_NAME).read_text().strip() == str(os.getpid())
  workdir_lib.release(workdir)


def test_workdir_that_is_a_file_or_under_one_is_a_clear_error(tmp_path):
  afile = tmp_path / "afile"
  afile.write_text("x")
  with pytest.raises(workdir_lib.WorkdirError, match="exists and is not a folder"):
    workdir_lib.lock(afile)
  with pytest.raises(workdir_lib.WorkdirError, match="lies under a file"):
    workdir_lib.lock(afile / "run")


def test_read_only_workdir_names_the_dir_and_the_fix(tmp_path):
  mount = tmp_path / "ro"
  mount.mkdir()
  probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o ro tmpfs {mount}"],
                         capture_output=True, text=True) if shutil.which("unshare") else None
  if probe is None or probe.returncode != 0:
    pytest.skip("needs unshare and mount rights to make a read-only mount")
  cmd = (f"mount -t tmpfs -o ro tmpfs {mount} && {sys.executable} -m launch.train "
         f"--config=configs/math.py:smoke --workdir={mount}/run")
  out = subprocess.run(["unshare", "-m", "sh", "-c", cmd], cwd=_REPO, env=_ENV, capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 1, out.stderr[-2000:]
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1, out.stderr
  assert f"{mount}/run is not writable (Read-only file system)" in lines[0] and "--workdir" in lines[0]


def _save_stage1(workdir: pathlib.Path, config, step=3) -> None:
  """A stage-1 checkpoint whose metadata carries ``config`` as stage1.py writes it."""
  with checkpointing.Checkpointer(workdir / "checkpoints" / "stage1") as ck:
    ck.save(step, {"x": [1.0, 2.0]}, {"stage": 1, "step": step, "config": config.to_dict()})


def test_resume_with_other_experiment_fields_names_them(tmp_path):
  _save_stage1(tmp_path, tiny_config())
  workdir_lib.check_resume(tiny_config(), tmp_path)  # the same config resumes
  changed = tiny_config(**{"seed": 1, "selector.hidden_dim": 64, "llm.exclude_models": ["GPT-5-nano"]})
  with pytest.raises(workdir_lib.ResumeMismatchError) as info:
    workdir_lib.check_resume(changed, tmp_path)
  message = str(info.value)
  assert "\n" not in message and str(tmp_path) in message and "stage1 checkpoint (step 3)" in message
  for text in ("seed 0 -> 1", "selector.hidden_dim 32 -> 64", 'llm.exclude_models [] -> ["GPT-5-nano"]',
               "new --workdir", "--config.seed=0", "--config.selector.hidden_dim=32"):
    assert text in message, message
  # The pool's names are compared too (llm.models can rename or add models).
  with pytest.raises(workdir_lib.ResumeMismatchError, match="model pool"):
    workdir_lib.check_resume(tiny_config(**{"llm.models": [{"name": "Extra-Model"}]}), tmp_path)


def test_resume_with_other_runtime_or_training_fields_warns_only(tmp_path, caplog):
  _save_stage1(tmp_path, tiny_config())
  caplog.set_level(logging.WARNING, logger=workdir_lib.__name__)
  workdir_lib.check_resume(tiny_config(**{"llm.timeout_s": 5.0, "stages": "both"}), tmp_path)
  assert not caplog.records  # runtime fields differ silently
  workdir_lib.check_resume(tiny_config(**{"stage1.learning_rate": 1e-3, "stage1.steps": 12}), tmp_path)
  [record] = caplog.records
  assert "stage1.learning_rate 0.0003 -> 0.001" in record.getMessage()
  assert "stage1.steps 6 -> 12" in record.getMessage()


def test_old_checkpoint_without_a_newer_field_compares_with_the_value_it_was_trained_with(tmp_path):
  saved = tiny_config().to_dict()
  del saved["selector"]["skip_head"]  # written before the field existed: trained with the 'shared' head
  with checkpointing.Checkpointer(tmp_path / "checkpoints" / "stage1") as ck:
    ck.save(1, {"x": [1.0]}, {"config": saved})
  with pytest.raises(workdir_lib.ResumeMismatchError, match='selector.skip_head "shared" -> "gate"'):
    workdir_lib.check_resume(tiny_config(), tmp_path)
  workdir_lib.check_resume(tiny_config(**{"selector.skip_head": "shared"}), tmp_path)


def _old_reward_layout(config) -> dict:
  """``config`` as a checkpoint written before the reward section saved it (c_s, c_f and the cost under stage1/2)."""
  saved = config.to_dict()
  reward = saved.pop("reward")
  saved["stage1"].update(reward_cost_solved=reward["cost_solved"], reward_cost_failed=reward["cost_failed"],
                         system_cost=reward["system_cost"])
  saved["stage2"]["reward_cost_solved"] = reward["stage2_cost_solved"]
  return saved


def test_checkpoint_with_the_old_reward_fields_resumes_without_spurious_differences(tmp_path, caplog):
  saved = _old_reward_layout(tiny_config())
  assert workdir_lib.config_differences(saved, tiny_config()) == ([], [])
  restored = base_config.from_saved(saved)
  assert restored.reward.to_dict() == tiny_config().reward.to_dict()
  assert "reward_cost_solved" not in restored.stage1 and "system_cost" not in restored.stage1
  with checkpointing.Checkpointer(tmp_path / "checkpoints" / "stage1") as ck:
    ck.save(1, {"x": [1.0]}, {"config": saved})
  caplog.set_level(logging.WARNING, logger=workdir_lib.__name__)
  workdir_lib.check_resume(tiny_config(), tmp_path)
  assert not caplog.records
  workdir_lib.check_resume(tiny_config(**{"reward.cost_failed": 50.0}), tmp_path)  # a real change: named
  [record] = caplog.records
  assert "reward.cost_failed 300.0 -> 50.0" in record.getMessage()


def _stage1_rows(workdir):
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  rows = [json.loads(line) for line in lines]  # strict JSON: every line parses
  return [r["step"] for r in rows if r["stage"] == "stage1"]


def test_training_resumes_past_a_truncated_checkpoint_and_rejects_another_experiment(tmp_path, capsys, caplog):
  workdir = tmp_path / "run"
  train.train_and_evaluate(tiny_config(), workdir, progress=False)
  assert _stage1_rows(workdir) == [1, 2, 3, 4, 5, 6]
  step_dir = workdir / "checkpoints" / "stage1" / "6"
  data_file = max((p for p in (step_dir / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  data_file.write_bytes(data_file.read_bytes()[:100])  # a copy or a disk cut short
  workdir_lib.release(workdir)  # as if this were a new process

  caplog.set_level(logging.WARNING, logger=checkpointing.__name__)
  capsys.readouterr()
  train.train_and_evaluate(tiny_config(), workdir, progress=False)
  assert "stage 1: resumed from step 3" in capsys.readouterr().out
  [warning] = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
  assert "step 6" in warning and "restoring step 3 instead" in warning and "stage1_unreadable" in warning
  assert (workdir / "checkpoints" / "stage1_unreadable" / "6").is_dir()
  with checkpointing.Checkpointer(workdir / "checkpoints" / "stage1") as ck:
    assert ck.latest_step() == 6  # steps 4-6 trained again and step 6 saved again
    assert checkpointing.manifest_problem(workdir / "checkpoints" / "stage1" / "6") is None
  # metrics.jsonl: the redone steps appear once, not twice.
  assert _stage1_rows(workdir) == [1, 2, 3, 4, 5, 6]

  # Another experiment in the same workdir stops before any work, naming the field.
  with pytest.raises(workdir_lib.ResumeMismatchError, match="seed 0 -> 3"):
    train.train_and_evaluate(tiny_config(seed=3), workdir, progress=False)
  workdir_lib.release(workdir)


def _strict_rows(path):
  def no_constants(name):
    raise ValueError(f"non-standard JSON constant {name}")
  return [json.loads(line, parse_constant=no_constants) for line in path.read_text().splitlines()]


def test_metrics_are_strict_json(tmp_path):
  import numpy as np  # pylint: disable=g-import-not-at-top
  from hieramas_jax.train.metric_writer import MetricWriter  # pylint: disable=g-import-not-at-top
  writer = MetricWriter(tmp_path, tensorboard=False)
  writer.write("stage1", 1, {"reward": float("nan"), "loss": np.float32(-np.inf), "cost": np.float64(0.5),
                             "n": 3, "name": "x", "per_role": [1.0, float("inf")]})
  writer.close()
  [row] = _strict_rows(tmp_path / "metrics.jsonl")
  assert row["reward"] is None and row["loss"] is None and row["cost"] == 0.5 and row["n"] == 3.0
  assert row["name"] == "x" and row["per_role"] == [1.0, None]


def test_truncate_stage_drops_the_earlier_rows_a_resumed_run_repeats(tmp_path):
  from hieramas_jax.train.metric_writer import MetricWriter  # pylint: disable=g-import-not-at-top
  earlier = MetricWriter(tmp_path, tensorboard=False)
  for step in range(1, 6):
    earlier.write("stage1", step, {"v": step})
  earlier.write("stage2", 0, {"v": "old"})
  earlier.write("stage2", 1, {"v": 1})
  earlier.close()
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"stage": "stage2", "step": 2, "v"')  # the killed run's last line, cut mid-write
  resumed = MetricWriter(tmp_path, tensorboard=False)
  assert resumed.truncate_stage("stage1", 3) == 3  # steps 4 and 5 come again; the cut line goes too
  for step in (4, 5):
    resumed.write("stage1", step, {"v": 10 * step})
  resumed.write("stage2", 0, {"v": "new"})  # stage 2 writes its step 0 before restoring
  assert resumed.truncate_stage("stage2", 0) == 2  # the old step 0 (written again) and step 1
  resumed.write("stage2", 1, {"v": 11})
  resumed.close()
  rows = [(r["stage"], r["step"], r["v"]) for r in _strict_rows(tmp_path / "metrics.jsonl")]
  assert rows == [("stage1", 1, 1), ("stage1", 2, 2), ("stage1", 3, 3), ("stage1", 4, 40), ("stage1", 5, 50),
                  ("stage2", 0, "new"), ("stage2", 1, 11)]
