"""Scale-out: what the path around the model costs, with the model replaced by a simulated GPU.

A real producer (`agile moderate`, a subprocess), a private redis-server and W real
`agile worker` processes whose model is bench/sim_model.py (a batch of n comments
sleeps n / RATE seconds; RATE 0: no sleep): Celery, Redis, the payloads, the policy
(a calibrated adapter on the tiny model), the result fields and the write-back are
the product's own. Each worker holds --in-hand batches at once (2, a GPU worker's
default: one batch's CPU work beside another's simulated device time; 1: one
after the other). For each workers x rate x in-hand x rows it reports end-to-end comments/s
(the job's span in its Redis meta: created, once the dump is checked, to its output
renamed into place; the producer process's whole wall time beside it) against the
ideal W x RATE, and CPU microseconds per comment (user + sys) in the
producer (its rusage at exit), the workers summed and redis-server (psutil, between
the job's start and end). Each cluster runs one small warm-up job first (the workers'
first policy load), which also gives the producer's start-up CPU: "less start-up"
subtracts it.

--profile samples the producer and every worker with py-spy (pip install py-spy)
during the runs (nonblocking, so sampling costs CPU but stops nothing) and prints
the top functions by own CPU, and by module, per comment: run it apart from the
timed runs, since py-spy shares the same cores.

    nice -n 10 python bench/bench_scale.py --workers 1,4 --rate 0,10000 --rows 50000,150000
    nice -n 10 python bench/bench_scale.py --workers 4 --rate 10000 --rows 150000 --in-hand 1,2
    nice -n 10 python bench/bench_scale.py --workers 1 --rate 0 --rows 100000 --in-hand 1 --batch-size 256,512,1024
    nice -n 10 python bench/bench_scale.py --workers 4 --rate 10000 --rows 50000 --profile
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import common
from bench_queue import Cluster, write_dump

from agile.settings import QueueSettings
from agile.wire import JobKeys

BENCH = Path(__file__).resolve().parent
ADAPTER = "bench-cal"
WARMUP_ROWS = 64
PROFILE_HZ = 100
GOAL_SHARE, GOAL_US = 0.85, 10.0  # issue 19: 85% of ideal; <= 10 ms per 1,000 comments in producer and workers


def make_adapter(preset: Path, path: Path) -> None:
    """A calibrated adapter on the tiny model (random LoRA, platt calibration, as ethos-hate ships)."""
    import numpy as np

    from agile.adapters import AdapterMeta, save_adapter
    from agile.calibration import Calibration
    from agile.models import load_model

    model = load_model(str(preset))
    model.backbone.enable_lora(2, target_layer_names=["query", "value"])
    rng = np.random.default_rng(0)
    for v in model.backbone.weights:
        if "lora_kernel" in v.path:
            v.assign(rng.normal(0, 0.5, v.shape).astype("float32"))
    meta = AdapterMeta(
        name=ADAPTER, base_model=str(preset), base_checksum=model.agile_info.checksum, labels=["Positive", "Negative"],
        instructions="Classify the following text into one of the following classes", separator="<separator>",
        eos="<eos>", rank=2, target_layers=["query", "value"], objective="label", max_length=128,
        positive_label="Negative", threshold=0.57,
        calibration=Calibration("platt", a=0.27, b=-0.02, fitted_on="bench", rows=160).to_json(),
    )
    save_adapter(model, meta, path)


def cpu_seconds(pid: int) -> float:
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


class Profiler:
    """py-spy on the producer and the workers: raw folded stacks, one file per process."""

    def __init__(self, tmp: Path):
        self.exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        self.tmp, self.procs = tmp, []

    def attach(self, name: str, pid: int) -> None:
        out = self.tmp / f"{name}.folded"
        out.unlink(missing_ok=True)
        self.procs.append((subprocess.Popen(
            [self.exe, "record", "--pid", str(pid), "--rate", str(PROFILE_HZ), "--format", "raw", "--nolineno",
             "--nonblocking", "--output", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), out))

    def stop(self) -> list[Path]:
        """Stop sampling (SIGINT writes the file; a producer's py-spy ends with it) and return the files."""
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc, _ in self.procs:
            proc.wait(60)
        files, self.procs = [out for _, out in self.procs], []
        return files


def folded(files: list[Path]) -> Counter:
    """Samples per stack (tuple of frames, outermost first) over several py-spy raw files."""
    stacks: Counter = Counter()
    for path in files:
        if path.exists():
            for line in path.read_text().splitlines():
                stack, _, n = line.rpartition(" ")
                if stack:
                    stacks[tuple(short(f) for f in stack.split(";"))] += int(n)
    return stacks


def short(frame: str) -> str:
    """'fn (/…/site-packages/kombu/x.py)' -> 'fn (kombu/x.py)'; the repository's own files relative to it."""
    match = re.match(r"(.*) \((.*)\)$", frame)
    if not match:
        return frame
    fn, path = match.groups()
    for cut in ("site-packages/", f"{common.ROOT}/", "lib/python3."):
        if cut in path:
            path = path.split(cut, 1)[1]
            path = path.split("/", 1)[1] if cut == "lib/python3." else path
            break
    return f"{fn} ({path})"


def module(frame: str) -> str:
    """The package (or repository folder) a frame's file belongs to: redis, kombu, json, producer/results.py…"""
    path = frame.rpartition("(")[2].rstrip(")")
    parts = path.split("/")
    if parts[0] in ("agile", "producer", "worker", "cli", "serve"):
        return path
    return parts[0].removesuffix(".py")


def top(stacks: Counter, comments: int, n: int) -> dict:
    """Own and inclusive CPU per function, own CPU per module: share of samples and µs per comment."""
    total = sum(stacks.values())
    own, incl, mods = Counter(), Counter(), Counter()
    for stack, k in stacks.items():
        own[stack[-1]] += k
        mods[module(stack[-1])] += k
        for frame in set(stack):
            incl[frame] += k

    def rows(counter: Counter, limit: int, skip: float = 1.01) -> list[dict]:
        picked = [(f, k) for f, k in counter.most_common() if k / total < skip][:limit]
        return [{"what": f, "share": k / total, "us_per_comment": k / PROFILE_HZ / comments * 1e6} for f, k in picked]

    return {"samples": total, "cpu_us_per_comment": total / PROFILE_HZ / comments * 1e6,
            "own": rows(own, n), "modules": rows(mods, n), "inclusive": rows(incl, n, skip=0.9)}


def moderate(cluster: Cluster, dump: Path, out: Path, batch: int, profiler: Profiler | None) -> dict:
    """One `agile moderate` run: its rusage (CPU at exit), its wall, and the job's span in its meta (from
    its creation, once the dump is checked, to its output renamed into place; ms stamps)."""
    args = [sys.executable, "-m", "agile.cli.main", "moderate", str(dump), "-o", str(out), "--adapter", ADAPTER,
            "--batch-size", str(batch)]
    start = time.perf_counter()
    proc = cluster.spawn("producer", args, cluster.env())
    if profiler is not None:
        profiler.attach("producer", proc.pid)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    log = (cluster.tmp / "producer.log").read_text()
    if proc.returncode != 0:
        sys.exit(f"agile moderate exited {proc.returncode}:\n{log[-3000:]}")
    found = re.search(r"job (\S+): (\d+) rows in", log)
    if found is None:
        sys.exit(f"agile moderate printed no summary:\n{log[-3000:]}")
    created, first, last, delivered = map(float, cluster.redis.hmget(
        JobKeys(cluster.settings.key_prefix, found[1]).meta, "created", "first_done_at", "last_done_at",
        "delivered_at"))
    # head: until the first batch is written back; tail: from the last one to the output in place
    return {"rows": int(found[2]), "job_s": delivered - created, "head_s": first - created,
            "tail_s": delivered - last, "wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime}


def check_output(path: Path, rows: int) -> None:
    """Every row back once, scored (no error), a calibrated probability in [0, 1]."""
    import pandas as pd

    frame = pd.read_csv(path)
    errors = frame["error"].notna().sum() if "error" in frame else 0
    p = frame["p_Negative"]
    if len(frame) != rows or frame["id"].nunique() != rows or errors or not p.between(0, 1).all():
        sys.exit(f"{path}: {len(frame)} rows ({frame['id'].nunique()} ids) of {rows}, {errors} errors")


def run_cluster(args: argparse.Namespace, settings: QueueSettings, tmp: Path, workers: int, rate: float,
                in_hand: int, dumps: dict[int, Path]) -> tuple[list[dict], dict]:
    """W workers at `rate`: a warm-up job, then one job per --batch-size x --rows; CPU read before anything
    exits."""
    results, profiles = [], {}
    with Cluster(tmp, settings.with_(tasks_in_hand=in_hand)) as cluster:
        env = {"PYTHONPATH": str(BENCH), "BENCH_SIM_RATE": str(rate)}
        procs = cluster.workers(workers, 1, env, ("--include", "sim_model"))
        redis_pid = cluster.procs[0].pid
        warm = moderate(cluster, dumps[WARMUP_ROWS], tmp / "warm.csv", args.batch_size[0], None)
        for batch, rows in itertools.product(args.batch_size, args.rows):
            before = [cpu_seconds(p.pid) for p in procs], cpu_seconds(redis_pid)
            profiler = Profiler(tmp) if args.profile else None
            if profiler is not None:
                for i, p in enumerate(procs):
                    profiler.attach(f"worker{i}", p.pid)
            run = moderate(cluster, dumps[rows], tmp / "scores.csv", batch, profiler)
            worker_cpu = sum(cpu_seconds(p.pid) for p in procs) - sum(before[0])
            redis_cpu = cpu_seconds(redis_pid) - before[1]
            if profiler is not None:
                files = profiler.stop()
                mine = [f for f in files if f.stem == "producer"]
                profiles[f"b{batch}-rows{rows}"] = {
                    "producer": top(folded(mine), rows, args.top),
                    "workers": top(folded([f for f in files if f not in mine]), rows, args.top)}
            check_output(tmp / "scores.csv", rows)
            ideal = workers * rate if rate else None
            per = 1e6 / rows
            results.append({
                "workers": workers, "rate": rate, "in_hand": in_hand, "rows": rows, "batch": batch, **run,
                "comments_per_s": rows / run["job_s"], "ideal_per_s": ideal,
                "share_of_ideal": rows / run["job_s"] / ideal if ideal else None,
                "producer_us": run["cpu_s"] * per,
                "producer_us_less_startup": (run["cpu_s"] - warm["cpu_s"]) / (rows - WARMUP_ROWS) * 1e6,
                "producer_startup_cpu_s": warm["cpu_s"], "workers_us": worker_cpu * per, "redis_us": redis_cpu * per,
            })
            print(f"  {workers} worker(s) x {rate or 'inf'}/s, {in_hand} in hand, {batch} a task, {rows:,} rows: "
                  f"{rows / run['job_s']:,.0f}/s "
                  f"({run['job_s']:.1f} s), load {os.getloadavg()[0]:.2f}", flush=True)
    return results, profiles


def print_profile(what: str, profile: dict) -> None:
    print(f"\n{what}: {profile['samples']} samples at {PROFILE_HZ} Hz = {profile['cpu_us_per_comment']:.1f} µs of "
          "CPU per comment (sampling's own share of the cores slows it)")
    for kind in ("own", "modules", "inclusive"):
        common.print_table([f"{kind} CPU", "share", "µs/comment"],
                           [[r["what"], f"{r['share']:.1%}", r["us_per_comment"]] for r in profile[kind]])
        print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    parser.add_argument("--workers", type=ints, default=[1, 4], help="worker processes, comma-separated")
    parser.add_argument("--rate", type=lambda s: [float(x) for x in s.split(",")], default=[0.0, 10_000.0],
                        help="simulated comments/s per worker, comma-separated (0: no sleep)")
    parser.add_argument("--in-hand", type=ints, default=[2],
                        help="batches each worker holds at once (AGILE_TASKS_IN_HAND), comma-separated")
    parser.add_argument("--rows", type=ints, default=[50_000, 150_000], help="rows per job, comma-separated")
    parser.add_argument("--batch-size", type=ints, default=[1024],
                        help="comments per task, comma-separated (default 1024: what the producer picks for GPU "
                             "workers)")
    parser.add_argument("--chars", type=int, help="cut every comment to its first N characters (default: whole)")
    parser.add_argument("--profile", action="store_true", help="sample the producer and workers with py-spy")
    parser.add_argument("--top", type=int, default=12, help="rows per profile table")
    parser.add_argument("--name", help="result file name (default: derived from the flags)")
    args = parser.parse_args()
    if args.profile and not (shutil.which("py-spy") or (Path(sys.executable).parent / "py-spy").exists()):
        parser.error("--profile samples with py-spy, which is not installed: pip install py-spy")
    common.setup("cpu", 1)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # the `with` blocks stop every process started here
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    results, profiles = [], {}
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        from agile.testing import make_tiny_preset

        tmp = Path(tmp)
        preset = make_tiny_preset(tmp / "tiny")
        make_adapter(preset, tmp / "adapters" / ADAPTER)
        dumps = {}
        for rows in sorted({WARMUP_ROWS, *args.rows}):
            dumps[rows] = tmp / f"dump{rows}.csv"
            write_dump(dumps[rows], rows, args.chars)
        settings = QueueSettings(model=str(preset), adapter_path=str(tmp / "adapters"))
        for workers, rate, in_hand in itertools.product(args.workers, args.rate, args.in_hand):
            where = tmp / f"w{workers}-r{rate:g}-h{in_hand}"
            where.mkdir()
            got, prof = run_cluster(args, settings, where, workers, rate, in_hand, dumps)
            results += got
            profiles.update({f"w{workers}-r{rate:g}-h{in_hand}-{k}": v for k, v in prof.items()})

    print()
    common.print_table(
        ["workers", "rate/s each", "in hand", "rows", "batch", "job s", "head s", "tail s", "comments/s", "ideal/s",
         "of ideal", "process s", "producer µs/c", "less start-up", "workers µs/c", "Redis µs/c"],
        [[r["workers"], f"{r['rate']:,.0f}" if r["rate"] else "∞", r["in_hand"], f"{r['rows']:,}", r["batch"],
          r["job_s"], r["head_s"], r["tail_s"], r["comments_per_s"],
          f"{r['ideal_per_s']:,.0f}" if r["ideal_per_s"] else "∞",
          f"{r['share_of_ideal']:.0%}" if r["share_of_ideal"] else "-", r["wall_s"], r["producer_us"],
          r["producer_us_less_startup"], r["workers_us"], r["redis_us"]] for r in results])
    print(f"\ngoal (issue 19): >= {GOAL_SHARE:.0%} of ideal at 4 x 10,000/s on 150,000 rows; producer and "
          f"workers <= {GOAL_US:.0f} µs per comment")
    for key, profile in profiles.items():
        print_profile(f"{key} producer", profile["producer"])
        print_profile(f"{key} workers (summed)", profile["workers"])
    name = args.name or ("scale-" + "-".join([f"w{'_'.join(map(str, args.workers))}",
                                              f"r{'_'.join(f'{r:g}' for r in args.rate)}",
                                              f"h{'_'.join(map(str, args.in_hand))}",
                                              f"rows{'_'.join(map(str, args.rows))}",
                                              f"b{'_'.join(map(str, args.batch_size))}"])
                         + ("-profile" if args.profile else ""))
    common.write_result(name, {"simulated_model": "bench/sim_model.py", "producer": "agile moderate (subprocess)",
                               "adapter": "tiny model, platt-calibrated", "warmup_rows": WARMUP_ROWS,
                               "runs": results, "profiles": profiles}, "cpu")


if __name__ == "__main__":
    main()
