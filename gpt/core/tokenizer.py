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
