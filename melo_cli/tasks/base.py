"""What every task shares: the `Encoded` batch, padding and token helpers, and the Task interface.

A task is one object (melo_cli/tasks/<name>.py) that knows how a model of that kind is loaded, how
an (input, target) pair becomes tensors, how logits are scored, and how outputs are read. The rest of
melo asks the task instead of testing its name.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE = -100


@dataclass
class Encoded:
    inputs: dict[str, torch.Tensor]
    key_mask: torch.Tensor
    targets: torch.Tensor | None = None

    def to(self, device: torch.device) -> "Encoded":
        return Encoded({k: v.to(device) for k, v in self.inputs.items()}, self.key_mask.to(device),
                       None if self.targets is None else self.targets.to(device))


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that ignore padding on either side, so a row's states do not depend on it."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def pad(rows: list[list[int]], value: int, left: bool) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0)
    return torch.tensor([([value] * (width - len(r)) + r) if left else (r + [value] * (width - len(r))) for r in rows],
                        dtype=torch.long).reshape(len(rows), width)


def ids(tokenizer, text: str, special: bool = True) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def sequence_nll(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(summed NLL, counted tokens, every-token-is-argmax) per row, for logits aligned with targets."""
    token_loss = F.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=IGNORE, reduction="none")
    counted = targets != IGNORE
    right = (logits.argmax(-1) == targets) | ~counted
    return token_loss.sum(1), counted.sum(1), right.all(1)


class Task:
    """The interface; the defaults fit a model whose targets are token sequences scored position by
    position (seq2seq). Subclasses override what differs."""

    name: str
    auto_model: str
    """The transformers Auto class that loads this task's form of a model."""
    mapping: str
    """The modeling_auto mapping listing the model types that have this form."""
    architecture_suffixes: tuple[str, ...] = ()
    """Architecture names that were built for this task ("LlamaForCausalLM")."""
    model_types: tuple[str, ...] = ()
    """Model types assumed to be of this task when the config names no architecture."""
    generates = True
    """Outputs are generated text (False: a label per input)."""
    perplexity = False
    """Target perplexity is meaningful (a language model over the target)."""
    greedy_is_teacher_forced = False
    target_ends_with_eos = False
    """A target is trained followed by the tokenizer's EOS (seq2seq): the EOS is part of what a block gives."""
    prompts_share_positions = False
    """Prompt and generated tokens share the model's positions (a decoder-only model): a prompt too long
    for them is cut from the left before generating."""
    """Greedy decoding emits exactly the target's tokens when each is the argmax after the input and the
    target's earlier tokens (one forward pass decides a generate-mode hit)."""

    def check_target(self, model_config, target: str) -> None:
        """Raise InputError if `target` cannot be taught to this model (before any weights load)."""

    def lora_stacks(self, stacks: list) -> list:
        """Which stacks of blocks get the default LoRA layers: the last (the one that makes the output)."""
        return stacks[-1:]

    def encode(self, backbone, inputs: list[str], targets: list[str] | None = None) -> Encoded:
        raise NotImplementedError

    def narrowed(self, backbone, enc: Encoded) -> tuple[dict[str, torch.Tensor], torch.Tensor, bool]:
        """(forward kwargs, targets, aligned): by default the full logits and targets."""
        return enc.inputs, enc.targets, False

    def score(self, logits: torch.Tensor, targets: torch.Tensor, aligned: bool = False,
              rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss per row, every-target-is-argmax per row) for teacher-forced logits."""
        total, counted, right = sequence_nll(logits, targets)
        return total / counted.clamp(min=1), right

    def token_nll(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed NLL, number of target tokens) per row."""
        total, counted, _ = sequence_nll(logits, targets)
        return total, counted

    def forward(self, model, inputs: dict[str, torch.Tensor]):
        """One forward pass over encoded inputs."""
        return model(**inputs)

    def argmax_outputs(self, logits: torch.Tensor, enc: Encoded) -> list:
        """Per row, the argmax at every scored position (what teacher-forced locality compares)."""
        return [row for row in logits.argmax(-1).tolist()]

    def new_tokens(self, generated: torch.Tensor, enc: Encoded) -> torch.Tensor:
        """The generated tokens without the input (decoder outputs need no cut)."""
        return generated
