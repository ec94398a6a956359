"""The agile loop from a raw dump, as docs/TRAINING.md walks it, each command timed as a user runs it.

The dump is ETHOS's 800 training rows (ids and texts only); where a person would label in the
browser (`agile label`), their ETHOS labels are written into the `label` column as the page writes
them (the output names `none` / `hate`). The first `agile train` is given `--test ethos` so each
round's policy can be read (its 198 test rows scored once a round, ~15 s; `--init` inherits it).
The total is the dump to a second-round policy; the third round's `suggest` (with the second policy)
is timed after it, apart: with LoRA on the last blocks (`--quick`) it reads the pool's frozen-block
output the first `suggest` kept.

    python bench/bench_loop_walkthrough.py                      # the codelab's recipe, the defaults
    python bench/bench_loop_walkthrough.py --train-args="--lora-targets all --lora-blocks 6 --batch-size 16 \
        --learning-rate 8e-4 --epochs 3" --name loop-walkthrough-fast
    python bench/bench_loop_walkthrough.py --train-args=--quick --round-args=--quick --name loop-walkthrough-quick
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common


def timed(step: str, argv: list[str], steps: list[dict]) -> None:
    """Run one `agile` command as a user would (its own process), and note its wall-clock seconds."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "agile.cli.main", *argv], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{step}: agile {argv[0]} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    steps.append({"step": step, "command": "agile " + shlex.join(argv),
                  "seconds": round(time.perf_counter() - started, 1)})
    store = [line for line in (done.stdout + done.stderr).replace("\r", "\n").splitlines()
             if line.startswith("frozen blocks' output")]
    if store:  # what the frozen-block stores saved this step
        steps[-1]["store"] = store[-1]
    print(f"{step}: {steps[-1]['seconds']} s", *store, flush=True)


def own_home(home: Path) -> None:
    """An AGILE_HOME of the walkthrough's own, as a new user's: the converted model linked in from the real
    one (not converted again), no frozen-block stores from earlier runs."""
    from agile.settings import HomeSettings

    real = HomeSettings.from_env().home_dir
    home.mkdir(parents=True)
    for entry in real.glob("*"):
        if entry.name != "frozen":
            (home / entry.name).symlink_to(entry.resolve())
    os.environ["AGILE_HOME"] = str(home)


def labelled(path: Path, oracle: dict[str, str]) -> None:
    """What `agile label` leaves in the file once every row has its key pressed: the label column filled."""
    import pandas as pd

    rows = pd.read_csv(path, dtype=str, keep_default_na=False)
    rows["label"] = rows["text"].map(oracle)
    rows.to_csv(path, index=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--start", type=int, default=100, help="the first round's random draw")
    parser.add_argument("--per-round", type=int, default=50)
    parser.add_argument("--train-args", default="", help="extra `agile train` flags for the first round")
    parser.add_argument("--round-args", default="", help="extra `agile train --init` flags for the second round")
    parser.add_argument("--name", default="loop-walkthrough", help="results file name (bench/results/NAME.json)")
    args = parser.parse_args()
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import pandas as pd

    from agile.prompt import DEFAULT_LABELS
    from agile.trainer.data import load_examples

    pool = load_examples("ethos", DEFAULT_LABELS, "train")
    work = Path(tempfile.mkdtemp(prefix="agile-walk-"))
    own_home(work / "home")
    dump = work / "dump.csv"
    pd.DataFrame({"id": [f"c{i:04d}" for i in range(len(pool))], "text": pool.texts}).to_csv(dump, index=False)
    oracle = dict(zip(pool.texts, (("none", "hate")[y] for y in pool.labels), strict=True))
    start, round2, round3 = work / "start.csv", work / "round2.csv", work / "round3.csv"
    first, second = work / "my-hate", work / "my-hate-r2"
    steps: list[dict] = []
    timed("draw", ["suggest", "-i", str(dump), "-n", str(args.start), "-o", str(start)], steps)
    labelled(start, oracle)
    timed("first policy", ["train", "--data", str(start), "--outputs", "none,hate", "--test", "ethos",
                           *shlex.split(args.train_args), "-o", str(first)], steps)
    timed("suggest", ["suggest", "--adapter", str(first), "-i", str(dump), "-n", str(args.per_round),
                      "--exclude", str(start), "-o", str(round2)], steps)
    labelled(round2, oracle)
    timed("second round", ["train", "--init", str(first), "--data", str(round2), *shlex.split(args.round_args),
                           "-o", str(second)], steps)
    rounds = json.loads((second / "adapter.json").read_text())["rounds"]
    total = sum(s["seconds"] for s in steps)
    timed("next suggest", ["suggest", "--adapter", str(second), "-i", str(dump), "-n", str(args.per_round),
                           "--exclude", str(start), "--exclude", str(round2), "-o", str(round3)], steps)
    common.print_table(["step", "seconds", "command"], [[s["step"], s["seconds"], s["command"]] for s in steps])
    print(f"{total:.0f} s from the dump to the second policy (the next suggest apart); test ROC-AUC by round: "
          f"{[round(r['test_roc_auc'], 4) for r in rounds]}")
    common.write_result(args.name, {"steps": steps, "total_seconds": round(total, 1), "rounds": rounds,
                                    "settings": vars(args)}, "cpu")


if __name__ == "__main__":
    main()
