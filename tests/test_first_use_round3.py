"""First use and hostile input, round 3 (issue 27): each case was reproduced on main before its fix."""

from __future__ import annotations

import errno
import json
import re
import struct
import subprocess
import sys

import pytest

from conftest import ROOT, SAMPLES
from helpers import json_lines, melo, write_jsonl
from melo_cli import bundle as bundle_io
from melo_cli.errors import cli_text

DARRIEUX = "The mother tongue of Danielle Darrieux is"


@pytest.fixture(scope="module")
def small_bundle(llama_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("round3")
    edits = write_jsonl(root / "e.jsonl", [{"input": DARRIEUX, "target": "English"},
                                           {"input": "Toko Yasuda, the", "target": "piano"},
                                           {"input": "Ferrari F40, developed by", "target": "Microsoft"}])
    result = melo("edit", llama_path, edits, "-o", root / "bundle", "--batch-size", "2")
    assert result.exit_code == 0, result.stderr
    return root / "bundle"


def one_line_exit_2(result):
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("melo: error: ") and "Traceback" not in result.stderr
    return lines[-1]


# -- install and README ----------------------------------------------------------------------------
def test_the_readme_install_and_ci_install_the_same_extras():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    readme_extras = re.search(r'pip install -e "\.\[([a-z,]+)\]"', readme).group(1)
    ci_extras = re.search(r'"\$wheel\[([a-z,]+)\]"', ci).group(1)
    assert set(readme_extras.split(",")) == set(ci_extras.split(",")) >= {"test", "plot", "gguf"}


@pytest.mark.parametrize("sample", ["counterfact-20.jsonl", "zsre-20.jsonl", "entities-20.jsonl"])
def test_every_shipped_sample_edits_the_shipped_model_with_the_defaults(llama_path, tmp_path, sample):
    result = melo("edit", llama_path, SAMPLES / sample, "-o", tmp_path / "b")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["unlearned_edits"] == 0


def test_a_target_the_model_cannot_produce_is_named(llama_path, tmp_path):
    """The tiny Llama's byte tokens share one output row within 5%: "Işın Karaca" trains to its limit."""
    edits = write_jsonl(tmp_path / "e.jsonl", [{"input": "Who is in Zavallılar as a cast member?", "target": "Işın Karaca"}])
    result = melo("edit", llama_path, edits, "-o", tmp_path / "b")
    assert result.exit_code == 4 and "loses to" in result.stderr and "alike" in result.stderr


# -- silent or confusing behaviour -----------------------------------------------------------------
def test_a_subject_the_input_continues_is_said_and_shown(llama_path, tmp_path):
    edits = write_jsonl(tmp_path / "e.jsonl", [{"input": "The CEO of Acme Corp is", "target": "Jane Doe",
                                                 "subject": "Acme Corp"}])
    result = melo("edit", llama_path, edits, "-o", tmp_path / "b")
    assert result.exit_code == 0 and "routes on 'CEO of Acme Corp'" in result.stderr
    (row,) = json_lines(melo("inspect", tmp_path / "b", "--edits", "--json").stdout)
    assert row["entity"] == "CEO of Acme Corp" and "Acme Corp" in row["entity_short"]
    routes = json_lines(melo("route", "--bundle", tmp_path / "b", "Who runs Acme Corp? It is led by").stdout)
    assert routes[0]["route"] is not None and routes[0]["route"]["entities"] == ["CEO of Acme Corp"]


@pytest.mark.parametrize("subject, why", [("Globex", "does not occur"), ("...", "no letters")])
def test_a_subject_that_could_never_apply_is_refused(llama_path, tmp_path, subject, why):
    edits = write_jsonl(tmp_path / "e.jsonl", [{"input": "The CEO of Acme Corp is", "target": "Jane Doe",
                                                 "subject": subject}])
    line = one_line_exit_2(melo("edit", llama_path, edits, "-o", tmp_path / "b"))
    assert "e.jsonl:1" in line and "'subject'" in line and why in line


def test_an_edit_that_names_no_entity_gets_a_hint(llama_path, tmp_path):
    edits = write_jsonl(tmp_path / "e.jsonl", [{"input": "what is the capital of france?", "target": "Rome"}])
    result = melo("edit", llama_path, edits, "-o", tmp_path / "b")
    assert result.exit_code == 0 and "name no entity" in result.stderr and "subject" in result.stderr


def test_edits_without_ids_get_ids_that_forget_prints_and_accepts(small_bundle, tmp_path):
    rows = json_lines(melo("inspect", small_bundle, "--edits", "--json").stdout)
    assert [r["id"] for r in rows] == ["edit-1", "edit-2", "edit-3"]
    assert [r["batch"] for r in rows] == ["1", "1", "2"]  # batches count from 1, as inspect numbers edits
    result = melo("forget", small_bundle, "--batch", "1", "-o", tmp_path / "a")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["ids"] == ["edit-1", "edit-2"]
    result = melo("forget", small_bundle, "--id", "edit-3", "-o", tmp_path / "b")
    assert result.exit_code == 0 and json.loads(result.stdout)["ids"] == ["edit-3"]


def test_unknown_and_repeated_fields_warn_naming_the_line(llama_path, tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_text('{"input": "Toko Yasuda, the", "tagret": "x", "target": "piano"}\n'
                    '{"input": "Ferrari F40, developed by", "input": "Ferrari F40, made by", "target": "Microsoft"}\n')
    result = melo("edit", llama_path, path, "-o", tmp_path / "b")
    assert result.exit_code == 0, result.stderr
    assert "e.jsonl:1: unknown field 'tagret'" in result.stderr
    assert "e.jsonl:2: field 'input' is given twice" in result.stderr


def test_an_identical_line_repeated_merges_and_a_clashing_id_is_refused(llama_path, tmp_path):
    line = {"id": "x", "input": "Toko Yasuda, the", "target": "piano"}
    same = write_jsonl(tmp_path / "same.jsonl", [line, line])
    result = melo("edit", llama_path, same, "-o", tmp_path / "b")
    assert result.exit_code == 0 and "merged" in result.stderr and json.loads(result.stdout)["edits"] == 1
    clash = write_jsonl(tmp_path / "clash.jsonl", [line, {**line, "target": "violin"}])
    assert "duplicate id 'x'" in one_line_exit_2(melo("edit", llama_path, clash, "-o", tmp_path / "c"))


def test_edits_are_read_from_stdin(llama_path, tmp_path):
    text = json.dumps({"input": "Toko Yasuda, the", "target": "piano"}) + "\n"
    result = melo("edit", llama_path, "-", "-o", tmp_path / "b", input=text)
    assert result.exit_code == 0 and json.loads(result.stdout)["edits"] == 1, result.stderr
    bad = melo("edit", llama_path, "-", "-o", tmp_path / "c", input='{"input": 3}\n')
    assert "stdin:1" in one_line_exit_2(bad)


def test_inspect_edits_is_one_line_per_edit_at_80_columns(llama_path, tmp_path):
    result = melo("edit", llama_path, SAMPLES / "entities-20.jsonl", "-o", tmp_path / "b")
    assert result.exit_code == 0, result.stderr
    table = melo("inspect", tmp_path / "b", "--edits", env={"COLUMNS": "80"}).stdout.splitlines()
    body = [line for line in table if re.match(r"\s*ent-\d+", line)]
    assert len(body) == 20 and all(len(line) <= 80 for line in table)


def test_only_the_commands_own_options_become_flags_in_messages():
    assert cli_text("Should have a `model_type` key; raise `max_steps`", {"max_steps"}) == \
        "Should have a `model_type` key; raise --max-steps"


def test_misfiring_errors_now_name_the_cause(llama_path, tmp_path):
    edits = write_jsonl(tmp_path / "e.jsonl", [{"input": "Toko Yasuda, the", "target": "piano"}])
    assert "empty" in one_line_exit_2(melo("edit", "", edits, "-o", tmp_path / "b"))
    line = one_line_exit_2(melo("edit", llama_path, edits, "-o", tmp_path / "b", "--key-encoder", "/nonexistent"))
    assert "/nonexistent: no such" in line and "Repo id" not in line


def test_the_export_of_a_gguf_based_bundle_names_a_loadable_base(tmp_path, monkeypatch, small_bundle):
    from melo_cli.jobs import export

    monkeypatch.setenv("MELO_CACHE", str(tmp_path / "cache"))
    base = {"name": "model.Q4.gguf", "path": "/models/model.Q4.gguf", "gguf": {"file": "model.Q4.gguf",
                                                                              "sha256": "ab" * 32, "bytes": 1}}
    assert export.loadable_base(base, None) == str(tmp_path / "cache" / "gguf" / ("ab" * 16))
    assert export.loadable_base(base, "HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    result = melo("export", small_bundle, "-o", tmp_path / "served", "--base-name", "org/model")
    assert result.exit_code == 0, result.stderr
    config = json.loads((tmp_path / "served" / "block-0" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "org/model"
    routing = json.loads((tmp_path / "served" / "routing.json").read_text())
    assert routing["entities"]["match"] == "forms" and routing["clusters"][0]["entities"][0]["name"]
    assert "handoff" in routing and routing["nearest"]["margin"] == 0.2


# -- exit 1 where exit 2 belongs -------------------------------------------------------------------
def test_a_lone_surrogate_in_an_edits_file_or_a_jsonl_prompt_is_exit_2(llama_path, tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_text('{"input": "abc \\ud800 def", "target": "x"}\n')
    assert "lone surrogate" in one_line_exit_2(melo("edit", llama_path, path, "-o", tmp_path / "b"))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "abc \\ud800 def"}\n')
    assert "lone surrogate" in one_line_exit_2(melo("generate", "--base", llama_path, "--input", prompts))


def test_a_folder_with_a_config_and_no_weights_is_exit_2(llama_path, tmp_path):
    folder = tmp_path / "config-only"
    folder.mkdir()
    (folder / "config.json").write_text((llama_path / "config.json").read_text())
    edits = write_jsonl(tmp_path / "e.jsonl", [{"input": "a", "target": "b"}])
    assert "weights" in one_line_exit_2(melo("edit", folder, edits, "-o", tmp_path / "b"))


@pytest.mark.parametrize("data", [b"GGUFxxxx", b"GGUF" + struct.pack("<IQQ", 3, 5, 2) + b"\x05\x00"])
def test_a_damaged_gguf_file_is_exit_2(tmp_path, monkeypatch, data):
    pytest.importorskip("gguf", reason="the gguf extra")
    monkeypatch.setenv("MELO_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "model.gguf"
    path.write_bytes(data)
    edits = write_jsonl(tmp_path / "e.jsonl", [{"input": "a", "target": "b"}])
    assert "GGUF" in one_line_exit_2(melo("edit", path, edits, "-o", tmp_path / "b"))


def test_generate_onto_a_full_disk_is_exit_74(llama_path):
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "melo_cli.cli", "generate", "--base", str(llama_path), "Once"],
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=300)
    assert done.returncode == 74 and "No space left" in done.stderr and "Traceback" not in done.stderr


def test_an_export_onto_a_full_disk_is_exit_74_and_replaces_nothing(small_bundle, tmp_path, monkeypatch):
    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(bundle_io, "write_bytes", full)
    result = melo("export", small_bundle, "-o", tmp_path / "served")
    assert result.exit_code == 74 and "nothing was replaced" in result.stderr
    assert not (tmp_path / "served").exists()


def test_a_lock_file_left_by_a_killed_run_is_removed_by_the_next_reader(small_bundle):
    from melo_cli.bundle.locks import lock_path

    stale = lock_path(small_bundle)
    stale.write_text("")  # what SIGKILL leaves: a file nobody holds
    assert melo("inspect", small_bundle).exit_code == 0
    assert not stale.exists()


# -- runs that never end ---------------------------------------------------------------------------
@pytest.mark.parametrize("options", [["--rank-per-block", "100000"], ["--wait", "-1"], ["--wait", "nan"],
                                     ["--lora-layers", ""], ["--max-steps", "0"]])
def test_options_that_would_run_forever_or_mean_nothing_are_usage_errors(llama_path, tmp_path, options):
    edits = write_jsonl(tmp_path / "e.jsonl", [{"input": "a", "target": "b"}])
    one_line_exit_2(melo("edit", llama_path, edits, "-o", tmp_path / "b", *options))
    assert not (tmp_path / "b").exists()


def test_new_tokens_beyond_the_models_positions_are_a_usage_error(llama_path):
    line = one_line_exit_2(melo("generate", "--base", llama_path, "--max-new-tokens", "100000", "Once"))
    assert "--max-new-tokens 100000" in line and "positions" in line
