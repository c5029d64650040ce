"""What a stutter of a target is: the one definition that `melo eval` counts and that generation avoids.

An edited continuation that gives its target and then gives it again ("Japan Japan Japan",
"Jane Doe Jane Doe", "Frank Herbert Herbert", "Manchester, Manchester, and Manchester") reads as a broken
model, whoever wrote the second copy. Naming the target again later in a sentence ("Toyota, and it's a
2018 Toyota Corolla") is language, not a stutter. Words are runs of letters and digits, and each other
non-space character; matching ignores case and spacing.
"""

from __future__ import annotations

import re

WORD = re.compile(r"\w+|[^\w\s]")
GAP = re.compile(r"[\W_]*")
"""What may stand between a target and its stutter: spaces and punctuation, no word."""


def words(text: str) -> list[str]:
    return WORD.findall(text)


def _pattern(target: str) -> re.Pattern | None:
    pieces = words(target)
    if not pieces:
        return None
    start = r"(?<!\w)" if re.match(r"\w", pieces[0]) else ""
    end = r"(?!\w)" if re.match(r"\w", pieces[-1]) else ""
    return re.compile(start + r"\s*".join(re.escape(p) for p in pieces) + end, re.IGNORECASE)


def _again(target: str) -> list[re.Pattern]:
    """What counts as the target given again: the whole target, or (several words) its last word."""
    whole = _pattern(target)
    last = words(target)[-1]
    return [whole] + ([_pattern(last)] if len(words(target)) > 1 and re.match(r"\w", last) else [])


def repeats(text: str, target: str) -> bool:
    """Whether `text` stutters `target`: the target (or, for a target of several words, its last word)
    comes again right after the target, with nothing but spaces or punctuation between."""
    whole = _pattern(target)
    if whole is None:
        return False
    again = _again(target)
    for found in whole.finditer(text):
        rest = text[found.end():]
        gap = GAP.match(rest).end()
        if any(p.match(rest, gap) for p in again):
            return True
    return False


def may_restart(after: str, target: str) -> bool:
    """Whether text that follows a completed `target` could still become a stutter of it: it holds no
    word yet, or only the beginning of the target (or of its last word) again."""
    rest = " ".join(after[GAP.match(after).end():].split()).lower()
    if not rest:
        return True
    last = words(target)[-1] if words(target) else ""
    return " ".join(target.split()).lower().startswith(rest) or last.lower().startswith(rest)


def pending(text: str, target: str) -> bool:
    """Whether the next words of `text` could make it stutter `target`: its last whole `target` is
    followed by nothing but spaces, punctuation and the beginning of the target again."""
    whole = _pattern(target)
    found = list(whole.finditer(text)) if whole is not None else []
    return bool(found) and may_restart(text[found[-1].end():], target)
