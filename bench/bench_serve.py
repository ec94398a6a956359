"""`agile serve` under load: requests/s and p50/p99 latency of Perspective's comments:analyze.

A private redis-server, real `agile worker` processes and a real `agile serve` process
(bench_queue's Cluster starts and kills them all); the client is httpx in this process,
C concurrent connections each sending one comment (ETHOS, in order) per request, for
--seconds at each concurrency after a short warm-up. Also counted: the tasks the server
sent (its /metrics), so comments per task shows the coalescing. Perspective's default
quota is 1 request per second; the last column compares.

    python bench/bench_serve.py --model tiny --concurrency 1,4,16,64
    python bench/bench_serve.py --model gemma3_270m --concurrency 1,4,16 --seconds 60

Client, server and workers share this machine's cores: the figures are a floor.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import common
from bench_queue import Cluster, comments, free_port

from agile.settings import QueueSettings

PERSPECTIVE_QPS = 1.0  # Perspective API's default quota
KEY = "bench-key"


def tiny_adapter(preset: Path, root: Path) -> str:
    """An untrained LoRA adapter (keras' initial weights) on the tiny preset: scores meaningless, cost real."""
    from agile.adapters import AdapterMeta, save_adapter
    from agile.models import load_model

    model = load_model(str(preset))
    model.backbone.enable_lora(2, target_layer_names=["query", "value"])
    meta = AdapterMeta(name="bench-tiny", base_model=str(preset), base_checksum=model.agile_info.checksum,
                       labels=["Toxic", "Safe"], instructions="Classify the following text into one of the "
                       "following classes", separator="<separator>", eos="<eos>", rank=2,
                       target_layers=["query", "value"], objective="label", max_length=128, positive_label="Toxic")
    save_adapter(model, meta, root / "bench-tiny")
    return "bench-tiny"


def counters(text: str) -> tuple[float, float, float]:
    """(tasks sent, analyze requests answered, their total seconds), from the server's /metrics."""
    def total(pattern: str) -> float:
        return sum(float(v) for v in re.findall(pattern, text, re.M))

    return (total(r"^agile_serve_tasks_total\{[^}]*\} (\S+)$"),
            total(r'^agile_serve_request_seconds_count\{route="/v1alpha1/comments:analyze"\} (\S+)$'),
            total(r'^agile_serve_request_seconds_sum\{route="/v1alpha1/comments:analyze"\} (\S+)$'))


async def load(url: str, texts: list[str], concurrency: int, seconds: float, timeout: float) -> dict:
    """C clients in a loop for `seconds`: latencies of the 200s, and the count of everything else."""
    import httpx

    latencies, failures, sent = [], {}, 0
    stop = time.monotonic() + seconds

    async def client(http: httpx.AsyncClient, n: int) -> None:
        nonlocal sent
        while time.monotonic() < stop:
            body = {"comment": {"text": texts[(sent + n) % len(texts)]}, "requestedAttributes": {"TOXICITY": {}}}
            sent += 1
            start = time.perf_counter()
            r = await http.post(f"{url}/v1alpha1/comments:analyze", params={"key": KEY}, json=body)
            if r.status_code == 200:
                latencies.append(time.perf_counter() - start)
            else:
                failures[r.status_code] = failures.get(r.status_code, 0) + 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as http:
        before = counters((await http.get(f"{url}/metrics")).text)
        start = time.monotonic()
        await asyncio.gather(*[client(http, n) for n in range(concurrency)])
        wall = time.monotonic() - start
        tasks, answered, spent = (a - b for a, b in zip(counters((await http.get(f"{url}/metrics")).text), before,
                                                         strict=True))
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else float("nan")

    return {"concurrency": concurrency, "ok": len(latencies), "failures": failures, "seconds": wall,
            "rps": len(latencies) / wall, "p50_ms": pct(0.50), "p99_ms": pct(0.99), "tasks": tasks,
            "server_mean_ms": spent / answered * 1000 if answered else float("nan"),
            "comments_per_task": len(latencies) / tasks if tasks else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="tiny (a random tiny Gemma 3) or gemma3_270m")
    parser.add_argument("--concurrency", type=lambda s: [int(c) for c in s.split(",")], default=[1, 4, 16, 64])
    parser.add_argument("--seconds", type=float, default=20, help="timed seconds per concurrency")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--coalesce-ms", type=float, default=5.0)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--scoring-batch", type=int, default=16, help="rows per forward pass in the worker")
    parser.add_argument("--name", help="result file name")
    args = parser.parse_args()
    common.setup("cpu", args.threads)

    with tempfile.TemporaryDirectory(prefix="agile-bench-serve-") as tmp:
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
        settings = QueueSettings(model=model, adapter_path=str(adapters), scoring_batch=args.scoring_batch)
        with Cluster(tmp, settings) as cluster:
            cluster.workers(args.workers, args.threads)
            port = free_port()
            env = {**cluster.env(1), "AGILE_API_KEYS": KEY, "AGILE_SERVE_ATTRIBUTES": str(attributes),
                   "AGILE_SERVE_COALESCE_MS": str(args.coalesce_ms), "AGILE_SERVE_MAX_BATCH": str(args.max_batch),
                   "AGILE_SERVE_TIMEOUT": "120", "AGILE_SERVE_MAX_QUEUE": "100000"}
            server = cluster.spawn("serve", [sys.executable, "-m", "agile.cli.main", "serve", "--port", str(port),
                                             "--log-level", "warning"], env)
            url = f"http://127.0.0.1:{port}"
            wait_until_up(url, server, tmp / "serve.log")
            texts = comments(2000)
            asyncio.run(load(url, texts, 4, 3, 120))  # warm-up: adapter loaded, connections open
            runs = [asyncio.run(load(url, texts, c, args.seconds, 120)) for c in args.concurrency]

    common.print_table(
        ["concurrent clients", "requests/s", "p50 ms", "p99 ms", "server mean ms", "comments per task", "errors",
         "vs Perspective 1 QPS"],
        [[r["concurrency"], r["rps"], r["p50_ms"], r["p99_ms"], r["server_mean_ms"], r["comments_per_task"],
          sum(r["failures"].values()), f"{r['rps'] / PERSPECTIVE_QPS:.2g}x"] for r in runs])
    name = args.name or f"serve-{Path(model).name if args.model != 'tiny' else 'tiny'}-w{args.workers}-t{args.threads}"
    common.write_result(name, {"model": args.model, "workers": args.workers, "threads": args.threads,
                               "coalesce_ms": args.coalesce_ms, "max_batch": args.max_batch,
                               "scoring_batch": args.scoring_batch, "runs": runs}, "cpu")


def wait_until_up(url: str, proc, log: Path, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"agile serve exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    sys.exit(f"agile serve not up after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


if __name__ == "__main__":
    main()
