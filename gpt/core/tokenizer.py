"""The tokenizers: one token per character of the corpus (CharTokenizer), or per byte (ByteTokenizer)."""

import codecs

from gpt.core.errors import UserError


class CharTokenizer:
    """Character-level tokenizer: each distinct character of the corpus is one token.

    The vocabulary is ``sorted(set(text))`` and token ``i`` is ``chars[i]``. It is stored in checkpoints as
    that plain list, so a checkpoint alone is enough to sample.
    """

    def __init__(self, chars: list[str]):
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise ValueError("a vocabulary is a list of distinct single characters")
        self.chars = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            unknown = sorted(set(text) - self.stoi.keys())
            raise UserError(
                f"characters not in the vocabulary: {''.join(unknown)!r}; use only the "
                f"{self.vocab_size} characters of the training text"
            ) from None

    def prompt_ids(self, prompt: str = "") -> list[int]:
        """Where sampling starts: the prompt's tokens, or a newline (as in the lecture) for no prompt."""
        return self.encode(prompt) if prompt else [self.stoi.get("\n", 0)]

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in ids)

    def stream_decoder(self):
        """decode for tokens that arrive one at a time (sampling): every character is one token."""
        return self.decode


# The byte vocabulary as checkpoints store it: a symbol per byte value, written as byte-fallback tokens are
# (<0x0A> is a newline). No entry is a single character, so a character vocabulary never equals it.
BYTE_VOCAB = [f"<0x{b:02X}>" for b in range(256)]


class ByteTokenizer:
    """Byte-level tokenizer: token ``i`` is the byte of value ``i``, so any file is a corpus and the loss is per
    byte, the unit in which enwik8's results are reported. Text is encoded as UTF-8; a character outside ASCII
    takes several tokens."""

    chars = BYTE_VOCAB  # the vocabulary, as checkpoints store it
    vocab_size = len(BYTE_VOCAB)

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def prompt_ids(self, prompt: str = "") -> list[int]:
        """Where sampling starts: the prompt's bytes, or a newline for no prompt."""
        return self.encode(prompt) if prompt else [ord("\n")]

    def decode(self, ids) -> str:
        return bytes(ids).decode("utf-8", errors="replace")  # a model may sample bytes that are not UTF-8

    def stream_decoder(self):
        """decode for tokens that arrive one at a time (sampling): the bytes of a character are held back until it
        is complete."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        return lambda ids: decoder.decode(bytes(ids))


def tokenizer_for(vocab: list[str]) -> CharTokenizer | ByteTokenizer:
    """The tokenizer of a vocabulary as checkpoints and token files store it."""
    return ByteTokenizer() if vocab == BYTE_VOCAB else CharTokenizer(vocab)
