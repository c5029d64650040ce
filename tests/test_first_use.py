"""What a new user hits in the first hour (issue 11): corrections, bundles used from anywhere, input
formats, dtypes, duplicates, unlearned edits, early usage errors, pipes, help and output."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.numpy import load_file

from conftest import ROOT, SAMPLES, load_edits
from helpers import json_lines, melo, write_jsonl
from melo_cli.model import backbones
from melo_cli.model import threads
from melo_cli import MeloModel
from melo_cli.edits import read_edits, read_holdout
from melo_cli.errors import InputError

EDITS = SAMPLES / "counterfact-20.jsonl"
DARRIEUX = "The mother tongue of Danielle Darrieux is"


@pytest.fixture(scope="module")
def corrected(llama_path, tmp_path_factory):
    """20 CounterFact edits (one of them Darrieux -> English), then a correction Darrieux -> French."""
    root = tmp_path_factory.mktemp("correction")
    old, new = root / "old", root / "new"
    assert melo("edit", llama_path, EDITS, "-o", old).exit_code == 0
    fix = write_jsonl(root / "fix.jsonl", [{"id": "fix-1", "input": DARRIEUX, "target": "French"}])
    result = melo("edit", fix, "--bundle", old, "-o", new)
    assert result.exit_code == 0, result.stderr
    return root, old, new, json.loads(result.stdout)


# -- corrections -----------------------------------------------------------------------------------
def test_a_correction_supersedes_the_edit_it_corrects(corrected):
    _, old, new, summary = corrected
    assert summary["superseded"] == 1 and summary["live_edits"] == 20 and summary["total_edits"] == 21
    records = json_lines((new / "edits.jsonl").read_text())
    gone = [r for r in records if "superseded" in r]
    assert len(gone) == 1 and gone[0]["input"] == DARRIEUX and gone[0]["target"] == "English"
    assert gone[0]["superseded"]["by"] == 20 and gone[0]["superseded"]["by_id"] == "fix-1"
    assert gone[0]["superseded"]["at"].endswith("+00:00")
    # the old block is untouched: the other edits in it still need it
    before, after = load_file(old / "lora.safetensors"), load_file(new / "lora.safetensors")
    for name, tensor in before.items():
        assert (after[name][:tensor.shape[0]] == tensor).all(), name


@pytest.mark.parametrize("size", [1, 2, 6, 20])
def test_a_corrected_input_gives_the_new_target_whatever_shares_its_batch(corrected, size):
    """Reproduced on main: alone "Fren...", in 2 at distance 7.7e-08, in 6 the base, in 20 the old "English"."""
    _, _, new, _ = corrected
    others = [e["input"] for e in load_edits("counterfact-20.jsonl") if e["input"] != DARRIEUX]
    prompts = [DARRIEUX] + others[:size - 1]
    result = melo("generate", "--bundle", new, "--json", "--max-new-tokens", "4", "--batch-size", size, *prompts)
    first = json_lines(result.stdout)[0]
    assert first["text"].strip().startswith("Fren"), first
    assert first["route"] is not None


def test_eval_scores_only_live_edits(corrected):
    _, _, new, _ = corrected
    result = melo("eval", "--bundle", new, "--format", "json", "--min-edit-success", "1.0")
    assert result.exit_code == 0, result.stderr
    scores = json.loads(result.stdout)
    assert scores["n_edits"] == 20 and scores["edit_success"] == 1.0
    # a file holding the old and the new edit scores the new one only
    both = write_jsonl(new.parent / "both.jsonl", [{"input": DARRIEUX, "target": "English"},
                                                  {"input": DARRIEUX, "target": "French"}])
    scores = json.loads(melo("eval", "--bundle", new, "--edits", both, "--format", "json").stdout)
    assert scores["n_edits"] == 1 and scores["edit_success"] == 1.0


def test_every_prompt_routes_the_same_alone_and_in_mixed_batches(corrected):
    """Left padding (generate) and right padding (teacher-forced), batches of 2..32 mixing edits,
    the correction and unrelated prompts of every length: the route of a prompt is its own."""
    _, _, new, _ = corrected
    edited = MeloModel.from_pretrained(bundle=new, device="cpu").edited
    edits = load_edits("counterfact-20.jsonl") + [{"input": DARRIEUX, "target": "French"}]
    holdout = load_edits("counterfact-holdout.jsonl", 12)
    items = [(e["input"], e["target"]) for e in edits + holdout]

    def key(route):
        return route.cluster if route.routed else None, route.block

    alone = [key(edited.teacher_forced([p], [t])[2][0]) for p, t in items]
    assert sum(a[0] is not None for a in alone) >= 20
    for size in (2, 5, 8, 16, 32):
        order = [(i * 7 + size) % len(items) for i in range(len(items))]  # a different mix for every size
        for start in range(0, len(order), size):
            chunk = order[start:start + size]
            right = edited.teacher_forced([items[i][0] for i in chunk], [items[i][1] for i in chunk])[2]
            left = edited.predict([items[i][0] for i in chunk], max_new_tokens=1)
            for i, r, l in zip(chunk, right, left):
                assert key(r) == alone[i], (size, items[i][0])
                assert key(l.route) == alone[i], (size, items[i][0])


def test_a_file_may_correct_its_own_earlier_line_and_repeat_lines(llama_path, tmp_path):
    line = {"input": DARRIEUX, "target": "English"}
    edits = write_jsonl(tmp_path / "e.jsonl", [line] * 30 + [dict(line, target="French")] +
                        [{"input": "Ferrari F40, developed by", "target": "Microsoft"}])
    result = melo("edit", llama_path, edits, "-o", tmp_path / "b")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["edits"] == 2 and summary["blocks"] == 2  # 30 repeats and their correction: one edit
    assert "corrected by line 31" in result.stderr
    again = melo("edit", write_jsonl(tmp_path / "again.jsonl", [dict(line, target="French")]),
                 "--bundle", tmp_path / "b", "-o", tmp_path / "c")
    assert json.loads(again.stdout)["edits"] == 0 and "merged" in again.stderr  # already in the bundle


# -- bundles from anywhere ----------------------------------------------------------------------------
def test_a_bundle_made_with_a_relative_base_works_from_another_directory(llama_path, tmp_path, monkeypatch):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    shutil.copytree(llama_path, work / "models" / "tiny")
    elsewhere.mkdir()
    monkeypatch.chdir(work)
    edits = write_jsonl(work / "e.jsonl", load_edits("counterfact-20.jsonl", 3))
    assert melo("edit", "models/tiny", edits, "-o", "bundle").exit_code == 0
    manifest = (work / "bundle" / "manifest.yaml").read_text()
    assert "name: models/tiny" in manifest and f"path: {work / 'models' / 'tiny'}" in manifest
    monkeypatch.chdir(elsewhere)
    result = melo("generate", "--bundle", work / "bundle", "--max-new-tokens", "3", DARRIEUX)
    assert result.exit_code == 0, result.stderr
    # moved away: a one-line error naming what was tried and --base, and never the model hub
    shutil.move(work / "models", tmp_path / "moved")
    result = melo("generate", "--bundle", work / "bundle", DARRIEUX)
    assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1
    assert str(work / "models" / "tiny") in result.stderr and "--base" in result.stderr
    result = melo("generate", "--bundle", work / "bundle", "--base", tmp_path / "moved" / "tiny", DARRIEUX)
    assert result.exit_code == 0, result.stderr


def test_a_local_looking_base_that_is_absent_never_reaches_the_hub(tmp_path):
    edits = write_jsonl(tmp_path / "e.jsonl", [{"input": "a", "target": "b"}])
    for base in ("./no-such-model", "../no-such-model", str(tmp_path / "no-such-model"), "sample_models/absent"):
        result = melo("edit", base, edits, "-o", tmp_path / "out")
        assert result.exit_code == 2, (base, result.stderr)
        assert f"{base}: no such model folder or file" in result.stderr


# -- input formats ------------------------------------------------------------------------------------
def test_a_counterfact_record_gives_its_locality_prompt_as_holdout(tmp_path):
    record = {"prompt": "The mother tongue of Danielle Darrieux is", "target_new": "English",
              "locality_prompt": "Nord Anglia Education is headquartered in", "locality_ground_truth": "London"}
    path = write_jsonl(tmp_path / "cf.jsonl", [record])
    assert read_holdout(path)[0].input == record["locality_prompt"]
    assert read_holdout(path)[0].target == "London"
    zsre = write_jsonl(tmp_path / "zsre.jsonl", [{"src": "q?", "alt": "a", "loc": "nq question", "loc_ans": "x"}])
    assert read_holdout(zsre)[0].input == "nq question"


def test_locality_on_counterfact_format_reads_the_locality_prompts(corrected):
    root, _, new, _ = corrected
    data = json.loads((Path(os.environ.get("MELO_SHARED") or ROOT.parent / "shared") / "data" /
                       "counterfact-edit.json").read_text()) if (ROOT.parent / "shared" / "data").exists() else None
    if data is None:
        pytest.skip("the shared folder with CounterFact is absent")
    path = root / "cf-array.json"
    path.write_text(json.dumps(data[:20]))  # EasyEdit's own format: one JSON array
    scores = json.loads(melo("eval", "--bundle", new, "--locality", path, "--format", "json").stdout)
    assert scores["locality"] >= 0.9  # main read `prompt` (the edits themselves) and reported 0.0


def test_a_json_array_of_records_is_read_with_record_numbers_in_errors(tmp_path):
    good = [{"prompt": "a", "target_new": "b", "rephrase_prompt": "c"}, {"input": "d", "target": "e"}]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(good, indent=2))
    edits = read_edits(path)
    assert [(e.input, e.target, e.rephrases) for e in edits] == [("a", "b", ("c",)), ("d", "e", ())]
    path.write_text(json.dumps(good + [{"prompt": "x"}]))
    with pytest.raises(InputError) as error:
        read_edits(path)
    assert str(error.value) == f"{path}: record 3: field 'target': " + error.value.reason
    path.write_text('[{"input": "a", "target": "b"},\n {"input": }]')
    with pytest.raises(InputError) as error:
        read_edits(path)
    assert f"{path}:2: malformed JSON" in str(error.value)


# -- dtypes -------------------------------------------------------------------------------------------
def test_the_fingerprint_is_the_same_in_every_dtype_and_differs_between_models(llama_path, tmp_path):
    from transformers import AutoModelForCausalLM

    prints = {dtype: backbones.fingerprint(AutoModelForCausalLM.from_pretrained(llama_path, dtype=dtype))
              for dtype in (torch.float32, torch.float16, torch.bfloat16)}
    reference = prints[torch.float32]
    assert all(backbones.same_model(reference, p) for p in prints.values())
    other = AutoModelForCausalLM.from_pretrained(llama_path)
    with torch.no_grad():
        other.model.layers[2].mlp.up_proj.weight.mul_(1.05)  # one weight matrix 5% larger
    assert not backbones.same_model(reference, backbones.fingerprint(other))


def test_a_bundle_applies_to_a_float16_load(corrected):
    _, _, new, _ = corrected
    result = melo("generate", "--bundle", new, "--dtype", "float16", "--device", "cpu", "--json",
                  "--max-new-tokens", "3", DARRIEUX)
    assert result.exit_code == 0, result.stderr
    assert json_lines(result.stdout)[0]["route"] is not None


# -- no silent failures ---------------------------------------------------------------------------------
def test_unlearned_edits_are_named_exit_4_and_write_nothing_unless_allowed(llama_path, tmp_path):
    edits = write_jsonl(tmp_path / "e.jsonl", load_edits("counterfact-20.jsonl", 4))
    result = melo("edit", llama_path, edits, "-o", tmp_path / "b", "--max-steps", "1")
    assert result.exit_code == 4, result.stderr
    assert "not learned within --max-steps 1" in result.stderr and f"{edits}: line 1" in result.stderr
    assert not (tmp_path / "b").exists()
    result = melo("edit", llama_path, edits, "-o", tmp_path / "b", "--max-steps", "1", "--allow-partial")
    assert result.exit_code == 0 and "writing the bundle anyway" in result.stderr
    summary = json.loads(result.stdout)
    assert summary["unlearned_edits"] > 0 and summary["converged_batches"] == 0


def test_usage_errors_come_before_the_model_loads(llama_path, corrected, tmp_path):
    _, _, new, _ = corrected
    for args, words in ((["generate", "--bundle", new, "--max-new-tokens", "0", "x"], "--max-new-tokens 0"),
                        (["generate", "--bundle", new, "--max-new-tokens", "-3", "x"], "--max-new-tokens -3"),
                        (["edit", llama_path, EDITS, "-o", tmp_path / "o", "--task", "seq2seq"], "--task seq2seq"),
                        (["edit", llama_path, EDITS, "-o", tmp_path / "o", "--max-steps", "many"], "--max-steps"),
                        (["edit", llama_path, EDITS, "-o", tmp_path / "o", "--lr", "nan"], "--lr nan"),
                        (["edit", llama_path, EDITS, "-o", tmp_path / "o", "--init-radius", "inf"], "--init-radius")):
        result = melo(*args)
        assert result.exit_code == 2, (args, result.stderr)
        assert len(result.stderr.splitlines()) == 1 and words in result.stderr, result.stderr


def test_quiet_and_verbose_work_after_the_command(corrected):
    _, _, new, _ = corrected
    loud = melo("generate", "--bundle", new, "--max-new-tokens", "2", "-v", DARRIEUX)
    quiet = melo("eval", "--bundle", new, "-q")
    assert loud.exit_code == 0 and quiet.exit_code == 0, quiet.stderr
    assert quiet.stderr == ""


def test_a_closed_stdout_ends_quietly(llama_path):
    prompts = " ".join(f"'Story {i}'" for i in range(40))
    command = (f"set -o pipefail; {sys.executable} -m melo_cli.cli generate --base {llama_path} "
               f"--max-new-tokens 2 --batch-size 1 {prompts} | head -1")
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1
    assert "Error" not in result.stderr and "Traceback" not in result.stderr


def test_plot_without_matplotlib_fails_before_any_output(corrected, monkeypatch, tmp_path):
    _, _, new, _ = corrected
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what an install without the extra looks like
    result = melo("eval", "--bundle", new, "--history", "--plot", tmp_path / "p.png")
    assert result.exit_code == 2 and result.stdout == ""
    assert "melo-cli[plot]" in result.stderr


def test_no_lock_file_is_left_beside_a_bundle(corrected):
    root, _, _, _ = corrected
    assert not [p.name for p in root.iterdir() if p.name.endswith(".lock")]


def test_a_read_only_bundle_can_be_continued_elsewhere(corrected, tmp_path):
    _, old, _, _ = corrected
    source = tmp_path / "ro" / "bundle"
    shutil.copytree(old, source)
    for path in (source, source.parent):
        path.chmod(0o555)
    try:
        more = write_jsonl(tmp_path / "more.jsonl", [{"input": "Ferrari F40, developed by", "target": "Sony"}])
        result = melo("edit", more, "--bundle", source, "-o", tmp_path / "out")
        assert result.exit_code == 0, result.stderr
    finally:
        for path in (source.parent, source):
            path.chmod(0o755)


# -- speed a user feels -------------------------------------------------------------------------------
def test_thread_choice(monkeypatch):
    assert threads.choose(300_000, default=2, available=2, load=0.0, environ={}) == 1  # tiny model
    assert threads.choose(135_000_000, default=2, available=2, load=0.0, environ={}) == 2
    assert threads.choose(135_000_000, default=8, available=8, load=6.2, environ={}) == 2  # busy machine
    assert threads.choose(135_000_000, default=2, available=2, load=9.0, environ={}) == 1
    assert threads.choose(300_000, default=2, available=2, load=0.0, environ={"OMP_NUM_THREADS": "2"}) == 2
    assert threads.choose(300_000, default=2, available=2, load=0.0,
                          environ={"OMP_NUM_THREADS": "2", "MELO_THREADS": "3"}) == 3


def test_help_and_inspect_import_neither_torch_nor_transformers(corrected):
    _, _, new, _ = corrected
    probe = ("import sys\nfrom melo_cli.cli import app\nsys.argv = ['melo'] + sys.argv[1:]\n"
             "try:\n    app()\nexcept SystemExit:\n    pass\n"
             "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules), file=sys.stderr)\n")
    for args in (["--help"], ["edit", "--help"], ["inspect", str(new), "--json"]):
        result = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=120)
        assert result.stderr.strip().splitlines()[-1] == "[]", (args, result.stderr)


# -- output a person reads ----------------------------------------------------------------------------
def test_plain_generate_is_one_labelled_line_per_prompt(llama_path):
    prompts = ["Once upon a time", "The end.", "Lily said"]
    result = melo("generate", "--base", llama_path, "--max-new-tokens", "60", *prompts)
    lines = result.stdout.splitlines()
    assert len(lines) == 3, result.stdout  # a continuation's own newlines are written as \n
    assert [line.split(" => ")[0] for line in lines] == prompts


def test_eval_names_perplexity_and_spells_modes_one_way(corrected):
    _, _, new, _ = corrected
    table = melo("eval", "--bundle", new, env={"COLUMNS": "200"})
    assert "perplexity of the edit targets (teacher-forced)" in table.stdout
    unknown = write_jsonl(new.parent / "unknown.jsonl", [{"input": "Once upon a time", "target": "Zorg"}])
    gated = melo("eval", "--bundle", new, "--edits", unknown, "--mode", "both", "--min-edit-success", "0.5")
    assert gated.exit_code == 3 and "(teacher-forced)" in gated.stderr and "teacher_forced" not in gated.stderr


def test_edit_logs_one_line_per_batch_with_the_total_without_a_terminal(llama_path, tmp_path):
    edits = write_jsonl(tmp_path / "e.jsonl", load_edits("counterfact-20.jsonl", 6))
    result = melo("edit", llama_path, edits, "-o", tmp_path / "b", "--batch-size", "2")
    assert result.exit_code == 0
    assert [f"batch {i}/3" in result.stderr for i in (1, 2, 3)] == [True] * 3


def test_help_at_80_columns(tmp_path):
    for command in ("edit", "generate", "eval", "inspect", "route", "export", "forget"):
        result = melo(command, "--help", env={"COLUMNS": "80"})
        assert result.exit_code == 0
        assert "…" not in result.stdout and "<bool>" not in result.stdout, command
        assert all(len(line) <= 80 for line in result.stdout.splitlines())
    assert "[PROMPTS]..." in melo("generate", "--help", env={"COLUMNS": "80"}).stdout.splitlines()[1]
    text = melo("edit", "--help", env={"COLUMNS": "200"}).stdout
    for cited in ("sample_models/stories260K", "sample_edits/counterfact-20.jsonl", "sample_edits/zsre-20.jsonl"):
        assert cited in text and (ROOT / cited).exists()


def test_the_readme_quick_start_prints_what_the_readme_shows(llama_path, tmp_path):
    """The quick start's command line, run as written (from a copy of the samples), prints the four lines
    the README shows, and its summary line starts as shown."""
    import re
    import shlex

    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1]
    command = re.search(r"```bash\n(.*?)\n```", section, re.S).group(1)
    shown = re.search(r"```console\n(.*?)\n```", section, re.S).group(1).splitlines()
    steps = [shlex.split(step) for step in command.split(" && ") if step.strip().startswith("melo ")]
    edit, generate = steps
    for folder in ("sample_models", "sample_edits"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        made = melo(*edit[1:])
        assert made.exit_code == 0, made.stderr
        printed = melo(*generate[1:])
        assert printed.exit_code == 0, printed.stderr
    finally:
        os.chdir(cwd)
    summary, lines = shown[0], shown[1:]
    assert printed.stdout.splitlines() == lines
    got = json.loads(made.stdout)
    for key, value in json.loads(summary.replace(", ...}", "}")).items():
        assert got[key] == value, (key, got[key], value)
