"""The semantic-cache verifier (cache/verifier*.py) and its labelled data: no model needed here.

Similarities are given as numbers (the verifier receives the cosine from the cache); the text
analysis, the hard rules, the equivalence path and the shipped logistic model are the real ones.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from cache.verifier import FEATURES, WEIGHTS_PATH, Verifier, VerifierModel, get_verifier, pair_features
from cache.verifier_pairs import load_pairs, split_of
from cache.verifier_text import analyse, numbers_key, parse_lexicon

# One near miss per kind the issue names: (kind, cached, query, the rule that must refuse it).
NEAR_MISSES = [
    ("language", "Translate 'good morning' into Spanish.", "Translate 'good morning' into French.", "slot:place"),
    ("country", "What is the capital of France?", "What is the capital of Germany?", "slot:place"),
    ("city", "What should I see on a trip to Rome?", "What should I see on a trip to Lisbon?", "slot:place"),
    ("programming language", "How do I reverse a list in Python?", "How do I reverse a list in Rust?", "slot:proglang"),
    ("programming language, cased", "How do I make an HTTP request in Go?", "How do I make an HTTP request in Rust?",
     "slot:proglang"),
    ("unit", "How many ounces are in a pound?", "How many grams are in a pound?", "slot:unit"),
    ("format", "List the primary colors in JSON format.", "List the primary colors in YAML format.", "slot:format"),
    ("name", "Write a birthday message for my friend Sarah.", "Write a birthday message for my friend John.", "slot:name"),
    ("entity", "What is the distance from Earth to the Moon?", "What is the distance from Earth to Mars?", "slot:entity"),
    ("time", "What's the weather usually like in Seattle in October?",
     "What's the weather usually like in Seattle in July?", "slot:time"),
    ("tool", "How do I install Docker on Ubuntu?", "How do I install Docker on Windows?", "slot:tech"),
    ("negation", "Is green tea healthy?", "Is green tea not healthy?", "negation"),
    ("negation, contracted", "Why can penguins fly?", "Why can't penguins fly?", "negation"),
    ("antonym", "Is coffee bad for your heart?", "Is coffee good for your heart?", "antonym"),
    ("antonym", "Sort this list in ascending order: 5, 2, 9.", "Sort this list in descending order: 5, 2, 9.", "antonym"),
    ("direction", "Convert 100 degrees Celsius to Fahrenheit.", "Convert 100 degrees Fahrenheit to Celsius.", "direction"),
    ("direction", "How many ounces are in a pound?", "How many pounds are in an ounce?", "direction"),
    ("direction", "Is Python faster than Java?", "Is Java faster than Python?", "direction"),
    ("direction, word order", "Does the Earth revolve around the Sun?", "Does the Sun revolve around the Earth?",
     "direction"),
    ("number", "What is 12 times 7?", "What is 12 times 8?", "numbers"),
    ("quantity in words", "How many kilometers are in five miles?", "How many kilometers are in six miles?", "numbers"),
    ("quantity, words vs digits", "Give me three tips for better sleep.", "Give me 4 tips for better sleep.", "numbers"),
    ("ordinal", "Who was the first person to walk on the Moon?", "Who was the second person to walk on the Moon?",
     "numbers"),
    ("ordinal, digits", "Explain the 2nd law of thermodynamics.", "Explain the third law of thermodynamics.", "numbers"),
]

# Requests that differ only in function words, filler, synonyms or number forms.
EQUIVALENT = [
    ("How do I reverse a list in Python?", "How can I reverse a list in Python?"),
    ("How many kilometers are in five miles?", "How many kilometers are in 5 miles?"),
    ("Who was the first person to walk on the Moon?", "Who was the 1st person to walk on the Moon?"),
    ("List the primary colors in JSON format.", "Please give me the primary colors in JSON format."),
    ("Write a birthday message for my friend Sarah.", "Can you write a birthday message for my friend Sarah?"),
    ("Is coffee bad for your heart?", "Is coffee bad for the heart?"),
    ("What is 70 kg in pounds?", "What is 70 kilograms in lbs?"),
]


# Issue 25: requests whose words match but whose order, stance or question differs. Each of these
# was served by the verifier before (the model alone scored them above its cutoff) or refused only
# by the model's luck; now a rule refuses them whatever the similarity.
NEAR_MISSES_ORDER_STANCE_QUESTION = [
    ("operands swapped", "What is 10 minus 4?", "What is 4 minus 10?", "order"),
    ("operands swapped around from", "Take 7 away from 30.", "Take 30 away from 7.", "order"),
    ("fractions swapped", "Is 5/8 larger than 3/5?", "Is 3/5 larger than 5/8?", "order"),
    ("arguments swapped, no pivot", "Is every prime number odd?", "Is every odd number prime?", "order"),
    ("subject and object swapped", "Did the Normans conquer the Saxons?", "Did the Saxons conquer the Normans?",
     "order"),
    ("conversion direction", "Change my Spotify playlist into an Apple Music one.",
     "Change my Apple Music playlist into a Spotify one.", "order"),
    ("stance", "Write a speech in favour of lowering the speed limit.",
     "Write a speech against lowering the speed limit.", "antonym"),
    ("stance, verbs", "Write an op-ed defending nuclear energy.", "Write an op-ed criticizing nuclear energy.",
     "antonym"),
    ("negation, -free", "Which foods contain gluten?", "Which foods are gluten-free?", "negation"),
    ("negation, prefix", "Is this mushroom edible?", "Is this mushroom inedible?", "negation"),
    ("negation, non-", "Write a regex that matches digits.", "Write a regex that matches non-digits.", "negation"),
    ("another question on the subject", "What is Brave New World about?", "Who wrote Brave New World?", "question"),
    ("plot / author", "Summarize the plot of Brave New World.", "Who wrote Brave New World?", "question"),
    ("who / when", "Who wrote Brave New World?", "When was Brave New World published?", "question"),
    ("who / when, other verbs", "Who designed the Eiffel Tower?", "When was the Eiffel Tower built?", "question"),
    ("phrases swapped, no pivot", "Is every fish a vertebrate animal?", "Is every vertebrate animal a fish?", "order"),
    ("labels swapped", "Move the logs from folder A to folder B.", "Move the logs from folder B to folder A.", "order"),
    ("swapped after why", "Why do hawks hunt mice?", "Why do mice hunt hawks?", "order"),
    ("swapped around without", "Find the users without posts.", "Find the posts without users.", "order"),
    ("a vague noun as an operand", "How do I turn a list into a set in Python?",
     "How do I turn a set into a list in Python?", "direction"),
]

# Rewordings the new rules must let through to the model (and the model serves at a high cosine).
REWORDED_ORDER = [
    ("passive voice", "Did Edison invent the light bulb?", "Was the light bulb invented by Edison?"),
    ("clause moved", "In Rust, how do I read a file?", "How do I read a file in Rust?"),
    ("commutative", "What is 7 plus 5?", "What is 5 plus 7?"),
    ("symmetric joiner", "Python vs Java for web development?", "Java vs Python for web development?"),
    ("question word quoted", 'Translate "who are you" into German.', 'How do you say "who are you" in German?'),
    ("who, answered by a noun", "Who wrote Brave New World?", "Name the author of Brave New World."),
    ("question word moved", "Which city is the capital of Peru?", "The capital of Peru is which city?"),
    ("question word takes its noun along", "What is the longest river in Africa?",
     "Which river is the longest in Africa?"),
    ("choice question", "Who is older, Biden or Trump?", "Which is older: Biden or Trump?"),
]


@pytest.mark.parametrize(("kind", "cached", "query", "rule"), NEAR_MISSES_ORDER_STANCE_QUESTION,
                         ids=[n[0] for n in NEAR_MISSES_ORDER_STANCE_QUESTION])
def test_order_stance_and_question_near_misses_are_refused_by_a_rule(kind, cached, query, rule):
    for cached_text, query_text in ((cached, query), (query, cached)):
        verdict = get_verifier().check(cached_text, query_text, 1.0)
        assert not verdict.agrees and verdict.reason == rule, (kind, verdict)


@pytest.mark.parametrize(("kind", "cached", "query"), REWORDED_ORDER, ids=[n[0] for n in REWORDED_ORDER])
def test_reworded_order_is_left_to_the_model_and_served(kind, cached, query):
    verdict = get_verifier().check(cached, query, 0.97)
    assert verdict.reason in ("model", "equivalent") and verdict.agrees, (kind, verdict)


def test_how_asks_for_a_measure_a_manner_or_a_reason():
    assert analyse("How long does the flight to Oslo take?").questions == {"quantity"}
    assert analyse("How many minutes does the flight to Oslo take?").questions == {"quantity"}
    assert analyse("Explain how vaccines work.").questions == analyse("How do vaccines work?").questions == {"how"}
    assert analyse("How come the sky is blue?").questions == {"why"}


def test_an_infinitive_to_is_no_direction_but_a_swap_of_both_ends_is():
    verifier = get_verifier()
    assert verifier.check("How do I learn to play chess?", "What's the best way to learn chess?", 0.9).reason != \
        "direction"
    assert verifier.check("Convert a list to a set.", "Convert a set to a list.", 1.0).reason == "direction"


def test_a_vague_noun_mid_request_is_what_is_asked_about():
    verdict = get_verifier().check("How do I sort a dictionary by value in Python?",
                                   "How do I sort a dictionary by key in Python?", 0.95)
    assert verdict.reason != "equivalent" and not verdict.agrees
    # at the start of a request the same word is an imperative: filler
    assert get_verifier().check("List the primary colors in JSON format.",
                                "Please give me the primary colors in JSON format.", 0.9).reason == "equivalent"


def test_one_where_the_other_says_a():
    verdict = get_verifier().check("How many cups are in a liter?", "How many cups make up one liter?", 0.95)
    assert verdict.reason != "numbers"
    assert numbers_key(analyse("What do I pack for a week?")) == numbers_key(analyse("What do I pack for one week?"))
    assert get_verifier().check("Is 1 a prime number?", "Is a prime number odd?", 1.0).reason == "numbers"
    assert analyse("Which one is older?").numbers == ()


def test_relative_pronouns_are_not_question_words():
    assert analyse("Write a note to my neighbour Emma, who watered my plants.").questions == frozenset()
    assert analyse("Tell me who watered my plants.").questions == {"who"}
    assert analyse('Translate "where is the station" into Greek.').questions == frozenset()
    assert analyse("For analytics, why is Postgres better than MySQL?").questions == {"why"}


@pytest.mark.parametrize(("kind", "cached", "query", "rule"), NEAR_MISSES, ids=[n[0] for n in NEAR_MISSES])
def test_each_near_miss_kind_is_refused_by_its_rule_even_at_similarity_one(kind, cached, query, rule):
    verdict = get_verifier().check(cached, query, 1.0)
    assert not verdict.agrees
    assert verdict.score == 0.0
    assert verdict.reason == rule, kind


@pytest.mark.parametrize(("cached", "query"), EQUIVALENT)
def test_wording_only_differences_are_equivalent(cached, query):
    verdict = get_verifier().check(cached, query, 0.9)
    assert verdict.agrees and verdict.reason == "equivalent" and verdict.score == 1.0


def test_swapped_order_or_pronoun_is_not_equivalent():
    verifier = get_verifier()
    for cached, query in [("Does the Earth revolve around the Sun?", "Does the Sun revolve around the Earth?"),
                          ('Correct this: "She don\'t like apples."', 'Correct this: "He don\'t like apples."'),
                          ("Where is the Eiffel Tower?", "What is the Eiffel Tower?")]:
        assert verifier.check(cached, query, 0.95).reason != "equivalent", (cached, query)


def test_the_model_scores_rewordings_and_refuses_single_word_swaps():
    verifier = get_verifier()
    reworded = verifier.check("How do I reverse a list in Python?", "What's the way to reverse a Python list?", 0.973)
    assert reworded.reason == "model" and reworded.agrees
    swapped = verifier.check("What's the time complexity of binary search?",
                             "What's the space complexity of binary search?", 0.907)
    assert swapped.reason == "model" and not swapped.agrees
    # the similarity counts: the same pair at a lower cosine scores lower
    assert verifier.score("How do I reverse a list in Python?", "What's the way to reverse a Python list?", 0.80) < \
        reworded.score


def test_verifier_is_deterministic_and_symmetric():
    pairs = [(p.a, p.b) for p in load_pairs()[:120]]
    first = [get_verifier().check(a, b, 0.9) for a, b in pairs]
    analyse.cache_clear()  # recomputed from scratch by a fresh instance with freshly loaded weights
    fresh = Verifier(VerifierModel.load())
    assert [fresh.check(a, b, 0.9) for a, b in pairs] == first
    assert [fresh.score(b, a, 0.9) for a, b in pairs] == [v.score for v in first]
    for a, b in pairs[:40]:
        assert np.array_equal(pair_features(analyse(a), analyse(b), 0.9), pair_features(analyse(b), analyse(a), 0.9))


def test_numbers_are_canonical_across_digits_and_words():
    assert analyse("twenty-five apples").numbers == analyse("25 apples").numbers == ("25",)
    assert analyse("one hundred and two").numbers == ("102",)
    assert analyse("the sixteenth president").numbers == analyse("the 16th president").numbers == ("#16",)
    assert analyse("a price of 1,500 dollars").numbers == ("1500",)
    assert analyse("World War II").numbers == analyse("the Second World War").numbers == ()  # a name, not a number


def test_case_sensitive_entries():
    assert analyse("Write to my friend Grace.").slots == {"name": frozenset({"grace"})}
    assert "name" not in analyse("Is there a grace period?").slots
    assert analyse("Is tipping rude in the US?").slots == {"place": frozenset({"united states"})}
    assert "place" not in analyse("Tell us a story.").slots
    assert analyse("How do I do it in Go?").slots == {"proglang": frozenset({"golang"})}
    assert "proglang" not in analyse("Go to the store.").slots  # sentence start: a verb


def test_lexicon_parser_sections():
    lex = parse_lexicon("""
        [slot place]
        spain = spanish, castilian
        [slot name case]
        grace
        [case]
        US = place/united states
        [polar]
        cheap, cheapest | expensive
        [negation]
        not
        [synonym]
        make = create, build
        [filler]
        please
        [stop]
        the
    """)
    assert lex.phrases[("castilian",)] == ("place", "spain")
    assert lex.case_slots == frozenset({"name"})
    assert lex.cased["US"] == ("place", "united states")
    assert lex.poles["cheapest"] == ((1, 0),) and lex.poles["expensive"] == ((1, 1),)
    assert lex.synonyms["build"] == "make"
    assert "not" in lex.negations and "please" in lex.filler and "the" in lex.stop


def test_weights_file_matches_the_features_and_was_fitted_on_the_tune_split():
    doc = json.loads(WEIGHTS_PATH.read_text())
    assert tuple(doc["features"]) == FEATURES and len(doc["weights"]) == len(FEATURES)
    assert doc["fitted"]["split"] == "tune" and doc["fitted"]["false_hits"] == 0
    with pytest.raises(ValueError, match="other features"):
        VerifierModel((1.0,) * (len(FEATURES) - 1), 0.0, 0.5, FEATURES[:-1])
    with pytest.raises(ValueError, match="cutoff"):
        VerifierModel((1.0,) * len(FEATURES), 0.0, 1.0)


def test_evaluation_set_is_large_balanced_covers_every_kind_and_splits_deterministically():
    pairs = load_pairs()
    assert len(pairs) >= 500
    kinds = Counter(p.kind for p in pairs)
    same = kinds["same"]
    assert 0.4 <= same / len(pairs) <= 0.6
    wanted = {"language", "country", "city", "entity", "name", "negation", "antonym", "direction", "format",
              "number", "ordinal", "programming_language", "tech", "unit", "time", "content"}
    assert wanted <= set(kinds)
    for split in ("tune", "test"):
        present = {p.kind for p in pairs if p.split == split}
        assert wanted | {"same"} <= present, (split, wanted - present)
    assert len({(p.a, p.b) for p in pairs}) == len(pairs), "duplicate pairs"
    # whole blocks go to one split, by a hash of their first line: stable across runs
    assert {p.split for p in pairs if p.block == 1} == {split_of("same | Translate 'good morning' into Spanish. | "
                                                                "How do you say good morning in Spanish?")}
    by_block: dict[int, set[str]] = {}
    for p in pairs:
        by_block.setdefault(p.block, set()).add(p.split)
    assert all(len(splits) == 1 for splits in by_block.values())


def test_alignment_looks_at_the_head_of_long_requests_only_other_features_at_all_of_it():
    head = " ".join(f"word{i}" for i in range(70))
    a, b = analyse(f"{head} bread"), analyse(f"{head} cake")
    features = dict(zip(FEATURES, pair_features(a, b, 0.9)))
    assert features["aligned_substituted"] == 0  # past the aligned head (64 tokens)
    assert features["content_diff"] == 2 and features["content_substituted"] == 1
    short = dict(zip(FEATURES, pair_features(analyse("bake bread now"), analyse("bake cake now"), 0.9)))
    assert short["aligned_substituted"] == 1


# Written forms one request may use where another uses a different one (found on the blind
# development pairs, `dev3_pairs.txt`): each pair asks the same thing, and the hard rules must
# not refuse it. The near misses beside them must still be refused.
SAME_FORMS = [
    ("9 a.m. London time: what time is it in Tokyo?", "London 9am = what time in Tokyo?"),
    ("Cron expression to run a job at 3 am on day 5 of every month",
     "Cron expression to run a job at 03:00 on day 5 of every month"),
    ("Can I plug a 110V hair dryer into a 220V outlet?", "Can I plug a 110-volt hair dryer into a 220-volt outlet?"),
    ("Which flours are gluten-free?", "Which flours are gluten free?"),
    ("Does the CEO report to the board?", "Does the CEO report to the board or not?"),
    ("Was Haydn one of Beethoven's teachers?", "Was Haydn among Beethoven's teachers?"),
    ("Why is HDL the good cholesterol and LDL the bad one?", "Why is HDL the good cholesterol and LDL the bad?"),
]
FORM_NEAR_MISSES = [
    ("What is 17 mod 5?", "What is -17 mod 5?", "numbers"),
    ("3 m in feet", "3 ft in m", "direction"),
    ("What is five minus one?", "What is five minus two?", "numbers"),
    ("Flights at 9 am from Boston", "Flights at 9 pm from Boston", None),
]


@pytest.mark.parametrize(("cached", "query"), SAME_FORMS)
def test_written_forms_of_one_request_are_not_refused_by_a_rule(cached, query):
    from cache.verifier import refusal

    assert refusal(analyse(cached), analyse(query)) is None


@pytest.mark.parametrize(("cached", "query", "rule"), FORM_NEAR_MISSES)
def test_signs_units_and_counts_still_tell_near_misses_apart(cached, query, rule):
    verdict = get_verifier().check(cached, query, 0.97)
    assert not verdict.agrees, verdict
    if rule is not None:
        assert verdict.reason.split(":")[0] == rule, verdict


def test_the_blind_pair_set_loads_with_its_recorded_split():
    from cache.verifier_pairs import DATA_DIR

    dev, held = (load_pairs(DATA_DIR / name) for name in ("dev3_pairs.txt", "holdout3_pairs.txt"))
    assert (len(dev), sum(p.same for p in dev)) == (513, 196)
    assert (len(held), sum(p.same for p in held)) == (925, 352)
    assert not {p.a for p in dev} & {p.a for p in held}  # no base question on both sides of the split
