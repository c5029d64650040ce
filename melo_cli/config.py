"""MeloConfig: every setting that shapes a bundle, in one dataclass (after peft's LoraConfig).

It is written to the manifest, so a continued bundle and every later `generate`/`eval` use the
settings the bundle was built with.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass
class MeloConfig:
    task: str
    lora_layers: list[str]
    key_layer: str
    rank_per_block: int = 4
    alpha: float = 8.0
    key_pooling: str = "mean"
    key_source: str = "base"
    """base: the base model's hidden state at key_layer; encoder: a sentence encoder (key_encoder)."""
    key_encoder: str | None = None
    metric: str = "euclidean"
    init_radius: float = 0.0
    """0 until resolved; `--init-radius auto` is resolved from the first edits' keys."""
    radius_policy: str = "split"
    """split (MELO/GRACE rules) or voronoi (every key a centre, the nearest centre decides)."""
    margin: float = 0.0
    """Route only if every cluster of another label is (1 + margin) times farther (0: off)."""
    block_per: str = "edit"
    """edit: every edit cluster gets its own LoRA block (it never has to tell edits apart, so it can
    learn to give its target from any input the router sends it); batch: one block per batch of
    edits (the MELO paper's layout)."""
    contexts: int = 5
    """With block_per=edit: each block also learns its target after this many generic contexts
    (editor.CONTEXTS), so it answers paraphrases and not only the edit's own wording."""
    lr: float = 1e-2
    max_steps: int | str = "auto"
    """Most optimizer steps per batch, or "auto": 100, extended 100 at a time (up to 1,000) while
    the loss still falls by a tenth per 100 steps and some target is not yet the argmax."""
    loss_threshold: float = 0.05
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "MeloConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
