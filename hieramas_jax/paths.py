"""Where the optional benchmark files live.

The project runs without them (synthetic task); when present they sit in
``../shared/data`` beside the checkout, or wherever ``HIERAMAS_DATA`` points.
"""

from __future__ import annotations

import os
import pathlib

_REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def default_data_dir() -> pathlib.Path | None:
  """The benchmark data folder, or None when there is none."""
  env = os.environ.get("HIERAMAS_DATA")
  if env:
    return pathlib.Path(env)
  candidate = _REPO_ROOT.parent / "shared" / "data"
  return candidate if candidate.is_dir() else None


def require_data_file(relative: str) -> pathlib.Path:
  """Path of a benchmark file, with an error that says how to provide it."""
  root = default_data_dir()
  if root is None or not (root / relative).exists():
    where = root if root is not None else "../shared/data (absent)"
    raise FileNotFoundError(
        f"benchmark file {relative!r} not found under {where}; set HIERAMAS_DATA to the folder "
        "that holds it, pass an explicit path, or use the synthetic task")
  return root / relative
