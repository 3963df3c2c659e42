"""Typed settings of the baseline methods: which flag or config field feeds each option.

A method's settings are a frozen dataclass; each field made with :func:`option`
names the command-line flag that sets it (shared flags, e.g. ``baseline_model``,
set the same option of several methods), the config field that fills it when
the flag is empty or absent, and whether it must be a model of the pool.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

_KEY = "hieramas_option"
# Help of a model flag shared by several methods ({methods}: the methods sharing it).
MODEL_HELP = "Model of {methods} (default: the config's llm.decision_model)."


@dataclasses.dataclass(frozen=True)
class Option:
  """Where a settings field's value comes from.

  Attributes:
    flag: the launcher flag that sets it (None: not a flag).
    config: dotted config path that fills it when the flag is empty or absent.
    help: the flag's help; ``{methods}`` becomes the methods that share the flag.
    pool_model: the value must be a model of the pool.
  """

  flag: str | None = None
  config: str | None = None
  help: str = ""
  pool_model: bool = False


def option(default: Any, *, flag: str | None = None, config: str | None = None, help_text: str = "",
           pool_model: bool = False) -> Any:
  """A settings field with its default and the flag / config field that feed it (see Option)."""
  meta = {_KEY: Option(flag=flag, config=config, help=help_text, pool_model=pool_model)}
  return dataclasses.field(default=default, metadata=meta)


def model_option(flag: str = "baseline_model") -> Any:
  """The pool model most methods run (``--baseline_model``, or ``flag``); default: the config's llm.decision_model."""
  return option("", flag=flag, config="llm.decision_model", help_text=MODEL_HELP, pool_model=True)


def option_of(field: dataclasses.Field) -> Option | None:
  """The field's Option, None for a plain field (set only from Python)."""
  return field.metadata.get(_KEY)


def check_positive(settings: Any, *names: str) -> None:
  """Raises ValueError naming the field (and its flag) when one of ``names`` is below 1."""
  by_name = {f.name: f for f in dataclasses.fields(settings)}
  for name in names:
    value = getattr(settings, name)
    if int(value) < 1:
      opt = option_of(by_name[name])
      via = f" (--{opt.flag})" if opt and opt.flag else ""
      raise ValueError(f"{name}={value}{via}; it must be >= 1")


def as_tuple(value: Any) -> Any:
  """Lists (e.g. from a config) as tuples, so settings stay hashable and comparable."""
  return tuple(value) if isinstance(value, list) else value


def settle(settings: Any, *, tuples: Sequence[str] = (), positive: Sequence[str] = ()) -> None:
  """A settings dataclass's ``__post_init__``: ``tuples`` fields (one model or several) as tuples, ``positive`` >= 1."""
  for name in tuples:
    object.__setattr__(settings, name, as_tuple(getattr(settings, name)))
  check_positive(settings, *positive)


def config_value(config: Any, path: str) -> Any:
  """``config`` at the dotted ``path``; None when a part is missing."""
  value = config
  for key in path.split("."):
    try:
      value = value[key]
    except (KeyError, TypeError, AttributeError):
      return None
  return as_tuple(value)


def resolve(settings_type: type, flags: Mapping[str, Any], config: Any = None,
            presets: Mapping[str, Any] | None = None) -> Any:
  """Settings of one method from flag values and a config.

  Per field: a preset of the method's registry entry wins; else the flag's value
  when given and not empty; else the config field; else the dataclass default.
  """
  values = dict(presets or {})
  for field in dataclasses.fields(settings_type):
    opt = option_of(field)
    if field.name in values or opt is None:
      continue
    value = flags.get(opt.flag) if opt.flag else None
    if value in (None, "") and opt.config and config is not None:
      value = config_value(config, opt.config)
    if value not in (None, ""):
      values[field.name] = as_tuple(value)
  return settings_type(**values)
