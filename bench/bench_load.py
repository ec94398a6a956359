"""Start-up costs of the embedded model: import, first-use conversion, cached load, memory while scoring.

Each step runs in a fresh child process, so its time and peak RSS are its own:
  import   `import agile.models` (torch, keras, keras-hub)
  convert  the embedded GGUF -> keras-hub preset, into an empty temporary AGILE_HOME
  load     the cached preset (your AGILE_HOME), then score --n comments with LabelScorer

    python bench/bench_load.py --n 64
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import common


def child(step: str, n: int, batch_size: int, threads: int) -> dict:
    """One step, measured inside this process; the parent reads the JSON line it prints."""
    common.setup("cpu", threads)
    start = time.perf_counter()
    import agile.models

    out = {"import_s": time.perf_counter() - start}
    if step == "convert":
        start = time.perf_counter()
        agile.models.embedded_preset()
        out["convert_s"] = time.perf_counter() - start
    elif step == "load":
        from agile.prompt import PromptTemplate
        from agile.scoring import LabelScorer, ScoringSettings

        start = time.perf_counter()
        model = agile.models.load_model()
        out["load_s"] = time.perf_counter() - start
        out["peak_rss_load_mb"], out["rss_after_load_mb"] = common.peak_rss_mb(), common.rss_mb()
        common.reset_peak_rss()
        comments = common.ethos_comments(n)
        scorer = LabelScorer(model, PromptTemplate(), ScoringSettings(max_length=128, batch_size=batch_size))
        seconds, _ = common.timed(lambda: scorer.score(comments), warmup=lambda: scorer.score(comments[:batch_size]))
        out["score_s"], out["comments_per_s"] = seconds, n / seconds
        out["peak_rss_scoring_mb"] = common.peak_rss_mb()
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # whole process
    return out


def run_child(step: str, args, env: dict | None = None) -> dict:
    command = [sys.executable, __file__, "--child", step, "--n", str(args.n), "--batch-size", str(args.batch_size),
               "--threads", str(args.threads)]
    done = subprocess.run(command, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"step {step!r} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=64, help="ETHOS comments scored after the cached load")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=3, help="import timings (fastest reported: warm file cache)")
    parser.add_argument("--skip-convert", action="store_true", help="leave out the cold conversion (~35 s, ~4 GB)")
    parser.add_argument("--child", choices=("import", "convert", "load"), help=argparse.SUPPRESS)
    parser.add_argument("--name", help="result file name (default load-cpu)")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.n, args.batch_size, args.threads)))
        return

    steps = {"import": min((run_child("import", args) for _ in range(args.repeats)), key=lambda r: r["import_s"])}
    if not args.skip_convert:
        home = tempfile.mkdtemp(prefix="agile-bench-home-")
        try:
            steps["convert"] = run_child("convert", args, {"AGILE_HOME": home})
        finally:
            shutil.rmtree(home, ignore_errors=True)
    steps["load"] = run_child("load", args)

    imp, load = steps["import"], steps["load"]
    rows = [["import agile.models", imp["import_s"], imp["peak_rss_mb"]]]
    if "convert" in steps:
        rows.append(["convert embedded GGUF (cold AGILE_HOME)", steps["convert"]["convert_s"],
                     steps["convert"]["peak_rss_mb"]])
    rows += [["load cached preset", load["load_s"], load["peak_rss_load_mb"]],
             [f"score {args.n} comments (batch {args.batch_size}), after the load", load["score_s"],
              load["peak_rss_scoring_mb"]]]
    print()
    common.print_table(["step (fresh process each)", "seconds", "peak RSS MB"], rows)
    print(f"\nRSS once loaded: {load['rss_after_load_mb']:,.0f} MB; "
          f"batched label scoring: {load['comments_per_s']:.1f} comments/s")
    common.write_result(args.name or "load-cpu", {"n": args.n, "batch_size": args.batch_size, "steps": steps}, "cpu")


if __name__ == "__main__":
    main()
