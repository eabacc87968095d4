"""Question filtering, balance and hold-out on the kinds of questions SmolLM2-135M really writes."""

from runner.dataprep.quality import (
    FILTER_NAMES,
    Candidate,
    balance,
    content_words,
    filter_candidates,
    hold_out,
    normalize_question,
)

FACTS = [
    "The Harbour Library on Kestrel Island opened in 1887.",
    "Its first librarian was Mara Quillon, a retired sea captain.",
    "The library keeps a collection of 4,200 ship logbooks.",
    "Every spring the island holds a lantern festival in the library garden.",
    "A ferry from Port Ellery reaches Kestrel Island in forty minutes.",
]

GOOD = [
    ("When did the Harbour Library open its doors?", 0),
    ("Who was the first librarian at the Harbour Library?", 1),
    ("How many ship logbooks does the library hold?", 2),
    ("What celebration takes place in the library garden each spring?", 3),
    ("How long does the ferry from Port Ellery take to reach the island?", 4),
]


def cand(question, fact_index, style="quiz"):
    return Candidate(question, FACTS[fact_index], fact_index, style)


def rejected_by(question, fact_index, facts=FACTS, seen=None):
    """Name of the single filter that removed the question, or None when it was accepted."""
    accepted, removed = filter_candidates([cand(question, fact_index)], facts, seen)
    names = [name for name, n in removed.items() if n]
    assert len(accepted) + sum(removed.values()) == 1
    return names[0] if names else None


def test_content_words_fold_plurals_and_possessives_and_drop_stopwords():
    assert content_words("islands") == content_words("island's") == content_words("Island") == {"island"}
    assert content_words("Who was the librarian in 1887?") == {"librarian", "1887"}
    assert content_words("class") == {"class"}  # "ss" is not a plural
    assert content_words("What is it?") == set()


def test_good_paraphrases_are_accepted():
    accepted, removed = filter_candidates([cand(q, i) for q, i in GOOD], FACTS)
    assert [c.question for c in accepted] == [q for q, _ in GOOD]
    assert list(removed) == list(FILTER_NAMES)
    assert removed == dict.fromkeys(FILTER_NAMES, 0)


def test_not_a_question():
    assert rejected_by("The Harbour Library opened in 1887.", 0) == "not_a_question"
    assert rejected_by("Harbour Library?", 0) == "not_a_question"
    assert rejected_by("Why " + "library " * 45 + "?", 0) == "not_a_question"


def test_junk_small_model_output():
    assert rejected_by("Who, What, Where, When, How...?", 0) == "junk"
    assert rejected_by("What is [ANSWER] of the Harbour Library?", 0) == "junk"
    assert rejected_by("Question: When did the Harbour Library open?", 0) == "junk"
    assert rejected_by("When did the library library library open?", 0) == "junk"
    assert rejected_by("1887 - 42 = ??? !!! 1887 ?", 0) == "junk"
    assert rejected_by("When did the ___ open on Kestrel Island?", 0) == "junk"


def test_question_that_copies_its_fact():
    assert rejected_by("The Harbour Library on Kestrel Island opened in 1887?", 0) == "copies_answer"
    assert rejected_by("Did the Harbour Library on Kestrel Island open in 1887?", 0) is None


def test_question_about_something_the_fact_never_mentions():
    assert rejected_by("Which island do you live on?", 2) == "off_topic"


def test_question_that_retrieves_another_fact():
    # Written for the festival fact, but its words point at the opening of the library.
    assert rejected_by("When did the library on Kestrel Island open?", 3) == "round_trip"
    # A tie between facts keeps the question's own fact.
    assert rejected_by("Who was the first librarian at the Harbour Library?", 1) is None
    assert rejected_by("Was Mara Quillon born on Kestrel Island?", 1) is None  # ties facts 0 and 4


