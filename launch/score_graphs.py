"""Scores candidate DAGs for many queries with a trained graph classifier, over every device of every process.

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

Queries are scored --batch_size at a time (the last batch padded to that size when there are several), their
texts embedded batch by batch. Within a process the pool is split along K over every local device
(XLA_FLAGS=--xla_force_host_platform_device_count=8 makes 8 CPU devices); the scores are identical whatever
the device count.

Several hosts (one process each, the flags of ``launch.multihost``; on SLURM, TPU pods and Kubernetes JAX
finds them itself): every process runs the same command with the same input files on its disk.

  # host i of N (explicit setup; process 0's host runs the coordinator)
  python -m launch.score_graphs --workdir=runs/math --embeddings=emb.npy --graphs=per_query.npy \\
      --out=scores.npz --coordinator_address=host0:8476 --num_processes=N --process_id=i
  # SLURM: one task per node, the same command without the three flags
  srun --nodes=N --ntasks-per-node=1 python -m launch.score_graphs --workdir=... --embeddings=... --out=...

Each process scores its contiguous share of the whole batches (``distributed.share_bounds`` over the
batches, so each batch is the very computation one process would run: the scores are the same bit for bit
on any number of processes and devices). It reads only its rows: a .npy input is memory-mapped and an .npz
member read from its rows' offset; a .jsonl query file is scanned for its line count and only the process's
lines parsed (a .txt one is read whole); each process embeds only its queries (process 0 through the
workdir's embedding cache, the others without one: SQLite takes no writers on several hosts); a shared [K, N, N] pool and .jsonl graphs are read whole. The scores
(and, for .csv / .jsonl output, the query texts) go to process 0 through the coordinator's key-value store
(``distributed.gather_objects``; about 4 bytes per score); process 0 alone writes --out. An input error is
raised on every process alike (the first bad row's, as one process would name it): each prints one line
and exits 1. The devices in the summary are those of all processes.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import pathlib
import sys
import time
import zipfile
from typing import Any, Callable, Sequence

import jax
import numpy as np
from absl import app
from absl import flags
from absl import logging

from hieramas_jax import distributed, graph_scoring, graphs, system as system_lib
from launch import multihost  # the multi-host flags: --distributed, --coordinator_address, ...

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
      if line.strip():
        rows.append((number, _json_line(path, number, line)))
  return rows


def _json_line(path: pathlib.Path, number: int, line: str) -> Any:
  try:
    return json.loads(line)
  except json.JSONDecodeError as e:
    raise InputError(f"{path} line {number} is not JSON: {e}") from None


def read_query_rows(path: str | pathlib.Path, start: int = 0, stop: int | None = None) -> tuple[list[str], int]:
  """(texts of queries [start, stop), number of queries in the file); only those rows are parsed.

  Queries come from .jsonl ('question' or 'problem' field per line) or .txt (one per line); blank lines
  are skipped.
  """
  p = _existing(path, "queries")
  if p.suffix == ".txt":
    lines = [line.rstrip("\r\n") for line in p.read_text(encoding="utf-8").splitlines()]
    lines = [t for t in lines if t.strip()]
    texts, total = lines[start:stop], len(lines)
  elif p.suffix == ".jsonl":
    texts, total = [], 0
    with p.open(encoding="utf-8") as f:
      for number, line in enumerate(f, 1):
        if not line.strip():
          continue
        if start <= total and (stop is None or total < stop):
          row = _json_line(p, number, line)
          text = row.get("question", row.get("problem")) if isinstance(row, dict) else None
          if not isinstance(text, str):
            raise InputError(f"{p} line {number} has no string field 'question' or 'problem'; each line must be "
                             "an object like {\"question\": \"...\"}")
          texts.append(text)
        total += 1
  else:
    raise InputError(f"queries file {p} must end in .jsonl or .txt")
  if not total:
    raise InputError(f"queries file {p} holds no query")
  return texts, total


class ArrayFile:
  """An array in a .npy file or an .npz member, read whole or by rows without loading the rest.

  A .npy file is memory-mapped; an .npz member (C order, no objects) is read
  from its rows' byte offset inside the archive.
  """

  def __init__(self, path: pathlib.Path, key: str):
    self.path = path
    if path.suffix == ".npy":
      self._mapped = np.load(path, mmap_mode="r", allow_pickle=False)
      self.shape, self.dtype = tuple(self._mapped.shape), self._mapped.dtype
      return
    self._mapped = None
    with np.load(path, allow_pickle=False) as f:
      names = f.files
    if key in names:
      self.name = key
    elif len(names) == 1:
      self.name = names[0]
    else:
      raise InputError(f"{path} has arrays {names} but no {key!r}; save the array under that name")
    with zipfile.ZipFile(path) as archive, archive.open(f"{self.name}.npy") as member:
      version = np.lib.format.read_magic(member)
      read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                     (2, 0): np.lib.format.read_array_header_2_0}.get(version)
      if read_header is None:  # a header version this reader does not parse: the member is read whole
        self.shape, self.dtype, self._offset = None, None, None
      else:
        shape, fortran_order, self.dtype = read_header(member)
        self.shape = tuple(shape)
        self._offset = None if fortran_order or self.dtype.hasobject else member.tell()
    if self.shape is None:
      whole = self.read()
      self.shape, self.dtype = whole.shape, whole.dtype

  def read(self) -> np.ndarray:
    if self._mapped is not None:
      return np.array(self._mapped)
    with np.load(self.path, allow_pickle=False) as f:
      return f[self.name]

  def rows(self, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of the leading axis."""
    if self._mapped is not None:
      return np.array(self._mapped[start:stop])
    if self._offset is None:
      return self.read()[start:stop]
    stop = min(stop, self.shape[0])
    count = max(0, stop - start)
    row_bytes = self.dtype.itemsize * math.prod(self.shape[1:])
    with zipfile.ZipFile(self.path) as archive, archive.open(f"{self.name}.npy") as member:
      member.seek(self._offset + start * row_bytes, io.SEEK_SET)
      data = member.read(count * row_bytes)
    if len(data) != count * row_bytes:
      raise InputError(f"{self.path} member {self.name!r} is truncated (its header says shape {self.shape})")
    return np.frombuffer(data, self.dtype).reshape((count,) + self.shape[1:]).copy()


