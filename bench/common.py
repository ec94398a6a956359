"""Shared by the bench scripts: device setup, ETHOS comments, warm-up timing, peak FLOP/s, result files.

Every script calls `setup()` before anything imports torch (it pins threads and
hides GPUs for --device cpu), prints a table, and writes bench/results/NAME.json
holding the numbers, the command line and a description of the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
ETHOS_CSV = ROOT / "data" / "ethos" / "Ethos_Dataset_Binary.csv"
_LOAD_AT_START = os.getloadavg()[0]  # other work on the CPU makes every timing here slower


def add_common_args(parser: argparse.ArgumentParser, n: int = 256, batch_size: int = 16, dtype: bool = True) -> None:
    parser.add_argument("--n", type=int, default=n, help="ETHOS comments (the file's first N rows)")
    parser.add_argument("--batch-size", type=int, default=batch_size, help="rows per forward pass")
    if dtype:
        parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--token-budget", type=int, default=None,
                        help="positions per forward pass (rows x padded width); 0: --batch-size rows decide; "
                             "default: ScoringSettings' for the device")
    parser.add_argument("--pipeline-rows", type=int, default=None,
                        help="texts per tokenize-and-launch group; 0: all at once; default: ScoringSettings'")
    parser.add_argument("--engine", default="lean", choices=("lean", "keras"), help="LabelScorer's forward")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=1, help="timed passes per method (median reported)")
    parser.add_argument("--name", help="result file name (default: derived from the script and flags)")


def setup(device: str, threads: int) -> None:
    """Select the torch backend, pin CPU threads, and make `device` the only one torch sees."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    os.environ.setdefault("USE_TF", "0")  # transformers would otherwise import TensorFlow-flavoured keras
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import torch

    torch.set_num_threads(threads)
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit(f"--device cuda: torch {torch.__version__} sees no GPU (a CPU build, or no driver)")


