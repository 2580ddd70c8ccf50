"""Question/answer pairs cut from play text, and the rater."""

import pytest

from gpt.posttrain.qa import QAPair, Rater, extract_pairs

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
        QAPair("window breaks?", "Ay me!"),  # cut after the reply's last sentence end within 20 characters
        QAPair("by the same speaker.", "It is I, thy Romeo."),
    ]


def test_answers_are_whole_words_cut_after_their_last_sentence_end():
    (pair, other), _ = extract_pairs(PLAY, 0.999, max_question_chars=30, max_answer_chars=12)
    assert pair == QAPair("through yonder window breaks?", "Ay me!")
    assert other == QAPair("speech by the same speaker.", "It is I, thy")  # no sentence end: whole words
    assert pair.prompt == "Q: through yonder window breaks?\nA: "
    assert pair.document == pair.prompt + "Ay me!\n"


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
    rating = RATER.rate(answer, stopped)
    expected = (known, end, length, repetition, total)
    assert (rating.known_words, rating.sentence_end, rating.good_length, rating.repetition, rating.total) == (
        pytest.approx(expected)
    )


def test_known_words_occur_at_least_twice_and_ignore_case_and_quotes():
    rater = Rater.from_text("'Tis once. 'tis twice. Lord, LORD! single")
    assert rater.known_words == {"tis", "lord"}
