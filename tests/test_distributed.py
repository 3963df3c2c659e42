"""hieramas_jax.distributed: settings, shares, and real multi-process runs (2 local processes, gloo).

The multi-process tests start ``tests/multihost_programs/*.py`` through ``tests/multihost.py``:
each process has 2 forced CPU devices, so a run spans 4 devices in 2 processes.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from hieramas_jax import distributed
from tests import multihost

COLLECTIVES = "tests/multihost_programs/collectives.py"
CHECKPOINTS = "tests/multihost_programs/checkpoints.py"


def _last_json(text: str) -> dict:
  return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


@pytest.mark.parametrize("n,count", [(11, 2), (3, 2), (1, 3), (0, 2), (10, 4), (7, 1)])
def test_shares_cover_every_item_once_in_order_with_sizes_differing_by_at_most_one(n, count):
  bounds = [distributed.share_bounds(n, count, i) for i in range(count)]
  assert bounds[0][0] == 0 and bounds[-1][1] == n
  assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
  sizes = [stop - start for start, stop in bounds]
  assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("settings,words", [
    (distributed.Settings(mode="sometimes"), "choose one of auto, on, off"),
    (distributed.Settings(coordinator_address="h:1"), "give all three"),
    (distributed.Settings(coordinator_address="h:1", num_processes=2, process_id=2), "must be in [0"),
    (distributed.Settings(coordinator_address="host", num_processes=2, process_id=0), "host:port"),
    (distributed.Settings(mode="off", coordinator_address="h:1", num_processes=2, process_id=0), "drop one"),
])
def test_a_bad_setup_is_refused_in_one_line_naming_the_flag(settings, words):
  with pytest.raises(distributed.DistributedError, match=None) as e:
    settings.check()
  assert words in str(e.value) and "\n" not in str(e.value)


def test_one_process_collectives_are_plain_calls():
  assert distributed.process_count() == 1 and distributed.is_primary()
  assert distributed.run_shares([1, 2, 3], lambda xs: [x + 1 for x in xs], "plus") == [2, 3, 4]
  assert distributed.gather_objects("a", "one") == ["a"]
  assert distributed.on_primary(lambda: 5, "five") == 5
  assert distributed.any_process(False, "stop") is False
  padded, rows = distributed.pad_rows({"x": np.ones((3, 2)), "w": np.ones(3)}, 4)
  assert rows == 3 and padded["x"].shape == (4, 2) and padded["w"].tolist() == [1, 1, 1, 0]


def test_two_processes_give_the_one_process_results_of_every_collective():
  two = multihost.run_processes([COLLECTIVES], 2, timeout_s=120)
  assert [p.returncode for p in two] == [0, 0], two[0].stderr[-2000:] + two[1].stderr[-2000:]
  one = multihost.run_single([COLLECTIVES])
  assert one.returncode == 0, one.stderr[-2000:]
  a, b = _last_json(two[0].stdout), _last_json(one.stdout)
  assert not any(line.startswith("{") for line in two[1].stdout.splitlines())  # process 0 alone reports
  assert a["count"] == 2 and a["devices"] == 4 and b["devices"] == 2
  assert a["gathered"] == [{"me": 0}, {"me": 1}]
  assert a["shares"] == b["shares"] == [x * x for x in range(11)]
  assert a["told"] == "from 0"
  # The mean over rows is the same whichever devices hold them; the sum is over all 4 (or 2) devices' rows.
  assert a["scaled"] == [33.0, 33.0] and a["summed"] == float(np.arange(12).sum())
  assert a["error"] == b["error"] == "ZeroDivisionError: division by zero"  # raised on every process alike
  assert a["alike_error"] == b["alike_error"] == "ZeroDivisionError: division by zero"  # process 1's, on process 0
  assert a["stop"] is True  # process 1's flag reaches process 0


@pytest.mark.slow
def test_a_checkpoint_written_by_two_processes_restores_in_one_and_the_reverse(tmp_path):
  folder = tmp_path / "ckpt"
  two = multihost.run_processes([CHECKPOINTS, f"--dir={folder}", "--save=1", "--seed=5", "--restore"], 2,
                                timeout_s=120)
  assert [p.returncode for p in two] == [0, 0], two[0].stderr[-2000:] + two[1].stderr[-2000:]
  written = _last_json(two[0].stdout)
  assert written["step"] == 1 and written["every_process"][0] == written["every_process"][1]
  one = multihost.run_single([CHECKPOINTS, f"--dir={folder}", "--restore"])
  assert one.returncode == 0, one.stderr[-2000:]
  assert _last_json(one.stdout)["state"] == written["state"]
  assert (folder / "1" / "hieramas_manifest.json").is_file()

  one = multihost.run_single([CHECKPOINTS, f"--dir={folder}", "--save=2", "--seed=7", "--restore"])
  assert one.returncode == 0, one.stderr[-2000:]
  two = multihost.run_processes([CHECKPOINTS, f"--dir={folder}", "--restore"], 2, timeout_s=120)
  assert [p.returncode for p in two] == [0, 0], two[0].stderr[-2000:] + two[1].stderr[-2000:]
  restored = _last_json(two[0].stdout)
  assert restored["step"] == 2 and restored["seed"] == 7 and restored["steps"] == [1, 2]
  assert restored["every_process"] == [_last_json(one.stdout)["state"]] * 2


@pytest.mark.parametrize("victim", [1, pytest.param(0, marks=pytest.mark.slow)])
def test_a_killed_process_stops_the_other_with_a_clear_line_and_no_hang(victim):
  survivor = 1 - victim
  procs = multihost.start_processes([COLLECTIVES, f"--die_at={victim}"], 2, heartbeat_timeout_s=5)
  start = time.monotonic()
  done = multihost.wait_all(procs, timeout_s=90)
  took = time.monotonic() - start
  assert done[victim].returncode == 3
  assert done[survivor].returncode != 0 and took < 60
  if victim == 1:  # the watchdog names the lost process
    assert ("hieramas: process 1 of the 2 in this run stopped, so process 0 stops too"
            in done[survivor].stderr.strip().splitlines()[-1])
  else:  # the coordinator itself is gone: XLA ends the others at once, saying so
    assert "JAX distributed service detected fatal errors" in done[survivor].stderr


def test_a_failure_on_every_process_ends_each_with_its_line_and_status_1_not_an_abort():
  done = multihost.run_processes([COLLECTIVES, "--fail_all"], 2, timeout_s=90)
  assert [p.returncode for p in done] == [1, 1], done[1].stderr[-2000:]
  for me, p in enumerate(done):
    assert p.stderr.strip().splitlines()[-1] == f"collectives: process {me} failed like the others"


def test_processes_out_of_step_fail_naming_both_steps_instead_of_waiting_forever():
  done = multihost.run_processes([COLLECTIVES, "--skip_at=1"], 2, timeout_s=90)
  assert all(p.returncode != 0 for p in done)
  for p in done:
    assert "CollectiveMismatchError: the processes reached different steps" in p.stderr, p.stderr[-2000:]
  assert "process 0 at 'squares'; process 1 at 'told'" in done[0].stderr