def ethos_comments(n: int) -> list[str]:
    import pandas as pd

    comments = pd.read_csv(ETHOS_CSV, sep=";")["comment"].tolist()
    if not 1 <= n <= len(comments):
        sys.exit(f"--n must be between 1 and {len(comments)} (ETHOS rows), got {n}")
    return comments[:n]


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], repeats: int = 1, warmup: Callable[[], object] | None = None):
    """(median seconds, last result): warm-up once, then `repeats` timed calls."""
    (warmup or fn)()
    seconds, result = [], None
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        result = fn()
        sync()
        seconds.append(time.perf_counter() - start)
    return sorted(seconds)[len(seconds) // 2], result


def matmul_gflops(dtype: str, device: str, m: int = 2048, k: int = 2048, n: int = 2048,
                  seconds: float = 1.0) -> float:
    """Dense [m,k] @ [k,n] GFLOP/s, best of a timed loop after warm-up: the hardware ceiling."""
    import torch

    kind = getattr(torch, dtype)
    a = torch.randn(m, k, dtype=kind, device=device)
    b = torch.randn(k, n, dtype=kind, device=device)
    for _ in range(3):
        a @ b
    best, spent = float("inf"), 0.0
    while spent < seconds:
        sync()
        start = time.perf_counter()
        a @ b
        sync()
        took = time.perf_counter() - start
        best, spent = min(best, took), spent + took
    return 2 * m * k * n / best / 1e9


def peak_size(device: str) -> int:
    """A square matmul big enough to fill the device (a GPU needs far more work than 2 CPU cores)."""
    return 8192 if device == "cuda" else 2048


class Peak:
    """Square matmul GFLOP/s per dtype, sampled at the start and again in every round; the best is kept.

    One sample can land in a slow moment of a shared machine (2048^2 float32 on one thread read
    88 to 158 GFLOP/s in runs minutes apart here), and too low a peak gives an impossible MFU
    (over 100%) or a negative overhead. `check` refuses such a figure instead of printing it.
    """

    def __init__(self, device: str, dtypes: tuple[str, ...]):
        self.device, self.size = device, peak_size(device)
        self.gflops = {dtype: 0.0 for dtype in dtypes}
        self.sample(seconds=1.0)

    def sample(self, seconds: float = 0.3) -> None:
        for dtype, best in self.gflops.items():
            self.gflops[dtype] = max(best, matmul_gflops(dtype, self.device, self.size, self.size, self.size, seconds))

    def __getitem__(self, dtype: str) -> float:
        return self.gflops[dtype]

    @staticmethod
    def check(what: str, utilisation: float) -> None:
        if utilisation > 1:
            raise SystemExit(f"{what} is {utilisation:.0%} of the measured peak: the peak was under-measured "
                             "(a busy machine?); rerun on a quiet one")


def scoring_settings(args, **overrides):
    """The ScoringSettings the flags ask for (max_length 128: every method sees the same rows)."""
    from agile.scoring import ScoringSettings

    values = dict(max_length=128, batch_size=args.batch_size, token_budget=args.token_budget, engine=args.engine,
                  pipeline_rows=args.pipeline_rows)
    return ScoringSettings(**{**values, **overrides})


def computed_positions(scorer, rows) -> dict[str, int]:
    """Positions the scorer's forward passes compute for `rows` (padding included, the shared prefix once).

    Rows are planned group by group, as `LabelScorer.score` takes them. `saved` is what reusing
    the prefix spares: its tokens in every row that reuses it, less the one pass that computes it.
    """
    step = scorer.group_size(len(rows))
    run = reused = n_passes = 0
    for start in range(0, len(rows), step):
        group = rows[start : start + step]
        prefix, passes = scorer.plan(group)
        widths = [max(len(group[i]) - len(prefix) * reuse for i in idx) for reuse, idx in passes]
        reused += sum(len(idx) for reuse, idx in passes if reuse)
        run += sum(len(idx) * w for (_, idx), w in zip(passes, widths, strict=True))
        n_passes += len(passes)
    prefix = scorer.shared_prefix() if scorer.settings.reuse_prefix else []
    run += len(prefix) if reused else 0
    return {"computed": run, "saved": len(prefix) * reused - (len(prefix) if reused else 0),
            "passes": n_passes, "prefix": len(prefix)}


def scorer_flops(scorer, rows, positions: int | None = None) -> int:
    """Linear FLOPs of the passes `scorer` runs over `rows` (the positions `computed_positions`
    counts, or `positions`): the lean forward runs most of its last layer at each row's last
    position only, keras-hub's forward everywhere (`agile.lean.linear_flops`)."""
    from agile.lean import linear_flops

    if positions is None:
        positions = computed_positions(scorer, rows)["computed"]
    return linear_flops(scorer.model.backbone, positions, len(rows), lean=scorer.uses_lean)


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def rss_mb() -> float | None:
    """Resident memory now (Linux), or None."""
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    """Peak resident memory of this process (since the last reset_peak_rss(), where Linux allows)."""
    return _status_mb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> None:
    """Start the peak over from the current RSS, so the next phase's peak is its own (Linux 4.0+)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def machine(device: str) -> dict:
    """What the numbers were measured on, including how busy the CPU was when the run began."""
    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        flags = Path("/proc/cpuinfo").read_text()
        isa = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in flags]
    except OSError:
        isa = []
    info = {
        "cpu": cpu, "cores": os.cpu_count(), "isa": isa, "threads": torch.get_num_threads(),
        "load_average_at_start": _LOAD_AT_START, "load_average_at_end": os.getloadavg()[0],
        "python": platform.python_version(),
        "torch": torch.__version__, "device": device,
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                        capture_output=True, text=True, check=True).stdout.strip()
    return info


def write_result(name: str, payload: dict, device: str, command: str | None = None) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    record = {
        "command": command or " ".join(["python", *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(device),
        **payload,
    }
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwrote {path.relative_to(ROOT)}")
    return path


def print_table(headers: list[str], rows: list[list]) -> None:
    """A markdown table (pastes straight into BENCHMARKS.md)."""

    def cell(v) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:,.0f}"
        return str(v)

    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join(" --- " for _ in headers) + "|")
    for row in rows:
        print("| " + " | ".join(cell(v) for v in row) + " |")


def paired_auc_bootstrap(truth, first, second, resamples: int = 10_000, seed: int = 0) -> dict[str, float]:
    """How sure is a difference in ROC-AUC between two scorers of the same test rows?

    `first` and `second` are [rows] or [runs, rows] (e.g. one row of scores per seed, the same test
    rows): the difference is the mean over runs of AUC(first) - AUC(second). The rows are resampled
    with replacement within each class (so every resample has both), the same rows for both scorers
    and every run: a paired, stratified bootstrap. Returns the observed difference, its 95%
    percentile interval and the share of resamples where `first` is ahead.
    """
    import numpy as np

    truth = np.asarray(truth).astype(bool)
    first, second = np.atleast_2d(np.asarray(first, float)), np.atleast_2d(np.asarray(second, float))
    if first.shape != second.shape or first.shape[1] != len(truth) or truth.all() or not truth.any():
        raise ValueError("both scorers need a score for every test row, and the rows both classes")

    def wins(scores):  # [positives, negatives]: 1 where the positive ranks above, 1/2 on a tie; mean over runs
        pos, neg = scores[:, truth][:, :, None], scores[:, ~truth][:, None, :]
        return ((pos > neg) + 0.5 * (pos == neg)).mean(axis=0)

    diff = wins(first) - wins(second)
    n_pos, n_neg = diff.shape
    rng = np.random.default_rng(seed)
    pos = np.stack([np.bincount(row, minlength=n_pos) for row in rng.integers(0, n_pos, (resamples, n_pos))])
    neg = np.stack([np.bincount(row, minlength=n_neg) for row in rng.integers(0, n_neg, (resamples, n_neg))])
    deltas = np.einsum("bp,pn,bn->b", pos, diff, neg) / (n_pos * n_neg)
    low, high = np.percentile(deltas, [2.5, 97.5])
    return {"delta": float(diff.mean()), "low": float(low), "high": float(high),
            "share_ahead": float((deltas > 0).mean()), "resamples": resamples}
