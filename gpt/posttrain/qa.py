"""Question/answer documents cut from the play text itself, and the rater that stands in for human raters.

A pair is (the end of one speech, the first sentence of the next speaker's reply), written as the document
``Q: <question>\\nA: <answer>\\n``: the question on top, the answer below, and the newline after the answer as
the stop character. Questions are cut at word boundaries to fit the model's context; an answer is a whole
sentence, and a pair whose answer would not fit is dropped.
"""

import re
from collections import Counter
from dataclasses import dataclass
from itertools import pairwise

from gpt.core.errors import UserError

STOP = "\n"
MIN_COUNT = 2  # a word is "known" when it occurs at least this often in the training text
GOOD_LENGTH = (2, 8)  # answers of 2 to 8 words score the length component
SENTENCE_ENDS = (".", "!", "?")


@dataclass(frozen=True)
class QAPair:
    question: str
    answer: str

    @property
    def prompt(self) -> str:
        """What the model is given: the question, then the answer's tag. The answer follows it."""
        return f"Q: {self.question}\nA: "

    @property
    def document(self) -> str:
        return self.prompt + self.answer + STOP


def question_of(prompt: str) -> str:
    """The question of a prompt ``QAPair.prompt`` wrote: what the rater reads beside a sampled answer."""
    return prompt.removeprefix("Q: ").removesuffix("\nA: ")


def prompt_length(max_question_chars: int) -> int:
    """The longest prompt a question of ``max_question_chars`` makes."""
    return len(QAPair("x" * max_question_chars, "").prompt)


def _last_words(words: list[str], max_chars: int) -> str:
    taken = []
    for word in reversed(words):
        if len(" ".join([word, *taken])) > max_chars:
            break
        taken.insert(0, word)
    return " ".join(taken)


def _first_sentence(words: list[str], max_chars: int) -> str:
    """The reply's first sentence: its words up to the first that ends with ``.``, ``!`` or ``?``; "" when that
    sentence is longer than ``max_chars`` or the reply has none (the pair is dropped, never cut mid-sentence)."""
    for i, word in enumerate(words):
        if word.endswith(SENTENCE_ENDS):
            sentence = " ".join(words[: i + 1])
            return sentence if len(sentence) <= max_chars else ""
    return ""


def _speeches(text: str):
    """(start offset, end offset, speaker, words) of each speech: a "NAME:" line, then its lines, then a blank."""
    offset = 0
    for block in text.split("\n\n"):
        start, offset = offset, offset + len(block) + 2
        lines = block.strip("\n").split("\n")
        if len(lines) >= 2 and lines[0].endswith(":"):
            yield start, start + len(block), lines[0][:-1], " ".join(lines[1:]).split()


def _exchanges(text: str):
    """(start, end, words, reply words) of each speech that another speaker answers: the start of the speech,
    the end of the reply."""
    for (start, _, speaker, words), (_, end, next_speaker, next_words) in pairwise(_speeches(text)):
        if speaker != next_speaker:
            yield start, end, words, next_words


def extract_pairs(text: str, train_fraction: float, max_question_chars: int, max_answer_chars: int):
    """(train pairs, held-out pairs) from consecutive speeches with a change of speaker.

    The question is the speech's last words, the answer the reply's first sentence; a reply whose first
    sentence is longer than ``max_answer_chars`` (or that has none) gives no pair. Pairs that end in the first
    ``train_fraction`` of the text train; pairs that start after it are held out (pre-training never saw that
    text either); a pair across the boundary is dropped.
    """
    split = int(train_fraction * len(text))
    train, heldout = [], []
    for start, end, words, next_words in _exchanges(text):
        pair = QAPair(_last_words(words, max_question_chars), _first_sentence(next_words, max_answer_chars))
        if not pair.question or not pair.answer:
            continue
        if end <= split:
            train.append(pair)
        elif start >= split:
            heldout.append(pair)
    return train, heldout


def extract_questions(text: str, train_fraction: float, max_question_chars: int) -> list[str]:
    """The question of every pair ``extract_pairs`` would make from the first ``train_fraction`` of the text,
    whatever the length of the reply: the end of each speech that another speaker answers."""
    split = int(train_fraction * len(text))
    questions = []
    for _, end, words, _ in _exchanges(text):
        question = _last_words(words, max_question_chars)
        if end <= split and question:
            questions.append(question)
    return questions


def words_of(text: str) -> list[str]:
    """Lower-case words: letters with inner apostrophes ("'tis" and "o'er" count as words, quotes do not)."""
    return [w.strip("'") for w in re.findall(r"[a-z']+", text.lower()) if w.strip("'")]


# Words of 4 letters or more that carry no topic: pronouns, auxiliaries, conjunctions, prepositions (modern and
# Shakespearean). Words of 3 letters or fewer never count.
STOP_WORDS = frozenset(
    "that this these those with have hath doth does done what when where which while whom whose they them their "
    "there then than thou thee thine your yours mine from into unto upon were been being shall will would should "
    "could must more most some such very well here hence thus even only also like make made come came know "
    "tell said whence wherefore therefore though although cannot nothing something".split()
)
CONTENT_WORD_LETTERS = 4


