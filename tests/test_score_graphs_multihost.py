"""launch.score_graphs on 2 local processes (gloo, 2 CPU devices each) against one process: same scores, bit for bit.

The one-process reference is ``score_graphs.score_files`` in this (1-device) process: the scores do not
depend on the device count, so any difference would come from the multi-process path. The queries are
split by whole batches: B=11 with --batch_size=5 gives 2 batches (10 queries) to process 0 and the last
batch (1 query) to process 1, which pads it to 5 rows as one process does (a batch of another shape
gives other low bits).
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import test_system as helpers
from hieramas_jax import system
from tests import multihost

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))
from launch import score_graphs  # pylint: disable=g-import-not-at-top,wrong-import-position

CASES = "tests/multihost_programs/score_graphs_cases.py"
BATCH = 11  # queries of the embedding inputs: not a multiple of 2 processes, nor of the batch sizes below
CYCLE_QUERY, CYCLE_GRAPH = 9, 5  # a cyclic graph in process 1's rows of bad_per_query.npz


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A workdir with a classifier, its loaded system, and input files of every kind."""
  root = tmp_path_factory.mktemp("score_graphs_multihost")
  config = helpers.small_config(seed=5)
  (_, sel_p), (_, cls_p) = helpers.fresh_models(config)
  helpers.save_trained(root / "run", config, sel_p, cls_p)
  hm = system.HieraMAS.from_workdir(root / "run")
  emb, shared, per_query = helpers.scoring_inputs(hm.encoder.dim, len(hm.roles), batch=BATCH)
  np.save(root / "emb.npy", emb)
  np.savez(root / "emb.npz", embeddings=emb)
  np.savez(root / "pool.npz", adjacency=shared)
  np.savez(root / "per_query.npz", adjacency=per_query)
  np.save(root / "per_query.npy", per_query)
  with (root / "pool.jsonl").open("w") as f:
    for adj in shared:
      f.write(json.dumps(adj.tolist()) + "\n")
  cyclic = per_query.copy()
  cyclic[CYCLE_QUERY, CYCLE_GRAPH] = [[0, 1, 0], [0, 0, 1], [1, 0, 0]]
  np.savez(root / "bad_per_query.npz", adjacency=cyclic)
  texts = [p.question for p in helpers.test_problems(config, 5)] + list(helpers.TEXT_QUERIES)  # 7 queries
  (root / "queries.txt").write_text("\n".join(texts) + "\n")
  with (root / "queries.jsonl").open("w") as f:
    for t in texts:
      f.write(json.dumps({"question": t}) + "\n\n")  # blank lines do not count as queries
  with (root / "bad_queries.jsonl").open("w") as f:  # line 11 is the 6th query: process 1's with batch 2
    for i, t in enumerate(texts):
      f.write(json.dumps({"question": t} if i != 5 else {"text": t}) + "\n\n")
  yield {"root": root, "system": hm, "texts": texts}
  hm.close()


def _npz(path):
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


def _reference(run, out: pathlib.Path, **kwargs) -> pathlib.Path:
  score_graphs.score_files(run["root"] / "run", out, hieramas=run["system"], **kwargs)
  return out


def _assert_same_output(got: pathlib.Path, want: pathlib.Path) -> None:
  if got.suffix == ".npz":
    got_arrays, want_arrays = _npz(got), _npz(want)
    assert sorted(got_arrays) == sorted(want_arrays)
    for key, value in want_arrays.items():
      np.testing.assert_array_equal(got_arrays[key], value, err_msg=key)
      assert got_arrays[key].dtype == value.dtype
  else:  # .csv / .jsonl write float32 scores exactly: the same bits give the same bytes
    assert got.read_text(encoding="utf-8") == want.read_text(encoding="utf-8")


