"""Fluency of generated text: n-gram entropy (ROME's and EasyEdit's measure) and target repetition.

An edit that gives its target and then babbles ("English English English ...") scores 1.0 on edit
success, which reads only the first tokens. These numbers read the whole continuation:
- n-gram entropy: per text, the weighted mean of its bigram and trigram entropies in bits (weights
  2/3 and 4/3, as ROME's `compute_n_gram_entropy`), averaged over texts. A loop of one word has
  entropy near 0; fluent English near the base model's own. Words are split by a regular expression
  (runs of letters and digits, and each other non-space character) where ROME used nltk's
  word_tokenize: the same words for plain English, without the dependency.
- repetition: a continuation repeats its target when it gives the target twice in a row (`repeats`):
  the loop a block left on for every token makes.
"""

from __future__ import annotations

import math
import re
from collections import Counter

WORD = re.compile(r"\w+|[^\w\s]")
WEIGHTS = {2: 2 / 3, 3: 4 / 3}


def words(text: str) -> list[str]:
    return WORD.findall(text)


def ngram_entropy(text: str) -> float:
    """ROME's n-gram entropy of one text: mean over n of WEIGHTS[n] x the entropy (bits) of its n-grams."""
    tokens = words(text)
    parts = []
    for n, weight in WEIGHTS.items():
        counts = Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))
        total = sum(counts.values())
        entropy = -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0
        parts.append(weight * entropy)
    return sum(parts) / len(parts)


def mean_entropy(texts: list[str]) -> float | None:
    return None if not texts else sum(map(ngram_entropy, texts)) / len(texts)


def _target_pattern(target: str) -> re.Pattern | None:
    pieces = words(target)
    if not pieces:
        return None
    start = r"(?<!\w)" if re.match(r"\w", pieces[0]) else ""
    end = r"(?!\w)" if re.match(r"\w", pieces[-1]) else ""
    return re.compile(start + r"\s*".join(re.escape(p) for p in pieces) + end, re.IGNORECASE)


def occurrences(text: str, target: str) -> int:
    """How often `target` occurs in `text` as whole words, any case, spacing ignored."""
    pattern = _target_pattern(target)
    return len(pattern.findall(text)) if pattern is not None else 0


def repeats(text: str, target: str) -> bool:
    """Whether a continuation stutters its target: the target (or, for a target of several words, its
    last word) comes again right after the target, with nothing but spaces or punctuation between
    ("English English", "Jane Doe Jane Doe", "Frank Herbert Herbert"). Naming the target again later in
    a sentence ("Toyota, and it's a 2018 Toyota Corolla") is language, not a loop."""
    whole = _target_pattern(target)
    if whole is None:
        return False
    last = words(target)[-1]
    again = [whole] + ([_target_pattern(last)] if len(words(target)) > 1 and re.match(r"\w", last) else [])
    for found in whole.finditer(text):
        rest = text[found.end():]
        gap = re.match(r"[\W_]*", rest).end()
        if any(p.match(rest, gap) for p in again):
            return True
    return False
