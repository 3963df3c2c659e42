"""Strict JSON: what every parser reads (NaN and infinities as null, numpy and jax numbers as plain ones)."""

from __future__ import annotations

import json
import math
from typing import Any, Mapping


def strict_json_value(value: Any) -> Any:
  """``value`` with NaN / infinities as None and numbers (numpy and jax scalars too) as Python floats or ints."""
  if isinstance(value, Mapping):
    return {str(k): strict_json_value(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [strict_json_value(v) for v in value]
  if isinstance(value, (bool, int, str)) or value is None:
    return value
  if hasattr(value, "tolist"):  # numpy / jax arrays and scalars
    return strict_json_value(value.tolist())
  if hasattr(value, "__float__"):
    value = float(value)
    return value if math.isfinite(value) else None
  return str(value)


def strict_json(value: Any, indent: int | None = 2) -> str:
  """JSON text of ``value`` after :func:`strict_json_value`."""
  return json.dumps(strict_json_value(value), indent=indent, allow_nan=False)
