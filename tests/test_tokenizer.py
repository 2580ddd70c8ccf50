import pytest

from gpt.core.errors import UserError
from gpt.core.tokenizer import BYTE_VOCAB, ByteTokenizer, CharTokenizer, tokenizer_for


def test_vocabulary_is_the_sorted_set_of_characters():
    tokenizer = CharTokenizer.from_text("hello world\n")
    assert tokenizer.chars == ["\n", " ", "d", "e", "h", "l", "o", "r", "w"]
    assert tokenizer.vocab_size == 9


def test_encode_decode_round_trip():
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n"
    tokenizer = CharTokenizer.from_text(text)
    ids = tokenizer.encode(text)
    assert all(0 <= i < tokenizer.vocab_size for i in ids)
    assert tokenizer.decode(ids) == text
    assert tokenizer.encode("F") == [tokenizer.chars.index("F")]


def test_unknown_characters_are_named_in_the_error():
    tokenizer = CharTokenizer.from_text("abc")
    with pytest.raises(UserError, match="'xz'"):
        tokenizer.encode("abxcz")


def test_sampling_starts_from_a_newline_or_the_prompt():
    tokenizer = CharTokenizer.from_text("ab\ncd")
    assert tokenizer.prompt_ids() == [tokenizer.stoi["\n"]]
    assert tokenizer.prompt_ids("cab") == tokenizer.encode("cab")
    assert CharTokenizer.from_text("abc").prompt_ids() == [0]  # no newline in the corpus: token 0


def test_byte_tokenizer_encodes_utf8_and_decodes_a_stream_of_single_bytes():
    tokenizer = ByteTokenizer()
    text = "Ça va? 東京 😀\n"
    ids = tokenizer.encode(text)
    assert ids == list(text.encode()) and tokenizer.decode(ids) == text and tokenizer.vocab_size == 256
    stream = tokenizer.stream_decoder()
    pieces = [stream([i]) for i in ids]  # a character's bytes are held back until it is whole
    assert "".join(pieces) == text and pieces[:2] == ["", "Ç"]
    assert tokenizer.prompt_ids() == [10] and tokenizer.decode([0xFF]) == "\ufffd"  # a sampled non-UTF-8 byte


def test_a_checkpoints_vocabulary_tells_its_tokenizer():
    assert isinstance(tokenizer_for(BYTE_VOCAB), ByteTokenizer)
    assert tokenizer_for(["\n", "a"]).chars == ["\n", "a"]
