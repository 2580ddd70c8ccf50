"""Question/answer pairs cut from play text, and the rater."""

import pytest

from gpt.core.errors import UserError
from gpt.posttrain.qa import (
    QAPair,
    Rater,
    content_words,
    extract_pairs,
    extract_questions,
    hints,
    shares_content_word,
)

PLAY = (
    "ROMEO:\nBut soft, what light\nthrough yonder window breaks?\n\n"
    "JULIET:\nAy me! Who is there at this hour of the night, so late?\n\n"
    "JULIET:\nA second speech by the same speaker.\n\n"
    "ROMEO:\nIt is I, thy Romeo.\n\n"
)


def test_a_pair_is_the_end_of_a_speech_and_the_start_of_the_next_speakers_reply():
    train, heldout = extract_pairs(PLAY, train_fraction=0.999, max_question_chars=20, max_answer_chars=20)
    assert heldout == []
    assert train == [
        QAPair("window breaks?", "Ay me!"),  # the reply's first sentence
        QAPair("by the same speaker.", "It is I, thy Romeo."),
    ]
    pair = train[0]
    assert pair.prompt == "Q: window breaks?\nA: "
    assert pair.document == pair.prompt + "Ay me!\n"


def test_an_answer_is_the_replys_first_whole_sentence_and_a_longer_one_drops_the_pair():
    play = (
        "ROMEO:\nWhat light?\n\n"
        "JULIET:\nAy me! Who is there?\n\n"  # two sentences within the cap: the first is the answer
        "ROMEO:\nIt is I, thy Romeo, at thy window.\n\n"  # its first sentence is longer than the cap: no pair
        "JULIET:\nAnd no sentence ends here\n\n"  # fits the cap, but ends no sentence: no pair
        "ROMEO:\nGood night!\n\n"
    )
    train, heldout = extract_pairs(play, 0.999, max_question_chars=30, max_answer_chars=30)
    assert heldout == []
    assert train == [QAPair("What light?", "Ay me!"), QAPair("And no sentence ends here", "Good night!")]
    train, _ = extract_pairs(PLAY, 0.999, max_question_chars=30, max_answer_chars=12)
    assert [pair.answer for pair in train] == ["Ay me!"]  # "It is I, thy Romeo." is longer than 12


def test_the_training_questions_are_every_pairs_whatever_the_length_of_its_reply():
    train, _ = extract_pairs(PLAY, 0.999, max_question_chars=20, max_answer_chars=12)
    assert [pair.question for pair in train] == ["window breaks?"]  # "It is I, thy Romeo." is longer than 12
    assert extract_questions(PLAY, 0.999, max_question_chars=20) == ["window breaks?", "by the same speaker."]
    assert extract_questions(PLAY, PLAY.index("ROMEO:\nIt is") / len(PLAY), 20) == ["window breaks?"]


def test_pairs_after_the_split_are_held_out_and_pairs_across_it_are_dropped():
    split_inside_second_pair = (PLAY.index("JULIET:\nA second") + 3) / len(PLAY)
    train, heldout = extract_pairs(PLAY, split_inside_second_pair, 30, 30)
    assert [p.answer for p in train] == ["Ay me!"]
    assert heldout == []  # the second pair's question starts before the split
    train, heldout = extract_pairs(PLAY, PLAY.index("ROMEO:\nIt is") / len(PLAY), 30, 30)
    assert [p.answer for p in train] == ["Ay me!"]
    assert heldout == []  # the reply is after the split, its question before: dropped
    train, heldout = extract_pairs(PLAY, 0.01, 30, 30)
    assert train == [] and [p.answer for p in heldout] == ["It is I, thy Romeo."]


RATER = Rater.from_text("good night good night sweet prince sweet prince my lord my lord the the")


@pytest.mark.parametrize(
    "answer, stopped, known, end, length, repetition, total",
    [
        ("Good night, sweet prince.", True, 1, 1, 1, 0, 1),
        ("Good night, sweet prince.", False, 0, 0, 0, 0, 0),  # never stopped
        ("", True, 0, 0, 0, 0, 0),  # empty
        ("...", True, 0, 0, 0, 0, 0),  # no words
        ("Good night, sweet zounds", True, 0.75, 0, 1, 0, 1.75 / 3),
        ("Prince!", True, 1, 1, 0, 0, 2 / 3),  # one word: too short
        ("my lord the prince my lord the prince?", True, 1, 1, 1, 0.5, 0.5),  # 8 words, half repeats
        ("my lord, my lord, my lord.", True, 1, 1, 1, 4 / 6, 1 - 4 / 6),
        ("the the the the the the the the the.", True, 1, 1, 0, 8 / 9, 0),  # floored at 0
    ],
)
def test_rater_scores_each_component_on_hand_written_answers(answer, stopped, known, end, length, repetition, total):
    rating = RATER.rate("unrelated question", answer, stopped)  # topic_weight 0: the question-blind rater
    expected = (known, end, length, repetition, total)
    assert (rating.known_words, rating.sentence_end, rating.good_length, rating.repetition, rating.total) == (
        pytest.approx(expected)
    )