def test_two_processes_score_per_query_pools_like_one_and_only_process_0_writes(run, tmp_path):
  """The command on 2 processes: per-query pools [B, K, N, N] from .npz, embeddings from .npy, .npz out."""
  root = run["root"]
  flags = ["-m", "launch.score_graphs", f"--workdir={root / 'run'}", f"--embeddings={root / 'emb.npy'}",
           f"--graphs={root / 'per_query.npz'}", "--out=scores.npz", "--batch_size=5"]
  port = multihost.free_port()
  cwds = [tmp_path / f"p{i}" for i in range(2)]  # a relative --out lands in each process's own folder
  procs = []
  for i, cwd in enumerate(cwds):
    cwd.mkdir()
    procs.append(subprocess.Popen(
        [sys.executable, *flags, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
         f"--process_id={i}"], cwd=cwd, env=multihost.process_env(2), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True))
  results = multihost.wait_all(procs, timeout_s=180)
  for i, r in enumerate(results):
    assert r.returncode == 0, f"process {i}:\n{r.stderr[-4000:]}"
  assert f"scored {BATCH} queries x 37 graphs on 4 cpu device(s) of 2 processes" in results[0].stdout
  assert "scored" not in results[1].stdout  # process 0 alone reports
  assert (cwds[0] / "scores.npz").is_file() and not (cwds[1] / "scores.npz").exists()  # and alone writes
  want = _reference(run, tmp_path / "one.npz", embeddings=str(root / "emb.npy"),
                    graphs_path=str(root / "per_query.npz"), batch_size=5)
  _assert_same_output(cwds[0] / "scores.npz", want)


@pytest.mark.slow
def test_two_processes_match_one_on_every_input_and_output_kind_and_fail_alike(run, tmp_path):
  """Shared and per-query pools, texts and embeddings, .npz/.csv/.jsonl, uneven shares, bad rows in process 1."""
  root = run["root"]
  cases = [  # (score_files keyword arguments, output suffix)
      (dict(queries=str(root / "queries.jsonl"), graphs_path=str(root / "pool.npz"), batch_size=2), ".jsonl"),
      (dict(embeddings=str(root / "emb.npz"), graphs_path=str(root / "per_query.npy"), batch_size=3), ".csv"),
      (dict(queries=str(root / "queries.txt"), batch_size=4), ".npz"),  # the workdir's candidate pool
      (dict(embeddings=str(root / "emb.npy"), graphs_path=str(root / "pool.jsonl"), batch_size=64), ".npz"),
      (dict(embeddings=str(root / "emb.npz"), graphs_path=str(root / "per_query.npz"), batch_size=2), ".jsonl"),
      (dict(embeddings=str(root / "emb.npy"), graphs_path=str(root / "bad_per_query.npz"), batch_size=2), ".npz"),
      (dict(queries=str(root / "bad_queries.jsonl"), graphs_path=str(root / "pool.npz"), batch_size=2), ".npz"),
  ]
  runs = [dict(kwargs, workdir=str(root / "run"), out=str(tmp_path / f"two_{i}{suffix}"))
          for i, (kwargs, suffix) in enumerate(cases)]
  (tmp_path / "cases.json").write_text(json.dumps(runs))
  results = multihost.run_processes([CASES, f"--cases={tmp_path / 'cases.json'}"], 2, timeout_s=400)
  for i, r in enumerate(results):
    assert r.returncode == 0, f"process {i}:\n{r.stderr[-4000:]}"
  errors = [json.loads(r.stdout.strip().splitlines()[-1])["errors"] for r in results]
  assert errors[0] == errors[1]  # every process raised the same error, at the same case
  for i, (kwargs, suffix) in enumerate(cases[:5]):
    assert errors[0][i] is None, errors[0][i]
    _assert_same_output(pathlib.Path(runs[i]["out"]), _reference(run, tmp_path / f"one_{i}{suffix}", **kwargs))
  # Bad rows in process 1's share: the message one process gives, nothing written.
  assert errors[0][5].startswith(f"InputError: graphs from {root / 'bad_per_query.npz'}: graph {CYCLE_GRAPH} of "
                                 f"query {CYCLE_QUERY}: adjacency has a cycle")
  with pytest.raises(score_graphs.InputError, match=f"graph {CYCLE_GRAPH} of query {CYCLE_QUERY}: adjacency") as one:
    _reference(run, tmp_path / "one_5.npz", **cases[5][0])
  assert errors[0][5] == f"InputError: {one.value}"
  assert errors[0][6].startswith(f"InputError: {root / 'bad_queries.jsonl'} line 11 has no string field")
  assert not pathlib.Path(runs[5]["out"]).exists() and not pathlib.Path(runs[6]["out"]).exists()


