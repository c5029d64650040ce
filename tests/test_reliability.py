"""Nothing lost, nothing mixed, no crash (issue 17): failed writes, forged indexes, readers racing a
writer, --overwrite on foreign directories, symlinked bundles, over-long inputs."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap

import pytest
import yaml

from conftest import ROOT, SAMPLES, load_edits
from helpers import melo, tree_digest, write_jsonl
from melo_cli import bundle as bundle_io
from melo_cli.bundle import hnsw_file

MORE = [{"input": "Ferrari F40, developed by", "target": "Sony"}]


@pytest.fixture(scope="module")
def twenty(llama_path, tmp_path_factory):
    """A bundle of 20 clusters (base-model keys), so its index has upper-level link lists."""
    root = tmp_path_factory.mktemp("reliability")
    out = root / "bundle"
    result = melo("edit", llama_path, SAMPLES / "counterfact-20.jsonl", "-o", out, "--key-source", "base")
    assert result.exit_code == 0, result.stderr
    return out


def _copy(bundle, tmp_path, name="b"):
    target = tmp_path / name
    shutil.copytree(bundle, target)
    return target


def _leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if ".melo-" in p.name or p.name.endswith(".lock"))


# -- a failed write never replaces a bundle -----------------------------------------------------------
def test_an_index_written_empty_by_a_full_disk_leaves_the_old_bundle(twenty, tmp_path, monkeypatch):
    """hnswlib writes a 0-byte index on ENOSPC without raising; the write is read back before the swap."""
    from melo_cli.router import Router

    bundle = _copy(twenty, tmp_path)
    before = tree_digest(bundle)
    monkeypatch.setattr(Router, "save_index", lambda self, path: open(path, "wb").close())
    more = write_jsonl(tmp_path / "more.jsonl", MORE)
    result = melo("edit", more, "--bundle", bundle, "-o", bundle)
    assert result.exit_code == 74, (result.exit_code, result.stderr)
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("melo: error: ") and "router.hnsw" in line and "nothing was replaced" in line, line
    assert tree_digest(bundle) == before and _leftovers(tmp_path) == []


def _edit_in_place_with_a_bad_disk(twenty, tmp_path, monkeypatch, name, damage):
    """`melo edit --bundle B -o B` where writing file `name` goes through damage(data) (which may raise);
    the run must exit 74 with B and its directory as they were. Returns stderr."""
    bundle = _copy(twenty, tmp_path)
    before = tree_digest(bundle)
    from melo_cli.bundle import store
    real = store.write_bytes
    monkeypatch.setattr(store, "write_bytes",
                        lambda path, data: real(path, damage(data) if path.name == name else data))
    result = melo("edit", write_jsonl(tmp_path / "more.jsonl", MORE), "--bundle", bundle, "-o", bundle)
    assert result.exit_code == 74, (result.exit_code, result.stderr)
    assert tree_digest(bundle) == before and _leftovers(tmp_path) == []
    return result.stderr


def test_an_os_error_while_writing_leaves_the_old_bundle(twenty, tmp_path, monkeypatch):
    import errno

    def full_disk(data):
        raise OSError(errno.ENOSPC, "No space left on device")

    assert "No space left on device" in _edit_in_place_with_a_bad_disk(twenty, tmp_path, monkeypatch,
                                                                       bundle_io.EDITS, full_disk)


def test_a_short_write_is_caught_where_it_happens(tmp_path, monkeypatch):
    """A write that lands fewer bytes than given (the disk filled as it went) raises at once."""
    class Short:
        def __init__(self, f):
            self.f = f

        def __getattr__(self, name):
            return getattr(self.f, name)

        def write(self, data):
            return self.f.write(data[: len(data) // 2])

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    real_open = open
    monkeypatch.setattr("builtins.open", lambda p, mode="r", *a, **k: Short(real_open(p, mode, *a, **k))
                        if mode == "wb" else real_open(p, mode, *a, **k))
    with pytest.raises(OSError, match="of 10 bytes written"):
        bundle_io.write_bytes(tmp_path / "f", b"0123456789")


# -- a forged index never reaches hnswlib -------------------------------------------------------------
def _forge_index(bundle, change):
    path = bundle / bundle_io.INDEX
    data = bytearray(path.read_bytes())
    change(data, hnsw_file.header(bytes(data), path))
    path.write_bytes(bytes(data))
    manifest = yaml.safe_load((bundle / bundle_io.MANIFEST).read_text())
    manifest["files"][bundle_io.INDEX] = bundle_io.sha256(path)
    (bundle / bundle_io.MANIFEST).write_text(yaml.safe_dump(manifest, sort_keys=False))


def _set_field(name, value):
    names = ("offset_level0", "max_elements", "count", "size_per_element", "label_offset", "offset_data",
             "max_level", "entry", "max_m", "max_m0", "m", "mult", "ef_construction")

    def change(data, header):
        values = [header[n] for n in names]
        values[names.index(name)] = value
        data[:hnsw_file.HEADER.size] = hnsw_file.HEADER.pack(*values)
    return change


def _element(data, header, i):
    return hnsw_file.HEADER.size + i * header["size_per_element"]


def _level0(i, what):
    """Corrupt element i's level-0 record: 'count' (> maxM0), 'id' (past the elements), 'mark', 'label'."""
    def change(data, header):
        at = _element(data, header, i)
        if what == "count":
            struct.pack_into("<H", data, at, 200)
        elif what == "id":
            struct.pack_into("<HxxI", data, at, 1, 100000)
        elif what == "mark":
            data[at + 2] = 7
        elif what == "label":
            struct.pack_into("<Q", data, at + header["label_offset"], 99)
    return change


