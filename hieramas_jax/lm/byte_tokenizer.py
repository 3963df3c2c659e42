"""A byte-level tokenizer for tiny test models: ids 0-255 are the UTF-8 bytes, then <bos>, <eos>, <pad>.

It has the interface of ``hieramas_jax.lm.tokenizer.Tokenizer`` (``encode``,
``decode``, ``apply_chat_template``, ``bos_id``, ``eos_ids``, ``vocab_size``) so
that the decoder, generation, the local backend and leader training run on a
tiny random model with no model files. Its vocabulary (259) is
``lm.config.tiny()``'s. It is pure Python (no JAX).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

NUM_BYTES = 256
BOS_ID = NUM_BYTES
EOS_ID = NUM_BYTES + 1
PAD_ID = NUM_BYTES + 2
VOCAB_SIZE = NUM_BYTES + 3
NAME = "byte"  # how a saved model names this tokenizer (lm/leader_export.py)


class ByteTokenizer:
  """UTF-8 bytes as token ids, three special ids after them, and a one-line-per-message chat template.

  The chat template writes each message as ``<role>: <content>\\n`` and, with
  ``add_generation_prompt``, ends with ``assistant:`` so the model continues
  as the assistant; special tokens never appear in the text.
  """

  bos_id = BOS_ID
  eos_ids: tuple[int, ...] = (EOS_ID,)
  pad_id = PAD_ID
  vocab_size = VOCAB_SIZE
  name = NAME

  def encode(self, text: str) -> list[int]:
    """The UTF-8 bytes of ``text`` (no <bos> added, as the chat models' tokenizers do for chat text)."""
    return list(text.encode("utf-8"))

  def decode(self, ids: Sequence[int]) -> str:
    """The text of the byte ids; special ids are dropped, invalid UTF-8 becomes U+FFFD."""
    for i in ids:
      if not 0 <= int(i) < VOCAB_SIZE:
        raise ValueError(f"ByteTokenizer.decode: id {int(i)} is outside the vocabulary [0, {VOCAB_SIZE}); "
                         "the ids come from a model with another vocabulary")
    return bytes(int(i) for i in ids if int(i) < NUM_BYTES).decode("utf-8", errors="replace")

  def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
    """``role: content`` lines, then ``assistant:`` when the model is to answer."""
    lines = []
    for message in messages:
      if "role" not in message or "content" not in message:
        raise ValueError(f"ByteTokenizer.apply_chat_template: message {dict(message)!r} needs 'role' and 'content'")
      lines.append(f"{message['role']}: {message['content']}\n")
    if add_generation_prompt:
      lines.append("assistant:")
    return "".join(lines)

  def __repr__(self) -> str:
    return "ByteTokenizer()"
