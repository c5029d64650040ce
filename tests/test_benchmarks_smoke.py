"""Each benchmark runs end to end at tiny sizes, so none of them can rot; the real runs stay outside CI."""

from __future__ import annotations

import json
import subprocess
import sys


from conftest import ROOT


def run_benchmark(script: str, *args: str, out) -> dict:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args, "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    files = sorted(out.glob("*.json"))
    assert len(files) == 1 and files[0].with_suffix(".md").exists()
    data = json.loads(files[0].read_text())
    assert set(data["environment"]) >= {"date", "machine", "commit", "command", "device"}
    return data


def test_editing_benchmark_smoke(shared, tmp_path):
    editors = "melo,melo-paper,grace-style,lora-ft"
    data = run_benchmark("editing.py", "--n", "4", "--batch-size", "2", "--editors", editors, out=tmp_path)
    assert set(data["results"]) == set(editors.split(","))
    melo = data["results"]["melo"]
    assert melo["es_tf"] == 1.0 and melo["loc_tf"] == 1.0 and len(melo["curve"]) >= 1


def test_misses_benchmark_smoke(shared, tmp_path):
    data = run_benchmark("misses.py", "--n", "4", "--batch-size", "2", "--settings", '{"loss_threshold": 0.05}',
                         out=tmp_path)
    result = data["results"]
    assert result["settings"] == {"loss_threshold": 0.05} and 0 <= result["own_block_hits"] <= result["routed"] <= 4
    assert len(result["misses"]) == result["routed"] - result["routed_hits"]


def test_keys_benchmark_smoke(shared, tmp_path):
    data = run_benchmark("keys.py", "--sizes", "20", "--datasets", "counterfact", out=tmp_path)
    keys = {r["key"] for r in data["results"]}
    assert {"base block 0 mean", "base block 2 last"} <= keys
    assert all(0 <= r["generality"] <= 1 and r["es"] == 1.0 for r in data["results"])


def test_overhead_benchmark_smoke(shared, tmp_path):
    data = run_benchmark("overhead.py", "--n", "10", "--reps", "2", "--batch", "4", "--new-tokens", "4", out=tmp_path)
    assert data["results"]["edited"]["routed_rows"] == 4 and data["results"]["unrelated"]["generate"]["ratio_median"] > 0


def test_router_benchmark_smoke(tmp_path):
    data = run_benchmark("router.py", "--sizes", "300", "--dims", "16", "--queries", "50", out=tmp_path)
    assert data["results"][0]["recall_at_1"] > 0.9


def test_the_benchmark_readme_shows_exactly_the_committed_results():
    """benchmarks/README.md is rebuilt from results/*.md by report.py; a stale README fails here."""
    results = sorted((ROOT / "benchmarks" / "results").glob("*.md"))
    assert {p.stem for p in results} >= {"editing-n100", "editing-n1000", "keys-latest", "overhead-n1000",
                                         "router-latest"}
    readme = (ROOT / "benchmarks" / "README.md").read_text()
    for path in results:
        assert path.read_text().strip() in readme, f"{path.name} is not in benchmarks/README.md: run report.py"
        assert path.with_suffix(".json").exists()


def test_cost_benchmark_smoke(shared, tmp_path):
    data = run_benchmark("cost.py", "--model", "stories260K", "--n", "4", "--batch-size", "2", out=tmp_path)
    results = data["results"]
    assert set(results) == {"melo", "full-passes", "reference-regime"}
    assert results["reference-regime"]["steps_per_batch"] == [50, 50]
    assert results["melo"]["edit_success"] == 1.0


def test_routecost_benchmark_smoke(shared, tmp_path):
    data = run_benchmark("routecost.py", "--model", "stories260K", "--n", "4", "--reps", "1", out=tmp_path)
    assert set(data["results"]) == {"encoder", "base"}
    assert all(r["generate_over_route"] > 0 and r["routed"] >= 1 for r in data["results"].values())
