"""Answer scores checked against values worked out by hand."""

import pytest

from runner.evaluation.metrics import (
    exact_match,
    normalize_answer,
    rouge_l,
    score_answers,
    token_f1,
)


def test_normalize_answer_like_squad():
    assert normalize_answer("  The Cat, sat!\n An apple  ") == "cat sat apple"
    assert normalize_answer("Theatre and Anthem") == "theatre and anthem"  # articles only as words


def test_cat_on_the_mat():
    # "cat sat on mat" vs "cat is on mat": 3 shared tokens of 4, LCS "cat on mat" of length 3.
    assert token_f1("the cat sat on the mat", "the cat is on the mat") == pytest.approx(0.75)
    assert rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(0.75)
    assert exact_match("the cat sat on the mat", "the cat is on the mat") == 0.0


def test_rouge_l_counts_order_and_f1_does_not():
    # Same bag of tokens, but "mat on cat" and "cat on mat" share a subsequence of one token.
    assert token_f1("mat on the cat", "the cat on mat") == pytest.approx(1.0)
    assert rouge_l("mat on the cat", "the cat on mat") == pytest.approx(1 / 3)
    assert rouge_l("x y z w", "x z y w") == pytest.approx(0.75)


def test_short_answer_against_a_long_reference():
    reference = "Its first librarian was Mara Quillon, a retired sea captain."
    # 2 of 9 reference tokens, all prediction tokens: P = 1, R = 2/9, F = 4/11.
    assert token_f1("Mara Quillon", reference) == pytest.approx(4 / 11)
    assert rouge_l("Mara Quillon", reference) == pytest.approx(4 / 11)


def test_repeated_tokens_count_as_often_as_both_sides_have_them():
    assert token_f1("cat cat dog", "cat dog dog") == pytest.approx(2 / 3)  # one cat, one dog
    assert token_f1("cat cat dog", "cat cat bird") == pytest.approx(2 / 3)  # two cats
    assert token_f1("cat cat cat", "cat") == pytest.approx(0.5)  # P = 1/3, R = 1


def test_exact_match_after_normalisation():
    assert exact_match("The Harbour Library.", "harbour library") == 1.0


def test_empty_strings():
    assert token_f1("", "") == rouge_l("", "") == exact_match("", "") == 1.0
    assert token_f1("", "cat") == rouge_l("cat", "") == exact_match("", "cat") == 0.0
    assert token_f1("the", "a") == 1.0  # both are empty once articles are removed


def test_score_answers_per_question_and_mean():
    result = score_answers([
        {"question": "Where is the cat?", "reference": "the cat is on the mat",
         "prediction": "the cat sat on the mat"},
        {"question": "Who?", "reference": "Mara Quillon", "prediction": "mara quillon"},
    ])
    first, second = result["questions"]
    assert first["question"] == "Where is the cat?"
    assert first["token_f1"] == pytest.approx(0.75) and second["exact_match"] == 1.0
    assert result["mean"] == pytest.approx({"token_f1": 0.875, "rouge_l": 0.875, "exact_match": 0.5})
    assert score_answers([]) == {"questions": [],
                                 "mean": {"token_f1": 0.0, "rouge_l": 0.0, "exact_match": 0.0}}
