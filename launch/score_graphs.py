"""Scores candidate DAGs for many queries with a trained graph classifier, sharded over all local devices.

  python -m launch.score_graphs --workdir=runs/math --queries=queries.jsonl --graphs=pool.npz --out=scores.npz
  python -m launch.score_graphs --workdir=runs/math --embeddings=emb.npy --graphs=pool.jsonl --out=scores.csv

Inputs:
  --queries     .jsonl with a "question" (or "problem") field per line, or .txt with one query per line
  --embeddings  instead of queries: .npy, or .npz with an array "embeddings", of shape [B, D]
                (D: the size of the workdir's encoder)
  --graphs      .npz (or .npy) with an array "adjacency" of shape [K, N, N] (one pool for all queries) or
                [B, K, N, N] (one pool per query), or .jsonl with one adjacency matrix (nested lists) per
                line; N is the number of roles of the trained task. Default: the workdir's candidate pool.
Output (--out, by suffix): .npz with "scores" [B, K], "best" [B] (index of the best graph) and
"best_score" [B]; .csv or .jsonl with one row per query.

The pool is split along K over every local device (XLA_FLAGS=--xla_force_host_platform_device_count=8 makes
8 CPU devices); the scores are identical whatever the device count.
"""

from __future__ import annotations

import csv
import json
import pathlib
import sys
import time
from typing import Any, Sequence

import jax
import numpy as np
from absl import app
from absl import flags
from absl import logging

from hieramas_jax import graphs, system as system_lib

OUTPUT_SUFFIXES = (".npz", ".csv", ".jsonl")


class InputError(ValueError):
  """An input file that cannot be used; the message says which and why."""


def _existing(path: str | pathlib.Path, what: str) -> pathlib.Path:
  p = pathlib.Path(path)
  if not p.is_file():
    raise FileNotFoundError(f"{what} file {p} does not exist")
  return p


