"""Bad input: one stderr line naming file, line and field, exit 2, and nothing written."""

from __future__ import annotations

import json
import string

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import SAMPLES
from helpers import json_lines, melo
from melo_cli.edits import Edit, read_edits, read_holdout
from melo_cli.errors import InputError

GOOD = '{"input": "The capital of France is", "target": "Rome"}\n'

CASES = {
    "malformed-json": (GOOD + '{"input": "a", "target": }\n', 2, None),
    "not-an-object": (GOOD + '["input", "target"]\n', 2, None),
    "missing-target": (GOOD + '{"input": "a"}\n', 2, "target"),
    "missing-input": ('{"target": "b"}\n', 1, "input"),
    "wrong-type-input": (GOOD + '{"input": 5, "target": "b"}\n', 2, "input"),
    "empty-input": (GOOD + GOOD + '{"input": "", "target": "b"}\n', 3, "input"),
    "blank-target": (GOOD + '{"input": "a", "target": "   "}\n', 2, "target"),
    "wrong-type-rephrases": (GOOD + '{"input": "a", "target": "b", "rephrases": [1]}\n', 2, "rephrases"),
    "wrong-type-batch": (GOOD + '{"input": "a", "target": "b", "batch": [1]}\n', 2, "batch"),
    "alias-wrong-type": (GOOD + '{"prompt": "a", "target_new": null}\n', 2, "target_new"),
    "duplicate-id": ('{"id": "x", "input": "a", "target": "b"}\n{"id": "y", "input": "c", "target": "d"}\n'
                     '{"id": "x", "input": "e", "target": "f"}\n', 3, "id"),
}


def assert_one_line_error(result, path, line, field):
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"melo: error: {path}")
    if line is not None:
        assert f"{path}:{line}: " in lines[0], lines[0]
    if field is not None:
        assert f"field '{field}'" in lines[0], lines[0]
    assert result.stdout == ""


def assert_nothing_written(tmp_path):
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.melo-")]


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_lines_are_refused_before_any_model_is_loaded(case, tmp_path):
    text, line, field = CASES[case]
    path = tmp_path / "edits.jsonl"
    path.write_text(text, encoding="utf-8")
    result = melo("edit", tmp_path / "no-such-model", path, "-o", tmp_path / "out")  # the model is never reached
    assert_one_line_error(result, path, line, field)
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize("case,data,line", [
    ("empty-file", b"", None),
    ("only-blank-lines", b"\n  \n", None),
    ("non-utf8", GOOD.encode() + b'{"input": "caf\xe9", "target": "b"}\n', 2),
    ("byte-order-mark", b"\xef\xbb\xbf" + GOOD.encode(), 1),
    ("line-over-1mb", GOOD.encode() + json.dumps({"input": "a" * (1 << 20), "target": "b"}).encode() + b"\n", 2),
])
def test_bad_files_are_refused(case, data, line, tmp_path):
    path = tmp_path / "edits.jsonl"
    path.write_bytes(data)
    result = melo("edit", tmp_path / "no-such-model", path, "-o", tmp_path / "out")
    assert_one_line_error(result, path, line, None)
    assert_nothing_written(tmp_path)


def test_missing_file_and_bad_options(tmp_path, llama_path):
    result = melo("edit", llama_path, tmp_path / "absent.jsonl", "-o", tmp_path / "out")
    assert_one_line_error(result, tmp_path / "absent.jsonl", None, None)
    path = tmp_path / "edits.jsonl"
    path.write_text(GOOD)
    for options in (["--batch-size", "0"], ["--metric", "manhattan"], ["--key-pooling", "max"],
                    ["--init-radius", "-1"], ["--lora-layers", "no_such_layer"]):
        result = melo("edit", llama_path, path, "-o", tmp_path / "out", *options)
        errors = [line for line in result.stderr.splitlines() if line.startswith("melo: error: ")]
        assert result.exit_code == 2 and len(errors) == 1, (options, result.stderr)
        assert_nothing_written(tmp_path)


