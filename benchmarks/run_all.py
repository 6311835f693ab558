"""Run every benchmark script in turn and print one table (the one benchmarks/README.md pastes).

Each script runs as its own process (and starts its own children for the peak-RSS figures); this driver only
passes the common flags and sizes and collects the rows they write with --json.

Run from the repository root: ``python benchmarks/run_all.py [--threads 1 --clock cpu]`` (CPU defaults: about
30 minutes on 2 busy cores, most of it the stage-2 steps and the 768 restore), ``--restore-out 2048`` for the
issue's 512 -> 2048 restore (about an hour more on 2 cores), ``--only stage1,vae`` for a subset.
benchmarks/gpu.sh calls it with GPU sizes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ("checks", "stage1", "stage2", "vae", "restore")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--clock", default="wall", choices=["wall", "cpu"])
    ap.add_argument("--only", default=",".join(SCRIPTS), help=f"comma-separated subset of {', '.join(SCRIPTS)}")
    ap.add_argument("--repeats", type=int, default=0, help="timed repeats of every script (0: each script's default)")
    ap.add_argument("--stage1-sizes", default="512")
    ap.add_argument("--stage2-sizes", default="256,512")
    ap.add_argument("--vae-sizes", default="512")
    ap.add_argument("--vae-tiled", action="store_true")
    ap.add_argument("--restore-out", type=int, default=768)
    ap.add_argument("--restore-steps", type=int, default=1)
    ap.add_argument("--host-attention", default="default", choices=["default", "sdpa"])
    args = ap.parse_args()

    common = ["--device", args.device, "--dtype", args.dtype, "--clock", args.clock]
    if args.threads:
        common += ["--threads", str(args.threads)]
    if args.repeats:
        common += ["--repeats", str(args.repeats)]
    per_script = {
        "checks": ["--host-attention", args.host_attention],
        "stage1": ["--sizes", args.stage1_sizes],
        "stage2": ["--sizes", args.stage2_sizes, "--host-attention", args.host_attention],
        "vae": ["--sizes", args.vae_sizes] + (["--tiled"] if args.vae_tiled else []),
        "restore": ["--out-size", str(args.restore_out), "--steps", str(args.restore_steps),
                    "--host-attention", args.host_attention],
    }
    files = {"checks": "checks.py", "stage1": "stage1_bench.py", "stage2": "stage2_bench.py", "vae": "vae_bench.py",
             "restore": "restore_bench.py"}
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(chosen) - set(SCRIPTS)
    if unknown:
        raise SystemExit(f"--only: unknown {sorted(unknown)}; choose from {', '.join(SCRIPTS)}")

    tables, failures = [], []
    with tempfile.TemporaryDirectory(prefix="diffbir-bench-") as tmp:
        for name in chosen:
            out = Path(tmp) / f"{name}.json"
            cmd = [sys.executable, str(HERE / files[name]), *common, *per_script[name], "--json", str(out)]
            t0 = time.perf_counter()
            print(f"$ {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
            proc = subprocess.run(cmd, check=False)
            took = time.perf_counter() - t0
            if out.is_file():
                table = json.loads(out.read_text())
                table["took_s"] = took
                tables.append(table)
            if proc.returncode != 0:
                failures.append(f"{files[name]} exited with {proc.returncode}")

    print("\n\n## All benchmarks\n")
    for table in tables:
        print(f"### {table['title']} ({table['took_s'] / 60:.1f} min)\n{table['header']}\n")
        print("| figure | ours | baseline | ratio | target | met |\n|---|---|---|---|---|---|")
        for r in table["rows"]:
            print(f"| {r['figure']} | {r['ours']} | {r['baseline']} | {r['ratio']} | {r['target']} | {r['met']} |")
        notes = [f"* {r['figure']}: {r['note']}" for r in table["rows"] if r.get("note")]
        print(("\n" + "\n".join(notes) + "\n") if notes else "")
    missed = [r["figure"] for t in tables for r in t["rows"] if r["met"] == "NO"]
    print("targets missed: " + ("; ".join(missed) if missed else "none"))
    for f in failures:
        print(f"FAILED: {f}")
    return 1 if failures or missed else 0


if __name__ == "__main__":
    sys.exit(main())
