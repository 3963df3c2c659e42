"""Metrics to JSONL (always) and TensorBoard (when tensorboardX or torch's writer is installed)."""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any, Mapping


class MetricWriter:
  """Appends one JSON object per call to ``metrics.jsonl`` in the workdir."""

  def __init__(self, workdir: str | pathlib.Path, *, tensorboard: bool = True):
    self.path = pathlib.Path(workdir) / "metrics.jsonl"
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self._file = open(self.path, "a", encoding="utf-8")
    self._tb = None
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
    row = {"stage": stage, "step": int(step), "time": round(time.time(), 3)}
    row.update({k: (float(v) if hasattr(v, "__float__") else v) for k, v in values.items()})
    self._file.write(json.dumps(row) + "\n")
    self._file.flush()
    if self._tb is not None:
      for k, v in values.items():
        if hasattr(v, "__float__"):
          self._tb.add_scalar(f"{stage}/{k}", float(v), int(step))

  def close(self) -> None:
    self._file.close()
    if self._tb is not None:
      self._tb.close()
