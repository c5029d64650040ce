"""A new task is one Task class and one registry entry: no core module changes (issue 14)."""

from __future__ import annotations

import pytest

from melo_cli import MeloModel
from melo_cli.tasks import TASKS
from melo_cli.tasks.causal_lm import CausalLM


class ShoutingLM(CausalLM):
    """A test-only task: a causal LM that is taught every target in capitals."""

    name = "shouting-lm"

    def encode(self, backbone, inputs, targets=None):
        return super().encode(backbone, inputs, None if targets is None else [t.upper() for t in targets])


def test_a_task_added_through_the_registry_alone_edits_end_to_end(llama_path, tmp_path, monkeypatch):
    monkeypatch.setitem(TASKS, ShoutingLM.name, ShoutingLM())
    model = MeloModel.from_pretrained(llama_path, task="shouting-lm", key_source="base", device="cpu")
    assert model.config.task == "shouting-lm" and model.edited.task.name == "shouting-lm"
    prompt = "The mother tongue of Danielle Darrieux is"
    summary = model.edit([{"input": prompt, "target": "English"}])
    assert summary["unlearned_edits"] == 0
    assert model.generate([prompt], max_new_tokens=12)[0].strip().startswith("ENGLISH")
    scores = model.evaluate([{"input": prompt, "target": "English"}], mode="teacher-forced")
    assert scores["edit_success"] == 1.0  # scored as the task encodes it
    again = MeloModel.from_pretrained(bundle=model.save_pretrained(tmp_path / "b"), device="cpu")
    assert again.config.task == "shouting-lm" and again.generate([prompt], 12) == model.generate([prompt], 12)


def test_an_unknown_task_is_refused_by_name(llama_path):
    from melo_cli.errors import InputError

    with pytest.raises(InputError, match="`task` 'shouting-lm'"):
        MeloModel.from_pretrained(llama_path, task="shouting-lm", device="cpu")
