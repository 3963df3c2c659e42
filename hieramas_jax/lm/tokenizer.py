"""The tokenizer of a local model: a ``tokenizers`` BPE and the model's own chat template.

Built from either source a model file carries:

* a GGUF file's metadata (``Tokenizer.from_gguf``): llama.cpp's ``tokenizer.ggml.*`` keys
  (vocabulary, merges, token types, bos/eos ids, add-bos flag, pre-tokenizer name) and
  ``tokenizer.chat_template``. Byte-level BPE (``tokenizer.ggml.model == 'gpt2'``, the
  vocabulary of Llama 3, Qwen and SmolLM) is supported; the text is split before BPE
  the way llama.cpp splits it for the named pre-tokenizer.
* a Hugging Face directory (``Tokenizer.from_dir``): ``tokenizer.json`` as it is, and
  ``tokenizer_config.json`` for the chat template and the bos/eos tokens
  (``generation_config.json`` may add stop ids).

``encode`` turns text into ids without adding a bos token unless asked: chat templates that
want one write it themselves, so ``encode(apply_chat_template(messages))`` gives the prompt
the model was trained on. Tokens marked special in the vocabulary (``<|im_start|>``...) are
matched whole in the text.
"""

from __future__ import annotations

import functools
import json
import pathlib
from typing import Any, Mapping, Sequence

import tokenizers
from tokenizers import decoders, models, pre_tokenizers

# llama.cpp's token types (llama_token_type): which ids are control tokens or added text.
_TOKEN_TYPE_CONTROL = 3
_TOKEN_TYPE_USER_DEFINED = 4

# How text is split before byte-level BPE, by ``tokenizer.ggml.pre`` (as llama-vocab.cpp and the
# models' own tokenizer.json split it).
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _gpt2_split() -> list[Any]:
  return [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]


def _digits_then_gpt2_split() -> list[Any]:
  # SmolLM, StarCoder: every digit on its own, then GPT-2's split.
  return [pre_tokenizers.Digits(individual_digits=True)] + _gpt2_split()


def _regex_split(regex: str):
  return lambda: [pre_tokenizers.Split(tokenizers.Regex(regex), behavior='isolated'),
                  pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]


_PRE_TOKENIZERS = {
    'default': _gpt2_split,  # Files older than the 'pre' key.
    'gpt2': _gpt2_split,
    'gpt-2': _gpt2_split,
    'smollm': _digits_then_gpt2_split,
    'starcoder': _digits_then_gpt2_split,
    'refact': _digits_then_gpt2_split,
    'llama-bpe': _regex_split(_LLAMA3_SPLIT),
    'llama3': _regex_split(_LLAMA3_SPLIT),
    'smaug-bpe': _regex_split(_LLAMA3_SPLIT),
    'qwen2': _regex_split(_QWEN2_SPLIT),
    'deepseek-r1-qwen': _regex_split(_QWEN2_SPLIT),
}


def _raise_exception(message: str) -> None:
  """The ``raise_exception`` helper HF chat templates call on invalid conversations."""
  raise ValueError(f'chat template: {message}')


@functools.lru_cache(maxsize=16)
def _compile_template(source: str):
  """Compiles a chat template once in a sandbox (templates come from model files, not from us)."""
  from jinja2 import sandbox  # pylint: disable=g-import-not-at-top

  env = sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                              keep_trailing_newline=False)
  # HF templates use these; tojson must not escape non-ASCII or HTML characters as Jinja's does.
  env.filters['tojson'] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
  env.globals['raise_exception'] = _raise_exception
  return env.from_string(source)


