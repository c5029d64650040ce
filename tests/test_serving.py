"""Serving a bundle: export to peft adapters (checked with the real peft package), route without
generating, forget edits, prompts as JSONL, inspect --edits. The journey: edit 10 facts, forget 3,
export, route, generate from JSONL with multi-line prompts."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import load_edits
from helpers import json_lines, melo, tree_digest, write_jsonl
from melo_cli import MeloModel, bundle as bundle_io

UNRELATED = ["Once upon a time", "Lily went to the park"]


@pytest.fixture(scope="module")
def journey(llama_path, tmp_path_factory):
    """Edit 10 facts (base-model keys, one block per edit), then forget 3 of them by id."""
    root = tmp_path_factory.mktemp("serving")
    facts = load_edits("counterfact-20.jsonl", 10)
    edited = root / "edited"
    result = melo("edit", llama_path, write_jsonl(root / "e.jsonl", facts), "-o", edited, "--key-source", "base",
                  "--batch-size", "5")
    assert result.exit_code == 0, result.stderr
    gone = [facts[i]["id"] for i in (1, 4, 7)]
    forgotten = root / "forgotten"
    result = melo("forget", edited, "-o", forgotten, *[a for i in gone for a in ("--id", i)])
    assert result.exit_code == 0, result.stderr
    return {"root": root, "facts": facts, "gone": gone, "edited": edited, "forgotten": forgotten,
            "summary": json.loads(result.stdout)}


def _generate(bundle_or_base, prompts, bundle=True):
    where = ["--bundle", bundle_or_base] if bundle else ["--base", bundle_or_base]
    result = melo("generate", *where, "--json", "--max-new-tokens", "12", *prompts)
    assert result.exit_code == 0, result.stderr
    return [r["text"] for r in json_lines(result.stdout)]


# -- forget --------------------------------------------------------------------------------------------
def test_forgotten_inputs_get_the_base_output_and_the_rest_keep_their_edits(journey, llama_path):
    facts, gone = journey["facts"], set(journey["gone"])
    kept = [f for f in facts if f["id"] not in gone]
    lost = [f for f in facts if f["id"] in gone]
    bare = _generate(llama_path, [f["input"] for f in lost] + UNRELATED, bundle=False)
    after = _generate(journey["forgotten"], [f["input"] for f in lost] + UNRELATED)
    assert after == bare  # bit for bit: the forgotten inputs route to no block
    before = _generate(journey["edited"], [f["input"] for f in lost])
    assert any(b != a for b, a in zip(before, bare[:len(lost)]))  # they were edited before
    texts = _generate(journey["forgotten"], [f["input"] for f in kept])
    assert all(t.strip().startswith(f["target"]) for t, f in zip(texts, kept)), texts


def test_forget_zeroes_only_the_blocks_no_edit_uses(journey):
    old, new = bundle_io.load(journey["edited"]), bundle_io.load(journey["forgotten"])
    zeroed = set(journey["summary"]["blocks_zeroed"])
    assert len(zeroed) == 3
    for name, array in old.lora.items():
        for block in range(array.shape[0]):
            if block in zeroed:
                assert not new.lora[name][block].any() and array[block].any()
            else:
                assert new.lora[name][block].tobytes() == array[block].tobytes()


def test_forget_is_recorded_in_the_edits_and_the_history(journey):
    loaded = bundle_io.load(journey["forgotten"])
    marked = [e.id for e in loaded.edits if e.forgotten is not None]
    assert marked == journey["gone"] and all("at" in e.forgotten for e in loaded.edits if e.forgotten is not None)
    assert loaded.history[-1]["event"] == "forget" and loaded.history[-1]["edits"] == journey["gone"]
    assert loaded.manifest.counts["live_edits"] == 7
    scores = json.loads(melo("eval", "--bundle", journey["forgotten"], "--format", "json").stdout)
    assert scores["n_edits"] == 7 and scores["edit_success"] == 1.0
    history = melo("eval", "--bundle", journey["forgotten"], "--history", "--format", "json")
    assert json_lines(history.stdout)[-1]["event"] == "forget"


def test_forget_by_batch_and_bad_names(journey, tmp_path):
    result = melo("forget", journey["edited"], "-o", tmp_path / "b", "--batch", "1")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["forgotten"] == 5
    for args, word in ((["--id", "nope"], "nope"), (["--id", journey["gone"][0]], "already forgotten"), ([], "--id")):
        source = journey["forgotten"] if word == "already forgotten" else journey["edited"]
        before = tree_digest(source)
        result = melo("forget", source, "-o", tmp_path / f"x{len(args)}", *args)
        assert result.exit_code == 2 and word in result.stderr, result.stderr
        assert tree_digest(source) == before


def test_inspect_edits_lists_each_edit_and_whether_it_routes_home(journey):
    result = melo("inspect", journey["forgotten"], "--edits", "--json")
    assert result.exit_code == 0, result.stderr
    rows = json_lines(result.stdout)
    assert len(rows) == 10
    for row in rows:
        if row["id"] in journey["gone"]:
            assert row["status"] == "forgotten" and row["cluster"] is None
        else:
            assert row["status"] == "live" and row["routes_to_own_cluster"] is True and row["block"] is not None
    assert melo("inspect", journey["forgotten"], "--edits").exit_code == 0


# -- route and JSONL prompts -----------------------------------------------------------------------------
def test_route_names_the_block_generation_uses_and_null_for_the_rest(journey):
    facts = [f for f in journey["facts"] if f["id"] not in journey["gone"]][:3]
    prompts = write_jsonl(journey["root"] / "p.jsonl", [{"prompt": f["input"], "id": f["id"]} for f in facts] +
                          [{"prompt": "Once upon\na time", "id": 99}])
    routed = melo("route", "--bundle", journey["forgotten"], "--input", prompts)
    assert routed.exit_code == 0, routed.stderr
    routes = json_lines(routed.stdout)
    generated = json_lines(melo("generate", "--bundle", journey["forgotten"], "--input", prompts, "--json",
                                "--max-new-tokens", "4").stdout)
    assert [r["id"] for r in routes] == [f["id"] for f in facts] + [99] == [g["id"] for g in generated]
    assert routes[-1]["route"] is None and routes[-1]["prompt"] == "Once upon\na time"
    for r, g, f in zip(routes, generated, facts):
        assert r["route"]["block"] == g["route"]["block"] and r["route"]["adapter"] == f"block-{g['route']['block']}"
        assert r["route"]["label"] == f["target"]


def test_jsonl_prompt_errors_name_the_line(journey, tmp_path):
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"id": 3}\n')
    result = melo("generate", "--bundle", journey["forgotten"], "--input", bad)
    assert result.exit_code == 2 and "p.jsonl:2: field 'prompt'" in result.stderr
    result = melo("route", "--bundle", journey["forgotten"], "--input", bad, "also a prompt")
    assert result.exit_code == 2 and "not both" in result.stderr


# -- export to peft ------------------------------------------------------------------------------------
def _melo_and_peft_logits(base_path, bundle, export_dir, prompt):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = MeloModel.from_pretrained(bundle=bundle, device="cpu")
    block = model.route([prompt])[0].block
    assert block >= 0
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    ids = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad(), model.edited.with_blocks(torch.tensor([block])):
        ours = model.model(**ids).logits
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    with torch.no_grad():
        plain = base(**ids).logits
        served = peft.PeftModel.from_pretrained(base, export_dir / f"block-{block}")(**ids).logits
    return ours, served, plain


def test_an_exported_adapter_gives_melos_logits_with_peft(journey, llama_path):
    out = journey["root"] / "export"
    result = melo("export", journey["forgotten"], "-o", out)
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    table = json.loads((out / "routing.json").read_text())
    loaded = bundle_io.load(journey["forgotten"])
    live_blocks = {int(loaded.router.blocks[loaded.router.cluster_of(n)]) for n, e in enumerate(loaded.edits) if e.live}
    assert summary["adapters"] == len({c["adapter"] for c in table["clusters"]}) == len(live_blocks) >= 6
    assert sorted(p.name for p in out.iterdir()) == sorted([f"block-{b}" for b in live_blocks] + ["routing.json"])
    config = json.loads((out / table["clusters"][0]["adapter"] / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["target_modules"] == loaded.config.lora_layers
    fact = next(f for f in journey["facts"] if f["id"] not in journey["gone"])
    ours, served, plain = _melo_and_peft_logits(llama_path, journey["forgotten"], out, fact["input"])
    assert torch.allclose(served, ours, rtol=1e-5, atol=1e-5) and not torch.allclose(served, plain, atol=1e-3)


def test_an_exported_gpt2_adapter_matches_too(gpt2_path, tmp_path):
    """GPT-2's Conv1D layers store weights in x out: peft's fan_in_fan_out path."""
    facts = load_edits("counterfact-20.jsonl", 2)
    bundle = tmp_path / "b"
    result = melo("edit", gpt2_path, write_jsonl(tmp_path / "e.jsonl", facts), "-o", bundle, "--key-source", "base")
    assert result.exit_code == 0, result.stderr
    assert melo("export", bundle, "-o", tmp_path / "x").exit_code == 0
    config = json.loads(next((tmp_path / "x").glob("block-*/adapter_config.json")).read_text())
    assert config["fan_in_fan_out"] is True
    ours, served, plain = _melo_and_peft_logits(gpt2_path, bundle, tmp_path / "x", facts[0]["input"])
    assert torch.allclose(served, ours, rtol=1e-5, atol=1e-5) and not torch.allclose(served, plain, atol=1e-4)


def test_export_refuses_to_replace_what_it_did_not_write(journey, tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    result = melo("export", journey["forgotten"], "-o", tmp_path / "x", "--overwrite")
    assert result.exit_code == 2 and (tmp_path / "x" / "keep.txt").exists()


# -- generation options --------------------------------------------------------------------------------
def test_sampling_is_repeatable_with_a_seed_and_greedy_by_default(journey):
    args = ["generate", "--bundle", journey["forgotten"], "--json", "--max-new-tokens", "16", "Once upon a time"]
    greedy = json_lines(melo(*args).stdout)[0]["text"]
    assert json_lines(melo(*args, "--temperature", "0").stdout)[0]["text"] == greedy
    first = json_lines(melo(*args, "--temperature", "1.5", "--seed", "3").stdout)[0]["text"]
    assert json_lines(melo(*args, "--temperature", "1.5", "--seed", "3").stdout)[0]["text"] == first
    draws = {json_lines(melo(*args, "--temperature", "1.5", "--seed", str(s)).stdout)[0]["text"] for s in range(4)}
    assert len(draws) > 1
    for bad in (["--temperature", "-1"], ["--top-p", "0"], ["--seed", "-2"], ["--system", "hi"], ["--chat"]):
        result = melo(*args, *bad)
        assert result.exit_code == 2 and result.stderr.strip().startswith("melo: error: "), (bad, result.stderr)


def test_chat_routes_on_the_prompt_as_written(journey, llama_path, tmp_path):
    """A tokenizer with a chat template: the model sees the template, the router the user's prompt."""
    import shutil

    base = tmp_path / "chatty"
    shutil.copytree(llama_path, base)
    config = json.loads((base / "tokenizer_config.json").read_text())
    config["chat_template"] = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
                               "{% if add_generation_prompt %}[assistant] {% endif %}")
    (base / "tokenizer_config.json").write_text(json.dumps(config))
    fact = next(f for f in journey["facts"] if f["id"] not in journey["gone"])
    args = ["generate", "--bundle", journey["forgotten"], "--base", base, "--json", fact["input"]]
    plain = json_lines(melo(*args).stdout)[0]
    chat = melo(*args, "--chat", "--system", "Be brief.")
    assert chat.exit_code == 0, chat.stderr
    chatted = json_lines(chat.stdout)[0]
    assert chatted["route"] == plain["route"] and chatted["route"] is not None