def content_words(text: str) -> set[str]:
    """The words of ``text`` (see ``words_of``) of at least 4 letters that are not in ``STOP_WORDS``."""
    return {w for w in words_of(text) if len(w) >= CONTENT_WORD_LETTERS and w not in STOP_WORDS}


def hints(question: str) -> list[str]:
    """The question's content words (see ``content_words``) in the order it says them, each once, spelt as it
    spells them: the words an answer may start with to pick the question up ("Whose tongue?" gives ["tongue"]).
    The question's own spelling, case included, is what a small model can copy from its context character by
    character (after "T" it would find no "T" in "tongue" to continue from)."""
    said, seen, found = content_words(question), set(), []
    for word in (w.strip("'") for w in re.findall(r"[A-Za-z']+", question)):
        if word.lower() in said and word.lower() not in seen:
            seen.add(word.lower())
            found.append(word)
    return found


def shares_content_word(question: str, answer: str) -> bool:
    """Whether the answer repeats a content word of the question: a crude sign of answering *it*, which the
    rater (blind to the question) does not reward."""
    return bool(content_words(question) & content_words(answer))


def echoes(question: str, answer: str) -> bool:
    """Whether the answer repeats its question, or most of it: it holds more than half of the question's
    distinct words (see ``words_of``). The cheap way to pick up a question, which the rater pays nothing for."""
    asked = set(words_of(question))
    return len(asked & set(words_of(answer))) > len(asked) / 2


@dataclass(frozen=True)
class Rating:
    """The rater's components, each in [0, 1], and their total (0 for an empty answer or one that never stops)."""

    known_words: float  # share of the words that occur at least twice in the training text
    sentence_end: float  # 1 if the answer ends with . ! or ?
    good_length: float  # 1 if the answer has 2 to 8 words
    repetition: float  # share of the words that repeat an earlier word of the answer (a penalty)
    form: float  # the question-blind score of the four above: the whole of the old rater
    picks_up: float  # share of the answer's content words that its question holds (0 for an echo)
    echo: float  # 1 if the answer repeats its question or most of it (its total is then 0)
    total: float

    COMPONENTS = ("form", "known_words", "sentence_end", "good_length", "repetition", "picks_up", "echo")

    @staticmethod
    def means(ratings: list["Rating"]) -> dict[str, float]:
        """The mean total (under "total") and the mean of each component."""
        return {name: sum(getattr(r, name) for r in ratings) / len(ratings) for name in ("total", *Rating.COMPONENTS)}


class Rater:
    """A deterministic score of an answer to a question, standing in for people who rank answers.

    form = max(0, (known_words + sentence_end + good_length) / 3 - repetition): a well-formed reply in the
    play's manner, blind to the question. picks_up = the share of the answer's content words (see
    ``content_words``) that occur in the question. total = form x (1 - topic_weight + topic_weight x picks_up),
    and 0 for an answer that echoes its question (see ``echoes``), has no words or never emitted the stop
    character. With ``topic_weight`` 0 the total is the form alone, echo or not: the old, question-blind rater.

    picks_up is a share of the answer's content words, not a yes/no, so that a stock reply stuffed with the
    questions' commonest words ("Good lord, hear the king again.") earns little more than one with none: with
    topic_weight w, one stock reply for every question scores about 1 - w, below the play's own replies (a form
    of 0.94, and a content word of their question reused in 10% of them) for w of about 0.75 or more.
    """

    def __init__(self, known_words: set[str], topic_weight: float = 0.0):
        if not 0 <= topic_weight <= 1:
            raise UserError(f"qa.topic_weight={topic_weight} must be in [0, 1] (0: the question-blind rater)")
        self.known_words = known_words
        self.topic_weight = topic_weight

    @classmethod
    def from_text(cls, text: str, topic_weight: float = 0.0) -> "Rater":
        counts = Counter(words_of(text))
        return cls({word for word, count in counts.items() if count >= MIN_COUNT}, topic_weight)

    def rate(self, question: str, answer: str, stopped: bool = True) -> Rating:
        words = words_of(answer)
        if not stopped or not words:
            return Rating(*[0.0] * 8)
        known = sum(word in self.known_words for word in words) / len(words)
        sentence_end = float(answer.rstrip().endswith(SENTENCE_ENDS))
        good_length = float(GOOD_LENGTH[0] <= len(words) <= GOOD_LENGTH[1])
        repetition = 1 - len(set(words)) / len(words)
        form = max(0.0, (known + sentence_end + good_length) / 3 - repetition)
        echo = float(echoes(question, answer))
        said = content_words(answer)
        picks_up = 0.0 if echo or not said else len(said & content_words(question)) / len(said)
        if not self.topic_weight:
            return Rating(known, sentence_end, good_length, repetition, form, picks_up, echo, form)
        total = 0.0 if echo else form * (1 - self.topic_weight + self.topic_weight * picks_up)
        return Rating(known, sentence_end, good_length, repetition, form, picks_up, echo, total)