@pytest.mark.slow
def test_a_bad_input_stops_both_processes_with_the_same_line(run, tmp_path):
  """The command: a cyclic graph in process 1's rows; both exit 1 with one line, no traceback, no output."""
  root = run["root"]
  results = multihost.run_processes(
      ["-m", "launch.score_graphs", f"--workdir={root / 'run'}", f"--embeddings={root / 'emb.npy'}",
       f"--graphs={root / 'bad_per_query.npz'}", f"--out={tmp_path / 'x.npz'}", "--batch_size=2"], 2, timeout_s=180)
  lines = []
  for r in results:
    assert r.returncode == 1, r.stderr[-4000:]
    assert "Traceback" not in r.stderr
    lines.append(r.stderr.strip().splitlines()[-1])
  assert lines[0] == lines[1]
  assert lines[0].startswith(f"score_graphs: error: graphs from {root / 'bad_per_query.npz'}: graph {CYCLE_GRAPH} "
                             f"of query {CYCLE_QUERY}: adjacency has a cycle")
  assert not (tmp_path / "x.npz").exists()


def test_a_process_reads_only_its_rows_of_every_file_kind(tmp_path):
  """ArrayFile rows of .npy, stored and compressed .npz, Fortran-order members; query rows of .txt / .jsonl."""
  x = np.arange(7 * 3 * 2, dtype=np.float32).reshape(7, 3, 2)
  np.save(tmp_path / "x.npy", x)
  np.savez(tmp_path / "x.npz", adjacency=x, other=x[:1])
  np.savez_compressed(tmp_path / "z.npz", adjacency=x)
  np.savez(tmp_path / "f.npz", np.asfortranarray(x))  # the only array: read whole, then sliced
  for name in ("x.npy", "x.npz", "z.npz", "f.npz"):
    source = score_graphs.ArrayFile(tmp_path / name, "adjacency")
    assert source.shape == x.shape and source.dtype == x.dtype, name
    for start, stop in ((0, 7), (2, 5), (6, 7), (7, 7)):
      rows = source.rows(start, stop)
      np.testing.assert_array_equal(rows, x[start:stop], err_msg=f"{name} [{start}, {stop})")
      rows[...] = -1  # a private copy: the file and later reads are untouched
    np.testing.assert_array_equal(source.read(), x)
  texts = [f"query {i}" for i in range(5)]
  (tmp_path / "q.txt").write_text("\n\n".join(texts) + "\n")
  (tmp_path / "q.jsonl").write_text("".join(json.dumps({"problem": t}) + "\n\n" for t in texts[:2]) +
                                    "".join(json.dumps({"question": t}) + "\n" for t in texts[2:]) + "{not json\n")
  for start, stop in ((0, 2), (2, 5)):
    assert score_graphs.read_query_rows(tmp_path / "q.txt", start, stop) == (texts[start:stop], 5)
  assert score_graphs.read_query_rows(tmp_path / "q.jsonl", 1, 4) == (texts[1:4], 6)  # the bad line is not parsed
  with pytest.raises(score_graphs.InputError, match="line 8 is not JSON"):
    score_graphs.read_query_rows(tmp_path / "q.jsonl", 4, 6)