def _upper(what):
    """Corrupt the first upper-level link list: its length, a neighbour id, or a neighbour on a lower level."""
    def change(data, header):
        n, size = header["count"], header["size_per_element"]
        offset, levels, first = hnsw_file.HEADER.size + n * size, [], None
        for element in range(n):
            (length,) = struct.unpack_from("<I", data, offset)
            levels.append(length // (4 + 4 * header["m"]))
            if length and first is None:
                first = (element, offset)
            offset += 4 + length
        assert first is not None, "the fixture's index has no upper level"
        element, at = first
        if what == "length":
            struct.pack_into("<I", data, at, 7)
        elif what == "id":
            struct.pack_into("<II", data, at + 4, 1, 100000)
        elif what == "level":
            low = next(e for e in range(n) if levels[e] == 0)
            struct.pack_into("<II", data, at + 4, 1, low)
    return change


FORGED_INDEXES = {
    "entry point 100000": _set_field("entry", 100000),
    "max level 40": _set_field("max_level", 40),
    "max level -5": _set_field("max_level", -5),
    "element count +1": lambda d, h: _set_field("count", h["count"] + 1)(d, h),
    "max elements 1": _set_field("max_elements", 1),
    "offset level0 8": _set_field("offset_level0", 8),
    "size per element 100": _set_field("size_per_element", 100),
    "label offset 0": _set_field("label_offset", 0),
    "offset data 8": _set_field("offset_data", 8),
    "maxM 64": _set_field("max_m", 64),
    "maxM0 64": _set_field("max_m0", 64),
    "M 64": _set_field("m", 64),
    "mult 0": _set_field("mult", 0.0),
    "level-0 count 200": _level0(3, "count"),
    "level-0 neighbour 100000": _level0(3, "id"),
    "deleted mark 7": _level0(3, "mark"),
    "label 99": _level0(3, "label"),
    "upper list length 7": _upper("length"),
    "upper neighbour 100000": _upper("id"),
    "upper neighbour below its level": _upper("level"),
    "a byte appended": lambda d, h: d.extend(b"\0"),
    "a centre moved": lambda d, h: struct.pack_into("<f", d, _element(d, h, 0) + h["offset_data"], 123.0),
}

PROBE = textwrap.dedent("""
    import sys
    from melo_cli import bundle
    from melo_cli.errors import BundleError
    for path in sys.argv[1:]:
        try:
            bundle.load(path)
            print("LOADED", path, flush=True)
        except BundleError as exc:
            print("REFUSED", path, str(exc).replace(chr(10), " "), flush=True)
""")


def test_every_forged_index_is_refused_before_hnswlib_reads_it(twenty, tmp_path):
    """Each forgery once made hnswlib read out of bounds (the entry point one segfaulted melo, exit 139).
    The loads run in one child process, so a crash shows as the forgery it died on."""
    paths = []
    for n, (name, change) in enumerate(sorted(FORGED_INDEXES.items())):
        bundle = _copy(twenty, tmp_path, f"forged-{n}")
        _forge_index(bundle, change)
        paths.append((name, bundle))
    done = subprocess.run([sys.executable, "-c", PROBE, *[str(p) for _, p in paths]], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    lines = done.stdout.splitlines()
    assert done.returncode == 0, (done.returncode, paths[len(lines)][0] if len(lines) < len(paths) else None,
                                  done.stderr[-2000:])
    for (name, bundle), line in zip(paths, lines):
        assert line.startswith(f"REFUSED {bundle} ") and "router.hnsw" in line, (name, line)


def test_the_cli_names_a_forged_index_in_one_line(twenty, tmp_path):
    bundle = _copy(twenty, tmp_path)
    _forge_index(bundle, _set_field("entry", 100000))
    result = melo("generate", "--bundle", bundle, "Once upon a time")
    assert result.exit_code == 2 and "router.hnsw" in result.stderr and "Traceback" not in result.stderr


def test_the_index_check_accepts_what_melo_writes_with_retired_clusters_and_cosine(twenty, tmp_path):
    bundle = _copy(twenty, tmp_path)
    fixes = [{**e, "target": "Paris"} for e in load_edits("counterfact-20.jsonl", 3)]
    for e in fixes:
        e.pop("id", None)
    result = melo("edit", write_jsonl(tmp_path / "fix.jsonl", fixes), "--bundle", bundle, "-o", bundle)
    assert result.exit_code == 0, result.stderr
    loaded = bundle_io.load(bundle)
    assert loaded.router.retired.sum() >= 1 and loaded.config.metric == "euclidean"


# -- readers never see a mix --------------------------------------------------------------------------
WRITER = textwrap.dedent("""
    import shutil, sys, time
    from pathlib import Path
    from melo_cli import bundle
    target, sources, seconds = Path(sys.argv[1]), [Path(p) for p in sys.argv[2:4]], float(sys.argv[4])
    end, n = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        tmp = bundle.temp_dir_for(target)
        tmp.rmdir()
        shutil.copytree(sources[n % 2], tmp)
        bundle.publish(tmp, target)
        n += 1
    print(n)
""")


def test_loads_during_replacements_are_wholly_old_or_wholly_new(twenty, llama_path, tmp_path):
    """A reader used to get false sha256 errors and, rarely, new edits with the old router."""
    small = tmp_path / "small"
    assert melo("edit", llama_path, write_jsonl(tmp_path / "two.jsonl", load_edits("counterfact-20.jsonl", 2)),
                "-o", small, "--key-source", "base").exit_code == 0
    versions = {}
    for source in (twenty, small):
        loaded = bundle_io.load(source)
        versions[loaded.manifest.created, len(loaded.edits)] = (
            [e.input for e in loaded.edits], len(loaded.router), loaded.router.centres.tobytes())
    live = _copy(twenty, tmp_path, "live")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(live), str(twenty), str(small), "6"], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    loads = 0
    try:
        while writer.poll() is None:
            loaded = bundle_io.load(live)
            key = (loaded.manifest.created, len(loaded.edits))
            assert key in versions, key
            assert versions[key] == ([e.input for e in loaded.edits], len(loaded.router),
                                     loaded.router.centres.tobytes())
            loads += 1
    finally:
        writer.wait(timeout=60)
    swaps = int(writer.stdout.read())
    assert loads > 20 and swaps > 20, (loads, swaps)


# -- --overwrite replaces only a bundle; links are followed -------------------------------------------
def test_overwrite_refuses_a_directory_that_only_holds_some_manifest(llama_path, tmp_path):
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    (deploy / "manifest.yaml").write_text("service: web\nreplicas: 3\n")
    (deploy / "secrets.env").write_text("TOKEN=1\n")
    before = tree_digest(deploy)
    edits = write_jsonl(tmp_path / "e.jsonl", MORE)
    result = melo("edit", llama_path, edits, "-o", deploy, "--overwrite")
    assert result.exit_code == 2 and "refusing to replace it" in result.stderr, result.stderr
    assert tree_digest(deploy) == before


def test_overwrite_refuses_a_bundle_holding_files_it_does_not_list(twenty, llama_path, tmp_path):
    bundle = _copy(twenty, tmp_path)
    (bundle / "notes.txt").write_text("mine\n")
    before = tree_digest(bundle)
    result = melo("edit", llama_path, write_jsonl(tmp_path / "e.jsonl", MORE), "-o", bundle, "--overwrite")
    assert result.exit_code == 2 and "notes.txt" in result.stderr, result.stderr
    assert tree_digest(bundle) == before


def test_overwrite_replaces_a_bundle(twenty, llama_path, tmp_path):
    bundle = _copy(twenty, tmp_path)
    result = melo("edit", llama_path, write_jsonl(tmp_path / "e.jsonl", MORE), "-o", bundle, "--overwrite")
    assert result.exit_code == 0, result.stderr
    assert len(bundle_io.load(bundle).edits) == 1 and _leftovers(tmp_path) == []


def test_a_symlinked_bundle_is_updated_through_its_link(twenty, tmp_path):
    target = _copy(twenty, tmp_path, "real")
    link = tmp_path / "current"
    link.symlink_to(target)
    result = melo("edit", write_jsonl(tmp_path / "more.jsonl", MORE), "--bundle", link, "-o", link)
    assert result.exit_code == 0, result.stderr
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert len(bundle_io.load(target).edits) == 21 and _leftovers(tmp_path) == []


# -- inputs longer than the model takes ---------------------------------------------------------------
def test_an_over_long_edit_is_refused_before_training(llama_path, tmp_path):
    long = "Once upon a time " * 600 + "the sky was"
    edits = write_jsonl(tmp_path / "e.jsonl", [MORE[0], {"input": long, "target": "green"}])
    result = melo("edit", llama_path, edits, "-o", tmp_path / "out")
    assert result.exit_code == 2 and not (tmp_path / "out").exists()
    line = result.stderr.strip().splitlines()[-1]
    assert "e.jsonl:2: field 'input'" in line and "2,048 positions" in line, line
    assert "training" not in result.stderr


def test_a_megabyte_edit_line_is_refused_not_trained(llama_path, tmp_path):
    edits = write_jsonl(tmp_path / "e.jsonl", [{"input": "x" * 1_000_000, "target": "y"}])
    result = melo("edit", llama_path, edits, "-o", tmp_path / "out")
    assert result.exit_code == 2 and "e.jsonl:1: field 'input'" in result.stderr and "training" not in result.stderr


def test_an_over_long_rephrase_or_holdout_input_is_refused_by_eval(twenty, tmp_path):
    long = "Once upon a time " * 600
    holdout = write_jsonl(tmp_path / "h.jsonl", [{"input": "Once upon a time"}, {"input": long}])
    result = melo("eval", "--bundle", twenty, "--locality", holdout)
    assert result.exit_code == 2 and "h.jsonl:2: field 'input'" in result.stderr, result.stderr
    edits = write_jsonl(tmp_path / "e.jsonl", [{**load_edits("counterfact-20.jsonl", 1)[0], "rephrases": [long]}])
    result = melo("eval", "--bundle", twenty, "--edits", edits)
    assert result.exit_code == 2 and "e.jsonl:1: field 'rephrases'" in result.stderr, result.stderr


def test_json_output_is_strict_json(capsys):
    from melo_cli.cli.console import emit_json

    emit_json({"loss": float("nan"), "radius": [float("inf"), 1.5], "n": 2})
    assert json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(c)) == \
        {"loss": None, "radius": [None, 1.5], "n": 2}