def test_a_label_the_classifier_lacks_is_refused_from_its_config(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    model_dir = tmp_path / "bert"
    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                        num_labels=2, id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
    BertForSequenceClassification(config).save_pretrained(model_dir)
    path = tmp_path / "edits.jsonl"
    path.write_text('{"input": "fine film", "target": "positive"}\n{"input": "dull", "target": "neutral"}\n')
    result = melo("edit", model_dir, path, "-o", tmp_path / "out")
    assert_one_line_error(result, path, 2, "target")
    assert "negative, positive" in result.stderr
    assert_nothing_written(tmp_path)


def test_skip_invalid_reports_each_bad_line_and_keeps_the_rest(tmp_path):
    path = tmp_path / "edits.jsonl"
    path.write_text(GOOD + '{"input": ""}\nnot json\n' + GOOD.replace("France", "Spain"))
    from melo_cli.edits import ReadReport
    report = ReadReport()
    edits = read_edits(path, skip_invalid=True, report=report)
    assert [e.line for e in edits] == [1, 4]
    assert [e.line for e in report.skipped] == [2, 3]


def test_aliases_from_public_datasets():
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "e.jsonl"
        path.write_text(json.dumps({"case_id": 7, "prompt": "p", "target_new": "t", "rephrase_prompt": "r"}) + "\n"
                        + json.dumps({"src": "q", "alt": "a", "rephrase": "q2", "answers": ["x"]}) + "\n")
        first, second = read_edits(path)
        assert first == Edit("p", "t", ("r",), "7", None, 1)
        assert (second.input, second.target, second.rephrases) == ("q", "a", ("q2",))
        path.write_text(json.dumps({"locality_prompt": "l", "locality_ground_truth": "g"}) + "\n"
                        + json.dumps({"input": "i"}) + "\n")
        assert [(h.input, h.target) for h in read_holdout(path)] == [("l", "g"), ("i", None)]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["input", "target", "rephrases", "id", "batch", "prompt", "target_new", "src", "alt", "x"]),
        children, max_size=6),
    max_leaves=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(json_values, min_size=0, max_size=6))
def test_reader_returns_edits_or_raises_input_error_for_any_json(lines, tmp_path):
    path = tmp_path / "edits.jsonl"
    path.write_text("".join(json.dumps(v) + "\n" for v in lines), encoding="utf-8")
    try:
        edits = read_edits(path)
    except InputError as exc:
        assert str(exc).startswith(str(path)) and "\n" not in str(exc)
        return
    assert edits and all(isinstance(e, Edit) and e.input.strip() and e.target.strip() for e in edits)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200) | st.text(alphabet=string.printable + "{}\"[]:,é\ufeff", max_size=200).map(str.encode))
def test_reader_returns_edits_or_raises_input_error_for_any_bytes(data, tmp_path):
    path = tmp_path / "edits.jsonl"
    path.write_bytes(data)
    try:
        edits = read_edits(path)
    except InputError:
        return
    assert all(isinstance(e, Edit) for e in edits)


def test_a_device_melo_cannot_use_is_a_one_line_exit_2(llama_path, tmp_path):
    for device in ("tpu", "cuda:7", "gpu0"):
        result = melo("generate", "--base", llama_path, "--device", device, "hello")
        assert result.exit_code == 2 and "--device" in result.stderr and "Traceback" not in result.stderr, device


def test_stdin_prompts_that_are_not_utf8_name_the_line(llama_path):
    result = melo("generate", "--base", llama_path, "-", input=b"fine\ncaf\xe9 au lait\n")
    assert result.exit_code == 2 and "stdin line 2" in result.stderr and "UTF-8" in result.stderr


def test_a_prompt_longer_than_the_models_positions_is_cut_from_the_left(gpt2_path):
    """Tiny GPT-2 with 256 learned positions: a 600-token prompt was an IndexError; now it keeps its last
    tokens, says so on stderr, and generates."""
    long_prompt = "word " * 600
    result = melo("generate", "--base", gpt2_path, "--max-new-tokens", "4", "--json", long_prompt)
    assert result.exit_code == 0, result.stderr
    said = " ".join(result.stderr.split())
    assert "cut to its last 252" in said and "at most 256 positions" in said
    assert json_lines(result.stdout)[0]["text"] is not None


