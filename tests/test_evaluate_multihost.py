"""launch.evaluate on 2 local processes (gloo on loopback, 2 forced CPU devices each) against 1 process.

Each process of a multi-host evaluation calls its own endpoints (here the
simulator) for its share of every method's queries; the report's rows must be
those of one process, and process 0 alone prints and writes the report. Each
process runs in its own folder with a relative --out, so a file written by
process 1 would show. ``tests/multihost_programs/evaluate_calls.py`` counts the
calls at each process's backend (no query runs twice) and fails one process's
endpoints (every process stops with that error).
"""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

import pytest

from tests import multihost
from tests.test_system import fresh_models, save_trained, small_config

EVALUATE_CALLS = "tests/multihost_programs/evaluate_calls.py"
CONFIG = f"--config={multihost.REPO / 'configs' / 'math.py'}:smoke"
REPORT_FILES = ["pareto.png", "results.json", "table.csv", "table.md", "topologies.png"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A run folder with both checkpoints (a seeded untrained selector and graph classifier): no training needed."""
  config = small_config()
  workdir = tmp_path_factory.mktemp("evaluate_multihost") / "run"
  (_, selector_params), (_, classifier_params) = fresh_models(config)
  save_trained(workdir, config, selector_params, classifier_params)
  return workdir


def _evaluate_argv(workdir: pathlib.Path, *args: str) -> list[str]:
  return ["-m", "launch.evaluate", CONFIG, f"--workdir={workdir}", "--out=eval", *args]


def _run_two(argv: list[str], folders: list[pathlib.Path], timeout_s: float = 240) -> list[multihost.Finished]:
  """The 2 processes of one run, process i started in folders[i]."""
  port = multihost.free_port()
  procs = []
  for i, folder in enumerate(folders):
    folder.mkdir(parents=True, exist_ok=True)
    procs.append(subprocess.Popen(
        [sys.executable, *argv, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
        cwd=folder, env=multihost.process_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True))
  return multihost.wait_all(procs, timeout_s)


def _comparable(results: dict) -> dict:
  """What must not depend on the number of processes: every row but its wall time, and the per-query verdicts."""
  rows = [{k: v for k, v in row.items() if k != "wall_s"} for row in results["rows"]]
  return {"rows": rows, "per_query": results["per_query"], "topologies": results["topologies"],
          "pareto_front": results["pareto_front"], "queries": results["queries"]}


def _one_and_two(trained: pathlib.Path, tmp_path: pathlib.Path, *args: str) -> tuple[dict, dict]:
  """results.json of one process and of two, each on its own copy of the run (the same response cache)."""
  one_dir, two_dir = tmp_path / "one", tmp_path / "two"
  runs = {name: shutil.copytree(trained, tmp_path / f"run_{name}") for name in ("one", "two")}
  one_dir.mkdir()
  one = multihost.run_single(_evaluate_argv(runs["one"], *args), cwd=one_dir, timeout_s=240)
  assert one.returncode == 0, one.stderr[-3000:]
  folders = [two_dir / "p0", two_dir / "p1"]
  two = _run_two(_evaluate_argv(runs["two"], *args), folders)
  assert [p.returncode for p in two] == [0, 0], two[0].stderr[-3000:] + two[1].stderr[-3000:]
  # Process 0 alone prints the table and writes the report; process 1 says and writes nothing.
  assert "| **hieramas** |" in two[0].stdout and "results.json" in two[0].stdout
  assert "|" not in two[1].stdout and "results.json" not in two[1].stdout and "accuracy" not in two[1].stderr
  assert sorted(p.name for p in (folders[0] / "eval").iterdir()) == REPORT_FILES
  assert not (folders[1] / "eval").exists()
  return (json.loads((one_dir / "eval" / "results.json").read_text()),
          json.loads((folders[0] / "eval" / "results.json").read_text()))


@pytest.mark.slow  # over 10 s: CI runs it with the slow set (the default run stays under 10 minutes)
def test_two_processes_report_the_rows_of_one_process_and_only_process_0_writes(trained, tmp_path):
  # 5 queries: shares of 3 and 2. The methods cover each way a method runs its queries: a coroutine per query
  # (single, self_consistency), executor plans (selector_random_graph) and HieraMAS's own run.
  one, two = _one_and_two(trained, tmp_path, "--methods=single,self_consistency,selector_random_graph,hieramas",
                          "--limit=5", "--sc_samples=2", "--topology_queries=2")
  assert [r["method"] for r in two["rows"]] == ["single", "self_consistency", "selector_random_graph", "hieramas"]
  assert all(r["queries"] == 5 and r["failed"] == 0 and r["calls"] > 0 for r in two["rows"])
  assert _comparable(two) == _comparable(one)


def _last_json(text: str) -> dict:
  return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


@pytest.mark.slow
def test_each_process_makes_the_calls_of_its_share_only(trained, tmp_path):
  # Counted at the backend of each process: the two processes' calls add up to the report's, none is made twice.
  two = multihost.run_processes([EVALUATE_CALLS, f"--workdir={trained}", f"--out={tmp_path / 'eval'}",
                                 "--methods=single,debate,selector_full_graph,hieramas", "--limit=5"], 2,
                                timeout_s=240)
  assert [p.returncode for p in two] == [0, 0], two[0].stderr[-3000:] + two[1].stderr[-3000:]
  first, second = [_last_json(p.stdout) for p in two]
  assert first["rows"] == second["rows"] and all(r["queries"] == 5 for r in first["rows"])
  assert first["calls"] + second["calls"] == round(sum(r["calls"] * r["queries"] for r in first["rows"]))
  assert first["calls"] > second["calls"] > 0  # shares of 3 and 2 queries


@pytest.mark.slow
def test_a_dead_endpoint_on_one_process_stops_every_process_with_the_same_error(trained, tmp_path):
  two = multihost.run_processes([EVALUATE_CALLS, f"--workdir={trained}", f"--out={tmp_path / 'eval'}",
                                 "--dead_endpoint_on=1"], 2, timeout_s=120)
  assert [p.returncode for p in two] == [1, 1], two[0].stderr[-3000:] + two[1].stderr[-3000:]
  errors = [_last_json(p.stdout)["error"] for p in two]
  assert errors[0] == errors[1] and errors[0].startswith("EndpointError: model ")
  assert "http://host-1:8000/v1" in errors[0] and "connection refused" in errors[0]
  assert not any("stopped" in p.stderr for p in two)  # each left on the error, not on a lost peer
  assert not (tmp_path / "eval").exists()


@pytest.mark.slow
def test_every_method_on_the_whole_split_gives_the_same_rows_on_two_processes(trained, tmp_path):
  one, two = _one_and_two(trained, tmp_path)
  assert len(two["rows"]) == len(one["rows"]) > 10 and two["queries"] == 8
  assert _comparable(two) == _comparable(one)


@pytest.mark.slow
def test_a_failure_raised_on_every_process_ends_each_with_the_same_line(trained, tmp_path):
  two = _run_two(_evaluate_argv(trained, "--methods=hieramas_no_selection", "--fixed_model=GPT-9"),
                 [tmp_path / "p0", tmp_path / "p1"], timeout_s=120)
  assert [p.returncode for p in two] == [1, 1]
  for p in two:
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("launch.evaluate: EvaluationError: fixed_model='GPT-9' is not in the model pool"), last
    assert "Traceback" not in p.stderr and "|" not in p.stdout
  assert not (tmp_path / "p0" / "eval").exists() and not (tmp_path / "p1" / "eval").exists()
