"""The subject gate: does an input name the entity an edit is about?

An edit may name its subject ("Danielle Darrieux"); the router then routes an input to that edit
only if the input names the same entity. Paraphrases of an edit do; the inputs most likely to be
routed wrongly do not: the same relation about another entity ("BBC One, by" vs "BBC Radio, by"),
or a longer name that contains the subject ("BBC Radio" in "BBC Radio 4 Extra is from",
"Athens" in "Royal Palace of Athens is in").

A name is matched as a whole: its words in order (case, spacing and punctuation between words
ignored), not glued to letters, not followed by a capitalised word or a number, and not preceded
by a capitalised word joined with "of" or a comma ("Palace of Athens", "Sciences, Japan"). On
CounterFact's first 10,000 records every edit prompt and every paraphrase passes this rule for its
own subject; of the 1,000 locality prompts that an edited subject occurs in at T=1000, it keeps 8 of
27 that MiniLM keys route out (benchmarks/NOTES.md).

An edit's own input may extend its subject ("Lehigh Valley United Sonic" for the subject "Lehigh
Valley United"): the gate then uses the name as the edit writes it (`gate_name`).
"""

from __future__ import annotations

import re
from functools import lru_cache

_BEFORE = re.compile(r"([^\W\d_][\w'-]*)(?:[ \t]+of|,)[ \t]+$")
"""Right before a name, a word joined to it with "of" or a comma: part of a longer name if the word
is capitalised and does not start a sentence."""
_SENTENCE_GAP = re.compile(r"(?:^|[.?!:;\"'(\[\n])\s*$")
"""What may precede a capitalised word at the start of a sentence or line."""


@lru_cache(maxsize=65536)
def _pattern(name: str) -> re.Pattern | None:
    words = re.findall(r"\w+", name)
    if not words:
        return None
    return re.compile(r"(?<!\w)" + r"\W+".join(re.escape(w) for w in words), re.IGNORECASE)


def _occurrences(text: str, name: str) -> list[tuple[int, int]]:
    pattern = _pattern(name)
    return [(m.start(), m.end()) for m in pattern.finditer(text)] if pattern else []


def _capitalised(word: str) -> bool:
    return word[:1].isupper() or word[:1].isdigit()


def _extension(text: str, end: int) -> int:
    """How many characters after `end` extend a name: letters glued on, then capitalised words or
    numbers, each after a space ("Cymru" in "BBC Radio Cymru's", "4 Extra" in "BBC Radio 4 Extra")."""
    glued = re.match(r"\w*", text[end:]).end()
    length = glued
    for word in re.finditer(r"[ \t]+([\w'-]+)", text[end + glued:]):
        if word.start() != length - glued or not _capitalised(word.group(1)):
            break
        length = glued + word.end()
    return length


def _extended_after(text: str, end: int) -> bool:
    return _extension(text, end) > 0


def _extended_before(text: str, start: int) -> bool:
    found = _BEFORE.search(text[:start])
    return bool(found and found.group(1)[:1].isupper() and not _SENTENCE_GAP.search(text[:found.start()]))


def names(text: str, name: str) -> bool:
    """Whether `text` names `name` as a whole (see the module docstring)."""
    return any(not _extended_after(text, end) and not _extended_before(text, start)
               for start, end in _occurrences(text, name))


def gate_name(text: str, subject: str) -> str:
    """The subject as the edit's own input `text` names it: with the capitalised words or numbers that
    extend it there, so that the edit's own input always passes its gate."""
    if names(text, subject):
        return subject
    for start, end in _occurrences(text, subject):
        end += _extension(text, end)
        found = _BEFORE.search(text[:start])
        if found and found.group(1)[:1].isupper() and not _SENTENCE_GAP.search(text[:found.start()]):
            start = found.start()
        candidate = text[start:end].strip()
        if names(text, candidate):
            return candidate
    return subject


def passes(names_of_cluster: list[str] | None, text: str) -> bool:
    """A cluster without subjects is always a candidate; else the text must name one of them."""
    return names_of_cluster is None or any(names(text, name) for name in names_of_cluster)
