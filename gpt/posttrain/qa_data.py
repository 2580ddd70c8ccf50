"""The Q/A data every post-training job reads: the corpus's question/answer pairs, split like pre-training's
text, the rater, the pairs' documents as tensors, and answers sampled and rated."""

from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from gpt.core.checkpoint import Checkpoint, load_model
from gpt.core.corpus import fetch_corpus, read_text
from gpt.core.errors import UserError
from gpt.core.model import GPT
from gpt.core.tokenizer import ByteTokenizer, CharTokenizer
from gpt.posttrain.qa import STOP, QAPair, Rater, extract_pairs, extract_questions, hints
from gpt.posttrain.rlhf import length_mask, pad_right, sample_answers


@dataclass
class QAData:
    train: list[QAPair]
    heldout: list[QAPair]
    rater: Rater  # its known words come from the training part of the text only
    questions: list[str]  # every training question, whatever the length of its reply (train's are some of them)


def load_qa(cfg: DictConfig) -> QAData:
    """The corpus's Q/A pairs, split like pre-training's text, and the rater."""
    text_path = fetch_corpus(cfg.data.path)  # a missing file, or the download, fails here with a one-line error
    text = read_text(text_path)  # and a file that is not UTF-8 here
    train, heldout = extract_pairs(text, cfg.data.train_fraction, cfg.qa.max_question_chars, cfg.qa.max_answer_chars)
    if not train or not heldout:
        raise UserError(
            f"{text_path} gives {len(train)} training and {len(heldout)} held-out question/answer "
            "pairs: it needs speeches (a 'NAME:' line, lines, a blank line) in both parts"
        )
    rater = Rater.from_text(text[: int(cfg.data.train_fraction * len(text))], cfg.qa.topic_weight)
    questions = extract_questions(text, cfg.data.train_fraction, cfg.qa.max_question_chars)
    return QAData(train, heldout, rater, questions)


def encode_documents(pairs: list[QAPair], tokenizer: CharTokenizer):
    """Inputs, targets and answer mask (N, T) of the pairs' documents: targets after the prompt count."""
    documents = pad_right([tokenizer.encode(pair.document) for pair in pairs])
    lengths = torch.tensor([len(pair.document) for pair in pairs])
    prompt_lengths = torch.tensor([len(pair.prompt) for pair in pairs])
    width = documents.size(1) - 1
    # Target j is document character j + 1: an answer character (or the stop) from the prompt's end on.
    mask = length_mask(lengths - 1, width) & ~length_mask(prompt_lengths - 1, width)
    return documents[:, :-1], documents[:, 1:], mask


def sample_rated(model: GPT, tokenizer, pairs: list[QAPair], rater: Rater, samples=1, temperature=1.0, seed=0):
    """``samples`` answers to each pair's question (rows i*samples .. i*samples+samples-1), with ratings."""
    prompts = [tokenizer.encode(pair.prompt) for pair in pairs for _ in range(samples)]
    device = next(model.parameters()).device
    generator = torch.Generator(device).manual_seed(seed)
    answers = sample_answers(model, prompts, tokenizer.stoi[STOP], temperature, generator)
    texts = answers.texts(tokenizer)
    questions = [pair.question for pair in pairs for _ in range(samples)]
    return prompts, answers, texts, [rater.rate(*rated) for rated in zip(questions, texts, answers.stopped.tolist())]


def hinted_answers(
    model: GPT, tokenizer, questions: list[str], rater: Rater, samples: int, min_form: float, max_chars: int, seed=0
) -> list[QAPair]:
    """Answers of the model that pick up their question, found by starting them with a word of it: for each
    question, ``samples`` answers that begin with its last content word (``hints``), the model writing the rest
    (temperature 1). Of a question's answers the one the rater scores highest is kept, as the pair (question,
    answer), if it picks up its question (the rater's ``picks_up`` above 0: not an echo, and stopped, since an
    answer that never stops rates 0 throughout), has a form of at least ``min_form`` and at most ``max_chars``
    characters. Rejection sampling (best of N, as in expert iteration or Llama 2's) with a proposal: unhinted,
    the SFT model picks up its question in 0.3% of its answers, so best of N of them would find almost none.
    The last content word, not any: of the play's replies that pick up their question, 77 of 113 reuse its last
    one ("back on good condition." / "Condition!"), and one place to copy from makes one rule to learn."""
    pairs = [QAPair(question, "") for question in questions]  # a question's prompt, as SFT's documents open
    jobs = []  # (question index, its hint): questions without a content word, or one spelt off-vocabulary, get none
    for i, question in enumerate(questions):
        words = hints(question)
        if words and all(c in tokenizer.stoi for c in words[-1]):
            jobs.append((i, words[-1]))
    if not jobs:
        return []
    prompts = [tokenizer.encode(pairs[i].prompt + hint) for i, hint in jobs for _ in range(samples)]
    generator = torch.Generator(next(model.parameters()).device).manual_seed(seed)
    answers = sample_answers(model, prompts, tokenizer.stoi[STOP], 1.0, generator)
    best: dict[int, tuple[float, str]] = {}
    for row, (text, stopped) in enumerate(zip(answers.texts(tokenizer), answers.stopped.tolist())):
        i, hint = jobs[row // samples]
        answer = hint + text
        rating = rater.rate(pairs[i].question, answer, stopped)
        good = rating.picks_up > 0 and rating.form >= min_form and len(answer) <= max_chars
        if good and rating.total > best.get(i, (-1.0, ""))[0]:
            best[i] = (rating.total, answer)
    return [QAPair(pairs[i].question, answer) for i, (_, answer) in sorted(best.items())]


def load_policy(checkpoint: Checkpoint, kinds, job: str, device="cpu") -> tuple[GPT, CharTokenizer]:
    """The GPT of a language model checkpoint of one of ``kinds`` (read once, by the job): what a stage starts
    from, or a policy evaluate.py compares; ``job`` names the reader in the error for another kind."""
    model, tokenizer = load_model(checkpoint, device, kinds=kinds, job=job)
    if not isinstance(model, GPT):
        raise UserError(
            f"{checkpoint.path} holds a {type(model).__name__}; fine-tuning needs a GPT (model=tiny or larger)"
        )
    if isinstance(tokenizer, ByteTokenizer):  # the Q/A data counts answers in characters
        raise UserError(
            f"{checkpoint.path} is a byte-level model (data.tokenizer=byte): post-training needs a character-level one"
        )
    if STOP not in tokenizer.stoi:
        raise UserError(f"{checkpoint.path}: its vocabulary has no newline, the stop character of answers")
    return model, tokenizer
