"""How a command runs, as opposed to what a bundle is made of (config.py): how a base model is loaded
(`Loading`, shared by every command that loads one) and how an edit run goes (`EditOptions`). torch-free,
so that `melo --help` reads the help texts without importing a model."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from melo_cli.config import MeloConfig, setting


@dataclass(frozen=True)
class Loading:
    """How a base model is loaded (the options every command that loads one shares)."""

    device: str = setting("auto", "Where to run: auto (CUDA when present), cpu, cuda or cuda:N.")
    dtype: str = setting("auto", "Base model dtype: auto (the bundle's, else the checkpoint's), float32, float16 or "
                                 "bfloat16.")
    device_map: str | None = setting(None, "Spread the base model over GPUs, CPU and disk with accelerate (auto, "
                                           "balanced, sequential) instead of --device: for a base too large for one "
                                           "device.")
    max_memory: str | None = setting(None, "With --device-map: the most each device may hold, as accelerate takes it, "
                                           "e.g. 0=20GiB,cpu=8GiB.")
    force_base: bool = setting(False, "Apply (or continue) the bundle even if the base fingerprint differs.")
    trust_remote_code: bool = setting(False, "Allow the model's own Python code (off: nothing loaded runs code).")


@dataclass
class EditOptions:
    """How `melo edit` runs; what the bundle is made of is `config` (MeloConfig, checked on creation)."""

    config: MeloConfig = field(default_factory=MeloConfig)
    loading: Loading = field(default_factory=Loading)
    batch_size: int = setting(5, "Edits per batch for lines without a 'batch' field (a block per edit cluster, "
                                 "trained together).")
    negatives: Path | None = setting(None, "JSONL of inputs whose outputs must not change: their keys shrink any "
                                           "edit cluster that would cover them.")
    skip_invalid: bool = setting(False, "Report bad lines on stderr and edit with the rest.")
    overwrite: bool = setting(False, "Replace an existing -o directory.")
    wait: float = setting(0.0, "Seconds to wait for another melo edit holding the bundle (then exit 75).")
    eval_every: int = setting(0, "Every K batches append a row to the bundle's history.jsonl: edit success of the "
                                 "batch, retention of earlier edits, locality.")
    locality: Path | None = setting(None, "Holdout JSONL for the history's locality column.")
    allow_partial: bool = setting(False, "Write the bundle even if some edits are not learned within --max-steps "
                                         "(else exit 4, nothing written).")