def test_known_words_occur_at_least_twice_and_ignore_case_and_quotes():
    rater = Rater.from_text("'Tis once. 'tis twice. Lord, LORD! single")
    assert rater.known_words == {"tis", "lord"}


def test_content_words_have_four_letters_or_more_and_are_not_stop_words():
    assert content_words("What, Grumio! Shall I tell thee of my horse's tongue?") == {"grumio", "horse's", "tongue"}
    assert content_words("Ay, so it is; and what of that?") == set()


@pytest.mark.parametrize(
    "question, answer, shares",
    [
        ("In his tongue.", "Whose tongue?", True),
        ("that Petruchio came?", "Ay, PETRUCHIO came.", True),  # case does not matter
        ("from my mother-wit.", "A witty mother!", True),  # "mother-wit" is "mother" and "wit"
        ("What say you?", "What, my lord?", False),  # "what" is a stop word
        ("Is the sun up?", "The sun is up.", False),  # words of fewer than 4 letters never count
        ("Good night, sweet prince.", "Farewell.", False),
    ],
)
def test_an_answer_shares_a_content_word_with_its_question(question, answer, shares):
    assert shares_content_word(question, answer) is shares


TOPICAL = Rater(RATER.known_words | {"in", "his", "tongue"}, topic_weight=0.8)


@pytest.mark.parametrize(
    "question, answer, stopped, picks_up, echo, total",
    [
        ("Whose tongue?", "In his tongue.", True, 1, 0, 1),  # its one content word is the question's
        ("Whose tongue?", "Good night, sweet prince.", True, 0, 0, 0.2),  # well formed, off the question: 1 - 0.8
        ("my tongue and sword?", "My good tongue, sweet prince.", True, 1 / 4, 0, 0.4),  # 1 of 4 content words
        ("a sweet prince of night?", "Sweet prince, good night.", True, 0, 1, 0),  # holds 3 of its 5 words: echo
        ("Whose tongue?", "whose tongue?", True, 0, 1, 0),  # the question itself
        ("Whose tongue?", "In his tongue", True, 1, 0, 2 / 3),  # the form still counts (no sentence end)
        ("Whose tongue?", "In his tongue.", False, 0, 0, 0),  # never stopped
    ],
)
def test_the_topical_rater_pays_for_picking_up_the_question_and_nothing_for_echoing_it(
    question, answer, stopped, picks_up, echo, total
):
    rating = TOPICAL.rate(question, answer, stopped)
    assert (rating.picks_up, rating.echo, rating.total) == pytest.approx((picks_up, echo, total))


def test_with_topic_weight_zero_the_rater_is_the_question_blind_one_echo_or_not():
    for question, answer in [("Whose tongue?", "whose tongue?"), ("Whose tongue?", "Good night, sweet prince.")]:
        rating = RATER.rate(question, answer)
        assert rating.total == rating.form > 0


def test_one_stock_reply_for_every_question_scores_below_replies_that_pick_up_their_question():
    pairs = [("Whose tongue?", "In his tongue."), ("the sweet prince?", "A sweet prince."), ("Good night.", "Ay.")]
    replies = sum(TOPICAL.rate(q, a).total for q, a in pairs) / len(pairs)
    for stock in ("Good night, sweet prince.", "my lord."):
        assert sum(TOPICAL.rate(q, stock).total for q, _ in pairs) / len(pairs) < replies


def test_a_topic_weight_outside_zero_to_one_is_refused_in_one_line():
    with pytest.raises(UserError, match=r"qa.topic_weight=1.5 must be in \[0, 1\]"):
        Rater(set(), topic_weight=1.5)


def test_the_hints_are_the_questions_content_words_in_order_once_each_as_it_spells_them():
    assert hints("my tongue, my TONGUE and Sweet prince?") == ["tongue", "Sweet", "prince"]
    assert hints("What say you?") == []  # no content word: nothing to start an answer with
