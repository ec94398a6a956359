"""The agile loop as docs/TRAINING.md walks it, command by command, on a tiny random Gemma 3: a raw
dump, a random first round, a first policy, a suggested second round, a policy continued from the first."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from agile.cli.main import main
from agile.testing import make_tiny_preset

HATE = [f"you are all {w} people {n}" for w in ("awful", "stupid", "vile", "dumb") for n in ("now", "here", "today")]
NONE = [f"what a {w} day {n}" for w in ("nice", "sunny", "calm", "good") for n in ("now", "here", "today")]


def labelled(path, oracle: dict[str, str]) -> None:
    """Fill the label column as `agile label` would (the output names), leaving every other cell as written."""
    rows = pd.read_csv(path, dtype=str, keep_default_na=False)
    rows["label"] = rows["text"].map(oracle)
    rows.to_csv(path, index=False)


@pytest.mark.parametrize("layout", [[], ["--lora-blocks", "1", "--compute-dtype", "float32"]],
                         ids=["every-block", "last-block"])  # float32: rows moved to validation are read too
def test_from_a_raw_dump_to_a_second_round_policy(tmp_path, capsys, monkeypatch, layout):
    """With LoRA on the last block only, the frozen block's output is kept: suggest computes the pool's,
    and the second round reads every row back (its parent's from training, the new ones from suggest)."""
    monkeypatch.setenv("AGILE_HOME", str(tmp_path / "home"))
    tiny = str(make_tiny_preset(tmp_path / "preset"))
    texts = [t for pair in zip(HATE, NONE, strict=True) for t in pair]
    oracle = {**dict.fromkeys(HATE, "hate"), **dict.fromkeys(NONE, "none")}
    dump = tmp_path / "dump.csv"
    pd.DataFrame({"id": [f"{i:04d}" for i in range(len(texts))], "text": texts}).to_csv(dump, index=False)

    start = tmp_path / "start.csv"
    assert main(["suggest", "-i", str(dump), "-n", "12", "-o", str(start)]) == 0
    labelled(start, oracle)
    first = tmp_path / "my-hate"
    common = ["--model", tiny, "--epochs", "1", "--validation-fraction", "0.4"]
    assert main(["train", "--data", str(start), "--labels", "Safe,Toxic", "--outputs", "none,hate", *common,
                 *layout, "-o", str(first)]) == 0, capsys.readouterr().err
    capsys.readouterr()

    round2 = tmp_path / "round2.csv"
    assert main(["suggest", "--adapter", str(first), "--model", tiny, "-i", str(dump), "-n", "6",
                 "--exclude", str(start), "-o", str(round2)]) == 0, capsys.readouterr().err
    said = capsys.readouterr().err
    assert ("frozen blocks' output: 0 pool rows read back from the last suggest, 12 computed" in said) == bool(layout)
    suggested = pd.read_csv(round2, dtype=str, keep_default_na=False)
    assert list(suggested.columns) == ["id", "text", "p_none", "p_hate", "label"]
    assert not set(suggested["text"]) & set(pd.read_csv(start)["text"]) and len(suggested) == 6
    assert all(texts[int(i)] == t for i, t in zip(suggested["id"], suggested["text"], strict=True))  # ids as written
    labelled(round2, oracle)
    second = tmp_path / "my-hate-r2"
    assert main(["train", "--init", str(first), "--data", str(round2), *common, "-o", str(second)]) == 0
    said = capsys.readouterr().out
    assert ("frozen blocks' output: 18 rows read back from earlier runs, 0 computed" in said) == bool(layout)

    meta = json.loads((second / "adapter.json").read_text())
    assert [r["training_rows"] for r in meta["rounds"]] == [12, 18] and meta["parent"]["name"] == "my-hate"
    assert meta["outputs"] == ["none", "hate"] and meta["labels"] == ["Safe", "Toxic"]
