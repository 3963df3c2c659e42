"""The launchers' command line: ``--config`` flags parsed with one-line errors.

``launch/*.py`` run ``app.run(main, flags_parser=config.parse_flags)``; ``hieramas_jax.config``
re-exports ``parse_flags``, ``describe_flag_error`` and ``one_line``.
"""

from __future__ import annotations

import difflib
import pathlib
import sys
import traceback
from typing import Any, Sequence

from absl import flags
import ml_collections

def parse_flags(argv: Sequence[str], config_flag: str = "config",
                flag_values: flags.FlagValues | None = None) -> list[str]:
  """absl ``flags_parser`` of the launchers: ``app.run(main, flags_parser=config.parse_flags)``.

  A flag error (a config file that fails to load, an unknown field, a value of
  the wrong type) prints one line on stderr and exits with status 1.
  ``flag_values`` defaults to absl's global FLAGS.
  """
  values = flags.FLAGS if flag_values is None else flag_values
  try:
    args = values(list(argv))
    # A config file that fails to import leaves a placeholder that raises only when first read: read it now.
    value = values[config_flag].value if config_flag in values else None
    if type(value).__name__ == "_ErrorConfig":  # ml_collections' private placeholder class
      value.lock()  # raises the deferred loading error
    return args
  except Exception as e:  # pylint: disable=broad-except  # any failure while reading the user's flags
    print(f"{_program(argv)}: {describe_flag_error(argv, e, config_flag)}", file=sys.stderr)
    raise SystemExit(1) from None


def _program(argv: Sequence[str]) -> str:
  """'launch.train' for .../launch/train.py (as ``python -m launch.train`` runs it)."""
  path = pathlib.Path(argv[0]) if argv else pathlib.Path("launch")
  return f"{path.parent.name}.{path.stem}" if path.parent.name else path.stem


def describe_flag_error(argv: Sequence[str], error: BaseException, config_flag: str = "config") -> str:
  """One line saying what is wrong with the command line's config flags and what to change."""
  from hieramas_jax import config as config_lib  # pylint: disable=g-import-not-at-top  (it imports this module)

  spec, overrides = _config_args(argv, config_flag)
  if spec is not None:
    path, _, arg = spec.partition(":")
    try:
      config = config_lib.load_config_file(path, arg or None)
    except Exception as e:  # pylint: disable=broad-except  # the config file is the user's code
      if isinstance(e, (config_lib.ConfigError, FileNotFoundError)):
        return f"--{config_flag}={spec}: {one_line(e)}"
      lines = [f.lineno for f in traceback.extract_tb(e.__traceback__)
               if pathlib.Path(f.filename).resolve() == pathlib.Path(path).resolve()]
      where = f" (line {lines[-1]} of {path})" if lines else ""
      return f"--{config_flag}={spec}: {type(e).__name__}{where}: {one_line(e)}"
    for field, text in overrides:
      problem = unknown_field(config, field)
      if problem:
        return f"--{config_flag}.{field}{'=' + text if text is not None else ''}: {problem}"
  return one_line(error)


def one_line(error: BaseException) -> str:
  """The message of ``error`` on one line (for an embedded traceback, its last line)."""
  lines = [" ".join(line.split()) for line in str(error).splitlines() if line.strip()]
  if any(line.startswith("Traceback (most recent call last)") for line in lines):
    lines = lines[-1:]
  text = "; ".join(line for line in lines if not line.startswith("Pass --helpshort"))
  return text or type(error).__name__


def _config_args(argv: Sequence[str], config_flag: str) -> tuple[str | None, list[tuple[str, str | None]]]:
  """(--config value, [(overridden field, value)]) from the raw command line."""
  spec, overrides = None, []
  prefix = f"--{config_flag}"
  args = list(argv[1:])
  for i, token in enumerate(args):
    if token == "--":
      break
    name, eq, value = token.partition("=")
    following = args[i + 1] if not eq and i + 1 < len(args) and not args[i + 1].startswith("-") else None
    if name == prefix:
      spec = value if eq else following
    elif name.startswith(prefix + "."):
      overrides.append((name[len(prefix) + 1:], value if eq else following))
  return spec, overrides


def unknown_field(config: ml_collections.ConfigDict, field: str) -> str | None:
  """Why ``field`` names no field of ``config`` (with the closest names), or None when it does."""
  node: Any = config
  walked = []
  for key in field.split("."):
    if isinstance(node, (list, tuple)) and key.isdigit() and int(key) < len(node):
      node = node[int(key)]
    elif isinstance(node, ml_collections.ConfigDict) and key in node:
      node = node[key]
    elif isinstance(node, ml_collections.ConfigDict):
      where = ".".join(walked) or "the config"
      names = sorted(node.keys())
      close = difflib.get_close_matches(key, names, n=1)
      hint = f"did you mean {'.'.join(walked + close)}? " if close else ""
      return f"unknown config field {field!r}: {where} has no {key!r}; {hint}its fields: {', '.join(names)}"
    else:
      return None  # inside a plain value (a dict entry, say): ml_collections' own message says more
    walked.append(key)
  return None
