"""Train above the frozen layers: the blocks below the lowest LoRA block run once per batch, not per step.

Every block below the lowest LoRA block (in the first stack of blocks, the one the input enters)
sees the same input at every training step, so its output is the same at every step. `FrozenPrefix`
captures the output of the last such block in one no-grad pass; during the steps that follow, that
block returns the captured output and the blocks below it return their input untouched (no work), so
forward and backward run through the LoRA blocks and the head only. Embeddings, rotary tables and
masks are still built by the model's own code, so positions, masks and caches are handled exactly as
the model handles them, for any architecture whose blocks are called in order with the hidden state
first (every Hugging Face stack melo supports).

It must be exact, and it checks itself: the no-grad full pass that captures the prefix and the first
replayed step (same weights) must give the same logits bit for bit; if not, the batch falls back to
full passes and says why (never silently wrong). A prefix captured ahead of training (the pass that
also takes base-model keys) keeps a digest of that pass's logits for the same check.
"""

from __future__ import annotations

import hashlib
import logging
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

log = logging.getLogger("melo")


def _hidden(args: tuple, kwargs: dict) -> torch.Tensor:
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    return kwargs["hidden_states"]


def _like(output, hidden: torch.Tensor):
    """`output`'s structure (a tensor, or a tuple led by one) holding `hidden` instead."""
    if isinstance(output, torch.Tensor):
        return hidden
    return type(output)((hidden, *output[1:]))


class FrozenPrefix:
    """The blocks stack[0..k-1] of a model, replayed from one captured output while LoRA trains above."""

    def __init__(self, stack: nn.ModuleList, first_lora_block: int):
        self.stack, self.k = stack, first_lora_block
        self.captured = None
        self.trusted: bool | None = None  # None until the first split step was compared with the full pass
        self.reason: str | None = None
        self.reference: str | None = None
        """For a prefix captured ahead of training: `digest` of the capturing pass's logits."""

    @property
    def nbytes(self) -> int:
        """Memory the captured output holds."""
        parts = self.captured if isinstance(self.captured, (tuple, list)) else (self.captured,)
        return sum(t.numel() * t.element_size() for t in parts if isinstance(t, torch.Tensor))

    @contextmanager
    def capturing(self) -> Iterator[None]:
        """Run a normal forward and keep the output of block k-1 (call under no_grad)."""
        def hook(module, args, output):
            self.captured = output.detach() if isinstance(output, torch.Tensor) else \
                type(output)(o.detach() if isinstance(o, torch.Tensor) else o for o in output)

        handle = self.stack[self.k - 1].register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    @contextmanager
    def replaying(self) -> Iterator[None]:
        """Blocks below k do no work: k-1 returns the captured output, the others their input."""
        if self.captured is None:
            raise RuntimeError("FrozenPrefix.replaying before a capture")
        captured = self.captured

        def identity(*args, **kwargs):
            return _like(captured, _hidden(args, kwargs))

        def replay(*args, **kwargs):
            return captured

        kept = [self.stack[i].__dict__.get("forward") for i in range(self.k)]  # accelerate's hooks live there
        for i in range(self.k):
            self.stack[i].forward = replay if i == self.k - 1 else identity
        try:
            yield
        finally:
            for i in range(self.k):
                if kept[i] is None:
                    del self.stack[i].forward
                else:
                    self.stack[i].forward = kept[i]


def frozen_prefix(model: nn.Module, lora_layers: list[str]) -> FrozenPrefix | None:
    """The prefix that can be replayed for these LoRA layers, or None (then train with full passes)."""
    from melo_cli.model.layers import block_index, block_stacks

    stacks = block_stacks(model)
    if not stacks:
        return None
    name, stack = stacks[0]
    order = {module_name: i for i, (module_name, _) in enumerate(model.named_modules())}
    inside = [block_index(layer, name) for layer in lora_layers]
    if all(i is None for i in inside):
        return None  # no LoRA in the first stack: keep it simple, train with full passes
    if any(i is None and order[layer] < order[name] for i, layer in zip(inside, lora_layers)):
        return None  # a LoRA layer runs before the stack: the prefix would depend on it
    k = min(i for i in inside if i is not None)
    return FrozenPrefix(stack, k) if k >= 1 else None


def train_steps(prefix: FrozenPrefix | None, forward: Callable[[], torch.Tensor]) -> Callable[[int], torch.Tensor]:
    """A step function: before step 0 one no-grad full pass captures the prefix; every step replays it.

    `forward()` returns logits. Step 0's replayed logits must equal the capturing full pass's (same
    LoRA weights) bit for bit; any difference, or any error, turns replay off for the batch and the
    step is redone as a full pass.
    """
    def step(number: int) -> torch.Tensor:
        if prefix is None or prefix.trusted is False:
            return forward()
        if number == 0 or prefix.trusted is None:
            if prefix.reference is not None:  # captured ahead, with the keys: checked against its digest
                return _checked(prefix, forward, prefix.reference)
            with torch.no_grad(), prefix.capturing():
                reference = forward()
            return _checked(prefix, forward, reference)
        with prefix.replaying():
            return forward()

    return step


def replayed(prefix: FrozenPrefix, forward: Callable[[], torch.Tensor]) -> torch.Tensor:
    """forward() over the prefix captured by an earlier pass (eval: the unrouted run after the routed
    one). Until trusted, a full pass is run as well and must agree bit for bit, as in training."""
    if prefix.trusted is None:
        return _checked(prefix, forward, forward())
    if prefix.trusted:
        with prefix.replaying():
            return forward()
    return forward()


def digest(logits: torch.Tensor) -> str:
    """A hash of logits' values (-0.0 counted as 0.0, as torch.equal does), to check a replay bit for bit
    against a pass whose logits were not kept (a 262k vocabulary makes them large)."""
    return hashlib.sha256((logits.detach().float() + 0.0).cpu().numpy().tobytes()).hexdigest()


def _checked(prefix: FrozenPrefix, forward: Callable[[], torch.Tensor],
             reference: torch.Tensor | str) -> torch.Tensor:
    try:
        with prefix.replaying():
            logits = forward()
    except Exception as exc:  # a structure the replay does not fit: say so, train the long way
        prefix.trusted, prefix.reason = False, f"{type(exc).__name__}: {exc}"
    else:
        prefix.trusted = digest(logits) == reference if isinstance(reference, str) else \
            bool(torch.equal(logits.detach(), reference))
        prefix.reason = None if prefix.trusted else "the replayed logits differ from the full pass"
    if prefix.trusted:
        log.debug("training above block %d: the frozen prefix is replayed", prefix.k)
        return logits
    log.info("training with full passes: the frozen prefix cannot be replayed (%s)", prefix.reason)
    return forward()
