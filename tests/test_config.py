"""MeloConfig checks itself (one set of checks for the CLI, the Python API and bundles read from disk)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from melo_cli import router as router_module
from melo_cli.config import CONTEXTS, METRICS, POLICIES, POOLINGS, MeloConfig
from melo_cli.errors import InputError, cli_text


@pytest.mark.parametrize("setting, value", [
    ("lr", math.nan), ("lr", 0), ("lr", math.inf), ("rank_per_block", 0), ("rank_per_block", 2.5),
    ("margin", -0.1), ("margin", math.nan), ("init_radius", math.inf), ("init_radius", -1.0),
    ("contexts", len(CONTEXTS) + 1), ("contexts", True), ("metric", "manhattan"), ("radius_policy", "kmeans"),
    ("key_pooling", "max"), ("key_source", "magic"), ("block_per", "row"), ("max_steps", -1),
    ("max_steps", "forever"), ("loss_threshold", 0), ("alpha", -8.0), ("lora_layers", "model.layers.1.mlp"),
])
def test_a_bad_setting_is_an_input_error_naming_it(setting, value):
    with pytest.raises(InputError) as raised:
        MeloConfig(**{setting: value})
    assert f"`{setting}`" in str(raised.value)
    assert f"--{setting.replace('_', '-')}" in cli_text(str(raised.value))  # the CLI shows the flag


def test_key_source_and_key_encoder_go_together():
    with pytest.raises(InputError, match="`key_source` encoder goes with `key_encoder`"):
        MeloConfig(key_source="encoder")
    with pytest.raises(InputError, match="key_encoder"):
        MeloConfig(key_source="base", key_encoder="some/encoder")
    assert MeloConfig(key_source="encoder", key_encoder="some/encoder").key_encoder == "some/encoder"


def test_defaults_leave_choices_to_melo_and_a_resolved_config_has_none_left():
    assert set(MeloConfig().unresolved) == {"task", "key_source", "lora_layers", "key_layer", "alpha", "metric",
                                            "radius_policy", "margin"}
    resolved = MeloConfig(task="causal-lm", lora_layers=["a"], key_layer="k", alpha=8.0, key_source="base",
                          metric="euclidean", radius_policy="split", margin=0.0, init_radius=0.5)
    assert resolved.unresolved == [] and MeloConfig.from_dict(resolved.to_dict()) == resolved


def test_the_config_names_what_the_router_and_keys_implement():
    from melo_cli.router.policies import POLICIES as IMPLEMENTED
    assert set(POLICIES) == set(IMPLEMENTED)
    for metric in METRICS:  # each metric the config accepts is one the router and its index can search
        router = router_module.Router(4, metric)
        router.add(np.ones(4, np.float32), "x", 0, 0)
        clusters, distances = router.nearest(np.ones((1, 4), np.float32))
        assert clusters.tolist() == [[0]] and abs(float(distances[0, 0])) < 1e-5
    from melo_cli.config import POOLINGS as KEY_POOLINGS
    assert POOLINGS == KEY_POOLINGS


def test_resolving_and_routing_never_change_the_users_config(llama_path):
    from melo_cli import MeloModel

    config = MeloConfig(key_source="base", rank_per_block=2)
    before = config.to_dict()
    model = MeloModel.from_pretrained(llama_path, config=config, device="cpu")
    model.edit([{"input": "Once upon a time", "target": "Paris"}])
    assert config.to_dict() == before
    assert model.config.init_radius > 0 and model.config.unresolved == [] and model.config.rank_per_block == 2
