"""The subject gate's name rule: an input names an edit's subject as a whole, not inside a longer name."""

import pytest

from melo_cli.router.subjects import gate_name, names, passes


@pytest.mark.parametrize("text", [
    "The mother tongue of Danielle Darrieux is",
    "Where Danielle Darrieux is from, people speak the language of",
    "danielle DARRIEUX's language",                     # case and the possessive
    "Danielle  Darrieux, the actress, speaks",           # spacing and a comma after the name
    "References\n\nCategory:Villages Danielle Darrieux was born in",   # a capitalised line before it
    "Paris, France. Danielle Darrieux speaks",           # a sentence before it
    "Q: Danielle Darrieux?\nA:",
])
def test_a_name_in_running_text_is_named(text):
    assert names(text, "Danielle Darrieux")


@pytest.mark.parametrize("text, name", [
    ("BBC Radio Cymru's owner", "BBC Radio"),            # a capitalised word after it
    ("BBC Radio 4 Extra is from", "BBC Radio"),          # a number after it
    ("Nissan Primera P12 is produced by", "Nissan Primera"),
    ("Royal Palace of Athens is in", "Athens"),          # "Palace of" before it
    ("Where is National Institutes of Natural Sciences, Japan? It is", "Japan"),
    ("The Irbits were founded in", "Irbit"),             # letters glued on
    ("The mother tongue of Michel Rocard is", "Danielle Darrieux"),
    ("Darrieux is from", "Danielle Darrieux"),           # part of the name only
    ("Darrieux Danielle speaks", "Danielle Darrieux"),   # words out of order
])
def test_a_longer_name_or_another_name_is_not_named(text, name):
    assert not names(text, name)


def test_a_sentence_start_is_not_a_longer_name():
    assert names("Queen of England. Athens is in", "Athens")
    assert names("Athens, of all places, is in", "Athens")
    assert names("In Athens, they speak", "Athens")


def test_the_gate_name_is_the_subject_as_the_edits_own_input_writes_it():
    assert gate_name("The mother tongue of Danielle Darrieux is", "Danielle Darrieux") == "Danielle Darrieux"
    grown = gate_name("What league does Lehigh Valley United Sonic participate in?", "Lehigh Valley United")
    assert grown == "Lehigh Valley United Sonic"
    assert names("Which football league belongs to Lehigh Valley United Sonic?", grown)
    palace = gate_name("Royal Palace of Athens is in", "Athens")
    assert palace == "Palace of Athens" and not names("Athens is in", palace)
    assert gate_name("no mention here", "Athens") == "Athens"  # nothing to grow: the subject as given


def test_a_cluster_passes_when_the_text_names_any_of_its_subjects():
    assert passes(None, "anything")
    assert passes(["Athens", "BBC Radio"], "BBC Radio is based in")
    assert not passes(["Athens", "BBC Radio"], "BBC Radio 1, from")
