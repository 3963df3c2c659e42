"""MLPO leader training (train.leader) on several local processes (gloo on loopback, 2 forced CPU devices each).

Each process runs its share of a step's queries (peers, the leader's sampling, grading), the rollouts are
gathered and the GRPO update runs data-parallel over every device of every process. Against one process on
the same toy world (tests/multihost_programs/leader_toy.py): the same draws, so the same rewards exactly, the
same losses to float rounding and the same final leader within a small tolerance; process 0 alone prints,
writes metrics and exports the leader.
"""

from __future__ import annotations

import json
import pathlib
import signal
import time

import jax
import numpy as np
import pytest

from hieramas_jax.lm import leader_export
from hieramas_jax.train import leader
from tests import multihost

PROGRAM = "tests/multihost_programs/leader_toy.py"
# Metrics decided by the draws and the grading: they must be equal, not close.
EXACT = ("step", "reward", "accuracy", "final_accuracy", "peer_accuracy", "completion_tokens", "failed", "tokens")
# Reductions over the batch (summed in another order over another device layout) and the gradient's norm.
FLOAT = ("loss", "kl", "policy_objective", "ratio", "clip_fraction", "grad_norm")


def _rows(workdir: pathlib.Path) -> list[dict]:
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [r for r in map(json.loads, lines) if r.get("stage") == leader.STAGE]


def _assert_same_training(one: pathlib.Path, many: pathlib.Path, steps: int) -> None:
  rows_one, rows_many = _rows(one), _rows(many)
  assert [r["step"] for r in rows_one] == [r["step"] for r in rows_many] == list(range(1, steps + 1))
  assert [{k: r[k] for k in EXACT} for r in rows_many] == [{k: r[k] for k in EXACT} for r in rows_one]
  for a, b in zip(rows_one, rows_many):
    np.testing.assert_allclose([b[k] for k in FLOAT], [a[k] for k in FLOAT], rtol=1e-4, atol=1e-5,
                               err_msg=f"step {a['step']}: {[(k, a[k], b[k]) for k in FLOAT]}")
  assert any(r["reward"] > 0 for r in rows_one), "no step had a reward: the comparison would not test an update"
  _, params_one, _ = leader_export.load_leader(one / "leader")
  _, params_many, _ = leader_export.load_leader(many / "leader")
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-4), params_one,
                         params_many)


def _printed(stdout: str) -> list[str]:
  """Lines the program printed. Gloo announces its connections on stdout too, from several threads at once, so its
  messages can interleave mid-line ("[Gloo] Rank [Gloo] Rank 1 is connected to 1 peer ranks. ..."): a line with
  any part of one is gloo's."""
  return [line for line in stdout.splitlines()
          if line.strip() and "[Gloo]" not in line and "connected peer ranks" not in line]


def _summary(stdout: str) -> dict:
  return json.loads(_printed(stdout)[-1])


def _train_one_and_many(tmp_path: pathlib.Path, args: list[str], n: int = 2) -> tuple[pathlib.Path, pathlib.Path]:
  """The same toy training on 1 process and on n (started together); returns their workdirs."""
  one, many = tmp_path / "one", tmp_path / "many"
  procs = multihost.start_processes([PROGRAM, f"--workdir={many}", *args], n)
  single = multihost.run_single([PROGRAM, f"--workdir={one}", *args], timeout_s=300)
  results = multihost.wait_all(procs, timeout_s=300)
  assert single.returncode == 0, single.stderr[-3000:]
  assert [r.returncode for r in results] == [0] * n, "\n".join(r.stderr[-3000:] for r in results)
  # Process 0 alone reports; the others print nothing on stdout.
  assert _summary(results[0].stdout)["leader_dir"] == str(many / "leader")
  assert all(not _printed(r.stdout) for r in results[1:]), [r.stdout for r in results[1:]]
  return one, many


@pytest.mark.slow  # the default run keeps test_multihost_train.py's 1-vs-2-process comparison
def test_two_processes_train_the_leader_one_process_trains(tmp_path):
  # 3 queries: shares of 2 and 1; group 3: 18 rows, padded to 20 for the 4 devices.
  one, many = _train_one_and_many(tmp_path, ["--steps=2", "--queries=3", "--group_size=3"])
  _assert_same_training(one, many, steps=2)  # the metric rows once (a second writer would double them)
  assert sorted(p.name for p in many.iterdir()) == ["leader", "leader_checkpoints", "metrics.jsonl"]


