"""Where LoRA and the key go: a model's stacks of transformer blocks, found from its module tree.

No name tables: a stack is a ModuleList of same-class blocks holding Linear/Conv1D layers; the
default LoRA layers are the feed-forward layers (outside attention) of the top blocks of the stacks
the task picks, and the key is the output of the block just below the lowest LoRA block.
"""

from __future__ import annotations

import re

from torch import nn

from melo_cli.errors import InputError
from melo_cli.tasks import TASKS
from melo_cli.model.lora import is_lora_target


def block_stacks(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """The model's stacks of transformer blocks: ModuleLists of two or more same-class modules.

    Ordered as they run: an encoder stack before a decoder stack.
    """
    stacks = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) >= 1:
            kinds = {type(child) for child in module}
            if len(kinds) == 1 and any(is_lora_target(m) for m in module[0].modules()):
                if not any(name.startswith(other + ".") for other, _ in stacks):
                    stacks.append((name, module))
    return stacks


def _outside_attention(block: nn.Module) -> list[str]:
    """Relative names of the Linear/Conv1D layers of a block not inside an attention submodule."""
    found = []

    def walk(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            full = f"{prefix}{name}"
            if "attention" in type(child).__name__.lower() or "attn" in name.lower():
                continue
            if is_lora_target(child):
                found.append(full)
            else:
                walk(child, full + ".")

    walk(block, "")
    return found


def block_index(name: str, stack: str) -> int | None:
    """The block number of a module name inside `stack`, or None."""
    match = re.match(re.escape(stack) + r"\.(\d+)(\.|$)", name)
    return int(match.group(1)) if match else None


TOP_BLOCKS, WHICH = 1, "output"
"""The default LoRA layers: the feed-forward output layer (down_proj, c_proj, wo, output.dense) of the top
block of each stack the task picks. Measured on SmolLM2, CounterFact T=1000 (benchmarks/NOTES.md): rank 4
there is 8,448 parameters per edit, 6x fewer than rank 4 on all six feed-forward layers of the top two
blocks (melo before format 2), for ES 1.00, generality 0.941 (was 0.94; with the loss threshold at 0.02,
0.931 at 0.05) and the same locality; and training runs above 29 frozen blocks instead of 28."""


def default_lora_layers(model: nn.Module, task: str, top_blocks: int = TOP_BLOCKS, which: str = WHICH) -> list[str]:
    """Feed-forward layers of the top blocks of each stack the task picks (never every block of a stack):
    `which` output, each block's last feed-forward layer (what writes back to the residual stream); all,
    every feed-forward layer."""
    stacks = block_stacks(model)
    if not stacks:
        raise InputError("found no stack of transformer blocks in this model; pass `lora_layers` and `key_layer`")
    chosen = TASKS[task].lora_stacks(stacks)
    names = []
    for stack_name, stack in chosen:
        n = min(top_blocks, max(1, len(stack) - 1))
        for i in range(len(stack) - n, len(stack)):
            found = _outside_attention(stack[i])
            names += [f"{stack_name}.{i}.{rel}" for rel in (found[-1:] if which == "output" else found)]
    return names


def default_key_layer(model: nn.Module, lora_layers: list[str]) -> str:
    """The output of the first stack's block just below its lowest LoRA block."""
    stacks = block_stacks(model)
    stack_name, _ = stacks[0]
    indices = [block_index(name, stack_name) for name in lora_layers]
    indices = [i for i in indices if i is not None]
    lowest = min(indices) if indices else len(stacks[0][1])
    if lowest == 0:
        raise InputError("the LoRA layers start in the first block, so no block lies below them for the key; "
                         "pass `key_layer` or choose higher `lora_layers`")
    return f"{stack_name}.{lowest - 1}"


def resolve_lora_layers(model: nn.Module, patterns: list[str]) -> list[str]:
    """Module names ending with any of the given suffixes (e.g. 'mlp.c_fc' or 'layers.4.mlp.up_proj')."""
    names = [name for name, module in model.named_modules()
             if is_lora_target(module) and any(name == p or name.endswith("." + p) for p in patterns)]
    if not names:
        raise InputError(f"`lora_layers` {','.join(patterns)} matches no Linear/Conv1D layer of this model")
    return names


def check_key_below(model: nn.Module, key_layer: str, lora_layers: list[str]) -> None:
    """Refuse a key layer that a LoRA layer could influence."""
    modules = dict(model.named_modules())
    if key_layer not in modules:
        raise InputError(f"`key_layer` {key_layer!r} is not a module of this model")
    order = {name: i for i, name in enumerate(modules)}
    stacks = [name for name, _ in block_stacks(model)]
    key_stack = next((s for s in stacks if key_layer.startswith(s + ".")), None)
    key_block = block_index(key_layer, key_stack) if key_stack else None
    for name in lora_layers:
        if name.startswith(key_layer + ".") or name == key_layer:
            raise InputError(f"`key_layer` {key_layer!r} contains LoRA layer {name!r}: keys would depend on edits")
        if key_stack and block_index(name, key_stack) is not None and block_index(name, key_stack) <= key_block:
            raise InputError(f"`key_layer` {key_layer!r} is not below LoRA layer {name!r}: keys would depend on edits")
        if (key_stack is None or not name.startswith(key_stack + ".")) and order[name] < order[key_layer]:
            raise InputError(f"`key_layer` {key_layer!r} runs after LoRA layer {name!r}: keys would depend on edits")