def test_the_index_copy_works_without_memfd(twenty, monkeypatch):
    """Where the OS has no anonymous memory files (macOS), hnswlib reads a private temp file."""
    monkeypatch.delattr(os, "memfd_create", raising=False)
    loaded = bundle_io.load(twenty)
    assert len(loaded.router) == loaded.manifest.counts["clusters"] >= 15
    assert loaded.router.nearest(loaded.router.centres[:1])[0][0][0] == 0


def test_a_file_the_disk_kept_wrong_is_caught_before_the_swap(twenty, tmp_path, monkeypatch):
    """The manifest holds the hashes of the bytes melo meant to write, so a file that landed different
    (and raised nothing) fails the read-back."""
    stderr = _edit_in_place_with_a_bad_disk(twenty, tmp_path, monkeypatch, bundle_io.LORA,
                                            lambda data: data[:-1] + bytes([data[-1] ^ 1]))
    assert "lora.safetensors" in stderr, stderr


def test_a_fifo_in_place_of_a_bundle_file_is_refused_not_waited_on(twenty, tmp_path):
    bundle = _copy(twenty, tmp_path)
    (bundle / bundle_io.EDITS).unlink()
    os.mkfifo(bundle / bundle_io.EDITS)  # opening it for reading would block until some writer came
    done = subprocess.run([sys.executable, "-c", PROBE, str(bundle)], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert done.stdout.startswith(f"REFUSED {bundle} ") and "not a plain file" in done.stdout, done