def _jsonl(path: pathlib.Path) -> list[tuple[int, Any]]:
  """(line number, parsed value) of every non-blank line."""
  rows = []
  with path.open(encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        rows.append((number, json.loads(line)))
      except json.JSONDecodeError as e:
        raise InputError(f"{path} line {number} is not JSON: {e}") from None
  return rows


def read_queries(path: str | pathlib.Path) -> list[str]:
  """Query texts from .jsonl ('question' or 'problem' field per line) or .txt (one per line)."""
  p = _existing(path, "queries")
  if p.suffix == ".txt":
    texts = [line.rstrip("\r\n") for line in p.read_text(encoding="utf-8").splitlines()]
    texts = [t for t in texts if t.strip()]
  elif p.suffix == ".jsonl":
    texts = []
    for number, row in _jsonl(p):
      text = row.get("question", row.get("problem")) if isinstance(row, dict) else None
      if not isinstance(text, str):
        raise InputError(f"{p} line {number} has no string field 'question' or 'problem'; each line must be an "
                         "object like {\"question\": \"...\"}")
      texts.append(text)
  else:
    raise InputError(f"queries file {p} must end in .jsonl or .txt")
  if not texts:
    raise InputError(f"queries file {p} holds no query")
  return texts


def _npz_array(path: pathlib.Path, key: str) -> np.ndarray:
  with np.load(path, allow_pickle=False) as f:
    if key in f.files:
      return f[key]
    if len(f.files) == 1:
      return f[f.files[0]]
    raise InputError(f"{path} has arrays {f.files} but no {key!r}; save the array under that name")


def read_embeddings(path: str | pathlib.Path) -> np.ndarray:
  """Query embeddings [B, D] from .npy or .npz ('embeddings', or its only array)."""
  p = _existing(path, "embeddings")
  if p.suffix == ".npy":
    x = np.load(p, allow_pickle=False)
  elif p.suffix == ".npz":
    x = _npz_array(p, "embeddings")
  else:
    raise InputError(f"embeddings file {p} must end in .npy or .npz")
  if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
    raise InputError(f"embeddings in {p} have shape {x.shape} and dtype {x.dtype}; expected numbers of shape [B, D]")
  return x.astype(np.float32)


def read_graphs(path: str | pathlib.Path) -> np.ndarray:
  """Adjacency matrices [K, N, N] or [B, K, N, N] from .npz/.npy ('adjacency') or .jsonl (one per line)."""
  p = _existing(path, "graphs")
  if p.suffix == ".npz":
    return _npz_array(p, "adjacency")
  if p.suffix == ".npy":
    return np.load(p, allow_pickle=False)
  if p.suffix != ".jsonl":
    raise InputError(f"graphs file {p} must end in .npz, .npy or .jsonl")
  mats, shape = [], None
  for number, row in _jsonl(p):
    if isinstance(row, dict):
      row = row.get("adjacency")
    try:
      m = np.asarray(row)
    except ValueError:
      m = np.zeros(0)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or not np.issubdtype(m.dtype, np.number):
      raise InputError(f"{p} line {number} is not a square adjacency matrix (nested lists of 0/1); got "
                       f"{json.dumps(row)[:80]}")
    if shape is not None and m.shape != shape:
      raise InputError(f"{p} line {number} has a {m.shape} matrix but earlier lines have {shape}; all graphs must "
                       "have the same number of roles")
    shape = m.shape
    mats.append(m)
  if not mats:
    raise InputError(f"graphs file {p} holds no graph")
  return np.stack(mats)


def write_scores(path: str | pathlib.Path, scores: np.ndarray, queries: Sequence[str] | None = None) -> None:
  """Writes scores [B, K] with the best graph per query, in the format the suffix names."""
  p = pathlib.Path(path)
  best = scores.argmax(axis=1)
  best_score = scores[np.arange(len(scores)), best]
  p.parent.mkdir(parents=True, exist_ok=True)
  if p.suffix == ".npz":
    np.savez(p, scores=scores, best=best, best_score=best_score)
  elif p.suffix == ".csv":
    with p.open("w", newline="", encoding="utf-8") as f:
      writer = csv.writer(f)
      text_column = ["query"] if queries is not None else []
      writer.writerow(["query_index", *text_column, "best", "best_score"] +
                      [f"score_{k}" for k in range(scores.shape[1])])
      for i, row in enumerate(scores):
        text = [queries[i]] if queries is not None else []
        # 9 significant digits write float32 values exactly.
        writer.writerow([i, *text, int(best[i]), f"{best_score[i]:.9g}"] + [f"{x:.9g}" for x in row])
  elif p.suffix == ".jsonl":
    with p.open("w", encoding="utf-8") as f:
      for i, row in enumerate(scores):
        record = {"query_index": i}
        if queries is not None:
          record["query"] = queries[i]
        record.update(best=int(best[i]), best_score=float(best_score[i]), scores=[float(x) for x in row])
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
  else:
    raise InputError(f"output file {p} must end in one of {OUTPUT_SUFFIXES}")


def score_in_batches(hieramas: system_lib.HieraMAS, query_emb: np.ndarray, adjacency: np.ndarray,
                     batch_size: int) -> np.ndarray:
  """Scores [B, K], ``batch_size`` queries per step (the last batch padded: one compiled shape)."""
  if batch_size < 1:
    raise InputError(f"batch_size={batch_size}; it must be >= 1")
  total = query_emb.shape[0]
  out = []
  for start in range(0, total, batch_size):
    q = query_emb[start:start + batch_size]
    a = adjacency[start:start + batch_size] if adjacency.ndim == 4 else adjacency
    count = q.shape[0]
    if count < batch_size and total > batch_size:
      q = np.concatenate([q, np.zeros((batch_size - count,) + q.shape[1:], q.dtype)])
      if a.ndim == 4:
        a = np.concatenate([a, np.zeros((batch_size - count,) + a.shape[1:], a.dtype)])
    out.append(hieramas.score_graphs(q, a)[:count])
  return np.concatenate(out)


def score_files(workdir: str | pathlib.Path, out: str | pathlib.Path, *, queries: str | None = None,
                embeddings: str | None = None, graphs_path: str | None = None, batch_size: int = 64,
                hieramas: system_lib.HieraMAS | None = None) -> dict[str, Any]:
  """Reads the inputs, scores them, writes ``out``; returns a summary (also printed by ``main``).

  Every input is checked (and the output suffix too) before any scoring.
  """
  if (queries is None) == (embeddings is None):
    raise InputError("give exactly one of --queries (texts) and --embeddings (precomputed [B, D] vectors)")
  if pathlib.Path(out).suffix not in OUTPUT_SUFFIXES:
    raise InputError(f"output file {out} must end in one of {OUTPUT_SUFFIXES}")
  texts = read_queries(queries) if queries is not None else None
  query_emb = read_embeddings(embeddings) if embeddings is not None else None
  adjacency = read_graphs(graphs_path) if graphs_path is not None else None
  if hieramas is None:
    hieramas = system_lib.HieraMAS.from_workdir(workdir)
  if not hieramas.has_classifier:
    raise InputError(f"{workdir} has no graph classifier ({hieramas.graph_choice_reason}); run stage 2 first")
  if query_emb is not None and query_emb.shape[1] != hieramas.encoder.dim:
    raise InputError(f"embeddings in {embeddings} have shape {query_emb.shape}; expected [B, "
                     f"{hieramas.encoder.dim}], the size of the workdir's encoder {hieramas.encoder.encoder_id!r}")
  if adjacency is None:
    adjacency = hieramas.candidate_pool()
  batch = len(texts) if texts is not None else query_emb.shape[0]
  try:  # up front, so that error indices count from the first query of the file
    adjacency = system_lib.validate_graph_stack(adjacency, len(hieramas.roles), batch=batch)
  except graphs.InvalidGraphError as e:
    raise InputError(f"graphs from {graphs_path or 'the candidate pool'}: {e}") from None
  start = time.perf_counter()
  if query_emb is None:
    query_emb = hieramas.query_embeddings(texts)
  scores = score_in_batches(hieramas, query_emb, adjacency, batch_size)
  seconds = time.perf_counter() - start
  write_scores(out, scores, texts)
  devices = hieramas.num_devices
  return {"queries": int(scores.shape[0]), "graphs": int(scores.shape[1]), "devices": devices,
          "platform": jax.local_devices()[0].platform, "seconds": seconds,
          "scores_per_s": scores.size / seconds if seconds > 0 else float("inf"), "out": str(out)}


def define_flags() -> None:
  """Defines the command's flags.

  Only when run as a command: importing this module (tests, other launchers in
  one process) then never collides with other modules' flags of the same name.
  """
  flags.DEFINE_string("workdir", None, "Workdir of a trained run (launch.train).")
  flags.DEFINE_string("queries", None, "Queries: .jsonl ('question' or 'problem' field) or .txt.")
  flags.DEFINE_string("embeddings", None, "Precomputed query embeddings [B, D]: .npy or .npz.")
  flags.DEFINE_string("graphs", None, "Candidate DAGs: .npz/.npy ('adjacency' [K,N,N] or [B,K,N,N]) or .jsonl "
                      "(one matrix per line). Default: the workdir's candidate pool.")
  flags.DEFINE_string("out", None, "Output file: .npz, .csv or .jsonl.")
  flags.DEFINE_integer("batch_size", 64, "Queries scored per step.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  f = flags.FLAGS
  if not f.workdir or not f.out:
    raise app.UsageError("--workdir and --out are required")
  try:
    summary = score_files(f.workdir, f.out, queries=f.queries, embeddings=f.embeddings, graphs_path=f.graphs,
                          batch_size=f.batch_size)
  except (FileNotFoundError, ValueError) as e:  # InputError, InvalidGraphError, config errors
    sys.exit(f"score_graphs: error: {e}")
  print(f"scored {summary['queries']} queries x {summary['graphs']} graphs on {summary['devices']} "
        f"{summary['platform']} device(s) in {summary['seconds']:.2f} s ({summary['scores_per_s']:.0f} scores/s, "
        f"embedding included); wrote {summary['out']}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
