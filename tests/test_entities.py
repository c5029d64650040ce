"""Which entity an edit routes on, and whether an input names it as people write names (issue 24).

Every case marked "as people write it" was refused by the whole-name subject gate (melo_cli/router/subjects.py),
the only check before: with a `subject` field it lost these paraphrases; without one there was no
check at all and the other-entity prompts below got the edit.
"""

from __future__ import annotations

import pytest

from melo_cli.router import entities
from melo_cli.router import subjects
from melo_cli.router.entities import chosen, find, names, short_forms


class Words:
    """A stand-in for the base model's casing test (casing.ProperTest) with fixed answers."""

    COMMON = {"The", "In", "What", "It", "When", "Did", "Where", "Who", "An"}
    NAMES = {"Obama", "Darrieux", "DiCaprio", "Curie", "Kahlo", "Shakespeare"}

    def common(self, word):
        return word in self.COMMON

    def name(self, word):
        return word in self.NAMES


def entity(text: str, subject: str | None = None):
    name, short, _ = chosen(text, subject, "auto", Words())
    return name, short


@pytest.mark.parametrize("edit, paraphrase", [
    ("Barack Obama was born in", "Obama's place of birth is"),                       # surname, possessive
    ("Barack Obama was born in", "Where was Obama born? He was born in"),
    ("Barack Obama was born in", "barack obama's birthplace is"),                    # any case
    ("The mother tongue of Danielle Darrieux is", "Darrieux grew up speaking"),
    ("The CEO of Microsoft is", "Who runs Microsoft? The company is led by"),        # sentence break after the name
    ("The CEO of Microsoft is", "The person in charge of microsoft is"),             # lowercase
    ("The CEO of Microsoft is", "Microsoft's chief executive is"),
    ("Leonardo DiCaprio starred in", "Leo DiCaprio starred in"),                     # a short first name
    ("Leonardo DiCaprio starred in", "Which film did DiCaprio star in?"),
    ("The Eiffel Tower is located in", "Where is the Eiffel Tower? It stands in"),
    ("In Nykarleby, the language spoken is", "What do people speak in Nykarleby?"),  # "In" starts a sentence
    ("Marie Curie won the Nobel Prize in", "Curie's Nobel Prize was in"),
])
def test_a_paraphrase_names_the_entity_as_people_write_it(edit, paraphrase):
    name, short = entity(edit)
    assert names(paraphrase, name, short), (name, short)


@pytest.mark.parametrize("edit, other", [
    ("Barack Obama was born in", "Michelle Obama was born in"),       # shares a word, at a sentence start
    ("Barack Obama was born in", "They say Michelle Obama was born in"),
    ("Barack Obama was born in", "Joe Biden was born in"),
    ("The CEO of Microsoft is", "The CEO of Apple is"),
    ("The CEO of Microsoft is", "Microsoft Word was made by"),        # a longer name
    ("Marie Curie won the Nobel Prize in", "Pierre Curie won the Nobel Prize in"),
    ("Leonardo DiCaprio starred in", "Leopold DiCaprio starred in"),  # not a short form of Leonardo
    ("The Eiffel Tower is located in", "The Tower of London is located in"),  # "Tower" is no name alone
    ("The mother tongue of Danielle Darrieux is", "The mother tongue of Michel Rocard is"),
    ("BBC Radio is from", "BBC Radio 4 Extra is from"),
    ("Athens is the capital of", "Royal Palace of Athens is in"),
    ("Frida Kahlo was a painter from", "Frida Giannini was a designer from"),  # a first name is no short form
])
def test_another_entity_is_refused(edit, other):
    name, short = entity(edit)
    assert not names(other, name, short), (name, short)


def test_the_found_entity_is_the_name_in_the_input():
    assert entity("The mother tongue of Danielle Darrieux is") == ("Danielle Darrieux", ("Darrieux",))
    assert entity("The CEO of Microsoft is") == ("CEO of Microsoft", ("Microsoft",))
    assert entity("In Nykarleby, the language spoken is") == ("Nykarleby", ())
    assert entity("What is the twin city of Lyon? It is") == ("Lyon", ())
    assert entity("Toko Yasuda, the") == ("Toko Yasuda", ())
    assert entity("Charles IV of Spain's life ended in") == ("Charles IV of Spain", ("Spain",))
    assert entity("R.A. Dickey plays") == ("R.A. Dickey", ())
    assert entity("Webley & Scott was started in") == ("Webley & Scott", ())
    assert entity("Kemira is headquartered in") == ("Kemira", ())     # a lone name at the start stays
    assert entity("what is the capital of france?") == (None, ())    # no capitals: nothing to route on


def test_without_the_base_model_capitals_alone_decide_and_no_surname_stands_alone():
    assert find("In Nykarleby, the language spoken is") == "In Nykarleby"
    assert short_forms("Barack Obama") == ()
    assert short_forms("University of Valencia") == ("Valencia",)


def test_a_given_subject_is_a_hint_that_can_only_help():
    assert entity("The mother tongue of Danielle Darrieux is", "Danielle Darrieux") == \
        ("Danielle Darrieux", ("Darrieux",))
    name, short, note = chosen("The CEO of Acme Corp is", "Acme Corp", "auto", Words())
    assert name == "CEO of Acme Corp" and "Acme Corp" in short and "CEO of Acme Corp" in note  # said, not silent
    assert names("Who runs Acme Corp?", name, short)
    assert entities.subject_problem("The CEO of Acme Corp is", "Globex") is not None
    assert entities.subject_problem("The CEO of Acme Corp is", "...") == "has no letters or digits"
    assert entities.subject_problem("The CEO of Acme Corp is", "acme corp") is None


def test_the_whole_name_rule_of_format_1_bundles_is_kept_for_them():
    assert chosen("Lehigh Valley United Sonic plays", "Lehigh Valley United", "subject-whole") == \
        ("Lehigh Valley United Sonic", (), None)
    assert not subjects.names("Obama's place of birth is", "Barack Obama")  # what format 1 bundles still do
    assert chosen("Barack Obama was born in", None, "off") == (None, (), None)


def test_the_casing_test_scores_each_word_the_same_in_any_batch(llama_path):
    """ProperTest batches words by token length (to pad less): each word must keep its own scores, the
    same as when it is scored alone."""
    from melo_cli import MeloModel
    from melo_cli.model.casing import ProperTest

    edited = MeloModel.from_pretrained(llama_path, device="cpu").edited
    words = ["The", "Obama", "Suddenly", "In", "Nykarleby", "Tower", "Savdhaan", "When", "DiCaprio", "Eiffel"]
    together = ProperTest(edited).prime(words)
    for word in words:
        alone = ProperTest(edited).prime([word])
        assert together.delta[word] == pytest.approx(alone.delta[word], abs=1e-4)
        assert together.lower[word] == pytest.approx(alone.lower[word], abs=1e-4)
    ordered = together._by_length(sorted(words))
    counts = [max(len(edited.backbone.tokenizer(" " + f, add_special_tokens=False)["input_ids"]) for f in (w, w.lower()))
              for w in ordered]
    assert sorted(ordered) == sorted(words) and counts == sorted(counts)