def test_forget_waits_for_the_lock_like_edit(journey, tmp_path):
    import shutil

    from melo_cli.bundle.locks import bundle_lock

    bundle = tmp_path / "b"
    shutil.copytree(journey["edited"], bundle)
    before = tree_digest(bundle)
    with bundle_lock(bundle):
        result = melo("forget", bundle, "-o", bundle, "--id", journey["gone"][0])
    assert result.exit_code == 75 and tree_digest(bundle) == before
    result = melo("forget", bundle, "-o", bundle, "--id", journey["gone"][0])
    assert result.exit_code == 0 and [p.name for p in tmp_path.iterdir()] == ["b"]


def test_a_template_that_writes_bos_gets_one_bos(llama_path):
    from transformers import AutoTokenizer

    from melo_cli.model.generation import apply_chat

    tokenizer = AutoTokenizer.from_pretrained(llama_path)
    tokenizer.chat_template = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    (text,) = apply_chat(tokenizer, ["Once upon a time"], None)
    ids = tokenizer(text).input_ids
    assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id


@pytest.mark.parametrize("kind", ["t5", "bert"])
def test_exported_seq2seq_and_classifier_adapters_match_with_peft(kind, t5_paths, bert_path, tmp_path):
    """T5 (LoRA in the decoder, task SEQ_2_SEQ_LM) and BERT (SEQ_CLS, whose classifier peft keeps as is)."""
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForSeq2SeqLM, AutoModelForSequenceClassification, AutoTokenizer

    base = t5_paths["relu"] if kind == "t5" else bert_path
    sample = "counterfact-20.jsonl" if kind == "t5" else "classification-20.jsonl"
    facts = load_edits(sample, 2)
    bundle = tmp_path / "b"
    result = melo("edit", base, write_jsonl(tmp_path / "e.jsonl", facts), "-o", bundle, "--key-source", "base",
                  "--allow-partial")
    assert result.exit_code == 0, result.stderr
    assert melo("export", bundle, "-o", tmp_path / "x").exit_code == 0
    model = MeloModel.from_pretrained(bundle=bundle, device="cpu")
    block = model.route([facts[0]["input"]])[0].block
    assert block >= 0
    ids = dict(AutoTokenizer.from_pretrained(base)(facts[0]["input"], return_tensors="pt"))
    if kind == "t5":
        ids["decoder_input_ids"] = torch.tensor([[0, 5, 7]])
    with torch.no_grad(), model.edited.with_blocks(torch.tensor([block])):
        ours = model.model(**ids).logits
    auto = AutoModelForSeq2SeqLM if kind == "t5" else AutoModelForSequenceClassification
    plain_model = auto.from_pretrained(base, dtype=torch.float32)
    with torch.no_grad():
        plain = plain_model(**ids).logits
        served = peft.PeftModel.from_pretrained(plain_model, tmp_path / "x" / f"block-{block}")(**ids).logits
    assert torch.allclose(served, ours, rtol=1e-5, atol=1e-5) and not torch.equal(served, plain)
