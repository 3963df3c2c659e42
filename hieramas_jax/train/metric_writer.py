"""Metrics to JSONL (always) and TensorBoard (when tensorboardX or torch's writer is installed).

``metrics.jsonl`` is strict JSON, one object a line: NaN and infinities are
written as null (``json.loads`` in any language reads every line). A resumed
run drops the rows of the steps it repeats (``truncate_stage``), so each
(stage, step) appears once. In a multi-host run process 0 alone writes (the
workdir is one folder every process sees); on the others the writer is a no-op.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import time
from typing import Any, Mapping

from hieramas_jax import distributed
from hieramas_jax.jsonio import strict_json_value


def _number_or_value(value: Any) -> Any:
  if hasattr(value, "__float__") and not isinstance(value, str):
    return strict_json_value(float(value))
  return strict_json_value(value)


class MetricWriter:
  """Appends one JSON object per call to ``metrics.jsonl`` in the workdir.

  ``enabled`` (default: this is process 0 of the run, ``distributed.is_primary``)
  False makes every method a no-op, so each process of a multi-host run calls
  the writer alike and the file gets each row once.
  """

  def __init__(self, workdir: str | pathlib.Path, *, tensorboard: bool = True, enabled: bool | None = None):
    self.path = pathlib.Path(workdir) / "metrics.jsonl"
    self.enabled = distributed.is_primary() if enabled is None else bool(enabled)
    self._tb = None
    if not self.enabled:
      return
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self._file = open(self.path, "a", encoding="utf-8")
    if self._file.tell() and _last_byte(self.path) != b"\n":
      self._file.write("\n")  # a killed run's cut last line must not swallow this run's first row
    self._earlier_bytes = self._file.tell()  # rows before this offset were written by earlier runs
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      except ImportError:
        try:
          from torch.utils.tensorboard import SummaryWriter  # pylint: disable=g-import-not-at-top
        except ImportError:
          SummaryWriter = None
      if SummaryWriter is not None:
        self._tb = SummaryWriter(str(pathlib.Path(workdir) / "tensorboard"))

  @property
  def tensorboard_dir(self) -> pathlib.Path | None:
    return None if self._tb is None else self.path.parent / "tensorboard"

  def write(self, stage: str, step: int, values: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    row = {"stage": stage, "step": int(step), "time": round(time.time(), 3)}
    row.update({str(k): _number_or_value(v) for k, v in values.items()})
    self._file.write(json.dumps(row, allow_nan=False) + "\n")
    self._file.flush()
    if self._tb is not None:
      for k, v in values.items():
        if hasattr(v, "__float__") and math.isfinite(float(v)):
          self._tb.add_scalar(f"{stage}/{k}", float(v), int(step))

  def truncate_stage(self, stage: str, restored_step: int) -> int:
    """Drops earlier runs' rows of ``stage`` that this run repeats; returns how many went.

    Those are the rows after ``restored_step`` (the step training resumes from,
    0 for a fresh start) and the rows of steps this run has already written
    again. Rows of other stages, and this run's rows, stay. A line that is not
    JSON (the last one of a killed run, cut mid-write) goes too.
    """
    if not self.enabled:
      return 0
    self._file.flush()
    with open(self.path, "rb") as f:
      earlier, ours = f.read(self._earlier_bytes), f.read()
    rewritten = {(r.get("stage"), r.get("step")) for r in _rows(ours)}
    kept, dropped = [], 0
    for line in earlier.decode("utf-8", errors="replace").splitlines():
      try:
        row = json.loads(line) if line.strip() else None
      except ValueError:
        row = None
      if not isinstance(row, dict):
        dropped += bool(line.strip())
        continue
      repeated = row.get("stage") == stage and (not isinstance(row.get("step"), int) or row["step"] > restored_step
                                                or (stage, row["step"]) in rewritten)
      if repeated:
        dropped += 1
      else:
        kept.append(line + "\n")
    if not dropped:
      return 0
    head = "".join(kept).encode("utf-8")
    tmp = self.path.with_name(self.path.name + ".tmp")
    tmp.write_bytes(head + ours)
    self._file.close()
    os.replace(tmp, self.path)
    self._file = open(self.path, "a", encoding="utf-8")
    self._earlier_bytes = len(head)
    return dropped

  def close(self) -> None:
    if not self.enabled:
      return
    self._file.close()
    if self._tb is not None:
      self._tb.close()


def _last_byte(path: pathlib.Path) -> bytes:
  with open(path, "rb") as f:
    f.seek(-1, os.SEEK_END)
    return f.read(1)


def _rows(data: bytes) -> list[dict]:
  out = []
  for line in data.decode("utf-8", errors="replace").splitlines():
    try:
      row = json.loads(line)
    except ValueError:
      continue
    if isinstance(row, dict):
      out.append(row)
  return out
