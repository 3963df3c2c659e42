"""launch.score_graphs end to end: files in, scores out, 1 vs 8 devices, clear input errors."""

import csv
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

import test_system as helpers
from hieramas_jax import system

REPO = pathlib.Path(__file__).resolve().parents[1]
# launch/ is not an installed package: import it from the checkout.
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))
from launch import score_graphs  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A trained workdir, its loaded system, and input files of every supported kind."""
  root = tmp_path_factory.mktemp("score_graphs")
  config = helpers.small_config(seed=3)
  (_, sel_p), (_, cls_p) = helpers.fresh_models(config)
  helpers.save_trained(root / "run", config, sel_p, cls_p)
  hm = system.HieraMAS.from_workdir(root / "run")
  texts = [p.question for p in helpers.test_problems(config, 5)] + list(helpers.TEXT_QUERIES)
  with (root / "queries.jsonl").open("w") as f:
    for i, t in enumerate(texts):
      f.write(json.dumps({"question": t} if i % 2 else {"problem": t, "answer": "?"}) + "\n")
    f.write("\n")  # blank lines are skipped
  (root / "queries.txt").write_text("\n".join(texts) + "\n")
  emb, shared, per_query = helpers.scoring_inputs(hm.encoder.dim, len(hm.roles), batch=len(texts))
  np.save(root / "emb.npy", emb)
  np.savez(root / "emb.npz", embeddings=emb)
  np.savez(root / "pool.npz", adjacency=shared)
  np.savez(root / "per_query.npz", adjacency=per_query)
  with (root / "pool.jsonl").open("w") as f:
    for i, adj in enumerate(shared):
      f.write(json.dumps(adj.tolist() if i % 2 else {"adjacency": adj.tolist()}) + "\n")
  yield {"root": root, "system": hm, "texts": texts, "emb": emb, "shared": shared, "per_query": per_query}
  hm.close()


def _npz(path):
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


def test_queries_and_graph_files_give_the_systems_scores(run):
  root, hm = run["root"], run["system"]
  want = hm.score_graphs(run["texts"], run["shared"])
  for queries in ("queries.jsonl", "queries.txt"):
    for pool in ("pool.npz", "pool.jsonl"):
      out = root / f"out_{queries}_{pool}.npz"
      summary = score_graphs.score_files(root / "run", out, queries=str(root / queries), graphs_path=str(root / pool),
                                         hieramas=hm)
      got = _npz(out)
      np.testing.assert_array_equal(got["scores"], want)
      np.testing.assert_array_equal(got["best"], want.argmax(1))
      np.testing.assert_array_equal(got["best_score"], want.max(1))
      assert summary["queries"] == len(run["texts"]) and summary["graphs"] == len(run["shared"])
  # Without --graphs: the workdir's candidate pool.
  score_graphs.score_files(root / "run", root / "default.npz", queries=str(root / "queries.txt"), hieramas=hm)
  np.testing.assert_array_equal(_npz(root / "default.npz")["scores"], hm.score_graphs(run["texts"],
                                                                                      hm.candidate_pool()))


def test_embeddings_batches_and_text_outputs(run):
  root, hm, emb = run["root"], run["system"], run["emb"]
  want = hm.score_graphs(emb, run["per_query"])
  for batch_size in (2, 64):  # batches of 2 (last one padded) give the same scores as one batch
    score_graphs.score_files(root / "run", root / "e.npz", embeddings=str(root / "emb.npz"),
                             graphs_path=str(root / "per_query.npz"), batch_size=batch_size, hieramas=hm)
    np.testing.assert_allclose(_npz(root / "e.npz")["scores"], want, rtol=1e-6, atol=1e-7)
  score_graphs.score_files(root / "run", root / "e.csv", embeddings=str(root / "emb.npy"),
                           graphs_path=str(root / "per_query.npz"), hieramas=hm)
  rows = list(csv.DictReader((root / "e.csv").open()))
  assert len(rows) == len(emb) and "query" not in rows[0]
  for i, row in enumerate(rows):
    scores = np.array([float(row[f"score_{k}"]) for k in range(want.shape[1])], np.float32)
    np.testing.assert_array_equal(scores, want[i])  # written exactly
    assert int(row["best"]) == int(want[i].argmax())
  score_graphs.score_files(root / "run", root / "t.jsonl", queries=str(root / "queries.jsonl"),
                           graphs_path=str(root / "pool.npz"), hieramas=hm)
  records = [json.loads(line) for line in (root / "t.jsonl").read_text().splitlines()]
  assert [r["query"] for r in records] == run["texts"]
  assert [r["best"] for r in records] == hm.score_graphs(run["texts"], run["shared"]).argmax(1).tolist()


def test_clear_errors(run):
  root, hm = run["root"], run["system"]

  def score(**kwargs):
    kwargs.setdefault("queries", str(root / "queries.txt"))
    kwargs.setdefault("graphs_path", str(root / "pool.npz"))
    return score_graphs.score_files(root / "run", kwargs.pop("out", root / "x.npz"), hieramas=hm, **kwargs)

  with pytest.raises(FileNotFoundError, match="graphs file .*nope.npz does not exist"):
    score(graphs_path=str(root / "nope.npz"))
  with pytest.raises(FileNotFoundError, match="queries file"):
    score(queries=str(root / "nope.txt"))
  with pytest.raises(score_graphs.InputError, match="exactly one of --queries"):
    score(embeddings=str(root / "emb.npy"))
  with pytest.raises(score_graphs.InputError, match=r"must end in one of \('.npz', '.csv', '.jsonl'\)"):
    score(out=root / "x.parquet")
  np.save(root / "short.npy", run["emb"][:, :7])
  with pytest.raises(score_graphs.InputError, match=r"shape \(7, 7\); expected \[B, 256\]"):
    score(queries=None, embeddings=str(root / "short.npy"))
  np.savez(root / "wrong_n.npz", adjacency=np.zeros((4, 5, 5), np.int8))
  with pytest.raises(score_graphs.InputError, match=r"shape \(4, 5, 5\); expected \[K, 3, 3\]"):
    score(graphs_path=str(root / "wrong_n.npz"))
  cyclic = run["per_query"].copy()
  cyclic[3, 9] = [[0, 1, 0], [0, 0, 1], [1, 0, 0]]
  np.savez(root / "cyclic.npz", adjacency=cyclic)
  with pytest.raises(score_graphs.InputError, match="graph 9 of query 3: adjacency has a cycle"):
    score(graphs_path=str(root / "cyclic.npz"))
  np.savez(root / "other_key.npz", a=run["shared"], b=run["shared"])
  with pytest.raises(score_graphs.InputError, match="no 'adjacency'"):
    score(graphs_path=str(root / "other_key.npz"))
  (root / "ragged.jsonl").write_text("[[0, 1], [0, 0]]\n[[0, 1, 0], [0, 0, 1], [0, 0, 0]]\n")
  with pytest.raises(score_graphs.InputError, match="line 2 has a \\(3, 3\\) matrix"):
    score(graphs_path=str(root / "ragged.jsonl"))
  (root / "bad.jsonl").write_text('{"text": "no question field"}\n')
  with pytest.raises(score_graphs.InputError, match="line 1 has no string field 'question'"):
    score(queries=str(root / "bad.jsonl"))
  assert not (root / "x.npz").exists()  # nothing written on any error


def test_command_line_on_8_devices_matches_1_device(run):
  """The launcher as a command, in an 8-CPU-device process: the same scores as this 1-device process."""
  root, hm = run["root"], run["system"]
  if jax.device_count() != 1:  # e.g. under XLA_FLAGS=--xla_force_host_platform_device_count=8
    pytest.skip(f"this process has {jax.device_count()} devices; the test compares an 8-device run with 1")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "launch.score_graphs", f"--workdir={root / 'run'}",
         f"--queries={root / 'queries.jsonl'}", f"--graphs={root / 'per_query.npz'}", f"--out={root / 'cli.npz'}",
         "--batch_size=4"]
  out = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-4000:]
  assert "on 8 cpu device(s)" in out.stdout
  score_graphs.score_files(root / "run", root / "one.npz", queries=str(root / "queries.jsonl"),
                           graphs_path=str(root / "per_query.npz"), batch_size=4, hieramas=hm)
  np.testing.assert_array_equal(_npz(root / "cli.npz")["scores"], _npz(root / "one.npz")["scores"])
  # A bad input fails with the message and exit status 1, no traceback.
  bad = subprocess.run(cmd[:5] + [f"--graphs={root / 'missing.npz'}", f"--out={root / 'cli.npz'}"], env=env,
                       cwd=REPO, capture_output=True, text=True, timeout=300)
  assert bad.returncode == 1 and "score_graphs: error: graphs file" in bad.stderr
  assert "Traceback" not in bad.stderr
