"""What a user feels before any work: process start-up per command, and the quick start's `melo edit`
with torch's default threads against melo's own choice, side by side in one run.

    python benchmarks/startup.py [--reps 5] [--busy 2]

Each command runs as a fresh process (`python -m melo_cli.cli ...`), repeated and interleaved, and
the medians are reported with their ratio. "torch default" runs with OMP_NUM_THREADS unset and
MELO_THREADS set to torch's own default (one thread per core); "melo" leaves the choice to melo
(one thread for a model under 20M parameters). Machine load during the run is recorded: the
oversubscription cost grows with it; `--busy N` runs N CPU-bound processes alongside, as on a shared
CI machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

EDITS = common.ROOT / "sample_edits" / "counterfact-20.jsonl"


def timed(args: list[str], env: dict) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "melo_cli.cli", "-q", *args], env=env, capture_output=True,
                          text=True, cwd=common.ROOT)
    if done.returncode != 0:
        raise SystemExit(f"melo {' '.join(args)} failed: {done.stderr[-2000:]}")
    return time.perf_counter() - started


def measure(reps: int, commands: dict, envs: dict, times: dict, loads: list) -> None:
    for _ in range(reps):
        for name, command in commands.items():
            for setting, env in envs.items():
                if name in ("melo --help", "melo inspect BUNDLE") and setting != "melo":
                    continue  # no model, no threads
                loads.append(os.getloadavg()[0])
                times.setdefault((name, setting), []).append(timed(command, env))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--busy", type=int, default=0, help="CPU-bound processes to run alongside")
    parser.add_argument("--tag", default=None, help="results suffix (default: idle, or busyN)")
    parser.add_argument("--out", type=Path, default=common.RESULTS)
    args = parser.parse_args()
    base_env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MELO_THREADS")}
    cores = int(subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], env=base_env,
                               capture_output=True, text=True, check=True).stdout)  # torch's own default
    envs = {"melo": base_env, "torch default": dict(base_env, MELO_THREADS=str(cores))}
    tmp = Path(tempfile.mkdtemp())
    bundle = tmp / "bundle"
    subprocess.run([sys.executable, "-m", "melo_cli.cli", "-q", "edit", str(common.LLAMA), str(EDITS), "-o",
                    str(bundle)], check=True, env=base_env, capture_output=True)
    commands = {
        "melo --help": ["--help"],
        "melo inspect BUNDLE": ["inspect", str(bundle), "--json"],
        "melo generate (1 prompt)": ["generate", "--bundle", str(bundle), "--max-new-tokens", "8", "Once upon a time"],
        "melo edit (quick start)": ["edit", str(common.LLAMA), str(EDITS), "-o", str(tmp / "out"), "--overwrite"],
    }
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    times: dict[tuple[str, str], list[float]] = {}
    loads = []
    try:
        measure(args.reps, commands, envs, times, loads)
    finally:
        for burner in burners:
            burner.kill()
    rows, results = [], {}
    for name in commands:
        ours = statistics.median(times[(name, "melo")])
        theirs = statistics.median(times[(name, "torch default")]) if (name, "torch default") in times else None
        results[name] = {"melo_s": times[(name, "melo")], "torch_default_s": times.get((name, "torch default"))}
        rows.append([name, ours, theirs, theirs / ours if theirs else None])
    env = common.environment(args.device)
    markdown = (f"Medians of {args.reps} interleaved runs, each a fresh process, {args.busy} CPU-bound processes "
                f"alongside; machine load (1-min average) "
                f"during the run {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores; torch default = "
                f"{cores} threads.\n\n"
                + common.table(["command", "melo's threads (s)", "torch default threads (s)", "default / melo"], rows))
    common.write("startup", args.tag or (f"busy{args.busy}" if args.busy else "idle"), env, {"reps": args.reps,
                                                                                          "busy": args.busy, "torch_default_threads": cores, "loads": loads,
                                            "results": results}, markdown, args.out)


if __name__ == "__main__":
    main()