@pytest.mark.slow
def test_three_processes_with_an_idle_one_and_several_updates_per_batch(tmp_path):
  # 2 queries on 3 processes: the last has no query to run; 16 rows padded to 18 for 6 devices.
  one, many = _train_one_and_many(tmp_path, ["--steps=3", "--queries=2", "--updates_per_batch=2",
                                             "--loss_level=token"], n=3)
  _assert_same_training(one, many, steps=3)


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_and_one_process_resumes_as_the_straight_run(tmp_path):
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  steps, args = 5, ["--steps=5", "--queries=3"]
  procs = multihost.start_processes([PROGRAM, f"--workdir={resumed}", *args], 2)
  try:
    deadline = time.monotonic() + 300
    while procs[1].poll() is None and time.monotonic() < deadline:
      if (resumed / "metrics.jsonl").exists() and _rows(resumed):
        break
      time.sleep(0.05)
    assert procs[1].poll() is None, "the run ended before it could be stopped; raise steps"
    procs[1].send_signal(signal.SIGTERM)  # process 1 alone: process 0 must stop after the same step
    stopped = multihost.wait_all(procs, timeout_s=300)
  finally:
    multihost.kill_all(procs)
  assert [r.returncode for r in stopped] == [0, 0], "\n".join(r.stderr[-3000:] for r in stopped)
  done = len(_rows(resumed))
  assert 1 <= done < steps and not (resumed / "leader").exists()
  assert f"stopped after leader step {done}" in stopped[0].stdout
  assert f"stopped after leader step {done}" in stopped[1].stdout
  # The checkpoint the two processes wrote restores in one, which ends where the uninterrupted run ends.
  rest = multihost.run_single([PROGRAM, f"--workdir={resumed}", *args], timeout_s=300)
  assert rest.returncode == 0, rest.stderr[-3000:]
  single = multihost.run_single([PROGRAM, f"--workdir={straight}", *args], timeout_s=300)
  assert single.returncode == 0, single.stderr[-3000:]
  _assert_same_training(straight, resumed, steps=steps)


@pytest.mark.slow
def test_launch_train_leader_on_two_processes(tmp_path):
  """The launcher itself (sim peers, response cache, smoke config): process 0 alone prints and exports."""
  results = multihost.run_processes(["-m", "launch.train_leader", "--config=configs/mlpo.py:smoke",
                                     "--config.mlpo.steps=2", f"--workdir={tmp_path}"], 2, timeout_s=500)
  assert [r.returncode for r in results] == [0, 0], "\n".join(r.stderr[-3000:] for r in results)
  printed = _printed(results[0].stdout)
  assert printed[-1].startswith(f"trained 2 steps; leader written to {tmp_path / 'leader'}"), printed
  assert [line.split(":")[0] for line in printed[:-1]] == ["leader step 1/2", "leader step 2/2"]
  assert not _printed(results[1].stdout), results[1].stdout
  assert [r["step"] for r in _rows(tmp_path)] == [1, 2]
  cfg, _, _ = leader_export.load_leader(tmp_path / "leader")
  assert cfg.num_layers == 2


@pytest.mark.slow  # 6-10 s: CI runs it with the slow set (the default run stays under 10 minutes)
def test_a_peer_endpoint_down_on_one_host_stops_every_process_before_any_step(tmp_path):
  results = multihost.run_processes([PROGRAM, f"--workdir={tmp_path}", "--unreachable_on=1"], 2, timeout_s=300)
  last = [[line for line in r.stderr.splitlines() if line.strip()][-1] for r in results]
  assert [r.returncode for r in results] == [1, 1], last
  assert last[1].startswith("leader_toy: EndpointError: model 'scripted-peer' at http://127.0.0.1:9/v1: "
                            "connection refused (scripted)"), last
  assert last[0].startswith("leader_toy: PeerLostError: process 1 failed its peer preflight (EndpointError: "), last
  assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "leader").exists()
