"""The Llama / Qwen3 decoder (hieramas_jax.lm): forward against an independent NumPy model, RoPE, GQA,
the KV cache, padding, generation (greedy, sampling, top-p, stop ids), no recompilation, token log-probs."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hieramas_jax.lm import config as config_lib
from hieramas_jax.lm import decoder
from hieramas_jax.lm import generate as gen

ARCHS = ('llama', 'qwen3')


def random_params(cfg, seed=0):
  """Parameters large enough that every part (RoPE, norms, attention) moves the logits, norm weights not 1."""
  params = decoder.init_params(cfg, jax.random.key(seed))
  rng = np.random.default_rng(seed)

  def scale(path, value):
    name = jax.tree_util.keystr(path)
    if 'norm' in name:
      return jnp.asarray(1.0 + 0.2 * rng.standard_normal(value.shape), jnp.float32)
    return value * 6.0  # std 0.12

  return jax.tree_util.tree_map_with_path(scale, params)


def reference_logits(params, cfg, tokens, theta=None):
  """Logits [T, V] of one unpadded row at positions 0..T-1, in float64 NumPy, repeating K/V per query head.

  Written apart from the JAX code: RoPE as complex multiplication of (x_i + i x_{i+hd/2}) by
  exp(i * pos * theta^(-2i/hd)), GQA with np.repeat, attention one head at a time.
  """
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  layers = p['layers']
  theta = cfg.rope_theta if theta is None else theta
  length, hd, groups = len(tokens), cfg.head_dim, cfg.num_heads // cfg.num_kv_heads

  def norm(x, weight):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + cfg.rms_norm_eps) * weight

  angles = np.arange(length)[:, None] * theta ** (-np.arange(0, hd, 2) / hd)[None, :]

  def rope(x):  # x [T, H, hd]
    z = (x[..., :hd // 2] + 1j * x[..., hd // 2:]) * np.exp(1j * angles)[:, None, :]
    return np.concatenate([z.real, z.imag], axis=-1)

  x = p['embed'][np.asarray(tokens)]
  causal = np.tril(np.ones((length, length), bool))
  for i in range(cfg.num_layers):
    h = norm(x, layers['attn_norm'][i])
    q = (h @ layers['wq'][i]).reshape(length, cfg.num_heads, hd)
    k = (h @ layers['wk'][i]).reshape(length, cfg.num_kv_heads, hd)
    v = (h @ layers['wv'][i]).reshape(length, cfg.num_kv_heads, hd)
    if cfg.qk_norm:
      q, k = norm(q, layers['q_norm'][i]), norm(k, layers['k_norm'][i])
    q, k = rope(q), rope(k)
    k, v = np.repeat(k, groups, axis=1), np.repeat(v, groups, axis=1)
    heads = []
    for head in range(cfg.num_heads):
      scores = np.where(causal, q[:, head] @ k[:, head].T / np.sqrt(hd), -np.inf)
      weights = np.exp(scores - scores.max(-1, keepdims=True))
      heads.append((weights / weights.sum(-1, keepdims=True)) @ v[:, head])
    x = x + np.concatenate(heads, axis=-1) @ layers['wo'][i]
    h = norm(x, layers['mlp_norm'][i])
    gate = h @ layers['w_gate'][i]
    x = x + (gate / (1 + np.exp(-gate)) * (h @ layers['w_up'][i])) @ layers['w_down'][i]
  x = norm(x, p['final_norm'])
  return x @ (p['embed'].T if cfg.tie_embeddings else p['lm_head'])


# Jitted once per config: eager scans recompile their body on every call.
_jit_forward = jax.jit(decoder.forward, static_argnames='cfg')
_jit_token_logprobs = jax.jit(gen.token_logprobs, static_argnames='cfg')


def full_logits(params, cfg, tokens, padded_length=32):
  """Logits [T, V] of one row from one cache-free forward; zeros after the row are invisible (causal)."""
  padded = np.zeros((1, padded_length), np.int32)
  padded[0, :len(tokens)] = tokens
  logits, _ = _jit_forward(params, cfg, padded, np.arange(padded_length)[None])
  return np.asarray(logits[0, :len(tokens)])


def test_config_round_trips_hashes_and_rejects_bad_values():
  cfg = config_lib.tiny('llama', rope_scaling={'rope_type': 'linear', 'factor': 2.0})
  assert config_lib.DecoderConfig.from_dict(cfg.to_dict()) == cfg
  assert hash(cfg) == hash(config_lib.tiny('llama', rope_scaling={'factor': 2.0, 'rope_type': 'linear'}))
  assert hash(cfg) != hash(config_lib.tiny('llama'))
  with pytest.raises(ValueError, match='unknown keys'):
    config_lib.DecoderConfig.from_dict({**cfg.to_dict(), 'rope_thetaa': 1.0})
  with pytest.raises(ValueError, match='multiple of num_kv_heads'):
    config_lib.tiny(num_heads=4, num_kv_heads=3)
  with pytest.raises(ValueError, match='not supported'):
    config_lib.tiny(rope_scaling={'rope_type': 'yarn', 'factor': 4.0})
  with pytest.raises(ValueError, match='lacks'):
    config_lib.tiny(rope_scaling={'rope_type': 'llama3', 'factor': 8.0})


@pytest.mark.parametrize('arch', ARCHS)
def test_forward_equals_an_independent_numpy_model(arch):
  cfg = config_lib.tiny(arch)
  params = random_params(cfg)
  tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, 12)
  ours = full_logits(params, cfg, tokens)
  reference = reference_logits(params, cfg, tokens)
  scale = np.abs(reference).max()
  assert scale > 1.0
  np.testing.assert_allclose(ours, reference, atol=2e-5 * scale, rtol=0)
  # The comparison sees the theta: the same model with another base frequency is far off.
  assert np.abs(ours - reference_logits(params, cfg, tokens, theta=cfg.rope_theta * 10)).max() > 1e-2 * scale


def test_rope_theta_changes_the_logits_and_matches_the_formula():
  cfg = config_lib.tiny('llama', rope_theta=1e4)
  params = random_params(cfg)
  tokens = np.arange(1, 11)
  other = config_lib.tiny('llama', rope_theta=5e5)
  assert np.abs(full_logits(params, cfg, tokens) - full_logits(params, other, tokens)).max() > 1e-2
  np.testing.assert_allclose(decoder.rope_inv_freq(other), 5e5 ** (-np.arange(0, 16, 2) / 16), rtol=1e-6)
  x = np.random.default_rng(0).standard_normal((2, 5, 3, 16)).astype(np.float32)
  positions = np.array([[0, 1, 2, 3, 4], [7, 9, 100, 1000, 4095]])
  ours = np.asarray(decoder.apply_rope(jnp.asarray(x), jnp.asarray(positions), decoder.rope_inv_freq(other)))
  expected = np.empty_like(x)
  for i in range(8):  # Pair (i, i + 8) rotates by angle position * theta^(-2i/16).
    angle = positions[..., None] * 5e5 ** (-2 * i / 16)
    expected[..., i] = x[..., i] * np.cos(angle) - x[..., i + 8] * np.sin(angle)
    expected[..., i + 8] = x[..., i + 8] * np.cos(angle) + x[..., i] * np.sin(angle)
  np.testing.assert_allclose(ours, expected, atol=2e-4)


def test_rope_scaling_linear_and_llama3_follow_hf():
  base = decoder.rope_inv_freq(config_lib.tiny('llama', head_dim=64, num_heads=2, num_kv_heads=1, rope_theta=5e5))
  linear = decoder.rope_inv_freq(config_lib.tiny(
      'llama', head_dim=64, num_heads=2, num_kv_heads=1, rope_theta=5e5, rope_scaling={'type': 'linear', 'factor': 4}))
  np.testing.assert_allclose(linear, base / 4, rtol=1e-6)
  scaling = {'rope_type': 'llama3', 'factor': 8.0, 'low_freq_factor': 1.0, 'high_freq_factor': 4.0,
             'original_max_position_embeddings': 8192}
  llama3 = decoder.rope_inv_freq(config_lib.tiny(
      'llama', head_dim=64, num_heads=2, num_kv_heads=1, rope_theta=5e5, rope_scaling=scaling))
  for ours, freq in zip(llama3, base.astype(np.float64)):  # HF's rule, one frequency at a time.
    wavelen = 2 * np.pi / freq
    if wavelen < 8192 / 4:
      expected = freq
    elif wavelen > 8192 / 1:
      expected = freq / 8
    else:
      smooth = (8192 / wavelen - 1) / (4 - 1)
      expected = (1 - smooth) * freq / 8 + smooth * freq
    assert ours == pytest.approx(expected, rel=1e-6)
  assert llama3[0] == base[0] and llama3[-1] == pytest.approx(base[-1] / 8, rel=1e-6)
  assert (llama3 < base).sum() > 0 and (llama3 == base).sum() > 0


def test_grouped_attention_equals_repeated_kv():
  rng = np.random.default_rng(0)
  q = rng.standard_normal((2, 5, 6, 8)).astype(np.float32)
  k, v = (rng.standard_normal((2, 7, 2, 8)).astype(np.float32) for _ in range(2))
  mask = rng.random((2, 5, 7)) < 0.7
  mask[..., 0] = True
  ours = np.asarray(decoder.attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(mask)))
  k_rep, v_rep = np.repeat(k, 3, axis=2), np.repeat(v, 3, axis=2)  # HF repeat_kv: head h reads kv head h // 3.
  scores = np.einsum('bthd,bshd->bhts', q, k_rep) / np.sqrt(8)
  scores = np.where(mask[:, None], scores, -np.inf)
  weights = np.exp(scores - scores.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  expected = np.einsum('bhts,bshd->bthd', weights, v_rep).reshape(2, 5, 48)
  np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_qk_norm_weights_matter_only_when_enabled():
  with_norm = config_lib.tiny('llama', qk_norm=True)
  params = random_params(with_norm)
  tokens = np.arange(3, 12)
  doubled = jax.tree.map(lambda a: a, params)
  doubled['layers']['q_norm'] = params['layers']['q_norm'] * 3.0
  assert np.abs(full_logits(params, with_norm, tokens) - full_logits(doubled, with_norm, tokens)).max() > 1e-2
  without = config_lib.tiny('llama', qk_norm=False)
  plain = {**params, 'layers': {k: v for k, v in params['layers'].items() if k not in ('q_norm', 'k_norm')}}
  assert np.abs(full_logits(params, with_norm, tokens) - full_logits(plain, without, tokens)).max() > 1e-2
  with pytest.raises(ValueError, match='q_norm unexpected'):
    decoder.check_params(without, params)


@pytest.mark.parametrize('arch', ARCHS)
def test_nnx_module_round_trips_the_param_dict(arch):
  cfg = config_lib.tiny(arch)
  module = decoder.Decoder(cfg, rngs=nnx.Rngs(3))
  params = module.to_params()
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(
      tuple, decoder.param_shapes(cfg), is_leaf=lambda x: isinstance(x, tuple))
  assert ('lm_head' in params) == (not cfg.tie_embeddings)
  again = decoder.Decoder.from_params(cfg, params).to_params()
  assert jax.tree.all(jax.tree.map(lambda a, b: a is b, params, again))
  tokens = jnp.array([[5, 6, 7, 8]])
  np.testing.assert_allclose(module(tokens)[0][0], full_logits(params, cfg, tokens[0]), atol=1e-5)
  with pytest.raises(ValueError, match='embed has shape'):
    decoder.Decoder.from_params(cfg, {**params, 'embed': params['embed'][:10]})


def test_bfloat16_params_give_float32_logits_close_to_float32():
  cfg = config_lib.tiny('qwen3')
  params = random_params(cfg)
  half = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
  tokens = np.arange(1, 13)[None]
  logits, cache = _jit_forward(half, cfg, tokens, np.arange(12)[None], decoder.init_cache(cfg, 1, 16, jnp.bfloat16))
  assert logits.dtype == jnp.float32 and cache.k.dtype == jnp.bfloat16
  expected = full_logits(params, cfg, tokens[0])
  assert np.abs(np.asarray(logits[0]) - expected).max() < 0.05 * np.abs(expected).max()


@pytest.mark.parametrize('arch', ARCHS)
def test_cached_decode_equals_one_full_forward(arch):
  cfg = config_lib.tiny(arch)
  params = random_params(cfg)
  rng = np.random.default_rng(2)
  sequences = [rng.integers(0, cfg.vocab_size, 11), rng.integers(0, cfg.vocab_size, 9)]
  prompt_lengths = np.array([5, 3])
  prompt = np.zeros((2, 8), np.int32)  # Right-padded prompts of different lengths.
  for row, (seq, length) in enumerate(zip(sequences, prompt_lengths)):
    prompt[row, :length] = seq[:length]
  positions = np.broadcast_to(np.arange(8), (2, 8))
  cache = decoder.init_cache(cfg, 2, 16)
  step = jax.jit(decoder.forward, static_argnames='cfg')
  logits, cache = step(params, cfg, prompt, positions, cache, positions < prompt_lengths[:, None])
  got = [[np.asarray(logits[row, :length])] for row, length in enumerate(prompt_lengths)]
  for i in range(6):  # One token per row per step, each at its own position.
    tokens = np.array([[seq[length + i]] for seq, length in zip(sequences, prompt_lengths)])
    logits, cache = step(params, cfg, tokens, (prompt_lengths + i)[:, None], cache)
    for row in range(2):
      got[row].append(np.asarray(logits[row]))
  for row, seq in enumerate(sequences):
    expected = full_logits(params, cfg, seq[:prompt_lengths[row] + 6])
    np.testing.assert_allclose(np.concatenate(got[row]), expected, atol=1e-5 * np.abs(expected).max())


def test_a_rows_logits_do_not_depend_on_padding_or_other_rows():
  cfg = config_lib.tiny('qwen3')
  params = random_params(cfg)
  rng = np.random.default_rng(4)
  row, other = rng.integers(0, cfg.vocab_size, 7), rng.integers(0, cfg.vocab_size, 10)

  def padded_logits(tokens, mask, index):
    mask = jnp.asarray(mask)
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    logits, _ = _jit_forward(params, cfg, jnp.asarray(tokens), positions, mask=mask)
    return np.asarray(logits[index])[np.asarray(mask[index])]

  alone = padded_logits(row[None], np.ones((1, 7), bool), 0)
  garbage = rng.integers(0, cfg.vocab_size, 3)  # Padding content must not matter either.
  right = np.stack([np.concatenate([row, garbage]), other])
  right_mask = np.stack([np.arange(10) < 7, np.ones(10, bool)])
  left = np.stack([other, np.concatenate([garbage, row])])
  left_mask = np.stack([np.ones(10, bool), np.arange(10) >= 3])
  np.testing.assert_allclose(padded_logits(right, right_mask, 0), alone, atol=1e-5)
  np.testing.assert_allclose(padded_logits(left, left_mask, 1), alone, atol=1e-5)
  lp_alone = _jit_token_logprobs(params, cfg, row[None], np.ones((1, 7), bool))[0]
  lp_left = _jit_token_logprobs(params, cfg, left, left_mask)[1]
  np.testing.assert_allclose(np.asarray(lp_left)[3:], np.asarray(lp_alone), atol=1e-5)
  assert np.all(np.asarray(lp_left)[:3] == 0)


@pytest.mark.parametrize('arch', ARCHS)
def test_greedy_generation_is_the_argmax_of_full_forwards_and_rows_are_independent(arch):
  cfg = config_lib.tiny(arch)
  params = random_params(cfg)
  prompts = [[1, 2, 3, 4, 5], [9, 8, 7]]
  result = gen.generate(params, cfg, prompts, key=None, max_new_tokens=6)
  assert result == gen.generate(params, cfg, prompts, key=None, max_new_tokens=6)
  # Row 1 again beside another companion: its tokens must not change.
  companion = gen.generate(params, cfg, [[2, 2], prompts[1]], key=None, max_new_tokens=6)
  assert companion.tokens[1] == result.tokens[1]
  assert result.finish_reasons == ['length', 'length']
  for prompt, tokens, logprobs in zip(prompts, result.tokens, result.logprobs):
    sequence = list(prompt)
    for token, logprob in zip(tokens, logprobs):
      logits = full_logits(params, cfg, sequence)[-1]
      assert token == int(np.argmax(logits))
      assert logprob == pytest.approx(float(jax.nn.log_softmax(logits)[token]), abs=1e-4)
      sequence.append(token)
    assert len(tokens) == 6


def test_stop_ids_end_rows_independently():
  cfg = config_lib.tiny('llama')
  params = random_params(cfg)
  prompts = [[1, 2, 3, 4, 5], [9, 8, 7]]
  free = gen.generate(params, cfg, prompts, key=None, max_new_tokens=8)
  stop = free.tokens[0][2]
  assert stop not in free.tokens[1] and stop not in free.tokens[0][:2], 'pick prompts whose rows differ'
  stopped = gen.generate(params, cfg, prompts, key=None, max_new_tokens=8, stop_ids=[stop])
  assert stopped.tokens == [free.tokens[0][:2], free.tokens[1]]
  assert stopped.logprobs[0] == free.logprobs[0][:2]
  assert stopped.finish_reasons == ['stop', 'length']


def test_sampling_is_reproducible_per_key_and_tiny_top_p_is_greedy():
  cfg = config_lib.tiny('qwen3')
  params = random_params(cfg)
  prompts = [[1, 2, 3], [4, 5, 6, 7]]
  kwargs = dict(max_new_tokens=8, temperature=1.0, top_p=0.95)
  first = gen.generate(params, cfg, prompts, key=jax.random.key(0), **kwargs)
  assert first == gen.generate(params, cfg, prompts, key=jax.random.key(0), **kwargs)
  assert first.tokens != gen.generate(params, cfg, prompts, key=jax.random.key(1), **kwargs).tokens
  greedy = gen.generate(params, cfg, prompts, key=None, max_new_tokens=8)
  assert gen.generate(params, cfg, prompts, key=jax.random.key(5), max_new_tokens=8, temperature=1.0,
                      top_p=1e-6).tokens == greedy.tokens
  # Log-probs are the raw (temperature 1) model's, as token_logprobs computes them.
  for prompt, tokens, logprobs in zip(prompts, first.tokens, first.logprobs):
    sequence = np.zeros((1, 16), np.int32)  # One right-padded shape for both rows: one compile.
    sequence[0, :len(prompt) + len(tokens)] = prompt + tokens
    expected = _jit_token_logprobs(params, cfg, sequence, sequence > 0)[0, len(prompt) - 1:len(prompt) + len(tokens) - 1]
    np.testing.assert_allclose(logprobs, expected, atol=1e-4)


def test_per_row_keys_make_a_rows_sample_independent_of_its_batch():
  cfg = config_lib.tiny('qwen3')
  params = random_params(cfg)
  kwargs = dict(max_new_tokens=8, temperature=1.0, top_p=0.95)
  keys = jax.random.split(jax.random.key(7), 2)
  first = gen.generate(params, cfg, [[1, 2, 3], [4, 5, 6, 7]], key=keys, **kwargs)
  moved = gen.generate(params, cfg, [[9, 9], [4, 5, 6, 7]], key=jnp.stack([jax.random.key(8), keys[1]]), **kwargs)
  assert moved.tokens[1] == first.tokens[1] and moved.tokens[0] != first.tokens[0]
  with pytest.raises(ValueError, match='one key per prompt'):
    gen.generate(params, cfg, [[1, 2, 3]], key=keys, **kwargs)


def test_top_p_keeps_the_smallest_nucleus():
  logits = jnp.log(jnp.array([[0.2, 0.5, 0.3], [0.2, 0.5, 0.3]]))
  kept = np.asarray(gen._top_p_filter(logits, jnp.array([[0.6], [0.5]]))) > decoder.MASKED_LOGIT / 2
  np.testing.assert_array_equal(kept, [[False, True, True], [False, True, False]])


def test_new_prompts_lengths_budgets_and_settings_in_one_bucket_do_not_recompile():
  cfg = config_lib.tiny('llama', vocab_size=271)  # A config no other test compiles.
  params = random_params(cfg)
  before = gen.TRACE_COUNTS['generate']
  # Two rows each time (one batch bucket), prompts within 8 tokens, budgets within 8, up to 4 stop ids.
  calls = [([[1, 2, 3], [2]], 5, 0.7, 0.9, (), 0), ([[4] * 8, [5, 6]], 8, 1.3, 0.5, (7,), 1),
           ([[9, 9, 9, 9, 9], [1, 2, 3, 4, 5, 6, 7]], 6, 0.2, 0.99, (1, 2, 3), 2)]
  for prompts, budget, temperature, top_p, stop_ids, seed in calls:
    gen.generate(params, cfg, prompts, key=jax.random.key(seed), max_new_tokens=budget, temperature=temperature,
                 top_p=top_p, stop_ids=stop_ids)
  gen.generate(random_params(cfg, seed=1), cfg, [[3, 3], [4]], key=jax.random.key(0), max_new_tokens=7,
               temperature=1.0, top_p=0.8)
  assert gen.TRACE_COUNTS['generate'] - before == 1

  @jax.jit
  @chex.assert_max_traces(n=1)
  def logits_of(params, tokens, positions):
    return decoder.forward(params, cfg, tokens, positions)[0]

  for seed in range(3):
    tokens = np.random.default_rng(seed).integers(0, cfg.vocab_size, (2, 6))
    logits_of(params, tokens, np.broadcast_to(np.arange(seed, seed + 6), (2, 6)))


@pytest.mark.slow  # 6-10 s: CI runs it with the slow set (the default run stays under 10 minutes)
def test_token_logprobs_gradient_is_finite_and_matches_finite_differences():
  cfg = config_lib.tiny('qwen3')
  params = random_params(cfg)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 9)))
  mask = jnp.asarray(np.stack([np.ones(9, bool), np.arange(9) >= 2]))

  @jax.jit
  def objective(p):
    return gen.token_logprobs(p, cfg, tokens, mask).sum()

  grads = jax.jit(jax.grad(objective))(params)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
  assert float(jnp.abs(grads['layers']['wq']).max()) > 0 and float(jnp.abs(grads['layers']['q_norm']).max()) > 0
  direction = jax.tree.map(lambda g: g / jnp.sqrt(sum(jnp.sum(x * x) for x in jax.tree.leaves(grads))), grads)
  eps = 1e-2
  shifted = [objective(jax.tree.map(lambda p, d, s=s: p + s * eps * d, params, direction)) for s in (1, -1)]
  numeric = (shifted[0] - shifted[1]) / (2 * eps)
  analytic = sum(jnp.sum(g * d) for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(direction)))
  assert float(numeric) == pytest.approx(float(analytic), rel=2e-2)


def test_generate_rejects_bad_requests_with_the_fix():
  cfg = config_lib.tiny('llama', max_position_embeddings=32)
  params = decoder.init_params(cfg, jax.random.key(0))
  with pytest.raises(ValueError, match='is empty'):
    gen.generate(params, cfg, [[1], []], key=None, max_new_tokens=2)
  with pytest.raises(ValueError, match='needs key'):
    gen.generate(params, cfg, [[1]], key=None, max_new_tokens=2, temperature=0.5)
  with pytest.raises(ValueError, match='top_p'):
    gen.generate(params, cfg, [[1]], key=None, max_new_tokens=2, top_p=0.0)
  with pytest.raises(ValueError, match='max_position_embeddings'):
    gen.generate(params, cfg, [[1] * 30], key=None, max_new_tokens=5)
  with pytest.raises(ValueError, match=r'\[0, 259\)'):
    gen.generate(params, cfg, [[1, 300]], key=None, max_new_tokens=2)