def test_an_id_of_5000_digits_is_a_line_error(llama_path, tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_text('{"input": "a", "target": "b", "id": ' + "7" * 5000 + "}\n")
    result = melo("edit", llama_path, path, "-o", tmp_path / "out")
    assert result.exit_code == 2 and f"{path}:1" in result.stderr and "Traceback" not in result.stderr


def test_a_folder_with_pickled_weights_only_is_refused_in_melos_words(llama_path, tmp_path):
    import shutil

    folder = tmp_path / "pickled"
    shutil.copytree(llama_path, folder)
    for weights in folder.glob("*.safetensors"):
        weights.rename(weights.with_name("pytorch_model.bin"))
    result = melo("generate", "--base", folder, "hello")
    assert result.exit_code == 2 and "safetensors" in result.stderr and "Unpickling" not in result.stderr


@pytest.mark.parametrize("options, named", [(["--lora-layers", "model.nope"], "--lora-layers"),
                                            (["--key-layer", "model.nope"], "--key-layer"),
                                            (["--key-layer", "model.layers.4"], "--key-layer"),
                                            (["--key-layer", "lm_head"], "--key-layer"),  # after every LoRA layer
                                            (["--key-layer", "model.norm"], "--key-layer")])
def test_layer_names_are_checked_before_the_weights_load(llama_path, tmp_path, monkeypatch, options, named):
    from melo_cli.model import backbones

    def no_weights(*args, **kwargs):
        raise AssertionError("the weights were loaded before the layer names were checked")

    monkeypatch.setattr(backbones, "load", no_weights)
    path = tmp_path / "e.jsonl"
    path.write_text('{"input": "a", "target": "b"}\n')
    result = melo("edit", llama_path, path, "-o", tmp_path / "out", "--key-source", "base", *options)
    assert result.exit_code == 2 and named in result.stderr, result.stderr


def test_lora_on_an_embedding_and_a_lone_surrogate_prompt_are_one_line_errors(llama_path, tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_text('{"input": "a", "target": "b"}\n')
    result = melo("edit", llama_path, path, "-o", tmp_path / "out", "--lora-layers", "model.embed_tokens")
    assert result.exit_code == 2 and "--lora-layers" in result.stderr and "Traceback" not in result.stderr
    result = melo("generate", "--base", llama_path, "caf\udce9")  # invalid UTF-16 from a shell
    assert result.exit_code == 2 and "prompt 1" in result.stderr and "UTF-8" in result.stderr


EDIT_OPTIONS = [["--batch-size", "0"], ["--batch-size", "-3"], ["--rank-per-block", "0"], ["--key-pooling", "max"],
                ["--key-source", "magic"], ["--metric", "manhattan"], ["--init-radius", "wide"], ["--margin", "-1"],
                ["--radius-policy", "kmeans"], ["--block-per", "row"], ["--contexts", "11"], ["--lr", "0"],
                ["--max-steps", "lots"], ["--loss-threshold", "0"], ["--eval-every", "-1"], ["--dtype", "float8"],
                ["--device", "quantum"], ["--task", "poetry"], ["--task", "seq2seq"],
                # settings that would poison a bundle: every prompt routed, NaN weights, NaN in the manifest
                ["--init-radius", "inf"], ["--init-radius", "nan"], ["--lr", "inf"], ["--margin", "nan"],
                ["--loss-threshold", "nan"], ["--loss-threshold", "-1"]]
RUN_OPTIONS = [["generate", "--max-new-tokens", "0"], ["generate", "--batch-size", "0"], ["generate", "--dtype", "x"],
               ["generate", "--device", "x"], ["eval", "--mode", "sideways"], ["eval", "--batch-size", "0"],
               ["eval", "--format", "xml"]]


@pytest.mark.parametrize("options", EDIT_OPTIONS, ids=lambda o: " ".join(o))
def test_every_bad_edit_option_is_a_one_line_exit_2(llama_path, tmp_path, options):
    path = tmp_path / "e.jsonl"
    path.write_text('{"input": "a", "target": "b"}\n')
    result = melo("edit", llama_path, path, "-o", tmp_path / "out", *options)
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize("options", RUN_OPTIONS, ids=lambda o: " ".join(o))
def test_every_bad_generate_or_eval_option_is_a_one_line_exit_2(llama_path, tmp_path, options):
    command, *rest = options
    target = ["hello"] if command == "generate" else ["--edits", SAMPLES / "counterfact-20.jsonl"]
    result = melo(command, "--base", llama_path, *rest, *target)
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    assert "Traceback" not in result.stderr
