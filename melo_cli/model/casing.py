"""Is a capitalised word a name, or a common word? The base model's own answer.

"Toko Yasuda, the" starts with a name; "In Nykarleby, the language spoken is" and "The CEO of ..."
start with words capitalised only because a sentence starts there; "Obama" is a name that may stand
for "Barack Obama" alone, the "Tower" of "Eiffel Tower" is not. Written mid-sentence, a name keeps its
capital and a common word loses it, and a language model has learned which is which. So each word is
scored twice after a mid-sentence CONTEXT, as written and lowercased, by the base model with no block:
- a common word: lowercase is likelier by COMMON_MARGIN nats, and likely in itself (lowercase NLL under
  COMMON_NLL): "The" 6.5 nats likelier lowercase at NLL 1.8, "Suddenly" 5.0 at 11.7; a rare name can be
  likelier lowercase too ("Savdhaan" 8.5, at NLL 32.8), and an adjective that starts a name barely is
  ("New" 0.6, "Old" 1.0);
- clearly a name: capitalised is likelier by NAME_MARGIN nats or more (it may stand for the whole
  name). Rare names sit in between: SmolLM2 finds "Tankred" likelier lowercase, "Tower" only 1.5 nats
  likelier capitalised, "Obama" 8.7, "Curie" 3.3 (benchmarks/NOTES.md).
No word list, and it knows the names the model knows.
"""

from __future__ import annotations

from melo_cli.router.entities import WORD, name_word, sentence_start

CONTEXT = "They said that"
COMMON_MARGIN, COMMON_NLL = 1.5, 12.5
NAME_MARGIN = 3.0
BATCH = 64


class ProperTest:
    """The base model's casing preference per word, scored in batches (`prime`) or on first use."""

    def __init__(self, edited):
        self.edited = edited
        self.delta: dict[str, float] = {}
        """NLL as written minus NLL lowercased: > 0, the lowercase is likelier."""
        self.lower: dict[str, float] = {}
        """NLL of the lowercased word."""

    def prime(self, words) -> "ProperTest":
        todo = self._by_length(sorted({w for w in words if w not in self.delta and w.lower() != w}))
        for start in range(0, len(todo), BATCH):
            chunk = todo[start:start + BATCH]
            scores = self.edited.target_scores([CONTEXT] * (2 * len(chunk)), chunk + [w.lower() for w in chunk],
                                               route=False)
            nll = scores.nll.tolist()
            self.delta.update({w: nll[i] - nll[len(chunk) + i] for i, w in enumerate(chunk)})
            self.lower.update({w: nll[len(chunk) + i] for i, w in enumerate(chunk)})
        return self

    def _by_length(self, words: list[str]) -> list[str]:
        """Words in order of their longer form's token count, so a batch pads to about its own length: in
        alphabetical order the batches of 1,000 CounterFact edits padded to 1.7x the tokens they hold, and
        this test took a quarter of the editing time."""
        if not words:
            return words
        tokenizer = self.edited.backbone.tokenizer
        forms = [" " + w for w in words] + [" " + w.lower() for w in words]
        counts = [len(ids) for ids in tokenizer(forms, add_special_tokens=False)["input_ids"]]
        n = len(words)
        return [w for _, w in sorted((max(counts[i], counts[n + i]), w) for i, w in enumerate(words))]

    def _delta(self, word: str) -> float:
        if word.lower() == word:
            return 0.0
        if word not in self.delta:
            self.prime([word])
        return self.delta[word]

    def common(self, word: str) -> bool:
        """Capitalised only because it starts a sentence ("The", "In", "When")."""
        return self._delta(word) > COMMON_MARGIN and self.lower.get(word, 0.0) < COMMON_NLL

    def name(self, word: str) -> bool:
        """Clearly a name ("Obama", "Einstein"), one that may stand for the whole name alone."""
        return self._delta(word) <= -NAME_MARGIN


def starting_words(texts: list[str]) -> set[str]:
    """The capitalised words that start a sentence in these texts (the ones `entities.find` asks about)."""
    return {m.group() for text in texts for m in WORD.finditer(text)
            if name_word(m.group()) and sentence_start(text, m.start())}


def proper_test(edited, texts: list[str]) -> ProperTest | None:
    """A ProperTest primed with the sentence-starting words of `texts`; None for a model that does not
    score text as a language model (then capitals alone decide, and no last word stands alone)."""
    if not edited.task.perplexity:
        return None
    return ProperTest(edited).prime(starting_words(texts))
