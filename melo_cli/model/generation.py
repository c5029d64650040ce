"""How text is generated: greedy by default; sampling (`temperature`, `top_p`, `seed`) when asked;
a chat model's template around each prompt when asked (`chat`, `system`); generation stops at EOS.

With a chat template the router still sees the user's prompt as written (that is what edits are
keyed on), and only the model sees the templated text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from melo_cli.config import setting
from melo_cli.errors import InputError


@dataclass(frozen=True)
class Decoding:
    """How to turn prompts into text, checked on creation (before any model loads); its fields are the
    keywords of MeloModel.predict and the options of `melo generate`."""

    temperature: float = setting(0.0, "0: greedy (the default); above 0: sample at this temperature.")
    top_p: float = setting(1.0, "With --temperature: nucleus sampling over this much probability.")
    seed: int | None = setting(None, "With --temperature: a seed, for repeatable samples.")
    chat: bool = setting(False, "Wrap each prompt in the tokenizer's chat template (instruct models); the router "
                                "still sees the prompt as written.")
    system: str | None = setting(None, "With --chat: a system message before each prompt.")
    handoff: bool = setting(True, "Hand a routed row back to the base model once it has given its edit's target "
                                  "(melo_cli/model/handoff.py); off, the block stays on for every generated token "
                                  "(the MELO paper's behaviour: the target repeats).")

    def __post_init__(self) -> None:
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)
                and self.temperature >= 0):
            raise InputError(f"`temperature` {self.temperature}: expected a finite number >= 0 (0: greedy)")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise InputError(f"`top_p` {self.top_p}: expected a number in (0, 1]")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise InputError(f"`seed` {self.seed}: expected a whole number >= 0")
        if self.system is not None and not self.chat:
            raise InputError("`system` goes with `chat`")
        if not isinstance(self.handoff, bool):
            raise InputError(f"`handoff` {self.handoff!r}: expected true or false")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def generate_kwargs(self) -> dict:
        if self.greedy:
            return {"do_sample": False, "num_beams": 1}
        return {"do_sample": True, "num_beams": 1, "temperature": float(self.temperature), "top_p": float(self.top_p),
                "top_k": 0}


def eos_ids(model, tokenizer) -> list[int] | None:
    """Every token that ends a reply: the generation config's EOS ids and the tokenizer's (a chat
    model's end-of-turn token is often only in one of them)."""
    found = []
    for value in (getattr(getattr(model, "generation_config", None), "eos_token_id", None), tokenizer.eos_token_id):
        for token in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(token, int) and token not in found:
                found.append(token)
    return found or None


def apply_chat(tokenizer, prompts: list[str], system: str | None) -> list[str]:
    """Each prompt as a user turn (after an optional system turn) in the tokenizer's chat template,
    ending where the assistant's reply starts."""
    if not getattr(tokenizer, "chat_template", None):
        raise InputError("this model's tokenizer has no chat template; drop `chat`")
    bos = tokenizer.bos_token
    adds_bos = bos is not None and tokenizer("x").input_ids[:1] == [tokenizer.bos_token_id]
    out = []
    for prompt in prompts:
        turns = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        if adds_bos and text.startswith(bos):  # the template writes BOS and encoding adds it again: keep one
            text = text[len(bos):]
        out.append(text)
    return out
