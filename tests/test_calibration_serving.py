"""One calibrated adapter, two paths: `agile score` in-process and a real worker behind a real Redis
serve the same calibrated probability and the same flag for every comment."""

from __future__ import annotations

import json
import shutil

import pandas as pd
from queue_fixtures import queue_env, read_output, run_cli, write_csv

from agile.calibration import Calibration
from agile.cli.main import main as agile

CALIBRATION = Calibration("platt", a=0.4, b=0.9, fitted_on="a test", rows=10)


def test_agile_score_and_the_worker_serve_the_same_calibrated_probability(
    processes, adapter_dir, tiny_preset, tmp_path, monkeypatch, capsys
):
    adapters = tmp_path / "adapters"
    shutil.copytree(adapter_dir / "tiny-toxic", adapters / "tiny-cal")
    meta_path = adapters / "tiny-cal" / "adapter.json"
    meta = json.loads(meta_path.read_text())
    meta.update(name="tiny-cal", calibration=CALIBRATION.to_json(), threshold=0.6)
    meta_path.write_text(json.dumps(meta))

    source = write_csv(tmp_path / "dump.csv", 12)
    score = lambda adapter, out: agile(["score", "--model", str(tiny_preset), "--adapter", str(adapter),  # noqa: E731
                                        "-i", str(source), "-o", str(out)])
    assert score(adapters / "tiny-cal", tmp_path / "local.csv") == 0
    assert score(adapter_dir / "tiny-toxic", tmp_path / "raw.csv") == 0
    local, raw = pd.read_csv(tmp_path / "local.csv"), pd.read_csv(tmp_path / "raw.csv")

    env = queue_env(processes.redis().url, tiny_preset, adapters)
    processes.worker("w1", env).wait_ready()
    for key, value in env.items():
        if key.startswith("AGILE_"):
            monkeypatch.setenv(key, value)
    assert run_cli(["moderate", str(source), "-o", str(tmp_path / "queued.csv"), "--adapter", "tiny-cal",
                    "--batch-size", "5"]) == 0
    queued = {r["id"]: r for r in read_output(tmp_path / "queued.csv")}

    assert sorted(queued) == sorted(local["id"])
    for row in local.to_dict("records"):
        other = queued[row["id"]]
        assert abs(other["p_Toxic"] - row["p_Toxic"]) < 1e-5 and abs(other["p_Safe"] - row["p_Safe"]) < 1e-5
        assert bool(other["flagged"]) == bool(row["flagged"]) == (row["p_Toxic"] >= 0.6)
    # ...and what both serve is the calibration applied to the raw score, not the raw score
    expected = CALIBRATION.positive(raw["p_Toxic"].to_numpy())
    assert (local["p_Toxic"] - expected).abs().max() < 1e-5
    assert (local["p_Toxic"] - raw["p_Toxic"]).abs().max() > 0.01
