"""The float noise behind every numeric tolerance of the suite, measured as another CPU would produce it.

    python benchmarks/tolerances.py [-k EXPR] [--out tolerances.json]

A tolerance must hold on any CPU yet fail on a real bug. This reruns the tests that compare numbers
(each goes through `within` or `caught` in tests/conftest.py, which record what they measured when
PIGG_TOLERANCE_LOG is set) under several CPU "personalities": torch's kernels for other instruction sets
(ATEN_CPU_CAPABILITY), MKL's code paths for other processors (MKL_CBWR) and oneDNN's (ONEDNN_MAX_CPU_ISA).
Each changes the order in which float32 sums are taken, as an Intel, an older AMD or a machine without
AVX-512 would. For every comparison it prints the largest difference measured across personalities
(noise), the tolerance, and the smallest deliberate bug the suite's mutation tests measured (bug): a
tolerance is sound when noise << tolerance << bug.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PERSONALITIES = {
    "this CPU": {},
    "generic kernels": {"ATEN_CPU_CAPABILITY": "default"},
    "MKL compatible": {"MKL_CBWR": "COMPATIBLE"},
    "AVX2 only": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "generic + MKL compatible": {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"},
}

# the tests that compare numbers (their mutation tests included)
SELECTION = (
    "twice_the_batch or one_sample or two_nodes or output_layer or filler or batch_size_invariant or distill"
    " or similarity_is_zero or tile_counts or packed or merged_model_gives or reloads_to_the_same"
    " or likelihood_scores or lora_run_evaluates"
)


def measure(env: dict[str, str], selection: str, log: Path) -> int:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", selection, "tests"]
    full_env = {**os.environ, **env, "PIGG_TOLERANCE_LOG": str(log), "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=REPO, env=full_env).returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="also write the measurements as JSON")
    parser.add_argument("-k", default=SELECTION, help="pytest -k expression: which tests to rerun")
    args = parser.parse_args()

    rows: dict[str, dict] = defaultdict(lambda: {"noise": {}, "bug": None, "tolerance": None})
    failed = []
    with tempfile.TemporaryDirectory() as scratch:
        for name, env in PERSONALITIES.items():
            log = Path(scratch) / f"{len(failed)}-{abs(hash(name))}.jsonl"
            print(f"== {name}: {env or 'as installed'}", flush=True)
            if measure(env, args.k, log) != 0:
                failed.append(name)
            for line in log.read_text().splitlines() if log.exists() else []:
                entry = json.loads(line)
                row = rows[entry["name"].split("[")[0]]  # "loss[lora,padded]": one row per comparison
                row["tolerance"] = entry["tolerance"]
                if entry["kind"] == "bug":
                    row["bug"] = min(entry["measured"], row["bug"] or float("inf"))
                else:
                    row["noise"][name] = max(entry["measured"], row["noise"].get(name, 0.0))

    print(f"\n{'comparison':58} {'noise (max)':>12} {'tolerance':>10} {'bug (min)':>10}  tol/noise")
    for comparison, row in sorted(rows.items()):
        noise = max(row["noise"].values()) if row["noise"] else None
        ratio = f"{row['tolerance'] / noise:9.0f}x" if noise else "    exact"
        cells = [f"{v:.2e}" if v is not None else "-" for v in (noise, row["tolerance"], row["bug"])]
        print(f"{comparison:58} {cells[0]:>12} {cells[1]:>10} {cells[2]:>10}  {ratio}")
    if args.out:
        args.out.write_text(
            json.dumps({"personalities": PERSONALITIES, "comparisons": rows}, indent=1) + "\n"
        )
        print(f"\nwritten: {args.out}")
    if failed:
        print(f"tests failed under: {', '.join(failed)}")
        raise SystemExit(1)


if __name__ == "__main__":
    main()
