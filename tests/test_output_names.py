"""An adapter names its outputs apart from its prompt's label words (`Negative` prompts, `hate` reads)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from agile.cli.main import main
from agile.decision import rows_of
from agile.policy import Policy
from agile.prompt import PromptTemplate

TEMPLATE = PromptTemplate(("Positive", "Negative"))


def test_a_policy_names_its_columns_prediction_and_positive_label():
    policy = Policy(TEMPLATE, "p", "Negative", 0.5, outputs=("none", "hate"))
    assert policy.labels == ["Positive", "Negative"] and policy.names == ["none", "hate"]
    assert policy.positive_name == "hate"
    fields = rows_of(policy.columns(np.array([[0.2, 0.8]]), [False]))[0]
    assert set(fields) >= {"p_none", "p_hate"} and fields["prediction"] == "hate" and fields["flagged"] is True
    assert [policy.label_index(w) for w in ("Negative", "hate", "none", "other")] == [1, 1, 0, None]
    plain = Policy(TEMPLATE, "p", "Negative", 0.5)  # an adapter written before outputs: the label words
    assert plain.names == plain.labels and plain.positive_name == "Negative"
    assert rows_of(plain.columns(np.array([[0.2, 0.8]]), [False]))[0]["prediction"] == "Negative"


@pytest.mark.parametrize("outputs, message", [
    (("hate",), "must name each of the labels"),
    (("hate", "hate"), "must be distinct"),
    (("no ne", "hate"), "1-64 characters"),
    (("Negative", "Positive"), "other labels' words"),
])
def test_bad_output_names_are_refused(outputs, message):
    with pytest.raises(ValueError, match=message):
        Policy(TEMPLATE, "p", "Negative", 0.5, outputs=outputs)


def test_agile_score_writes_the_names_and_the_same_scores(tiny_preset, adapter_dir, tmp_path):
    texts = tmp_path / "t.csv"
    pd.DataFrame({"id": ["0012", "b", "c"], "text": ["you fool", "nice day", "go away"]}).to_csv(texts, index=False)
    out = {n: tmp_path / f"{n}.csv" for n in ("tiny-named", "tiny-threat")}
    for name, path in out.items():
        assert main(["score", "--model", str(tiny_preset), "--adapter", str(adapter_dir / name), "-i", str(texts),
                     "-o", str(path), "--max-length", "64"]) == 0
    named, plain = (pd.read_csv(p, dtype={"id": str}) for p in out.values())
    assert list(named.columns[:4]) == ["id", "p_threat", "p_ok", "prediction"]
    assert named["id"].tolist() == ["0012", "b", "c"]
    assert np.allclose(named["p_threat"], plain["p_Negative"]) and np.allclose(named["p_ok"], plain["p_Positive"])
    assert named["prediction"].tolist() == plain["prediction"].map({"Negative": "threat", "Positive": "ok"}).tolist()


def test_a_bad_outputs_entry_in_adapter_json_is_one_clear_error(tiny_preset, adapter_dir, tmp_path, capsys):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(adapter_dir / "tiny-named", bad)
    meta = json.loads((bad / "adapter.json").read_text())
    (bad / "adapter.json").write_text(json.dumps({**meta, "outputs": ["threat"]}))
    assert main(["score", "--model", str(tiny_preset), "--adapter", str(bad), "some text"]) == 2
    err = capsys.readouterr().err
    assert "must name each of the labels" in err and "Traceback" not in err


def test_suggest_and_train_read_the_names(tiny_preset, adapter_dir, tmp_path, capsys):
    """The loop under output names: suggest writes p_<name>, a labelled file may say `threat`/`ok`
    (or leave a row empty, as a skip in `agile label` does) and the child keeps the parent's names."""
    pool = tmp_path / "pool.csv"
    pd.DataFrame({"id": [f"r{i}" for i in range(12)], "text": [f"{w} comment here" for w in (
        "awful", "sunny", "vile", "calm", "dumb", "fine", "nice", "bad", "rude", "kind", "loud", "odd")]}).to_csv(
        pool, index=False)
    suggested = tmp_path / "round.csv"
    assert main(["suggest", "--adapter", str(adapter_dir / "tiny-named"), "-i", str(pool), "-n", "4",
                 "-o", str(suggested), "--model", str(tiny_preset)]) == 0
    assert "with threat or ok" in capsys.readouterr().err
    assert list(pd.read_csv(suggested).columns) == ["id", "text", "p_threat", "p_ok", "label"]

    labelled = tmp_path / "labelled.csv"
    rows = [(f"you {w} fool", "threat") for w in ("awful", "stupid", "utter")]
    rows += [(f"such a {w} morning", "ok") for w in ("nice", "calm", "fine")] + [("not looked at", "")]
    with labelled.open("w", newline="") as f:
        csv.writer(f).writerows([("text", "label"), *rows])
    child = tmp_path / "child"
    common = ["--model", str(tiny_preset), "--epochs", "1", "--validation-fraction", "0.5", "--no-parent-rows"]
    assert main(["train", "--init", str(adapter_dir / "tiny-named"), "--data", str(labelled), *common,
                 "--out", str(child)]) == 0, capsys.readouterr().err
    assert "1 of 7 rows have no label and are left out" in capsys.readouterr().err
    meta = json.loads((child / "adapter.json").read_text())
    assert meta["outputs"] == ["threat", "ok"] and meta["labels"] == ["Negative", "Positive"]
    assert meta["settings"]["rows"] == 6

    renamed = tmp_path / "renamed"
    assert main(["train", "--init", str(child), "--data", str(labelled), *common, "--outputs", "bad,fine",
                 "--out", str(renamed)]) == 2
    err = capsys.readouterr().err
    assert "label 'threat' is not one of ['Negative', 'Positive', 'bad', 'fine']" in err
    assert not renamed.exists()
    assert main(["train", "--init", str(child), "--data", str(labelled), *common, "--outputs", "x",
                 "--out", str(renamed)]) == 2
    assert "must name each of the labels" in capsys.readouterr().err and not renamed.exists()


def test_the_shipped_ethos_hate_reads_hate_and_none():
    from agile.adapters import load_adapter

    policy = Policy.from_adapter(load_adapter(Path(__file__).parents[1] / "adapters" / "ethos-hate"))
    assert policy.labels == ["Positive", "Negative"] and policy.positive_label == "Negative"  # the codelab's prompt
    assert policy.names == ["none", "hate"] and policy.positive_name == "hate"
