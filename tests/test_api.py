"""The Python API (melo_cli.MeloModel) on the real tiny Llama: edit from Python objects, run, save,
reload, continue; errors name the argument; the bundle is the one the CLI writes and reads."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import melo

import melo_cli
from melo_cli import Edit, InputError, MeloModel, Unlearned

FACTS = [{"input": "The mother tongue of Danielle Darrieux is", "target": "English", "subject": "Danielle Darrieux"},
         {"input": "Ferrari F40, developed by", "target": "Microsoft", "subject": "Ferrari F40"}]


@pytest.fixture(scope="module")
def edited(llama_path):
    model = MeloModel.from_pretrained(llama_path, device="cpu", key_source="base")
    summary = model.edit(FACTS, batch_size=2)
    assert summary["edits"] == 2 and summary["unlearned_edits"] == 0
    return model


def test_edit_generate_route_and_evaluate_from_python(edited):
    texts = edited.generate([FACTS[0]["input"], FACTS[1]["input"], "Once upon a time"], max_new_tokens=12)
    assert texts[0].strip().startswith("English") and texts[1].strip().startswith("Microsoft")
    routes = edited.route([FACTS[0]["input"], "Once upon a time"])
    assert routes[0].routed and not routes[1].routed
    scores = edited.evaluate(holdout=["Once upon a time", {"input": "Lily went to the park"}])
    assert scores["edit_success"] == 1.0 and scores["locality"] == 1.0 and scores["n_edits"] == 2


def test_saved_bundle_is_the_clis_bundle_and_reloads_identically(edited, llama_path, tmp_path):
    out = edited.save_pretrained(tmp_path / "b")
    prompts = [FACTS[0]["input"], "Once upon a time"]
    cli = melo("generate", "--bundle", out, "--json", "--max-new-tokens", "12", *prompts)
    assert cli.exit_code == 0, cli.stderr
    assert [json.loads(line)["text"] for line in cli.stdout.splitlines()] == edited.generate(prompts, 12)
    again = MeloModel.from_pretrained(bundle=out, device="cpu")
    assert again.generate(prompts, 12) == edited.generate(prompts, 12)
    assert [e.input for e in again.edits] == [f["input"] for f in FACTS]
    with pytest.raises(InputError, match="already exists"):
        edited.save_pretrained(out)


def test_continue_a_bundle_with_edit_objects(edited, tmp_path):
    out = edited.save_pretrained(tmp_path / "first")
    model = MeloModel.from_pretrained(bundle=out, device="cpu")
    model.edit([Edit("Once upon a time", "Paris")], batch_size=1)
    assert model.generate(["Once upon a time"], 8)[0].strip().startswith("Paris")
    assert model.generate([FACTS[1]["input"]], 12)[0].strip().startswith("Microsoft")  # the old block is frozen
    second = model.save_pretrained(tmp_path / "second")
    manifest = (second / "manifest.yaml").read_text()
    assert "batches: 2" in manifest and len(MeloModel.from_pretrained(bundle=second, device="cpu").edits) == 3


def test_errors_name_the_argument(llama_path, edited):
    with pytest.raises(InputError, match=r"edits: record 2: field 'target'"):
        edited.edit([FACTS[0], {"input": "x"}])
    with pytest.raises(InputError, match=r"`lr` nan"):
        MeloModel.from_pretrained(llama_path, device="cpu", lr=float("nan"))
    with pytest.raises(InputError, match="unknown setting"):
        MeloModel.from_pretrained(llama_path, device="cpu", learning_rate=0.1)
    with pytest.raises(InputError, match="prompts"):
        edited.generate("one string, not a list")


def test_an_unlearned_edit_changes_nothing(llama_path):
    model = MeloModel.from_pretrained(llama_path, device="cpu", key_source="base", max_steps=1)
    with pytest.raises(Unlearned, match="`max_steps` 1"):
        model.edit(FACTS)
    assert model.edits == [] and model.edited.router is None and model.edited.n_blocks == 0
    assert model.generate([FACTS[0]["input"]], 3) == MeloModel.from_pretrained(llama_path, device="cpu",
                                                                               key_source="base").generate(
        [FACTS[0]["input"]], 3)


def test_importing_melo_cli_does_not_import_torch():
    code = "import sys, melo_cli; print('torch' in sys.modules); melo_cli.MeloModel; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True"]
    assert set(melo_cli.__all__) >= {"MeloModel", "Edit", "InputError"}


def test_the_readme_python_example_runs(llama_path, tmp_path, monkeypatch):
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    code = re.search(r"## Python API.*?```python\n(.*?)```", readme, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bundle").mkdir()  # the quick start ran first, in the same folder: its bundle is there
    (tmp_path / "bundle" / "manifest.yaml").write_text("the quick start's bundle\n")
    namespace: dict = {}
    exec(code.replace("sample_models/stories260K", str(llama_path)), namespace)  # exactly the README's code
    model = namespace["model"]
    written = re.search(r'save_pretrained\("([^"]+)"', code).group(1)
    assert (tmp_path / written / "manifest.yaml").exists() and len(model.edits) == 4
    routes = model.route(["Ferrari F40, developed by", "Once upon a time"])
    assert routes[0].routed and routes[1].routed  # the last edit made "Once upon a time" an edit too