def test_duplicates_within_and_across_chunks():
    seen = set()
    first = "Who was the first librarian at the Harbour Library?"
    accepted, removed = filter_candidates([cand(first, 1), cand(first.upper(), 1)], FACTS, seen)
    assert len(accepted) == 1 and removed["duplicate"] == 1
    assert normalize_question(first) in seen
    # The next chunk overlaps the first one and the model asks the same thing again.
    chunk_b = FACTS[1:3]
    again = Candidate("who was the first librarian at the harbour library ?", chunk_b[0], 0, "quiz")
    accepted, removed = filter_candidates([again], chunk_b, seen)
    assert accepted == [] and removed["duplicate"] == 1


def test_filters_count_first_failure_only_and_in_order():
    batch = [cand(q, i) for q, i in GOOD] + [
        cand("Who, What, Where, When, How...?", 0),
        cand("Which island do you live on?", 2),
        cand("The Harbour Library on Kestrel Island opened in 1887?", 0),
        cand("When did the library on Kestrel Island open?", 3),
        cand("When did the Harbour Library open its doors?", 0),
        cand("no question mark", 0),
    ]
    accepted, removed = filter_candidates(batch, FACTS)
    assert len(accepted) == len(GOOD)
    assert removed == {"not_a_question": 1, "junk": 1, "copies_answer": 1, "off_topic": 1,
                       "round_trip": 1, "duplicate": 1}


def test_balance_caps_per_fact_with_styles_in_turn():
    accepted = [
        cand("q1?", 0, "quiz"), cand("q2?", 0, "quiz"), cand("q3?", 0, "quiz"),
        cand("s1?", 0, "summary"), cand("k1?", 0, "key_facts"),
        cand("f2?", 2, "quiz"),
    ]
    kept, stats = balance(accepted, FACTS, per_fact=4)
    assert [c.question for c in kept] == ["q1?", "s1?", "k1?", "q2?", "f2?"]
    kept, stats = balance(accepted, FACTS, per_fact=3)
    assert [c.style for c in kept if c.fact_index == 0] == ["quiz", "summary", "key_facts"]
    assert stats == {
        "facts_total": 5,
        "facts_covered": 2,
        "facts_uncovered": [1, 3, 4],
        "questions_per_fact": {"min": 0, "max": 3},
        "over_cap": 2,
    }


def pairs_for(counts):
    return [
        {"question": f"{fact} question {i}?", "answer": fact, "fact_key": ("doc", 0, fact)}
        for fact, n in counts.items() for i in range(n)
    ]


def test_hold_out_keeps_training_questions_for_every_fact():
    pairs = pairs_for({"a": 5, "b": 2, "c": 1, "d": 3})
    train, evaluation = hold_out(pairs, 0.2, seed=7)
    assert len(train) + len(evaluation) == len(pairs)
    train_keys = {p["fact_key"] for p in train}
    assert train_keys == {p["fact_key"] for p in pairs}  # no fact left without training questions
    assert all(p["fact_key"] in train_keys for p in evaluation)
    held = [p["fact_key"][2] for p in evaluation]
    assert sorted(held) == ["a", "b", "d"]  # at least one per fact with 2+, none from "c"
    everything, nothing = hold_out(pairs, 1.0, seed=7)
    assert sorted(p["fact_key"][2] for p in everything) == ["a", "b", "c", "d"]
    assert hold_out(pairs, 0.0, seed=7) == (pairs, [])


def test_hold_out_is_deterministic_per_seed_and_per_fact():
    pairs = pairs_for({"a": 6, "b": 6})
    assert hold_out(pairs, 0.5, seed="s") == hold_out(pairs, 0.5, seed="s")
    splits = {tuple(p["question"] for p in hold_out(pairs, 0.5, seed=s)[1]) for s in range(10)}
    assert len(splits) > 1
    # Adding another fact does not change which questions of "a" are held out.
    alone = hold_out(pairs_for({"a": 6}), 0.5, seed=3)[1]
    together = [p for p in hold_out(pairs_for({"a": 6, "z": 4}), 0.5, seed=3)[1]
                if p["fact_key"][2] == "a"]
    assert alone == together and len(alone) == 3
