"""Interactive latency while a bulk job runs: `comments:analyze` p50/p99 on one worker, idle and busy.

A private redis-server, one real `agile worker`, a real `agile serve` and a real
`agile moderate` (bench_queue's Cluster starts and kills them all). First --requests
sequential one-comment requests on the idle worker; then, for each --bulk-batch size,
a bulk job of --bulk-rows ETHOS comments is started on the same worker and the same
requests are sent while it runs. The requests go to the interactive lane, which the
worker takes before the bulk queue (agile.wire.lanes), so each should wait at most for
the bulk batch in hand: the table gives that batch's time beside the latencies.

    python bench/bench_interactive.py --model gemma3_270m --bulk-batch 64,16
    python bench/bench_interactive.py --model tiny --requests 30

Client, server, producer and worker share this machine's cores: the figures are a floor.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

import common
import numpy as np
from bench_queue import Cluster, comments, free_port
from bench_serve import KEY, tiny_adapter, wait_until_up

from agile.settings import QueueSettings


def requests(url: str, texts: list[str], timeout: float) -> dict:
    """Send each text as one comments:analyze request, one after another: latencies and status codes."""
    import httpx

    seconds, codes = [], []
    with httpx.Client(timeout=timeout) as http:
        for text in texts:
            started = time.perf_counter()
            r = http.post(f"{url}/v1alpha1/comments:analyze", params={"key": KEY},
                          json={"comment": {"text": text}, "requestedAttributes": {"TOXICITY": {}}})
            seconds.append(time.perf_counter() - started)
            codes.append(r.status_code)
    ms = np.array(seconds) * 1000
    return {"n": len(texts), "ok": codes.count(200), "codes": sorted(set(codes)),
            "p50_ms": round(float(np.percentile(ms, 50)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "max_ms": round(float(ms.max()), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="tiny (a random tiny Gemma 3) or gemma3_270m")
    parser.add_argument("--requests", type=int, default=15, help="sequential requests per phase")
    parser.add_argument("--bulk-rows", type=int, default=2000, help="comments in the bulk job")
    parser.add_argument("--bulk-batch", type=lambda s: [int(b) for b in s.split(",")], default=[64, 16],
                        help="comments per bulk task, one busy phase each")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the worker")
    parser.add_argument("--timeout", type=float, default=30, help="the server's deadline per request (504 after)")
    parser.add_argument("--name", help="result file name")
    args = parser.parse_args()
    common.setup("cpu", args.threads)

    runs = []
    with tempfile.TemporaryDirectory(prefix="agile-bench-interactive-") as tmp:
        tmp = Path(tmp)
        adapters = tmp / "adapters"
        if args.model == "tiny":
            from agile.testing import make_tiny_preset

            model = str(make_tiny_preset(tmp / "tiny"))
            adapter = tiny_adapter(Path(model), adapters)
        else:
            model, adapter = args.model, "ethos-hate"
        attributes = tmp / "attributes.json"
        attributes.write_text(json.dumps({"attributes": {"TOXICITY": adapter}}))
        dump = tmp / "bulk.csv"
        with dump.open("w", newline="") as f:
            csv.writer(f).writerows([["id", "text"], *([f"c{i}", t] for i, t in enumerate(comments(args.bulk_rows)))])
        texts = comments(args.requests + 2000)[2000:]  # other comments than the bulk job's
        settings = QueueSettings(model=model, adapter_path=str(adapters))
        with Cluster(tmp, settings) as cluster:
            cluster.workers(1, args.threads)
            port = free_port()
            env = {**cluster.env(1), "AGILE_API_KEYS": KEY, "AGILE_SERVE_ATTRIBUTES": str(attributes),
                   "AGILE_SERVE_TIMEOUT": str(args.timeout)}
            server = cluster.spawn("serve", [sys.executable, "-m", "agile.cli.main", "serve", "--port", str(port),
                                             "--log-level", "warning"], env)
            url = f"http://127.0.0.1:{port}"
            wait_until_up(url, server, tmp / "serve.log")
            requests(url, texts[:3], 120)  # warm-up: the adapter loaded, the connection open
            runs.append({"phase": "idle", "bulk_batch": None, "bulk_batch_s": None, **requests(url, texts, 120)})
            for batch in args.bulk_batch:
                out = tmp / f"bulk-{batch}.csv"
                bulk = cluster.spawn(f"moderate-{batch}", [sys.executable, "-m", "agile.cli.main", "moderate",
                                                           str(dump), "-o", str(out), "--adapter", adapter,
                                                           "--batch-size", str(batch)], env)
                prefix = cluster.settings.key_prefix
                while not (metas := list(cluster.redis.scan_iter(f"{prefix}:job:*:meta"))):
                    time.sleep(0.1)
                meta = metas[0]
                while int(cluster.redis.hget(meta, "next_batch") or 0) < 2:  # the worker has work queued
                    time.sleep(0.1)

                def done(key=meta) -> tuple[float, int]:
                    return time.perf_counter(), int(cluster.redis.hget(key, "scored") or 0)

                first = done()
                found = requests(url, texts, args.timeout + 5)
                last = done()
                rate = (last[1] - first[1]) / (last[0] - first[0])
                runs.append({"phase": "bulk job running", "bulk_batch": batch,
                             "bulk_batch_s": round(batch / rate, 2) if rate else None, **found})
                bulk.kill()
                bulk.wait(10)
                for key in cluster.redis.scan_iter(f"{prefix}:job:*"):
                    cluster.redis.delete(key)
                cluster.redis.delete(cluster.settings.queue)  # the killed job's batches still queued
                time.sleep(2 * (runs[-1]["bulk_batch_s"] or 1))  # the batch in hand ends

    common.print_table(["phase", "bulk task (comments)", "one bulk task (s)", "requests", "200s", "p50 ms", "p99 ms",
                        "max ms"],
                       [[r["phase"], r["bulk_batch"] or "-", r["bulk_batch_s"] or "-", r["n"], r["ok"], r["p50_ms"],
                         r["p99_ms"], r["max_ms"]] for r in runs])
    name = args.name or f"interactive-{Path(model).name if args.model != 'tiny' else 'tiny'}-t{args.threads}"
    common.write_result(name, {"model": args.model, "threads": args.threads, "bulk_rows": args.bulk_rows,
                               "runs": runs}, "cpu")


if __name__ == "__main__":
    main()
