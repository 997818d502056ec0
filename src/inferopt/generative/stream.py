"""Streaming detokenisation: text pieces from token ids as they arrive, never half a character.

Byte-level BPE tokens can end inside a UTF-8 character (an emoji is four bytes, often split
over two or three tokens), and a decoder shows such a partial character as U+FFFD. Decoding
each token alone is wrong for another reason too: tokenizers apply space and cleanup rules
that depend on the neighbouring tokens (SentencePiece drops the leading space of the first
token of a decode). So the streamer decodes a short window of ids that ends at the newest one
and starts a token or more before the text it has not yet emitted, and emits the difference
once the window no longer ends in U+FFFD. The window is the one text-generation-inference
uses (its `prefix_offset` is our window start, its `read_offset` our `_read`), which keeps
the cost per token constant instead of decoding the whole generated text every step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT = "\ufffd"  # what decoders put where bytes do not form a complete character
_PROMPT_CONTEXT = 4  # prompt ids decoded as left context of the first generated token

Decode = Callable[[Sequence[int]], str]


class TextStreamer:
    """Turns token ids, pushed one at a time, into text pieces that are whole characters.

    `decode` maps a list of ids to text (e.g. `tokenizers.Tokenizer.decode` with special
    tokens skipped). The pieces returned by `push` and then `finish`, joined, equal the
    window decodes stitched together, which for byte-level BPE and SentencePiece tokenizers
    equals `decode(all ids)`.
    """

    def __init__(self, decode: Decode, prompt_ids: Sequence[int] = ()) -> None:
        # Prompt ids seed the window so that the first generated token is decoded with its
        # left context (a leading space is kept), but none of the prompt's text is emitted.
        self._decode = decode
        self._ids: list[int] = list(prompt_ids[-_PROMPT_CONTEXT:])
        # The window is self._ids; the text of ids before `_read` has been emitted already.
        self._read = len(self._ids)

    def push(self, token_id: int) -> str:
        """Add one id; the text it completes, or "" while a character is still partial."""
        self._ids.append(int(token_id))
        return self._advance(final=False)

    def finish(self) -> str:
        """The text still held back (a character the ids never completed shows as U+FFFD)."""
        return self._advance(final=True)

    def _advance(self, *, final: bool) -> str:
        if self._read == len(self._ids):
            return ""
        before = self._decode(self._ids[: self._read])
        text = self._decode(self._ids)
        if not final and (len(text) <= len(before) or text.endswith(REPLACEMENT)):
            return ""  # nothing new yet, or it ends in a partial character: wait for more ids
        piece = text[len(before) :]
        # The next window starts at the ids just emitted: their text is the left context the
        # decoder's space rules need; everything before that is never decoded again.
        self._ids = self._ids[self._read :]
        self._read = len(self._ids)
        return piece