class Tokenizer:
  """Text <-> token ids for a local model, with its chat template.

  Attributes:
    bos_id: the beginning-of-sequence id (None when the vocabulary has none).
    eos_ids: the ids that end a generation (eos, and end-of-turn ids where the file names them).
    vocab_size: the number of ids, added tokens included.
    chat_template: the Jinja source of the model's chat template (None when the file has none).
    source: where this tokenizer came from (for error messages).
  """

  def __init__(self, backend: tokenizers.Tokenizer, *, bos_id: int | None, eos_ids: Sequence[int],
               chat_template: str | None, source: str, add_bos: bool = False):
    if not eos_ids:
      raise ValueError(f'{source}: the tokenizer names no end-of-sequence token; generation could not stop. '
                       'Give the file an eos token (tokenizer.ggml.eos_token_id or tokenizer_config eos_token).')
    self._backend = backend
    self.bos_id = bos_id
    self.eos_ids = tuple(int(i) for i in dict.fromkeys(eos_ids))
    self.chat_template = chat_template
    self.source = source
    self.add_bos = add_bos  # The file's own flag; encode() adds bos only when asked.
    self.vocab_size = backend.get_vocab_size(with_added_tokens=True)

  @property
  def backend(self) -> tokenizers.Tokenizer:
    """The underlying ``tokenizers.Tokenizer``."""
    return self._backend

  def token_text(self, token_id: int) -> str | None:
    """The vocabulary entry of one id (byte-level spelling), or None if out of range."""
    return self._backend.id_to_token(token_id)

  def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
    """The ids of ``text``; special tokens written in the text are matched whole.

    Args:
      text: any string (a chat-templated prompt already carries its bos if the template writes one).
      add_bos: prepend ``bos_id`` (for raw text fed to a model that expects it, see ``self.add_bos``).
    """
    ids = self._backend.encode(text, add_special_tokens=False).ids
    if add_bos:
      if self.bos_id is None:
        raise ValueError(f'{self.source}: encode(add_bos=True) but the tokenizer has no bos token.')
      ids = [self.bos_id] + ids
    return ids

  def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
    """The text of ``ids`` (special tokens written out unless ``skip_special_tokens``)."""
    ids = [int(i) for i in ids]
    bad = [i for i in ids if not 0 <= i < self.vocab_size]
    if bad:
      raise ValueError(f'{self.source}: decode got ids {bad[:5]} outside the vocabulary [0, {self.vocab_size}).')
    return self._backend.decode(ids, skip_special_tokens=skip_special_tokens)

  def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
                          **extra: Any) -> str:
    """The prompt text of a conversation, rendered with the model's chat template.

    Args:
      messages: [{'role': 'system'|'user'|'assistant', 'content': str}, ...].
      add_generation_prompt: end with the header of an assistant turn, so the model answers.
      **extra: further template variables (e.g. ``tools``), as HF's apply_chat_template passes them.
    """
    if self.chat_template is None:
      raise ValueError(f'{self.source}: the model file has no chat template (tokenizer.chat_template or '
                       'tokenizer_config.json chat_template); format the prompt yourself and call encode().')
    for index, message in enumerate(messages):
      if 'role' not in message or 'content' not in message:
        raise ValueError(f'apply_chat_template: message {index} is {message!r}; expected keys role and content.')
    variables = dict(bos_token=self._token_or_empty(self.bos_id), eos_token=self._token_or_empty(self.eos_ids[0]))
    variables.update(extra)
    return _compile_template(self.chat_template).render(
        messages=[dict(m) for m in messages], add_generation_prompt=add_generation_prompt, **variables)

  def _token_or_empty(self, token_id: int | None) -> str:
    if token_id is None:
      return ''
    return self._backend.id_to_token(token_id) or ''

  # ---- Constructors.

  @classmethod
  def from_gguf(cls, path: str | pathlib.Path) -> Tokenizer:
    """The tokenizer in a GGUF file's metadata (byte-level BPE, ``tokenizer.ggml.model == 'gpt2'``)."""
    import gguf  # pylint: disable=g-import-not-at-top

    path = pathlib.Path(path)
    return cls.from_gguf_metadata(gguf_fields(gguf.GGUFReader(str(path)), prefix='tokenizer.'), source=str(path))

  @classmethod
  def from_gguf_metadata(cls, metadata: Mapping[str, Any], source: str) -> Tokenizer:
    """The tokenizer described by GGUF ``tokenizer.*`` metadata (as ``gguf_fields`` returns it)."""

    def need(key: str) -> Any:
      if key not in metadata:
        raise ValueError(f'{source}: GGUF metadata lacks {key!r}, which the tokenizer needs.')
      return metadata[key]

    kind = need('tokenizer.ggml.model')
    if kind != 'gpt2':
      raise ValueError(f'{source}: tokenizer.ggml.model={kind!r} is not supported; this loader reads byte-level '
                       "BPE ('gpt2': Llama 3, Qwen, SmolLM). Use the model's Hugging Face directory instead "
                       '(tokenizer.json), or a GGUF with a byte-level vocabulary.')
    tokens = list(need('tokenizer.ggml.tokens'))
    merges = []
    for line in need('tokenizer.ggml.merges'):
      pair = line.split(' ')
      if len(pair) != 2:
        raise ValueError(f'{source}: GGUF merge {line!r} is not two tokens separated by one space.')
      merges.append((pair[0], pair[1]))
    token_types = list(metadata.get('tokenizer.ggml.token_type') or [1] * len(tokens))
    if len(token_types) != len(tokens):
      raise ValueError(f'{source}: {len(token_types)} token types for {len(tokens)} tokens in the GGUF metadata.')
    pre = metadata.get('tokenizer.ggml.pre', 'default')
    if pre not in _PRE_TOKENIZERS:
      raise ValueError(f'{source}: tokenizer.ggml.pre={pre!r} is not a pre-tokenizer this loader knows '
                       f'({sorted(_PRE_TOKENIZERS)}); its text split decides the tokens, so it is not guessed.')

    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
      raise ValueError(f'{source}: the GGUF vocabulary repeats tokens ({len(tokens) - len(vocab)} duplicates).')
    backend = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.Sequence(_PRE_TOKENIZERS[pre]())
    backend.decoder = decoders.ByteLevel()
    special = [tokenizers.AddedToken(tokens[i], special=True, normalized=False)
               for i, kind in enumerate(token_types) if kind == _TOKEN_TYPE_CONTROL]
    added = [tokenizers.AddedToken(tokens[i], special=False, normalized=False)
             for i, kind in enumerate(token_types) if kind == _TOKEN_TYPE_USER_DEFINED]
    backend.add_special_tokens(special)
    backend.add_tokens(added)
    if backend.get_vocab_size(with_added_tokens=True) != len(tokens):
      raise ValueError(f'{source}: the built tokenizer has {backend.get_vocab_size(with_added_tokens=True)} ids, '
                       f'the GGUF vocabulary {len(tokens)}; a control token is not in the vocabulary.')

    eos_ids = [metadata[key] for key in ('tokenizer.ggml.eos_token_id', 'tokenizer.ggml.eot_token_id',
                                         'tokenizer.ggml.eom_token_id') if key in metadata]
    return cls(backend, bos_id=metadata.get('tokenizer.ggml.bos_token_id'), eos_ids=[int(i) for i in eos_ids],
               chat_template=metadata.get('tokenizer.chat_template'), source=source,
               add_bos=bool(metadata.get('tokenizer.ggml.add_bos_token', False)))

  @classmethod
  def from_dir(cls, hf_dir: str | pathlib.Path) -> Tokenizer:
    """The tokenizer of a Hugging Face model directory (tokenizer.json + tokenizer_config.json)."""
    hf_dir = pathlib.Path(hf_dir)
    tokenizer_file = hf_dir / 'tokenizer.json'
    if not tokenizer_file.is_file():
      raise FileNotFoundError(f'{tokenizer_file} is missing: a Hugging Face model directory needs its '
                              'tokenizer.json (copy it from the model repository).')
    backend = tokenizers.Tokenizer.from_file(str(tokenizer_file))
    config = _read_json(hf_dir / 'tokenizer_config.json')
    generation = _read_json(hf_dir / 'generation_config.json')

    def token_id(entry: Any) -> int | None:
      if isinstance(entry, dict):  # {'content': '<|im_end|>', ...}
        entry = entry.get('content')
      if entry is None:
        return None
      found = backend.token_to_id(entry)
      if found is None:
        raise ValueError(f'{hf_dir}/tokenizer_config.json names token {entry!r}, which tokenizer.json lacks.')
      return found

    eos_ids = [token_id(config.get('eos_token'))]
    extra = generation.get('eos_token_id')
    eos_ids += list(extra) if isinstance(extra, list) else [extra]
    template = config.get('chat_template')
    if isinstance(template, list):  # [{'name': 'default', 'template': ...}, ...]
      named = {entry.get('name'): entry.get('template') for entry in template}
      template = named.get('default', next(iter(named.values()), None))
    jinja_file = hf_dir / 'chat_template.jinja'
    if template is None and jinja_file.is_file():
      template = jinja_file.read_text(encoding='utf-8')
    bos_id = token_id(config.get('bos_token'))
    if bos_id is None and generation.get('bos_token_id') is not None:
      bos_id = int(generation['bos_token_id'])
    return cls(backend, bos_id=bos_id, eos_ids=[int(i) for i in eos_ids if i is not None],
               chat_template=template, source=str(hf_dir), add_bos=bool(config.get('add_bos_token', False)))


def _read_json(path: pathlib.Path) -> dict[str, Any]:
  if not path.is_file():
    return {}
  try:
    return json.loads(path.read_text(encoding='utf-8'))
  except json.JSONDecodeError as error:
    raise ValueError(f'{path} is not valid JSON ({error}); restore it from the model repository.') from None


def gguf_fields(reader: Any, prefix: str = '') -> dict[str, Any]:
  """The metadata of an open ``gguf.GGUFReader`` whose keys start with ``prefix``, as Python values."""
  return {name: field.contents() for name, field in reader.fields.items() if name.startswith(prefix)}
