"""How far the pipeline's results move between runs: the spread that every assertion on a trained model must clear.

Training is deterministic on one machine, not across machines: another CPU rounds floats differently (its kernels
differ) and builds other models. This script builds a profile (by default `ci`, the one the tests assert on) under
several seeds, thread counts and kernel sets, each in its own cache, and reports for every effect the tests assert
(`llama2_minimal.pipeline.EFFECTS`) its margin in each run: how far the quantity is past its bound. An assertion
stays only where its margin holds in every run and its mean exceeds its spread (largest minus smallest). Another
seed is the largest change (another world); `--kernels avx2` limits the kernels to AVX2, as on a CPU without
AVX-512, which moved the SFT helpfulness of `ci` (then 8 countries and 8 people) from 0.084 to 0.039 here, about
what the CI machine had built (0.037). On the 2-core machine where it was first run, 1 and 2 threads built the same
models.

    python benchmarks/seed_spread.py                        # ci, seeds 0 1 2, threads 1 and 2: about 45 min here
    python benchmarks/seed_spread.py --seeds 0 --threads 2  # one run
    python benchmarks/seed_spread.py --report spread.json   # the table as JSON too
    python benchmarks/seed_spread.py --notebooks lessons/06_pretraining.ipynb   # and the lesson's assertions, each run
    python benchmarks/seed_spread.py --kernels native avx2  # and as on a CPU without AVX-512 (another rounding)

Runs already built in --out are reused (results-seedN.json beside their models), so an interrupted measurement
resumes. Run it with nothing else training: two trainings at once on a small CPU fight over its cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from llama2_minimal.pipeline import EFFECTS, results_name
from llama2_minimal.profiles import PROFILE_ENV, SEED_ENV, get_profile

REPOSITORY = Path(__file__).resolve().parents[1]  # pytest reads its options (nbval) from pyproject.toml there

# Another CPU: PyTorch's own kernels, MKL's and oneDNN's limited to AVX2 on a CPU that has AVX-512, so that floats are
# rounded as on a machine without it (ATen's vectorised loops, reductions and matmul blocking all change).
KERNELS = {"native": {}, "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
                                  "ONEDNN_MAX_CPU_ISA": "AVX2"}}  # fmt: skip


def run_once(profile: str, seed: int, threads: int, root: Path, kernels: str = "native") -> tuple[dict, float | None]:
    """The results of one pipeline run (built now, or read back when it was built before) and its seconds."""
    target = root / results_name(get_profile(profile, seed))
    if target.is_file():
        return json.loads(target.read_text()), None
    env = _env(threads, **KERNELS[kernels])
    command = [sys.executable, "-m", "llama2_minimal", "pipeline", "--profile", profile, "--seed", str(seed),
               "--threads", str(threads), "--out", str(root)]  # fmt: skip
    print(f"building {profile}, seed {seed}, {threads} thread(s), {kernels} kernels in {root} ...", flush=True)
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"the pipeline failed (seed {seed}, {threads} threads):\n{result.stderr[-3000:]}")
    return json.loads(target.read_text()), seconds


def _env(threads: int, **extra: str) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), **extra}


def run_notebooks(notebooks: list[str], profile: str, seed: int, threads: int, root: Path, kernels="native") -> str:
    """The notebooks through nbval (as `pytest` runs them) on the run's models: the lessons assert on trained
    models too. Returns pytest's summary line."""
    env = _env(threads, **KERNELS[kernels], **{PROFILE_ENV: profile, SEED_ENV: str(seed),
                                               "LLAMA2_MINIMAL_CACHE": str(root)})  # fmt: skip
    paths = [str(Path(n).resolve()) for n in notebooks]
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *paths], env=env,
                            capture_output=True, text=True, cwd=REPOSITORY)  # fmt: skip
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    return ("passed: " if result.returncode == 0 else "FAILED: ") + (lines[-1] if lines else result.stderr[-300:])


def spread_table(runs: dict[str, dict], effects=EFFECTS) -> list[dict]:
    """One row per effect: its margin in each run, the smallest, the mean, the spread (largest minus smallest), and
    whether it is kept: every run clears the bound, and the mean margin exceeds the spread."""
    rows = []
    for effect in effects:
        margins = {name: effect.margin(results) for name, results in runs.items()}
        values = list(margins.values())
        spread, mean = max(values) - min(values), statistics.fmean(values)
        rows.append({"effect": effect.name, "margins": margins, "min": min(values), "mean": mean, "spread": spread,
                     "kept": min(values) > 0 and mean > spread})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="ci")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--kernels", nargs="+", default=["native"], choices=sorted(KERNELS),
                        help="native, and/or avx2: the CPU's kernels limited to AVX2 (another machine's rounding)")
    parser.add_argument("--out", default="seed-spread", help="one cache per thread count and kernels: OUT/threadsN "
                        "(OUT/threadsN-avx2)")  # fmt: skip
    parser.add_argument("--report", help="also write the table as JSON here")
    parser.add_argument("--notebooks", nargs="*", default=[], help="notebooks to run through nbval on each run's "
                        "models (they assert on trained models too), e.g. lessons/06_pretraining.ipynb")  # fmt: skip
    opts = parser.parse_args(argv)
    if any(t < 1 for t in opts.threads) or any(s < 0 for s in opts.seeds):
        parser.error("--threads must be 1 or more and --seeds 0 or more")

    runs, seconds, notebooks = {}, {}, {}
    for kernels in opts.kernels:
        for threads in opts.threads:
            for seed in opts.seeds:
                suffix = "" if kernels == "native" else f"-{kernels}"
                name, root = f"s{seed}/t{threads}{suffix}", Path(opts.out) / f"threads{threads}{suffix}"
                runs[name], seconds[name] = run_once(opts.profile, seed, threads, root, kernels)
                if opts.notebooks:
                    notebooks[name] = run_notebooks(opts.notebooks, opts.profile, seed, threads, root, kernels)
                    print(f"{name}: notebooks {notebooks[name]}", flush=True)
    rows = spread_table(runs)

    names = list(runs)
    width = max(len(r["effect"]) for r in rows)
    print(f"\n{opts.profile}: margin of each asserted effect (quantity minus bound; > 0 holds) per run (seed/threads)")
    cell = max(7, *(len(n) for n in names))
    print(f"{'effect':<{width}}  " + "  ".join(f"{n:>{cell}}" for n in names) + "      min     mean   spread  kept")
    for r in rows:
        cells = "  ".join(f"{r['margins'][n]:+{cell}.3f}" for n in names)
        print(f"{r['effect']:<{width}}  {cells}  {r['min']:+7.3f}  {r['mean']:+7.3f}  {r['spread']:7.3f}  "
              f"{'yes' if r['kept'] else 'NO'}")  # fmt: skip
    print("\nseconds per run (None: read back from an earlier build):",
          {n: None if s is None else round(s) for n, s in seconds.items()})  # fmt: skip
    if opts.report:
        stages = {n: {stage: row.get("seconds") for stage, row in results.items()} for n, results in runs.items()}
        report = {"profile": opts.profile, "runs": names, "effects": rows, "seconds": seconds, "stage_seconds": stages,
                  "notebooks": notebooks}  # fmt: skip
        target = Path(opts.report)
        tmp = target.with_name(target.name + ".tmp")  # written whole, then renamed: never a half-written report
        tmp.write_text(json.dumps(report, indent=1) + "\n")
        os.replace(tmp, target)
    for name, summary in notebooks.items():
        print(f"notebooks on {name}: {summary}")
    return 0 if all(r["kept"] for r in rows) and all(v.startswith("passed") for v in notebooks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
