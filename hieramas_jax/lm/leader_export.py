"""A trained leader as a folder the ``local`` backend can load: weights, decoder config, tokenizer reference.

Layout of a leader folder (written by ``save_leader``, read by ``load_leader``):

  leader.json           {"format": "hieramas-leader", "version": 1, "decoder_config": {...},
                         "tokenizer": {"kind": "byte"} | {"kind": "gguf" | "hf_dir", "path": "..."},
                         "dtype": "float32", "info": {...}}
  params.safetensors    the parameter dict of ``lm.decoder``, flattened with '.' ("layers.wq")

The tokenizer is referenced, not copied: a byte tokenizer needs nothing, a
GGUF or Hugging Face tokenizer is read again from the base model's file (the
file the leader was trained from), so a leader folder is small beside its
weights. ``is_leader_dir`` tells ``lm.weights.load_model`` to come here.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import numpy as np

from hieramas_jax.lm import config as config_lib
from hieramas_jax.lm.byte_tokenizer import ByteTokenizer

FORMAT = "hieramas-leader"
VERSION = 1
META_NAME = "leader.json"
PARAMS_NAME = "params.safetensors"
TOKENIZER_KINDS = ("byte", "gguf", "hf_dir")


def is_leader_dir(path: str | os.PathLike[str]) -> bool:
  """Whether ``path`` is a folder written by ``save_leader``."""
  return (pathlib.Path(path) / META_NAME).is_file()


def _flatten(params: dict[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
  out = {}
  for name, value in params.items():
    key = f"{prefix}{name}"
    if isinstance(value, dict):
      out.update(_flatten(value, key + "."))
    else:
      out[key] = np.asarray(value)
  return out


def _unflatten(flat: dict[str, np.ndarray]) -> dict[str, Any]:
  out: dict[str, Any] = {}
  for key, value in flat.items():
    node = out
    *parents, leaf = key.split(".")
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return out


def tokenizer_reference(tokenizer: Any, source: str | os.PathLike[str] | None) -> dict[str, str]:
  """How a saved leader finds its tokenizer again: 'byte', or the base model's GGUF file / HF folder."""
  if isinstance(tokenizer, ByteTokenizer):
    return {"kind": "byte"}
  if source is None:
    raise ValueError("tokenizer_reference: a non-byte tokenizer needs the base model's path (its .gguf file or "
                     "Hugging Face folder) to be found again")
  path = pathlib.Path(source).absolute()
  return {"kind": "gguf" if path.suffix == ".gguf" else "hf_dir", "path": str(path)}


def save_leader(directory: str | os.PathLike[str], cfg: config_lib.DecoderConfig, params: dict[str, Any],
                tokenizer_ref: dict[str, str], *, info: dict[str, Any] | None = None) -> pathlib.Path:
  """Writes a leader folder (atomically per file: a reader never sees half a file)."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top

  if tokenizer_ref.get("kind") not in TOKENIZER_KINDS:
    raise ValueError(f"save_leader: tokenizer kind {tokenizer_ref.get('kind')!r}; expected one of {TOKENIZER_KINDS}")
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  flat = _flatten(params)
  dtypes = {str(v.dtype) for v in flat.values()}
  if len(dtypes) != 1:
    raise ValueError(f"save_leader: parameters of mixed dtypes {sorted(dtypes)}; cast them to one dtype first")
  dtype = dtypes.pop()
  if dtype == "bfloat16":  # safetensors.numpy knows no ml_dtypes' bfloat16: stored as float32, loaded back as asked
    flat = {k: v.astype(np.float32) for k, v in flat.items()}
  tmp = directory / (PARAMS_NAME + ".tmp")
  save_file(flat, str(tmp))
  os.replace(tmp, directory / PARAMS_NAME)
  meta = {"format": FORMAT, "version": VERSION, "decoder_config": cfg.to_dict(), "tokenizer": dict(tokenizer_ref),
          "dtype": dtype, "info": dict(info or {})}
  tmp = directory / (META_NAME + ".tmp")
  tmp.write_text(json.dumps(meta, indent=1, sort_keys=True))
  os.replace(tmp, directory / META_NAME)
  return directory


def load_tokenizer(ref: dict[str, str]) -> Any:
  """The tokenizer a leader folder references."""
  kind = ref.get("kind")
  if kind == "byte":
    return ByteTokenizer()
  from hieramas_jax.lm import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(ref.get("path", ""))
  if not path.exists():
    raise FileNotFoundError(f"the leader's tokenizer comes from its base model {path}, which does not exist; put "
                            "the base model back there or edit 'tokenizer.path' in leader.json")
  return tokenizer_lib.Tokenizer.from_gguf(path) if kind == "gguf" else tokenizer_lib.Tokenizer.from_dir(path)


def load_leader(directory: str | os.PathLike[str], dtype: Any = None) -> tuple[config_lib.DecoderConfig,
                                                                               dict[str, Any], Any]:
  """(DecoderConfig, params, tokenizer) of a leader folder; ``dtype`` (e.g. jnp.bfloat16) casts the weights."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top

  directory = pathlib.Path(directory)
  if not is_leader_dir(directory):
    raise FileNotFoundError(f"{directory} is not a leader folder (no {META_NAME}); train one with "
                            "`python -m launch.train_leader` (it writes <workdir>/leader)")
  meta = json.loads((directory / META_NAME).read_text())
  if meta.get("format") != FORMAT or int(meta.get("version", 0)) > VERSION:
    raise ValueError(f"{directory / META_NAME}: format {meta.get('format')!r} version {meta.get('version')!r}; "
                     f"this code reads {FORMAT!r} up to version {VERSION}: update hieramas_jax")
  cfg = config_lib.DecoderConfig.from_dict(meta["decoder_config"])
  target = jnp.dtype(dtype if dtype is not None else meta.get("dtype", "float32"))
  flat = load_file(str(directory / PARAMS_NAME))
  params = _unflatten({k: jnp.asarray(v, dtype=target) for k, v in flat.items()})
  return cfg, params, load_tokenizer(meta["tokenizer"])
