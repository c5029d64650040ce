"""Sequential editing of N CounterFact or zsRE records: melo vs a GRACE-style codebook vs plain LoRA
fine-tuning, on the same model, data, order, seed and machine, in one run.

    python benchmarks/editing.py --model smollm2                  # SmolLM2-135M, CounterFact N=100
    python benchmarks/editing.py --model smollm2 --n 1000 --editors melo,melo-paper
    python benchmarks/editing.py --model gemma3-270m --dataset zsre
    python benchmarks/editing.py                                  # the tiny Llama (stories260K)

Editors: melo (the defaults of `melo edit`, run through the Python API: MiniLM keys with the subject gate, a block per edit that
also learns generic contexts), melo-paper (the MELO paper's layout: base-model keys, the split rule, a
block per batch), grace-style, lora-ft. Models come from benchmarks/models.py (the package registry).

Metrics (see melo_cli/eval/metrics.py for the definitions): edit success (ES) on the edits, generality on
CounterFact's rephrase_prompt, locality on its locality_prompt (output identical to the unedited
model), each teacher-forced (TF) and under greedy generation (gen); wall seconds per edit, training
steps per batch, trainable parameters and saved bytes per edit. Rephrases and locality prompts are
never trained on and never set a radius.

The GRACE-style editor is ours, for comparison only (after Hartvigsen et al., NeurIPS 2023): one layer
(the MLP down-projection of block 3, the lowest layer melo puts LoRA on); key = that layer's input at
the last prompt token; a codebook of (key, value vector, radius); within a radius the value replaces the
layer's output from the last prompt token on. Rules: a key farther than r + r0 adds an entry; the same
label within reach expands the radius; another label splits both radii to d/2. Its r0 uses melo's auto
rule (half the median nearest-neighbour distance of its keys), so both routers start on equal terms.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from melo_cli import MeloConfig, MeloModel, tasks
from melo_cli.model import backbones
from melo_cli.model import layers
from melo_cli.model import prefix  # noqa: E402
from melo_cli.model.edited_model import EditedModel  # noqa: E402
from melo_cli.eval.metrics import produces  # noqa: E402
from melo_cli.router import auto_radius  # noqa: E402

MAX_STEPS, LOSS_THRESHOLD = 100, 0.05


MODEL = str(common.LLAMA)
"""The base model of this run (set from --model in main)."""

PAPER = {"key_source": "base", "block_per": "batch", "entities": "off"}
"""melo-paper: the MELO paper's layout (base-model keys and the split rule follow from key_source=base; no
entity check, which the paper does not have)."""
SHARED = {"block_per": "batch"}
"""melo-shared: the defaults without subject fields, but one block shared by a batch's edits (issue 25's block
sharing: a tenth of the parameters per edit at batch size 10)."""
EDITORS = {"melo": {}, "melo-nosubj": {}, "melo-shared": SHARED, "melo-paper": PAPER, "grace-style": None,
           "lora-ft": None}
"""melo: the defaults with the records' subject fields; melo-nosubj: the defaults without them (what a user
without a `subject` field gets: the entity found in each input)."""


def train_until_done(params, loss_and_hits, lr: float) -> int:
    """The shared stop rule: every target token is the argmax and the loss is under the threshold.
    loss_and_hits(step number) -> (loss per row, hit per row)."""
    optimizer = torch.optim.Adam(params, lr=lr)
    for step in range(MAX_STEPS + 1):
        loss_rows, hits = loss_and_hits(step)
        loss = loss_rows.mean()
        if (bool(hits.all()) and float(loss.detach()) < LOSS_THRESHOLD) or step == MAX_STEPS:
            return step
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return MAX_STEPS


def scored_steps(backbone, enc, trained_layers: list[str], forward):
    """loss_and_hits for a baseline, with melo's own exact cost work: the frozen blocks below
    `trained_layers` run once per batch (melo_cli/model/prefix.py, checked bit for bit against a full pass)
    and the head computes logits only where targets are scored. A baseline's seconds per edit then
    measure its method, not work melo skips. forward(model inputs) -> logits."""
    model_inputs, targets, aligned = tasks.narrowed(backbone, enc)
    rows = tasks.rows_of(enc) if aligned else None
    step = prefix.train_steps(prefix.frozen_prefix(backbone.model, trained_layers), lambda: forward(model_inputs))
    return lambda number: tasks.score(backbone, step(number), targets, aligned, rows)


def scored_hits(backbone, inputs, targets, forward, enc=None) -> list[bool]:
    """Teacher-forced hits with logits only where targets are scored (a 262k vocabulary at every
    position made scoring, not editing, most of a Gemma run). forward(model inputs) -> logits."""
    enc = enc if enc is not None else tasks.encode(backbone, inputs, targets)
    kwargs, scored, aligned = tasks.narrowed(backbone, enc)
    _, hits = tasks.score(backbone, forward(kwargs), scored, aligned, tasks.rows_of(enc) if aligned else None)
    return [bool(h) for h in hits.tolist()]


# -- the three editors, behind one small interface ---------------------------------------------------
class MeloEditor:
    """melo through its Python API (melo_cli.MeloModel), as a user would run it: one edit call over the
    whole file with batches of --batch-size (so the auto radius sees every edit, as `melo edit` does),
    scored at the checkpoints from the batch callback; scoring time is not counted as editing time."""

    name = "melo"

    def __init__(self, device: str, name: str = "melo", subjects: bool = True, **settings):
        self.name, self.subjects = name, subjects
        self.model = MeloModel.from_pretrained(MODEL, device=device, **settings)
        self.backbone = self.model.edited.backbone
        self.edited = self.model.edited

    def edit_all(self, batches: list[list[dict]], checkpoint) -> tuple[list[int], float]:
        """(steps per batch, editing seconds); checkpoint(batches done) runs after every batch."""
        records = [{"input": e["input"], "target": e["target"], **({"subject": e["subject"]} if self.subjects else {})}
                   for batch in batches for e in batch]
        steps, scoring = [], [0.0]

        def on_batch(report) -> None:
            steps.append(report.steps)
            started = time.perf_counter()
            checkpoint(report.batch + 1)
            scoring[0] += time.perf_counter() - started

        started = time.perf_counter()
        self.model.edit(records, batch_size=len(batches[0]), on_batch=on_batch, allow_partial=True)
        return steps, time.perf_counter() - started - scoring[0]

    def logits(self, inputs, targets):
        enc, logits, _ = self.edited.teacher_forced(inputs, targets)
        return enc, logits

    def hits(self, inputs, targets) -> list[bool]:
        return [bool(h) for h in self.edited.target_scores(inputs, targets).hits.tolist()]

    def generate(self, inputs, n):
        return self.model.generate(inputs, max_new_tokens=max(n, 1))

    def trainable_per_batch(self) -> int:
        return sum(layer.rank * (layer.in_features + layer.out_features) for layer in self.edited.layers.values())

    def saved_bytes(self) -> int:
        with tempfile.TemporaryDirectory() as tmp:
            out = self.model.save_pretrained(Path(tmp) / "bundle")
            return sum(p.stat().st_size for p in out.iterdir())


class LoraFinetune:
    """Plain LoRA on melo's layers: one rank-8 adapter, always on, trained batch after batch."""

    name = "lora-ft"

    def __init__(self, device: str, rank: int = 8):
        self.backbone = backbones.load(MODEL, device=device)
        model = self.backbone.model
        lora = layers.default_lora_layers(model, "causal-lm", top_blocks=2, which="all")  # the layout of its results
        config = MeloConfig(task="causal-lm", lora_layers=lora, key_layer=layers.default_key_layer(model, lora),
                            rank_per_block=rank, alpha=2.0 * rank, block_per="batch", contexts=0, block_dtype="float32")
        self.edited = EditedModel(self.backbone, config)
        self.layer_names = lora
        generator = torch.Generator().manual_seed(0)
        self.params = [p for layer in self.edited.layers.values() for p in layer.start_block(0, generator)]

    def _on(self, n: int):
        return self.edited.with_blocks(torch.zeros(n, dtype=torch.long, device=self.backbone.device))

    def edit(self, batch: list[dict]) -> int:
        enc = tasks.encode(self.backbone, [e["input"] for e in batch], [e["target"] for e in batch]).to(self.backbone.device)
        scored = scored_steps(self.backbone, enc, self.layer_names, lambda inputs: self.backbone.model(**inputs).logits)

        def loss_and_hits(step: int):
            with self._on(len(batch)):
                return scored(step)
        return train_until_done(self.params, loss_and_hits, 1e-2)

    @torch.no_grad()
    def logits(self, inputs, targets):
        enc = tasks.encode(self.backbone, inputs, targets).to(self.backbone.device)
        with self._on(len(inputs)):
            return enc, self.backbone.model(**enc.inputs).logits

    @torch.no_grad()
    def hits(self, inputs, targets) -> list[bool]:
        with self._on(len(inputs)):
            return scored_hits(self.backbone, inputs, targets, lambda kwargs: self.backbone.model(**kwargs).logits)

    @torch.no_grad()
    def generate(self, inputs, n):
        enc = tasks.encode(self.backbone, inputs).to(self.backbone.device)
        with self._on(len(inputs)):
            out = self.backbone.model.generate(input_ids=enc.inputs["input_ids"], attention_mask=enc.inputs["attention_mask"],
                                               max_new_tokens=n, do_sample=False, pad_token_id=self.backbone.pad_id)
        return self.backbone.tokenizer.batch_decode(out[:, enc.inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    def trainable_per_batch(self) -> int:
        return sum(p.numel() for p in self.params)

    def saved_bytes(self) -> int:
        return sum(p.numel() * 4 for p in self.params)


class GraceStyle:
    name = "grace-style"

    def __init__(self, device: str, all_inputs: list[str]):
        self.backbone = backbones.load(MODEL, device=device)
        lora = layers.default_lora_layers(self.backbone.model, "causal-lm", top_blocks=2, which="all")  # as in its results
        stack = layers.block_stacks(self.backbone.model)[-1][0]
        lowest = min(layers.block_index(name, stack) for name in lora)
        self.layer_name = [name for name in lora if layers.block_index(name, stack) == lowest][-1]
        self.layer = dict(self.backbone.model.named_modules())[self.layer_name]
        self.keys = torch.zeros(0, self.layer.in_features)
        self.values = torch.zeros(0, self.layer.out_features)
        self.radii, self.labels = [], []
        self.state = None  # per call: (prompt lengths, chosen entry per row or -1), set by the hooks
        self.layer.register_forward_hook(self._hook)
        self.r0 = auto_radius(self._keys(all_inputs).numpy(), "euclidean")

    def _hook(self, module, args, output):
        if self.state is None:
            return output
        last, chosen, train_values = self.state
        x = args[0]
        if chosen is None:  # first forward of the call: decide from the key at the last prompt token
            keys = x[torch.arange(x.shape[0]), last].detach().float()
            chosen = torch.full((x.shape[0],), -1, dtype=torch.long)
            if len(self.radii):
                d = torch.cdist(keys.cpu(), self.keys)
                best = d.argmin(1)
                inside = d[torch.arange(len(best)), best] <= torch.tensor(self.radii)[best]
                chosen = torch.where(inside, best, chosen)
            self.state = (last, chosen, train_values)
        values = train_values if train_values is not None else self.values
        out = output.clone()
        positions = torch.arange(x.shape[1], device=x.device)
        for row in range(x.shape[0]):
            if chosen[row] >= 0:
                start = last[row] if x.shape[1] > 1 else 0
                mask = positions >= start
                out[row, mask] = values[chosen[row]].to(out.dtype)
        return out

    def _last(self, key_mask):
        positions = torch.arange(key_mask.shape[1]).expand_as(key_mask)
        return torch.where(key_mask.bool(), positions, -1).max(1).values

    @torch.no_grad()
    def _keys(self, inputs):
        """Keys in chunks, with the head on the last position only (a 262k vocabulary over 1,000 prompts
        would otherwise hold ~16 GB of logits)."""
        keys = []
        for chunk in chunks(inputs):
            enc = tasks.encode(self.backbone, chunk)
            taken = []
            handle = self.layer.register_forward_hook(lambda m, a, o: taken.append(a[0].detach()))
            self.backbone.model(**enc.inputs, logits_to_keep=1)
            handle.remove()
            keys.append(taken[0][torch.arange(len(chunk)), self._last(enc.key_mask)].float())
        return torch.cat(keys)

    def _call(self, enc, train_values=None, chosen=None, inputs=None):
        self.state = (self._last(enc.key_mask), chosen, train_values)
        try:
            return self.backbone.model(**(enc.inputs if inputs is None else inputs)).logits
        finally:
            self.state = None

    def edit(self, batch: list[dict]) -> int:
        keys = self._keys([e["input"] for e in batch])
        rows_to_train = []
        for key, e in zip(keys, batch):
            if len(self.radii):
                d = torch.cdist(key[None], self.keys)[0]
                near = int(d.argmin())
                dist = float(d[near])
            if not len(self.radii) or dist > self.radii[near] + self.r0:
                entry = self._add(key, e["target"], self.r0)
            elif self.labels[near] == e["target"]:
                self.radii[near] = max(self.radii[near], dist)  # expand
                continue
            else:
                self.radii[near] = dist / 2
                entry = self._add(key, e["target"], dist / 2)
            rows_to_train.append((entry, e))
        if not rows_to_train:
            return 0
        enc = tasks.encode(self.backbone, [e["input"] for _, e in rows_to_train], [e["target"] for _, e in rows_to_train])
        with torch.no_grad():  # init each new value with the layer's own output at the key position
            taken = []
            handle = self.layer.register_forward_hook(lambda m, a, o: taken.append(o.detach()))
            self.backbone.model(**enc.inputs)
            handle.remove()
            last = self._last(enc.key_mask)
            for row, (entry, _) in enumerate(rows_to_train):
                self.values[entry] = taken[0][row, last[row]].float()
        values = torch.nn.Parameter(self.values.clone())
        chosen = torch.tensor([entry for entry, _ in rows_to_train])
        scored = scored_steps(self.backbone, enc, [self.layer_name], lambda inputs: self._call(enc, values, chosen, inputs))
        steps = train_until_done([values], scored, 1e-1)
        with torch.no_grad():
            for entry, _ in rows_to_train:  # only the new entries change
                self.values[entry] = values[entry].detach()
        return steps

    def _add(self, key, label, radius) -> int:
        self.keys = torch.cat([self.keys, key[None]])
        self.values = torch.cat([self.values, torch.zeros(1, self.values.shape[1])])
        self.radii.append(radius)
        self.labels.append(label)
        return len(self.radii) - 1

    @torch.no_grad()
    def logits(self, inputs, targets):
        enc = tasks.encode(self.backbone, inputs, targets)
        return enc, self._call(enc)

    @torch.no_grad()
    def hits(self, inputs, targets) -> list[bool]:
        enc = tasks.encode(self.backbone, inputs, targets)
        return scored_hits(self.backbone, inputs, targets, lambda kwargs: self._call(enc, inputs=kwargs), enc)

    @torch.no_grad()
    def generate(self, inputs, n):
        enc = tasks.encode(self.backbone, inputs)
        self.state = (self._last(enc.key_mask), None, None)
        try:
            out = self.backbone.model.generate(input_ids=enc.inputs["input_ids"], attention_mask=enc.inputs["attention_mask"],
                                               max_new_tokens=n, do_sample=False, pad_token_id=self.backbone.pad_id)
        finally:
            self.state = None
        return self.backbone.tokenizer.batch_decode(out[:, enc.inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    def trainable_per_batch(self) -> int:
        return self.layer.out_features  # one value vector per new entry (reported per edit below)

    def saved_bytes(self) -> int:
        return (self.keys.numel() + self.values.numel() + len(self.radii)) * 4 + sum(len(l.encode()) for l in self.labels)


# -- scoring ---------------------------------------------------------------------------------------
def chunks(items, size=32):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def tf_hits(ed, inputs, targets) -> list[bool]:
    """Teacher-forced hits in chunks (logits only where targets are scored: see scored_hits)."""
    return [h for chunk in chunks(list(zip(inputs, targets))) for h in ed.hits([c[0] for c in chunk], [c[1] for c in chunk])]


def tf_hits_and_argmax(ed, inputs, targets):
    hits, argmaxes = [], []
    for chunk in chunks(list(zip(inputs, targets))):
        enc, logits = ed.logits([c[0] for c in chunk], [c[1] for c in chunk])
        _, h = tasks.score(ed.backbone, logits, enc.targets)
        hits += h.tolist()
        am = torch.where(enc.inputs["attention_mask"].bool(), logits.argmax(-1), -1)
        argmaxes += [[t for t in row.tolist() if t != -1] for row in am]  # padding varies with the chunk
    return hits, argmaxes


def gen_texts(ed, inputs, n, targets=None):
    """Greedy continuations; with targets, as many tokens as the longest target in the chunk needs, plus 2."""
    texts = []
    for start in range(0, len(inputs), 32):
        chunk = inputs[start:start + 32]
        if targets is not None:
            tok = ed.backbone.tokenizer
            n = 2 + max(len(tok(t, add_special_tokens=False)["input_ids"]) for t in targets[start:start + 32])
        texts += ed.generate(chunk, n)
    return texts


def oracle_texts(base_model, prompts: list[str], targets: list[str], n: int) -> list[str]:
    """The ceiling of "give the target, then read like the base model": the bare model continues each
    prompt + its target text (no block at all), the target counting towards the `n` new tokens."""
    backbone, texts = base_model.backbone, []
    tok = backbone.tokenizer
    for chunk in chunks(list(zip(prompts, targets))):
        heads = [" " + t.strip() for _, t in chunk]
        enc = tasks.encode(backbone, [p + h for (p, _), h in zip(chunk, heads)]).to(backbone.device)
        out = backbone.model.generate(input_ids=enc.inputs["input_ids"], attention_mask=enc.inputs["attention_mask"],
                                      max_new_tokens=n, do_sample=False, pad_token_id=backbone.pad_id)
        width = enc.inputs["input_ids"].shape[1]
        for i, head in enumerate(heads):
            budget = max(n - len(tok(head, add_special_tokens=False)["input_ids"]), 0)
            texts.append(head + tok.decode(out[i, width:width + budget], skip_special_tokens=True))
    return texts


def ratio_interval(edited: list[float], base: list[float], draws: int = 2000) -> list[float]:
    """A 95% bootstrap interval of mean(edited) / mean(base) over prompts resampled in pairs: how far a
    ratio over this many prompts can move by which prompts were drawn."""
    e, b = np.array(edited), np.array(base)
    picks = np.random.default_rng(0).integers(0, len(e), size=(draws, len(e)))
    ratios = e[picks].mean(1) / b[picks].mean(1)
    return [float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))]


def edits_and_rephrases(texts: list[str], n: int) -> list[str]:
    """The first n edits' and first n rephrases' texts from a list that holds all edits, then all rephrases."""
    return texts[:n] + texts[len(texts) // 2:][:n]


def fluency(ed, records, base_texts: dict, tokens: list[int]) -> dict:
    """Continuations of every edit and rephrase, `tokens` new tokens each: the share that start with the
    target, the share that stutter it (melo_cli/eval/fluency.py), and the n-gram entropy against the bare
    model's on the same prompts, with a bootstrap interval and the oracle's ratio (oracle_texts) beside it;
    for melo also over the routed rows only."""
    from melo_cli.eval.fluency import mean_entropy, ngram_entropy, repeats

    prompts = [r["input"] for r in records] + [r["rephrases"][0] for r in records]
    targets = [r["target"] for r in records] * 2
    out = {}
    for n in tokens:
        texts = [t for chunk in chunks(prompts) for t in ed.generate(chunk, n)]
        base, oracle = (edits_and_rephrases(base_texts[key], len(records)) for key in (n, f"oracle-{n}"))
        row = {"starts": float(np.mean([produces(t, g) for t, g in zip(texts, targets)])),
               "repeats": float(np.mean([repeats(t, g) for t, g in zip(texts, targets)])),
               "entropy": mean_entropy(texts), "base_entropy": mean_entropy(base)}
        row["entropy_ratio"] = row["entropy"] / row["base_entropy"]
        row["ratio_interval"] = ratio_interval([ngram_entropy(t) for t in texts], [ngram_entropy(t) for t in base])
        row["oracle_ratio"] = mean_entropy(oracle) / row["base_entropy"]
        row["repeating"] = [{"prompt": p, "target": g, "text": t} for p, g, t in zip(prompts, targets, texts)
                            if repeats(t, g)][:20]  # to read what a repeat looks like
        if isinstance(ed, MeloEditor):
            routed = [i for i, r in enumerate(ed.model.route(prompts)) if r.routed]
            row.update(routed=len(routed), routed_starts=float(np.mean([produces(texts[i], targets[i]) for i in routed])),
                       routed_repeats=float(np.mean([repeats(texts[i], targets[i]) for i in routed])),
                       routed_entropy_ratio=mean_entropy([texts[i] for i in routed]) /
                       mean_entropy([base[i] for i in routed]),
                       routed_misses=[{"prompt": prompts[i], "target": targets[i], "text": texts[i]} for i in routed
                                      if not produces(texts[i], targets[i])][:20])
        out[str(n)] = row
    return out


def score(ed, records, base, full: bool) -> dict:
    ins, tgt = [r["input"] for r in records], [r["target"] for r in records]
    reph = [r["rephrases"][0] for r in records]
    loc, loc_t = [r["locality"] for r in records], [r["locality_target"] for r in records]
    es, gen = tf_hits(ed, ins, tgt), tf_hits(ed, reph, tgt)
    _, loc_am = tf_hits_and_argmax(ed, loc, loc_t)
    unrelated = ~np.array(common.restating(records), bool)
    kept_tf = np.array([a == b for a, b in zip(loc_am, base["loc_argmax"])], bool)
    out = {"es_tf": float(np.mean(es)), "gen_tf": float(np.mean(gen)), "loc_tf": float(kept_tf.mean()),
           "loc_tf_unrelated": float(kept_tf[unrelated].mean()), "restating": int((~unrelated).sum())}
    if full:
        out["es_gen"] = float(np.mean([produces(t, g) for t, g in zip(gen_texts(ed, ins, 0, tgt), tgt)]))
        out["gen_gen"] = float(np.mean([produces(t, g) for t, g in zip(gen_texts(ed, reph, 0, tgt), tgt)]))
        kept = np.array([a == b for a, b in zip(gen_texts(ed, loc, 8), base["loc_text"])], bool)
        out["loc_gen"], out["loc_gen_unrelated"] = float(kept.mean()), float(kept[unrelated].mean())
    return out


def main() -> None:
    global MODEL
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="stories260K", help="stories260K, smollm2 or gemma3-270m")
    parser.add_argument("--dataset", default="counterfact", choices=["counterfact", "zsre"])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--editors", default="melo,melo-nosubj,melo-paper,grace-style,lora-ft")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (pinned for timing)")
    parser.add_argument("--tag", default=None, help="results file suffix (default: MODEL-DATASET-nN)")
    parser.add_argument("--final-only", action="store_true", help="score after the last batch only (no retention curve)")
    parser.add_argument("--fluency-tokens", default="40,100", help="continuation lengths for the fluency numbers "
                                                                    "('' to skip them)")
    parser.add_argument("--out", type=Path, default=common.RESULTS)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    MODEL = common.model_path(args.model)
    load = common.counterfact if args.dataset == "counterfact" else common.zsre
    records = load(args.n)
    args.n = len(records)  # zsRE holds 998 records with a new answer
    batches = [records[i:i + args.batch_size] for i in range(0, len(records), args.batch_size)]
    checkpoints = sorted({max(1, len(batches) // 4), max(1, len(batches) // 2), len(batches)})
    if args.final_only:
        checkpoints = [len(batches)]
    env = common.environment(args.device)
    env["threads"] = args.threads

    base_model = LoraFinetune(args.device)  # with its adapter still zero it is the unedited model
    torch.set_num_threads(args.threads)
    base = {"loc_argmax": tf_hits_and_argmax(base_model, [r["locality"] for r in records],
                                             [r["locality_target"] for r in records])[1],
            "loc_text": gen_texts(base_model, [r["locality"] for r in records], 8)}
    tokens = [int(t) for t in args.fluency_tokens.split(",") if t.strip()]
    prompts = [r["input"] for r in records] + [r["rephrases"][0] for r in records]
    base_texts = {n: [t for chunk in chunks(prompts) for t in base_model.generate(chunk, n)] for n in tokens}
    base_texts.update({f"oracle-{n}": oracle_texts(base_model, prompts, [r["target"] for r in records] * 2, n)
                       for n in tokens})
    del base_model

    results = {}
    for name in args.editors.split(","):
        inputs = [r["input"] for r in records]
        ed = {"melo": lambda: MeloEditor(args.device),
              "melo-nosubj": lambda: MeloEditor(args.device, name="melo-nosubj", subjects=False),
              "melo-shared": lambda: MeloEditor(args.device, name="melo-shared", subjects=False, **SHARED),
              "melo-paper": lambda: MeloEditor(args.device, name="melo-paper", subjects=False, **PAPER),
              "grace-style": lambda: GraceStyle(args.device, inputs),
              "lora-ft": lambda: LoraFinetune(args.device)}[name]()
        torch.set_num_threads(args.threads)
        curve = []

        def checkpoint(number: int, ed=ed) -> None:
            if number in checkpoints:
                seen = [r for b in batches[:number] for r in b]
                point = score(ed, seen, {k: v[:len(seen)] for k, v in base.items()}, full=number == len(batches))
                point["edits"] = len(seen)
                curve.append(point)
                print(f"{name} after {len(seen)} edits: {point}", file=sys.stderr)

        steps, seconds = ed.edit_all(batches, checkpoint) if isinstance(ed, MeloEditor) else \
            edit_in_turn(ed, batches, checkpoint)
        final = curve[-1]
        per_edit_params = (ed.trainable_per_batch() * ed.edited.n_blocks / args.n if name.startswith("melo") else
                           ed.trainable_per_batch() if name == "grace-style" else ed.trainable_per_batch() / args.n)
        results[name] = {**final, "seconds_per_edit": seconds / args.n, "steps_per_batch_mean": float(np.mean(steps)),
                         "steps_per_batch_max": int(max(steps)), "trainable_params_per_edit": per_edit_params,
                         "saved_bytes_per_edit": ed.saved_bytes() / args.n, "curve": curve,
                         "fluency": fluency(ed, records, base_texts, tokens) if tokens else {}}
        del ed
        write_results(args, env, results)  # after every editor: a long run interrupted keeps what it measured


def edit_in_turn(ed, batches: list[list[dict]], checkpoint) -> tuple[list[int], float]:
    """The baselines: one edit call per batch; (steps per batch, editing seconds)."""
    steps, seconds = [], 0.0
    for number, batch in enumerate(batches, 1):
        started = time.perf_counter()
        steps.append(ed.edit(batch))
        seconds += time.perf_counter() - started
        checkpoint(number)
    return steps, seconds


def write_results(args, env: dict, results: dict) -> None:
    headers = ["editor", "ES tf", "ES gen", "gen tf", "gen gen", "loc tf", "loc gen", "loc gen, unrelated", "s/edit",
               "steps/batch", "params/edit", "bytes/edit"]
    rows = [[name, r["es_tf"], r["es_gen"], r["gen_tf"], r["gen_gen"], r["loc_tf"], r["loc_gen"], r["loc_gen_unrelated"],
             r["seconds_per_edit"],
             r["steps_per_batch_mean"], r["trainable_params_per_edit"], r["saved_bytes_per_edit"]]
            for name, r in results.items()]
    curve_rows = [[name, p["edits"], p["es_tf"], p["gen_tf"], p["loc_tf"]] for name, r in results.items() for p in r["curve"]]
    fluency_rows = [[name, n, f["starts"], f["repeats"], f["entropy"], f["base_entropy"], f["entropy_ratio"],
                     "-" if "ratio_interval" not in f else "%.3f-%.3f" % tuple(f["ratio_interval"]),
                     f.get("oracle_ratio", "-"),
                     f.get("routed"), f.get("routed_starts"), f.get("routed_repeats"), f.get("routed_entropy_ratio")]
                    for name, r in results.items() for n, f in r.get("fluency", {}).items()]
    markdown = (f"Sequential editing, {args.dataset} N={args.n}, batches of {args.batch_size}, {args.model}, "
                f"{args.threads} torch thread(s).\n\n"
                + common.table(headers, rows)
                + f"\n\n'loc gen, unrelated': locality over the prompts that do not restate an edit of the set "
                f"({next(iter(results.values()))['restating']} of {args.n} do; common.restating).\n\nRetention over time (teacher-forced, on all edits so far):\n\n"
                + common.table(["editor", "edits", "ES tf", "gen tf", "loc tf"], curve_rows)
                + ("\n\nFluency: greedy continuations of every edit and rephrase (melo: with the handoff), n-gram "
                   "entropy against the bare model's on the same prompts; 'repeats': the target given twice in a row "
                   "(melo_cli/eval/fluency.py); 'ratio 95%': a bootstrap interval of the ratio over the prompts "
                   "drawn; 'oracle': the ratio of the bare model continuing prompt + target text (no block), the "
                   "ceiling of giving the target and then reading like the base model; 'routed': the same over the "
                   "rows melo routed to a block.\n\n"
                   + common.table(["editor", "new tokens", "start with target", "repeats", "entropy", "bare entropy",
                                   "ratio", "ratio 95%", "oracle", "routed", "routed: start", "routed: repeats",
                                   "routed: ratio"],
                                  fluency_rows) if fluency_rows else ""))
    tag = args.tag or f"{args.model}-{args.dataset}-n{args.n}"
    common.write("editing", tag, env, {"model": args.model, "dataset": args.dataset, "n": args.n,
                                       "batch_size": args.batch_size, "results": results}, markdown, args.out)


if __name__ == "__main__":
    main()
