"""A killed or concurrent `melo edit` never corrupts a bundle.

The kill test runs `melo edit --bundle OLD -o OLD` (replace in place) and SIGKILLs it at 21 moments
chosen from its own log: during imports, model loading, training and writing. After each kill OLD
must load and give exactly the outputs of the old bundle, or of the complete new one (a kill after
the atomic swap), never anything else.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from conftest import load_edits
from helpers import write_jsonl
from melo_cli import MeloModel
from melo_cli import bundle as bundle_io
from melo_cli.jobs.edit import run_edit
from melo_cli.options import EditOptions, Loading

pytestmark = pytest.mark.slow

PROBES = load_edits("counterfact-20.jsonl")[:10] + load_edits("counterfact-holdout.jsonl", 4)


def melo_process(*args: str, env_extra: dict | None = None) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="200", **(env_extra or {}))
    return subprocess.Popen([sys.executable, "-m", "melo_cli.cli", "-v", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def outputs(bundle) -> torch.Tensor:
    edited = MeloModel.from_pretrained(bundle=bundle, device="cpu").edited
    _, logits, _ = edited.teacher_forced([p["input"] for p in PROBES], [p["target"] for p in PROBES])
    return logits


def kill_at(proc: subprocess.Popen, marker: str | None, delay: float) -> bool:
    """SIGKILL `proc` `delay` s after it logs `marker` (or after it starts); False if it finished first."""
    seen = threading.Event()

    def watch() -> None:
        for line in proc.stderr:
            if marker is not None and marker in line:
                seen.set()
        seen.set()

    threading.Thread(target=watch, daemon=True).start()
    if marker is not None:
        seen.wait(60)
    time.sleep(delay)
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


@pytest.fixture(scope="module")
def states(llama_path, tmp_path_factory):
    """A pristine OLD bundle, the edits that continue it, and the outputs of both possible results."""
    root = tmp_path_factory.mktemp("kill")
    first = write_jsonl(root / "first.jsonl", load_edits("counterfact-20.jsonl")[:10])
    more = write_jsonl(root / "more.jsonl", load_edits("counterfact-20.jsonl")[10:])
    pristine = root / "pristine"
    run_edit(str(llama_path), first, pristine, continue_from=None, opts=EditOptions(loading=Loading(device="cpu")))
    complete = root / "complete"
    shutil.copytree(pristine, complete)
    run_edit(None, more, complete, continue_from=complete, opts=EditOptions(loading=Loading(device="cpu")))
    return root, pristine, more, outputs(pristine), outputs(complete)


MOMENTS = ([(None, d) for d in (0.3, 1.0, 1.8)]
           + [("loading base model", d) for d in (0.0, 0.02, 0.05, 0.1, 0.2)]
           + [("training", d) for d in (0.0, 0.05, 0.1, 0.2, 0.4, 0.8)]
           + [("writing bundle", d) for d in (0.0, 0.001, 0.003, 0.006, 0.01, 0.02, 0.04)])


def test_sigkill_at_21_moments_never_corrupts_the_bundle(states, tmp_path):
    root, pristine, more, old_out, new_out = states
    assert len(MOMENTS) >= 20
    killed, became_new = 0, 0
    for marker, delay in MOMENTS:
        bundle = tmp_path / "OLD"
        shutil.rmtree(bundle, ignore_errors=True)
        shutil.copytree(pristine, bundle)
        proc = melo_process("edit", more, "--bundle", bundle, "-o", bundle)
        killed += kill_at(proc, marker, delay)
        now = outputs(bundle)  # must load: sha256, index header, fingerprint all checked
        is_old, is_new = torch.equal(now, old_out), torch.equal(now, new_out)
        assert is_old or is_new, (marker, delay)
        became_new += is_new
    assert killed >= 15  # the moments really fell inside the run
    # the next run cleans whatever the killed ones left beside the bundle, and succeeds
    proc = melo_process("edit", more, "--bundle", tmp_path / "OLD", "-o", tmp_path / "OLD")
    assert proc.wait() == 0, proc.stderr.read()
    assert not [p.name for p in tmp_path.iterdir() if ".melo-" in p.name]


def test_two_concurrent_edits_on_one_bundle_exactly_one_writes(states, tmp_path):
    root, pristine, more, _, _ = states
    bundle = tmp_path / "B"
    shutil.copytree(pristine, bundle)
    procs = [melo_process("edit", more, "--bundle", bundle, "-o", bundle) for _ in range(2)]
    codes = sorted(p.wait() for p in procs)
    errors = [p.stderr.read() for p in procs]
    assert codes == [0, 75], errors
    assert any("another melo edit is writing this bundle" in e for e in errors)
    MeloModel.from_pretrained(bundle=bundle, device="cpu")  # the winner's bundle loads whole
    assert len(bundle_io.load(bundle).edits) == 20
    # with --wait the second one waits its turn and continues the first one's result (two different
    # files: the same file twice would merge as duplicates)
    holdout = load_edits("counterfact-holdout.jsonl")
    files = [write_jsonl(tmp_path / f"w{i}.jsonl", [dict(h, target=f"Zorg{i}") for h in holdout[5 * i:5 * i + 5]])
             for i in range(2)]
    procs = [melo_process("edit", f, "--bundle", bundle, "-o", bundle, "--wait", "120") for f in files]
    assert [p.wait() for p in procs] == [0, 0]
    assert len(bundle_io.load(bundle).edits) == 30
    assert not (tmp_path / ".B.lock").exists()  # the lock file goes with its holder
