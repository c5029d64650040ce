"""Keys are pooled over the input's real tokens only: padding side and amount do not change them."""

import numpy as np
import pytest
import torch

from melo_cli import tasks
from melo_cli.model import backbones
from melo_cli.model import layers
from melo_cli.config import MeloConfig
from melo_cli.model.edited_model import EditedModel
from melo_cli.model.keys import pool


def test_pool_ignores_masked_positions():
    hidden = torch.arange(24, dtype=torch.float32).reshape(2, 4, 3)
    mask = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1]])
    mean = pool(hidden, mask, "mean")
    torch.testing.assert_close(mean[0], hidden[0, 1:3].mean(0))
    last = pool(hidden, mask, "last")
    torch.testing.assert_close(last[0], hidden[0, 2])
    torch.testing.assert_close(last[1], hidden[1, 3])
    with pytest.raises(ValueError):
        pool(hidden, mask, "max")


@pytest.fixture
def llama(llama_path):
    backbone = backbones.load(str(llama_path), device="cpu")
    lora = layers.default_lora_layers(backbone.model, backbone.task)
    return backbone, lora


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_same_key_padded_left_right_or_not_at_all(llama, pooling):
    backbone, lora = llama
    config = MeloConfig(task="causal-lm", lora_layers=lora, key_layer=layers.default_key_layer(backbone.model, lora),
                        key_pooling=pooling)
    edited = EditedModel(backbone, config)
    text, longer = "The mother tongue of Danielle Darrieux is", "Once upon a time there was a very long story about a cat"
    alone = edited.keys([text])[0]
    left = edited.keys([longer, text])[1]  # inference encoding pads on the left
    # right padding: the training encoding (input then target), keyed on the input positions only
    enc = tasks.encode(backbone, [longer, text], ["x", "English is spoken there"])
    assert enc.inputs["attention_mask"][0, -1] == 0 or enc.inputs["attention_mask"][1, -1] == 0
    found = []
    with edited.routes.by_key(enc.key_mask, lambda keys: found.append(keys) or torch.full((2,), -1)):
        edited.forward(enc.inputs)
    right = found[0][1].numpy()
    np.testing.assert_allclose(left, alone, atol=1e-5)
    np.testing.assert_allclose(right, alone, atol=1e-5)
    assert np.linalg.norm(alone - edited.keys([longer])[0]) > 0.1  # and different inputs differ


def test_joiner_puts_one_space_except_before_punctuation_or_existing_space():
    from melo_cli.tasks import joiner

    assert joiner("The capital is", "Paris") == " "
    assert joiner("Once upon a time", ", there was") == ""
    assert joiner("The capital is ", "Paris") == "" and joiner("The capital is", " Paris") == ""
    assert joiner("Tom", "'s dog") == ""
