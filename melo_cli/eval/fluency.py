"""Fluency of generated text: n-gram entropy (ROME's and EasyEdit's measure) and target repetition.

An edit that gives its target and then babbles ("English English English ...") scores 1.0 on edit
success, which reads only the first tokens. These numbers read the whole continuation:
- n-gram entropy: per text, the weighted mean of its bigram and trigram entropies in bits (weights
  2/3 and 4/3, as ROME's `compute_n_gram_entropy`), averaged over texts. A loop of one word has
  entropy near 0; fluent English near the base model's own. Words are split by a regular expression
  (runs of letters and digits, and each other non-space character) where ROME used nltk's
  word_tokenize: the same words for plain English, without the dependency.
- repetition: a continuation repeats its target when it gives the target twice in a row
  (melo_cli/stutter.py `repeats`, the definition generation avoids too): the loop a block left on for
  every token makes.
"""

from __future__ import annotations

import math
from collections import Counter

from melo_cli.stutter import repeats, words  # noqa: F401 (repeats: eval's measure, defined once with generation's)

WEIGHTS = {2: 2 / 3, 3: 4 / 3}


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
