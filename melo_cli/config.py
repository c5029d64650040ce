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

    def problems(self) -> list[str]:
        """What is wrong with these settings, one phrase per field (empty: fine). A bundle's config is
        read like input: a manifest naming an unknown metric or a negative rank is refused, not run."""
        import math

        from .router import METRICS, POLICIES

        def number(value) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        checks = {
            "task": isinstance(self.task, str) and bool(self.task),  # the registry checks the name on load
            "lora_layers": isinstance(self.lora_layers, list) and all(isinstance(n, str) for n in self.lora_layers),
            "key_layer": isinstance(self.key_layer, str) and bool(self.key_layer),
            "rank_per_block": isinstance(self.rank_per_block, int) and not isinstance(self.rank_per_block, bool)
            and self.rank_per_block >= 1,
            "alpha": number(self.alpha),
            "key_pooling": self.key_pooling in ("mean", "last"),  # keys.POOLINGS (keys.py imports torch)
            "key_source": self.key_source in ("base", "encoder"),
            "key_encoder": self.key_encoder is None or isinstance(self.key_encoder, str),
            "metric": self.metric in METRICS,
            "init_radius": number(self.init_radius) and self.init_radius >= 0,
            "radius_policy": self.radius_policy in POLICIES,
            "margin": number(self.margin) and self.margin >= 0,
            "block_per": self.block_per in ("edit", "batch"),
            "contexts": isinstance(self.contexts, int) and not isinstance(self.contexts, bool) and self.contexts >= 0,
            "lr": number(self.lr) and self.lr > 0,
            "max_steps": self.max_steps == "auto" or isinstance(self.max_steps, int) and self.max_steps >= 0,
            "loss_threshold": number(self.loss_threshold) and self.loss_threshold > 0,
            "seed": isinstance(self.seed, int),
        }
        return [f"{name} {getattr(self, name)!r}" for name, ok in checks.items() if not ok]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "MeloConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
