"""A bundle as standard peft LoRA adapters, one per block, plus the routing table that picks one.

Serving stacks (vLLM, SGLang, TGI) load peft adapters and apply one per request; melo's router is the
part they lack. So each block k becomes the adapter `block-k`: `adapter_config.json` (peft's LoRA
config: target modules, r, lora_alpha, base model) and `adapter_model.safetensors` with peft's tensor
names, such that base + adapter `block-k` computes exactly what melo computes for a row routed to
block k (W x + scale * B_k A_k x, peft's lora_alpha / r being melo's scale). `routing.json` maps each
cluster to its adapter, radius and label, and says how keys are made; `melo route` gives the adapter
name for a prompt. Made from the bundle alone: no model is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save as numpy_to_bytes

from . import bundle as bundle_io
from .config import lora_scale
from .errors import InputError, WriteFailed
from .router import NEGATIVE

TASK_TYPES = {"causal-lm": "CAUSAL_LM", "seq2seq": "SEQ_2_SEQ_LM", "classification": None}
"""peft's task type per melo task. Classifiers get none: peft's SEQ_CLS expects the classification head
in every adapter (as a module to save), and melo never changes the head, so the adapter would have to
carry the base model's own head; without a task type peft applies the LoRA and leaves the head as it is."""


def adapter_name(block: int) -> str:
    return f"block-{block}"


def peft_tensors(lora: dict, layers: list[str], block: int) -> dict[str, np.ndarray]:
    """Block `block`'s A (r x in) and B (out x r) under peft's names for each LoRA layer."""
    out = {}
    for name in layers:
        out[f"base_model.model.{name}.lora_A.weight"] = np.ascontiguousarray(lora[f"{name}.lora_A"][block])
        out[f"base_model.model.{name}.lora_B.weight"] = np.ascontiguousarray(lora[f"{name}.lora_B"][block])
    return out


def adapter_config(loaded, conv1d: bool) -> dict:
    config = loaded.config
    rank = config.rank_per_block
    return {"peft_type": "LORA", "task_type": TASK_TYPES.get(config.task), "r": rank,
            "lora_alpha": lora_scale(rank, config.alpha) * rank,
            "lora_dropout": 0.0, "bias": "none", "target_modules": list(config.lora_layers),
            "fan_in_fan_out": conv1d, "use_rslora": False, "use_dora": False, "init_lora_weights": True,
            "inference_mode": True, "base_model_name_or_path": loaded.base.get("path") or loaded.base.get("name"),
            "revision": None, "modules_to_save": None}


def routing_table(loaded) -> dict:
    router, config = loaded.router, loaded.config
    clusters = [{"cluster": c, "adapter": adapter_name(int(router.blocks[c])), "radius": float(router.radii[c]),
                 "label": router.labels[c]}
                for c in range(len(router)) if not router.retired[c] and router.labels[c] != NEGATIVE]
    return {"format": "melo-routing/1", "base_model": loaded.base.get("name"),
            "keys": {"source": config.key_source, "encoder": config.key_encoder, "layer": config.key_layer,
                     "pooling": config.key_pooling, "metric": config.metric},
            "default": None, "clusters": clusters,
            "note": "route each prompt with `melo route --bundle BUNDLE` (or the centres in the bundle's "
                    "clusters.safetensors); a prompt that routes to no cluster runs the base model (no adapter)"}


def export_peft(bundle: Path, out: Path, conv1d: bool | None = None, overwrite: bool = False) -> dict:
    """Write `out`: one peft adapter folder per block in use, routing.json; atomically. Returns a summary."""
    loaded = bundle_io.load(bundle)
    if out.exists() and not overwrite:
        raise InputError(f"{out}: already exists; pass `overwrite` to replace it")
    if out.exists() and not (out / "routing.json").is_file():
        raise InputError(f"{out}: exists and is not a melo export; refusing to replace it")
    if conv1d is None:
        conv1d = loaded.base.get("architecture", "").startswith("GPT2")
    table = routing_table(loaded)
    used = sorted(loaded.router.live_blocks())
    out.parent.mkdir(parents=True, exist_ok=True)
    config = adapter_config(loaded, conv1d)
    try:
        with bundle_io.replacing(out) as tmp:
            for block in used:
                folder = tmp / adapter_name(block)
                folder.mkdir()
                bundle_io.write_text(folder / "adapter_config.json", json.dumps(config, indent=2) + "\n")
                bundle_io.write_bytes(folder / "adapter_model.safetensors",
                                      numpy_to_bytes(peft_tensors(loaded.lora, loaded.config.lora_layers, block),
                                                     metadata={"format": "pt"}))
            bundle_io.write_text(tmp / "routing.json", json.dumps(table, indent=2, ensure_ascii=False) + "\n")
    except OSError as exc:
        raise WriteFailed(f"{out}: the export could not be written ({exc.strerror or exc}); nothing was replaced") \
            from None
    return {"export": str(out), "format": "peft", "adapters": len(used), "clusters": len(table["clusters"]),
            "rank": loaded.config.rank_per_block, "target_modules": len(loaded.config.lora_layers)}