def _array_file(path: str | pathlib.Path, what: str, key: str, suffixes: tuple[str, ...]) -> ArrayFile:
  p = _existing(path, what)
  if p.suffix not in suffixes:
    raise InputError(f"{what} file {p} must end in {', '.join(suffixes[:-1])} or {suffixes[-1]}")
  return ArrayFile(p, key)


def _embeddings_file(path: str | pathlib.Path) -> ArrayFile:
  """The [B, D] embeddings of .npy or .npz ('embeddings', or its only array), shape and dtype checked."""
  source = _array_file(path, "embeddings", "embeddings", (".npy", ".npz"))
  if len(source.shape) != 2 or not np.issubdtype(source.dtype, np.number):
    raise InputError(f"embeddings in {source.path} have shape {source.shape} and dtype {source.dtype}; expected "
                     "numbers of shape [B, D]")
  return source


def _jsonl_graphs(p: pathlib.Path) -> np.ndarray:
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


def batch_share(total: int, batch_size: int) -> tuple[int, int]:
  """Rows [start, stop) this process scores: its contiguous share of the whole batches of ``batch_size`` rows."""
  first, last = distributed.share_bounds(-(-total // batch_size))
  return min(first * batch_size, total), min(last * batch_size, total)


def score_in_batches(hieramas: system_lib.HieraMAS, queries: np.ndarray | Sequence[str], adjacency: np.ndarray,
                     batch_size: int, *, pad_last: bool | None = None) -> np.ndarray:
  """Scores [B, K], ``batch_size`` queries per step.

  Args:
    hieramas: the system (anything with ``score_graphs(embeddings, adjacency)`` and ``query_embeddings(texts)``).
    queries: embeddings [B, D], or texts (embedded batch by batch).
    adjacency: [K, N, N], or [B, K, N, N] aligned with ``queries``.
    batch_size: queries per step.
    pad_last: whether a short last batch is padded to ``batch_size`` rows (one compiled shape). Default:
      when there are several batches. A process scoring a share of a larger input passes what the whole
      input would use, so that every batch is the one-process computation.
  """
  if batch_size < 1:
    raise InputError(f"batch_size={batch_size}; it must be >= 1")
  total = len(queries)
  pad_last = total > batch_size if pad_last is None else pad_last
  k = adjacency.shape[-3]
  out = [np.zeros((0, k), np.float32)]
  for start in range(0, total, batch_size):
    q = queries[start:start + batch_size]
    if not isinstance(q, np.ndarray):
      q = hieramas.query_embeddings(list(q))
    a = adjacency[start:start + batch_size] if adjacency.ndim == 4 else adjacency
    count = q.shape[0]
    if count < batch_size and pad_last:
      q = np.concatenate([q, np.zeros((batch_size - count,) + q.shape[1:], q.dtype)])
      if a.ndim == 4:
        a = np.concatenate([a, np.zeros((batch_size - count,) + a.shape[1:], a.dtype)])
    out.append(hieramas.score_graphs(q, a)[:count])
  return np.concatenate(out)


# ---------------------------------------------------------------------------
# Steps every process takes together
# ---------------------------------------------------------------------------

def _together(step: Callable[[], tuple[Any, Any]], name: str) -> tuple[Any, list[Any]]:
  """Runs ``step() -> (kept, sent)`` on every process; returns (kept, what each process sent, in process order).

  An exception in any process is raised in every process (``distributed.alike``: the lowest process's, the
  first bad row as one process would find it), so all stop at the same point with the same message.
  """
  kept, sent = distributed.alike(step, name)
  return kept, distributed.gather_objects(sent, f"{name} (values)")


def score_and_gather(hieramas: Any, queries: np.ndarray | Sequence[str], adjacency: np.ndarray, total: int,
                     batch_size: int) -> tuple[np.ndarray | None, list[str] | None]:
  """Scores this process's share of the queries; process 0 gets everyone's scores, in query order.

  Every process calls it. Args as ``score_in_batches``, where ``queries`` (and
  per-query ``adjacency``) hold this process's rows ``batch_share(total,
  batch_size)`` of ``total`` queries. Returns (scores [total, K], the texts when
  ``queries`` are texts, else None) on process 0 and (None, None) on the others.
  An exception in any process is raised in every process.
  """

  def score():
    scores = score_in_batches(hieramas, queries, adjacency, batch_size, pad_last=total > batch_size)
    texts = None if isinstance(queries, np.ndarray) else list(queries)
    # Process 0 keeps its own rows; the others send theirs to it.
    return (texts, scores), None if distributed.is_primary() else (texts, scores)

  mine, sent = _together(score, "score_graphs/score")
  if not distributed.is_primary():
    return None, None
  parts = [mine] + sent[1:]
  texts = None if mine[0] is None else [text for part, _ in parts for text in part]
  return np.concatenate([scores for _, scores in parts]), texts


@dataclasses.dataclass
class _Share:
  """This process's part of the inputs."""

  total: int  # queries in the whole input
  start: int  # this process's rows [start, stop)
  stop: int
  queries: np.ndarray | list[str]  # this process's embeddings [stop - start, D] or texts
  graphs: ArrayFile | np.ndarray | None  # the --graphs file (rows still unread), .jsonl graphs, or None


def _read_share(queries: str | None, embeddings: str | None, graphs_path: str | None, batch_size: int) -> _Share:
  if queries is not None:
    total = read_query_rows(queries, 0, 0)[1]
    start, stop = batch_share(total, batch_size)
    rows: Any = read_query_rows(queries, start, stop)[0]
  else:
    source = _embeddings_file(embeddings)
    total = source.shape[0]
    start, stop = batch_share(total, batch_size)
    rows = source.rows(start, stop).astype(np.float32)
  adjacency = None
  if graphs_path is not None:
    p = _existing(graphs_path, "graphs")
    adjacency = (_jsonl_graphs(p) if p.suffix == ".jsonl" else
                 _array_file(p, "graphs", "adjacency", (".npz", ".npy", ".jsonl")))
  return _Share(total, start, stop, rows, adjacency)


def _share_graphs(share: _Share, hieramas: system_lib.HieraMAS, graphs_path: str | None) -> np.ndarray:
  """This process's candidate DAGs, checked: the shared pool, or its rows of per-query pools."""
  source = share.graphs
  try:  # indices count from the first query of the file
    if source is None:
      return system_lib.validate_graph_stack(hieramas.candidate_pool(), len(hieramas.roles), batch=share.total)
    if isinstance(source, ArrayFile):
      graph_scoring.check_graph_stack_shape(source.shape, source.dtype, len(hieramas.roles), batch=share.total)
      source = source.rows(share.start, share.stop) if len(source.shape) == 4 else source.read()
    return system_lib.validate_graph_stack(source, len(hieramas.roles), first_query=share.start)
  except graphs.InvalidGraphError as e:
    raise InputError(f"graphs from {graphs_path or 'the candidate pool'}: {e}") from None


def score_files(workdir: str | pathlib.Path, out: str | pathlib.Path, *, queries: str | None = None,
                embeddings: str | None = None, graphs_path: str | None = None, batch_size: int = 64,
                hieramas: system_lib.HieraMAS | None = None) -> dict[str, Any]:
  """Reads the inputs, scores them, writes ``out``; returns a summary (also printed by ``main``).

  Every input is checked (and the output suffix too) before any scoring. In a
  multi-process run every process calls it: each scores its share of the
  batches and process 0 writes ``out`` (see the module docstring).
  """
  if (queries is None) == (embeddings is None):
    raise InputError("give exactly one of --queries (texts) and --embeddings (precomputed [B, D] vectors)")
  if pathlib.Path(out).suffix not in OUTPUT_SUFFIXES:
    raise InputError(f"output file {out} must end in one of {OUTPUT_SUFFIXES}")
  if batch_size < 1:
    raise InputError(f"--batch_size={batch_size}; it must be >= 1")

  def read():
    share = _read_share(queries, embeddings, graphs_path, batch_size)
    shape = share.graphs.shape if share.graphs is not None else None
    return share, (share.total, shape, None if queries is not None else share.queries.shape[1:])

  share, seen = _together(read, "score_graphs/read")
  if len(set(seen)) > 1:  # hosts with different copies of the inputs would score the wrong rows
    raise InputError("the processes read different inputs ((queries, graphs shape, embedding shape) per process: "
                     f"{seen}); give every process the same --queries/--embeddings and --graphs files")

  def load():
    # One writer of the workdir's embedding cache (SQLite is not safe for writers on several hosts): process 0's.
    overrides = None if distributed.is_primary() else {"encoder.cache": False}
    system = hieramas if hieramas is not None else system_lib.HieraMAS.from_workdir(workdir, overrides=overrides)
    if not system.has_classifier:
      raise InputError(f"{workdir} has no graph classifier ({system.graph_choice_reason}); run stage 2 first")
    if queries is None and share.queries.shape[1] != system.encoder.dim:
      raise InputError(f"embeddings in {embeddings} have shape {(share.total, share.queries.shape[1])}; expected "
                       f"[B, {system.encoder.dim}], the size of the workdir's encoder {system.encoder.encoder_id!r}")
    return (system, _share_graphs(share, system, graphs_path)), system.num_devices

  (hieramas, adjacency), devices = _together(load, "score_graphs/load")
  start = time.perf_counter()
  scores, texts = score_and_gather(hieramas, share.queries, adjacency, share.total, batch_size)
  seconds = time.perf_counter() - start

  def write():
    if distributed.is_primary():
      write_scores(out, scores, texts)
    return None, None

  _together(write, "score_graphs/write")
  k = adjacency.shape[-3]
  return {"queries": share.total, "graphs": int(k), "devices": int(sum(devices)),
          "processes": distributed.process_count(), "platform": jax.local_devices()[0].platform, "seconds": seconds,
          "scores_per_s": share.total * k / seconds if seconds > 0 else float("inf"), "out": str(out)}


def define_flags() -> None:
  """Defines the command's flags (the multi-host ones come with ``launch.multihost``).

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
  multihost.join("score_graphs")  # before any device is touched
  try:
    summary = score_files(f.workdir, f.out, queries=f.queries, embeddings=f.embeddings, graphs_path=f.graphs,
                          batch_size=f.batch_size)
  except (OSError, ValueError) as e:  # InputError, InvalidGraphError, config errors, an unwritable --out
    # Every process raised the same error at the same step: they leave together (process 0, the coordinator,
    # last; leaving at once could abort a process still talking to it) and each prints the line.
    distributed.finish()
    sys.exit(f"score_graphs: error: {e}")
  if distributed.is_primary():
    where = (f"{summary['devices']} {summary['platform']} device(s)" if summary["processes"] == 1 else
             f"{summary['devices']} {summary['platform']} device(s) of {summary['processes']} processes")
    print(f"scored {summary['queries']} queries x {summary['graphs']} graphs on {where} in "
          f"{summary['seconds']:.2f} s ({summary['scores_per_s']:.0f} scores/s, embedding included); wrote "
          f"{summary['out']}")
  distributed.finish()


if __name__ == "__main__":
  define_flags()
  app.run(main)
