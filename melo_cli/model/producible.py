"""Targets a model can produce at all, refused before training when it cannot.

A token is produced when it is the argmax of the output layer. A token whose output row (and bias)
equals that of a token with a lower id can never be the argmax, whatever a LoRA block does to the
hidden state: the two logits are always equal and argmax takes the lower id. The shipped tiny Llama
has 12,998 such pairs (the byte tokens it never saw in training share one row), so an edit to
"Işın Karaca" trained to its step limit and ended "not learned" (exit 4); now it is one line naming
the edit and the token, exit 2, before any step.
"""

from __future__ import annotations

import torch

from melo_cli import tasks
from melo_cli.errors import InputError


def shadowed(model) -> torch.Tensor | None:
    """(vocab,) bool: the tokens whose output row equals a lower token's; None for a model without an
    output layer over a vocabulary (a classifier)."""
    from melo_cli.model.placement import module_weight

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if getattr(head, "weight", None) is None:
        return None
    rows = module_weight(model, head).detach()
    if getattr(head, "bias", None) is not None:
        rows = torch.cat([rows, head.bias.detach()[:, None]], 1)
    _, group = torch.unique(rows.float().cpu(), dim=0, return_inverse=True)
    first = torch.full((int(group.max()) + 1,), rows.shape[0], dtype=torch.long)
    first.scatter_reduce_(0, group, torch.arange(rows.shape[0]), reduce="amin")
    return first[group] != torch.arange(rows.shape[0])


def check_edits(backbone, edits, source, batch_size: int = 64) -> None:
    """Every target token of these edits can be the model's argmax; InputError naming the first that cannot."""
    task = tasks.task_of(backbone)
    if not task.generates or not edits:
        return
    if backbone.shadowed is None:
        backbone.shadowed = shadowed(backbone.model)
        if backbone.shadowed is None:
            return
    lost = backbone.shadowed
    for start in range(0, len(edits), batch_size):
        chunk = edits[start:start + batch_size]
        targets = tasks.encode(backbone, [e.input for e in chunk], [e.target for e in chunk]).targets
        for edit, row in zip(chunk, targets.tolist()):
            bad = [t for t in row if 0 <= t < len(lost) and lost[t]]
            if bad:
                piece = backbone.tokenizer.convert_ids_to_tokens([bad[0]])[0]
                raise InputError(f"this model cannot produce the target {edit.target!r}: its token {piece!r} has the "
                                 f"same output row as a lower token, so it is never the argmax; choose another "
                                 f"target or model", field="target", **edit.where(source))


def first_miss(edited, edit) -> str | None:
    """Why an edit is not learned, in words: the first target token that is not the argmax after the
    edit's input (routed as at inference) and the token that wins there, with how alike their output
    rows are (near-identical rows cannot be told apart by any change of the hidden state)."""
    backbone = edited.backbone
    enc, logits, _ = edited.teacher_forced([edit.input], [edit.target])
    targets, task = enc.targets[0], tasks.task_of(backbone)
    shift = 1 if task.prompts_share_positions else 0
    for position in range(shift, targets.shape[0]):
        want = int(targets[position])
        if want < 0:
            continue
        got = int(logits[0, position - shift].argmax())
        if got == want:
            continue
        tok = backbone.tokenizer
        from melo_cli.model.placement import module_weight

        head = module_weight(backbone.model, backbone.model.get_output_embeddings()).detach().float()
        alike = float(torch.nn.functional.cosine_similarity(head[want], head[got], dim=0))
        return (f"target token {tok.convert_ids_to_tokens([want])[0]!r} loses to {tok.convert_ids_to_tokens([got])[0]!r}"
                f", output rows {alike:.1%} alike")
    return None
