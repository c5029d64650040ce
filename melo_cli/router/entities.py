"""Which entity an edit is about, and whether an input names that entity as people write names.

A sentence key is dominated by its wording: "The CEO of Apple is" lies next to "The CEO of Microsoft
is", so without a second check every same-relation prompt about another entity gets the edit
(CounterFact without subject fields: locality 0.78). The router's second check is the entity: a
cluster is a candidate for an input only if the input names the entity of one of its edits.

Finding the entity (`find`): the edit's `subject` when given; else the longest run of name words in
its input: capitalised words, numbers and words with capitals inside ("iPhone"), joined by spaces,
hyphens, initials' dots or a name particle ("University of Valencia", "Leonardo da Vinci"; "Webley & Scott"
with an ampersand), a possessive "'s" left off. A capitalised word that only starts a sentence ("In Nykarleby",
"The CEO of ...") is no name: the base model decides, from its own preference between the word and
its lowercase form in mid-sentence (melo_cli/model/casing.py).

Naming it (`names`): case, possessives, spacing and punctuation between words do not matter, and a
sentence may end right after the name. An entity of several words may be named
- in full, any word but the last also as its first three letters or more ("Leo DiCaprio");
- by its last word alone when all its words are capitalised names ("Obama", "Darrieux");
- by what follows its last "of" ("Microsoft" for "CEO of Microsoft", "Valencia" for "University of
  Valencia").
A mention continued by more name words is another entity: capitalised words or numbers right after
it in the same sentence ("BBC Radio 4 Extra" for "BBC Radio"), a capitalised word joined by "of" or a
comma before it ("Royal Palace of Athens" for "Athens"), and, before a short form, any capitalised
word ("Michelle Obama" for "Barack Obama", even at the start of a sentence; the price: "Did Obama
..." is refused too). In lowercase text there are no capitals to tell, so a mention is taken.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Callable

PARTICLES = ("of the", "of", "de", "da", "di", "do", "du", "dos", "das", "des", "del", "della", "degli", "van", "von",
             "der", "den", "la", "le", "al", "y", "bin", "ibn")
"""Lowercase words that join the parts of one name ("Bank of America", "Ludwig van Beethoven"): grammar of
names, not a list of entities."""
MIN_PREFIX = 3
"""Shortest first-name form accepted for a longer one ("Leo" for "Leonardo")."""

WORD = re.compile(r"[^\W_](?:[\w'’.-]*[^\W_])?")
_SENTENCE_START = re.compile(r"(?:^|[.?!:;\"“”(\[\n])\s*$")
_BEFORE = re.compile(r"([^\W\d_][\w'-]*)(?:[ \t]+of|,)[ \t]+$")


def name_word(word: str) -> bool:
    """A word that can be part of a name: capitalised, a number, or with a capital inside ("iPhone")."""
    return word[:1].isupper() or word[:1].isdigit() or any(c.isupper() for c in word[1:])


def sentence_start(text: str, at: int) -> bool:
    return _SENTENCE_START.search(text[:at]) is not None


def _strip_possessive(word: str) -> str:
    return re.sub(r"['’]s?$", "", word)


def runs(text: str, common: Callable[[str], bool] | None = None) -> list[tuple[int, int, bool]]:
    """The runs of name words in a text: (start, end, weak), in order. A run that starts a sentence with a
    `common` word ("In", "The") loses that word; a one-word run that is such a word is `weak` (kept only
    when nothing better is found)."""
    words = [(m.group(), m.start(), m.end()) for m in WORD.finditer(text)]
    found: list[list[int]] = []
    current: list[int] = []
    i = 0
    while i < len(words):
        word, start, _ = words[i]
        joined = bool(current) and _joins(text, words[current[-1]][2], start, words[current[-1]][0])
        if name_word(word):
            if not joined:
                if current:
                    found.append(current)
                current = []
            current.append(i)
            i += 1
            continue
        particle = _particle_at(words, i, text) if current and joined else 0
        if particle:
            current.extend(range(i, i + particle))
            i += particle
            continue
        if current:
            found.append(current)
        current = []
        i += 1
    if current:
        found.append(current)
    out = []
    for run in found:
        weak = False
        first, start = words[run[0]][0], words[run[0]][1]
        if common is not None and sentence_start(text, start) and common(first):
            rest = run[1:]
            while rest and not name_word(words[rest[0]][0]):  # a particle left in front
                rest = rest[1:]
            run, weak = (rest, False) if rest else (run, True)
        while run and not name_word(words[run[-1]][0]):
            run = run[:-1]
        if run:
            start, end = words[run[0]][1], words[run[-1]][2]
            end = start + len(_strip_possessive(text[start:end]).rstrip(" .-"))
            out.append((start, end, weak))
    return out


def candidates(text: str, common: Callable[[str], bool] | None = None) -> list[str]:
    """The names in an input, best first: longer runs of name words first (see the module docstring), the
    earlier of equally long ones, weak runs last. `common(word)` says whether a capitalised word that
    starts a sentence is only a common word (None: every such word is a name)."""
    ranked = sorted(runs(text, common), key=lambda r: (r[2], -len(WORD.findall(text[r[0]:r[1]])), r[0]))
    return [text[start:end] for start, end, _ in ranked]


def find(text: str, common: Callable[[str], bool] | None = None) -> str | None:
    """The entity an input is about: the best of its `candidates` that the input itself names (a name
    cut off by a comma, "1st Duke of Wellington" after "Arthur Wellesley,", would not); None if none."""
    return next((name for name in candidates(text, common) if names(text, name)), None)


def widen(text: str, subject: str, common: Callable[[str], bool] | None = None) -> str | None:
    """The name as `text` writes it around `subject` (a run that contains an occurrence of it), for a
    given subject that the text continues ("Lehigh Valley United" in "Lehigh Valley United Sonic
    plays"); None if no run holds it."""
    pattern = _pattern(subject, True)
    if pattern is None:
        return None
    for match in pattern.finditer(text):
        for start, end, _ in runs(text, common):
            if start <= match.start() and match.end() <= end:
                return text[start:end]
    return None


def _joins(text: str, end: int, start: int, previous: str) -> bool:
    """Whether two words are parts of one name: nothing but a space or hyphen between, or the dot of an
    initial ("R.A. Dickey", "Robert A. Millikan")."""
    gap = text[end:start]
    return gap in (" ", "-", " & ") or gap == ". " and (len(previous) == 1 or "." in previous)


def _particle_at(words: list, i: int, text: str) -> int:
    """How many words starting at i form a name particle followed by a name word (0: none)."""
    for particle in PARTICLES:
        parts = particle.split()
        stop = i + len(parts)
        if stop < len(words) and [w for w, _, _ in words[i:stop]] == parts and name_word(words[stop][0]) \
                and all(_joins(text, words[j][2], words[j + 1][1], words[j][0]) for j in range(i, stop)):
            return len(parts)
    return 0


# -- naming an entity --------------------------------------------------------------------------------
@lru_cache(maxsize=65536)
def _pattern(name: str, prefixes: bool) -> re.Pattern | None:
    """A name's words in order, any case, anything but letters and digits between them; with
    `prefixes`, any word but the last also as a prefix of MIN_PREFIX letters or more."""
    words = [w for w in (_strip_possessive(w) for w in WORD.findall(name)) if w]
    if not words:
        return None

    def word_pattern(word: str, last: bool) -> str:
        if last or not prefixes or len(word) <= MIN_PREFIX or not word.isalpha():
            return re.escape(word)
        rest = ""
        for letter in reversed(word[MIN_PREFIX:]):  # "Leo" for "Leonardo", never "Leopold"
            rest = f"(?:{re.escape(letter)}{rest})?"
        return re.escape(word[:MIN_PREFIX]) + rest

    body = r"(?:['’]s)?[\W_]+".join(word_pattern(w, i == len(words) - 1) for i, w in enumerate(words))
    return re.compile(r"(?<![\w])" + body + r"(?![^\W_])", re.IGNORECASE)


def short_forms(entity: str, name: Callable[[str], bool] | None = None) -> tuple[str, ...]:
    """The shorter names of an entity (see the module docstring): the last word of a name whose words
    are all capitalised, when that word is clearly a name itself (`name`: "Obama", not the "Tower" of
    "Eiffel Tower"; without `name`, none), and what follows its last "of"."""
    words = [w for w in (_strip_possessive(w) for w in WORD.findall(entity)) if w]
    out = []
    if len(words) > 1 and all(w.isalpha() and w[:1].isupper() for w in words) and name is not None \
            and name(words[-1]):
        out.append(words[-1])
    lowered = [w.lower() for w in words]
    if "of" in lowered[1:-1]:
        tail = words[len(lowered) - lowered[::-1].index("of"):]
        if tail and tail[0].lower() == "the":
            tail = tail[1:]
        if tail:
            out.append(" ".join(tail))
    return tuple(dict.fromkeys(out))


def _continued_after(text: str, end: int) -> bool:
    """Name words right after a mention, in the same sentence: letters glued on, or a capitalised word or
    number after a space ("Cymru" in "BBC Radio Cymru's", "4 Extra" in "BBC Radio 4 Extra")."""
    rest = text[end:]
    possessive = re.match(r"['’]s?(?![^\W_])", rest)
    if possessive:
        return False
    if re.match(r"[^\W_]", rest):
        return True
    following = re.match(r"[ \t-]+([^\W_][\w'’-]*)", rest)
    return bool(following and name_word(following.group(1)))


def _continued_before(text: str, start: int, short: bool) -> bool:
    """Name words right before a mention: a capitalised word joined by "of" or a comma (not one that
    starts a sentence), or, before a short form, any capitalised word or number ("Michelle Obama")."""
    found = _BEFORE.search(text[:start])
    if found and found.group(1)[:1].isupper() and not sentence_start(text, found.start()):
        return True
    if not short:
        return False
    previous = re.search(r"([^\W_][\w'’.-]*)[ \t-]+$", text[:start])
    return bool(previous and name_word(previous.group(1)) and not previous.group(1).endswith(("'s", "’s")))


def names(text: str, entity: str, short: tuple[str, ...] = ()) -> bool:
    """Whether `text` names `entity`, in full or by one of its `short` forms (see the module docstring)."""
    for name, is_short in [(entity, False)] + [(form, True) for form in short]:
        pattern = _pattern(name, not is_short)
        if pattern is None:
            continue
        for match in pattern.finditer(text):
            if not _continued_after(text, match.end()) and not _continued_before(text, match.start(), is_short):
                return True
    return False


def passes(entities_of_cluster: list[tuple[str, tuple[str, ...]]] | None, text: str) -> bool:
    """A cluster without entities is always a candidate; else the text must name one of them
    ((entity, short forms) pairs)."""
    return entities_of_cluster is None or any(names(text, name, short) for name, short in entities_of_cluster)


# -- the entity an edit routes on --------------------------------------------------------------------
def subject_problem(text: str, subject: str) -> str | None:
    """Why a given subject cannot gate its edit (None: it can): an edit whose subject its own input does
    not name could never apply, not even to that input."""
    pattern = _pattern(subject, True)
    if pattern is None:
        return "has no letters or digits"
    if not pattern.search(text):
        return "does not occur in the edit's input, so the edit could never apply"
    return None


def chosen(text: str, subject: str | None, mode: str, words=None) -> tuple[str | None, tuple[str, ...], str | None]:
    """(the entity an edit with this input and optional subject routes on under `mode` (config.ENTITIES),
    its short forms, a note for the user when it is not the subject as given). `words` tells common
    words and names apart (casing.ProperTest; None: by capitals alone)."""
    common, name = (words.common, words.name) if words is not None else (None, None)
    if mode == "off":
        return None, (), None
    if mode == "subject-whole":
        from melo_cli.router.subjects import gate_name
        return (gate_name(text, subject) if subject else None), (), None
    if subject:
        if names(text, subject, short_forms(subject, name)):
            return subject, short_forms(subject, name), None
        wider = widen(text, subject, common)
        if wider is None:
            return subject, short_forms(subject, name), None
        return wider, short_forms(wider, name), f"its input continues the subject {subject!r}, so it routes on {wider!r}"
    found = find(text, common) if mode == "auto" else None
    return found, (short_forms(found, name) if found else ()), None
