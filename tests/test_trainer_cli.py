"""`agile train / evaluate / sweep` end to end on a tiny random Gemma 3, and their bad-input errors."""

from __future__ import annotations

import csv
import json

import pytest

from agile.cli.main import main
from agile.testing import make_tiny_preset


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    """AGILE_HOME, where a run with frozen blocks keeps their output for the next (not the user's)."""
    monkeypatch.setenv("AGILE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(make_tiny_preset(tmp_path_factory.mktemp("tiny") / "preset"))


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """A small generic CSV with label words Toxic/Safe (single tokens of the tiny vocabulary)."""
    path = tmp_path_factory.mktemp("data") / "policy.csv"
    rows = [(f"you are all {w} people", "Toxic") for w in ("awful", "stupid", "vile", "dumb", "bad")]
    rows += [(f"what a {w} day", "Safe") for w in ("nice", "sunny", "calm", "good", "fine")]
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([("comment", "verdict"), *rows])
    return path


def test_train_then_evaluate_a_generic_table(tiny, table, tmp_path, capsys):
    common = ["--data", str(table), "--text-column", "comment", "--label-column", "verdict",
              "--labels", "Safe,Toxic"]
    code = main(["train", *common, "--model", tiny, "--epochs", "2", "--validation-fraction", "0.4",
                 "--learning-rate", "0.01", "--out", str(tmp_path / "policy")])
    assert code == 0, capsys.readouterr().err
    meta = json.loads((tmp_path / "policy" / "adapter.json").read_text())
    assert meta["labels"] == ["Safe", "Toxic"] and meta["positive_label"] == "Toxic"
    assert meta["settings"]["rows"] == 10 and len(meta["metrics"]["history"]) == 2
    assert meta["metrics"]["best_epoch"] in (1, 2) and 0 <= meta["threshold"] <= 1
    assert len(meta["data_checksum"]) == 64

    code = main(["evaluate", "--adapter", str(tmp_path / "policy"), *common[:6],
                 "--report", str(tmp_path / "report")])
    assert code == 0, capsys.readouterr().err
    found = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert found["n"] == 10 and found["threshold"] == meta["threshold"]
    assert (tmp_path / "report" / "confusion_matrix.png").stat().st_size > 1000


def test_a_fixed_threshold_is_kept_and_checked(tiny, table, tmp_path, capsys):
    common = ["train", "--data", str(table), "--text-column", "comment", "--label-column", "verdict",
              "--labels", "Safe,Toxic", "--model", tiny, "--epochs", "1", "--validation-fraction", "0.4"]
    assert main([*common, "--threshold", "0.35", "--out", str(tmp_path / "fixed")]) == 0
    meta = json.loads((tmp_path / "fixed" / "adapter.json").read_text())
    assert meta["threshold"] == 0.35 and meta["metrics"]["validation"]["threshold"] == 0.35
    assert "fixed by --threshold" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([*common, "--threshold", "1.5", "--out", str(tmp_path / "bad")])
    assert "strictly between 0 and 1" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_sweep_writes_csv_and_png(tiny, tmp_path, capsys):
    code = main(["sweep", "--model", tiny, "--sizes", "4,8", "--epochs", "1,2",
                 "--out", str(tmp_path / "sweep")])
    assert code == 0, capsys.readouterr().err
    with (tmp_path / "sweep" / "sweep.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["size"], r["epoch"]) for r in rows] == [("4", "1"), ("4", "2"), ("8", "1"), ("8", "2")]
    assert all(0 <= float(r["roc_auc"]) <= 1 and float(r["epoch_seconds"]) >= 0 for r in rows)
    assert (tmp_path / "sweep" / "sweep.png").read_bytes()[:4] == b"\x89PNG"


def test_sweeps_run_apart_merge_into_one_table(tiny, tmp_path, capsys):
    """One size per process (as on a GPU), then `--merge`: one table and plot, duplicates refused."""
    for size in (4, 8):
        code = main(["sweep", "--model", tiny, "--sizes", str(size), "--epochs", "1",
                     "--out", str(tmp_path / f"s{size}")])
        assert code == 0, capsys.readouterr().err
    parts = f"{tmp_path / 's8' / 'sweep.csv'},{tmp_path / 's4' / 'sweep.csv'}"
    assert main(["sweep", "--merge", parts, "--out", str(tmp_path / "all")]) == 0
    with (tmp_path / "all" / "sweep.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["size"], r["epoch"]) for r in rows] == [("4", "1"), ("8", "1")]
    assert (tmp_path / "all" / "sweep.png").read_bytes()[:4] == b"\x89PNG"

    capsys.readouterr()
    twice = f"{tmp_path / 's4' / 'sweep.csv'},{tmp_path / 's4' / 'sweep.csv'}"
    assert main(["sweep", "--merge", twice, "--out", str(tmp_path / "dup")]) == 2
    assert "size 4, epoch 1 appears twice" in capsys.readouterr().err
    assert main(["sweep", "--merge", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "x")]) == 2
    assert "cannot read sweep table" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        ("text,label\na,Positive\nb,Nope\n", [], "label 'Nope' is not one of"),
        ("text,label\na,Positive\nb,Positive\nc,Positive\n", [], "no examples of label(s) ['Negative']"),
        ("text,label\na,Positive\nb,Negative\n", ["--batch-size", "4"], "fewer than the batch size 4"),
        ("", [], "the file is empty"),
        ("text,label\na,0\nb,1\n", ["--labels", "Positive,Not a token"],
         "'Not a token' is not a single token"),
    ],
)
def test_train_bad_input_is_one_error_and_no_adapter(tiny, tmp_path, capsys, content, extra, message):
    data = tmp_path / "data.csv"
    data.write_text(content)
    code = main(["train", "--data", str(data), "--model", tiny, "--validation-fraction", "0",
                 "--out", str(tmp_path / "adapter"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("error:") == 1
    assert not (tmp_path / "adapter").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".adapter")]


def test_train_names_a_bad_byte_by_row_line_and_offset(tmp_path, capsys):
    """It said "byte 2" (an offset into a buffer of pandas'); agile submit names the row, line and offset."""
    data = tmp_path / "data.jsonl"
    data.write_bytes(b'{"text": "a", "label": 0}\n{"text": "b\xff", "label": 1}\n')
    code = main(["train", "--data", str(data), "--model", str(tmp_path / "no-model"), "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"{data}: invalid UTF-8 at row 1 (line 2, byte offset 37): invalid start byte" in err


def test_unwritable_output_fails_before_training(tiny, table, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code = main(["train", "--data", str(table), "--text-column", "comment", "--label-column", "verdict",
                 "--labels", "Safe,Toxic", "--model", tiny, "--out", str(blocker / "adapter")])
    err = capsys.readouterr().err
    assert code == 2 and "cannot write there" in err
    assert "training on" not in capsys.readouterr().out


def test_evaluate_refuses_an_adapter_from_another_base_model(tiny, table, tmp_path, capsys):
    assert main(["train", "--data", str(table), "--text-column", "comment", "--label-column", "verdict",
                 "--labels", "Safe,Toxic", "--model", tiny, "--epochs", "1", "--validation-fraction", "0",
                 "--out", str(tmp_path / "policy")]) == 0
    other = make_tiny_preset(tmp_path / "other", seed=3)
    code = main(["evaluate", "--adapter", str(tmp_path / "policy"), "--model", str(other),
                 "--data", str(table), "--text-column", "comment", "--label-column", "verdict",
                 "--report", str(tmp_path / "report")])
    assert code == 2 and "adapter was trained on" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()


def test_too_few_rows_to_validate_is_refused_before_the_model_loads(tmp_path, capsys):
    """Five rows (2 of one label): the validation split would miss a label, so ROC-AUC cannot pick an epoch."""
    path = tmp_path / "five.csv"
    rows = [("you are awful", "Toxic"), ("you are vile", "Toxic"), ("nice day", "Safe"), ("calm day", "Safe"),
            ("fine day", "Safe")]
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([("text", "label"), *rows])
    # No such model: had the check come after loading, the error would be about the model instead.
    code = main(["train", "--data", str(path), "--labels", "Safe,Toxic", "--model", str(tmp_path / "no-model"),
                 "--out", str(tmp_path / "policy")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "too few rows to hold out a validation split of 0.2: 'Toxic' has 2" in err
    assert "'Safe'" not in err.split("validation split")[1].split(";")[0]  # Safe's 3 rows split 1 / 2: enough
    assert "each label needs at least 3" in err and "--validation-fraction 0" in err
    assert not (tmp_path / "policy").exists()


def test_train_init_continues_a_parent_for_rounds_and_records_them(tiny, table, tmp_path, capsys):
    """Round 2 starts from round 1's LoRA weights and prompt, on its rows plus the new ones; round 3 chains on."""
    import numpy as np
    from safetensors.numpy import load_file

    common = ["--text-column", "comment", "--label-column", "verdict", "--model", tiny, "--epochs", "1",
              "--validation-fraction", "0.4"]
    parent = tmp_path / "round1"
    assert main(["train", "--data", str(table), "--labels", "Safe,Toxic", *common, "--out", str(parent)]) == 0
    new = tmp_path / "labelled.csv"
    rows = [(f"you {w} fool", "Toxic") for w in ("awful", "stupid", "utter")]
    rows += [(f"such a {w} morning", "Safe") for w in ("nice", "calm", "fine")]
    with new.open("w", newline="") as f:
        csv.writer(f).writerows([("comment", "verdict"), *rows])

    # a learning rate of 1e-9: the weights stay where they started, so they must be the parent's
    child = tmp_path / "round2"
    assert main(["train", "--init", str(parent), "--data", str(new), *common, "--learning-rate", "1e-9",
                 "--out", str(child)]) == 0, capsys.readouterr().err
    assert "round 2, from round1" in capsys.readouterr().out
    before, after = load_file(str(parent / "lora.safetensors")), load_file(str(child / "lora.safetensors"))
    assert set(before) == set(after) and all(np.allclose(before[k], after[k], rtol=0, atol=1e-6) for k in before)
    assert max(np.abs(before[k]).max() for k in before) > 1e-3  # trained weights, not zeros
    meta, first = (json.loads((d / "adapter.json").read_text()) for d in (child, parent))
    assert meta["labels"] == first["labels"] == ["Safe", "Toxic"] and meta["positive_label"] == "Toxic"
    assert meta["parent"]["name"] == "round1" and len(meta["parent"]["version"]) == 12
    assert [r["new_rows"] for r in meta["rounds"]] == [10, 6]
    assert meta["rounds"][1]["training_rows"] == 16 and meta["settings"]["rows"] == 16
    assert [s["data_spec"] for s in meta["settings"]["sources"]] == [str(table), str(new)]

    third = tmp_path / "round3"
    assert main(["train", "--init", str(child), "--data", str(new), *common, "--out", str(third)]) == 0
    meta3 = json.loads((third / "adapter.json").read_text())
    assert [r["training_rows"] for r in meta3["rounds"]] == [10, 16, 22]
    only_new = tmp_path / "only-new"
    assert main(["train", "--init", str(child), "--data", str(new), "--no-parent-rows", *common,
                 "--out", str(only_new)]) == 0
    assert json.loads((only_new / "adapter.json").read_text())["settings"]["rows"] == 6


def test_train_init_refuses_a_changed_parent_or_another_prompt(tiny, table, tmp_path, capsys):
    common = ["--text-column", "comment", "--label-column", "verdict", "--model", tiny, "--epochs", "1",
              "--validation-fraction", "0.4"]
    data = tmp_path / "data.csv"
    data.write_bytes(table.read_bytes())
    parent = tmp_path / "parent"
    assert main(["train", "--data", str(data), "--labels", "Safe,Toxic", *common, "--out", str(parent)]) == 0
    capsys.readouterr()
    assert main(["train", "--init", str(parent), "--data", str(table), "--labels", "A,B", *common,
                 "--out", str(tmp_path / "x")]) == 2
    assert "--init continues the parent's prompt" in capsys.readouterr().err
    data.write_text(data.read_text().replace("awful", "AWFUL"))
    assert main(["train", "--init", str(parent), "--data", str(table), *common, "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert "have changed since" in err and "--no-parent-rows" in err and not (tmp_path / "y").exists()

    before = sorted(f.name for f in parent.iterdir())
    inside = parent / "round2.csv"
    inside.write_bytes(table.read_bytes())
    for data_file, out in ((table, parent), (inside, tmp_path / "z" / ".." / "parent")):  # over the parent
        code = main(["train", "--init", str(parent), "--data", str(data_file), "--no-parent-rows", *common,
                     "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and "which this run reads" in err and "Traceback" not in err
    assert main(["train", "--data", str(inside), "--labels", "Safe,Toxic", *common, "--out", str(parent)]) == 2
    assert "round2.csv, which this run reads" in capsys.readouterr().err
    assert sorted(f.name for f in parent.iterdir()) == sorted([*before, "round2.csv"])  # nothing replaced


def test_lora_on_the_last_blocks_only_trains_continues_and_scores(tiny, table, tmp_path, capsys):
    """`--lora-blocks 1`: the adapter holds LoRA for the last block alone, records it, a round continued from
    it keeps that layout, and it scores like any adapter; a negative count is refused with one line."""
    from safetensors.numpy import load_file

    common = ["--text-column", "comment", "--label-column", "verdict", "--model", tiny, "--epochs", "1",
              "--validation-fraction", "0.4", "--learning-rate", "0.01"]
    first = tmp_path / "top"
    assert main(["train", "--data", str(table), "--labels", "Safe,Toxic", "--lora-blocks", "1", *common,
                 "--out", str(first)]) == 0, capsys.readouterr().err
    weights = load_file(str(first / "lora.safetensors"))
    assert {k.split("/")[0] for k in weights} == {"decoder_block_1"}, sorted(weights)
    assert json.loads((first / "adapter.json").read_text())["settings"]["lora_blocks"] == 1
    second = tmp_path / "top2"
    assert main(["train", "--init", str(first), "--data", str(table), "--no-parent-rows", *common,
                 "--out", str(second)]) == 0, capsys.readouterr().err
    assert set(load_file(str(second / "lora.safetensors"))) == set(weights)
    assert json.loads((second / "adapter.json").read_text())["settings"]["lora_blocks"] == 1
    for flag in (["--lora-blocks", "2"], ["--rank", "8"], ["--lora-targets", "all"]):  # the parent's layout rules
        assert main(["train", "--init", str(first), "--data", str(table), *flag, *common,
                     "--out", str(tmp_path / "other")]) == 2
        assert f"continues the parent's LoRA layout and prompt length: drop {flag[0]}" in capsys.readouterr().err
    assert main(["evaluate", "--adapter", str(second), "--data", str(table), "--text-column", "comment",
                 "--label-column", "verdict", "--report", str(tmp_path / "report")]) == 0
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["n"] == 10
    capsys.readouterr()
    assert main(["train", "--data", str(table), "--labels", "Safe,Toxic", "--lora-blocks", "-1", *common,
                 "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "lora_blocks must be 0 (every block) or more" in err and "Traceback" not in err


def test_quick_is_the_rounds_recipe_flags_given_win_and_init_keeps_the_parents_layout(tiny, table, tmp_path, capsys,
                                                                                       home):
    """`--quick` trains with QUICK's settings where no flag says otherwise; with --init the parent's LoRA layout
    stays and the recipe gives batch and rate; a layout flag beside --init is refused even with --quick."""
    from agile.trainer.settings import QUICK, TrainSettings

    common = ["--text-column", "comment", "--label-column", "verdict", "--model", tiny, "--epochs", "1",
              "--validation-fraction", "0.4"]

    def recorded(out):
        return json.loads((out / "adapter.json").read_text())["settings"]

    first, quick, child = tmp_path / "first", tmp_path / "quick", tmp_path / "child"
    assert main(["train", "--data", str(table), "--labels", "Safe,Toxic", "--lora-blocks", "1", *common,
                 "--out", str(first)]) == 0, capsys.readouterr().err
    assert len(list((home / "frozen").glob("*.safetensors"))) == 1  # the frozen block's output, for the next round
    codelab = TrainSettings()
    assert [recorded(first)[k] for k in ("batch_size", "learning_rate", "patience")] == [
        codelab.batch_size, codelab.learning_rate, codelab.patience]
    assert main(["train", "--data", str(table), "--labels", "Safe,Toxic", "--quick", "--batch-size", "2", *common,
                 "--out", str(quick)]) == 0, capsys.readouterr().err
    got = recorded(quick)
    assert got["batch_size"] == 2 and got["epochs"] == 1  # given: they win
    assert (got["learning_rate"], got["patience"], got["lora_blocks"], tuple(got["target_layers"])) == (
        QUICK.learning_rate, QUICK.patience, QUICK.lora_blocks, QUICK.target_layers)

    capsys.readouterr()
    assert main(["train", "--init", str(first), "--data", str(table), "--no-parent-rows", "--quick", *common,
                 "--out", str(child)]) == 0, capsys.readouterr().err
    assert "output: 10 rows read back from earlier runs, 0 computed" in capsys.readouterr().out  # first's rows
    got = recorded(child)
    assert (got["batch_size"], got["learning_rate"]) == (QUICK.batch_size, QUICK.learning_rate)
    assert got["lora_blocks"] == 1 and tuple(got["target_layers"]) == codelab.target_layers  # the parent's
    capsys.readouterr()
    assert main(["train", "--init", str(first), "--data", str(table), "--quick", "--lora-blocks", "6", *common,
                 "--out", str(tmp_path / "other")]) == 2
    assert "drop --lora-blocks" in capsys.readouterr().err and not (tmp_path / "other").exists()


@pytest.mark.parametrize("blocks", [[], ["--lora-blocks", "1"]], ids=["every-block", "frozen-below"])
def test_the_kept_epochs_validation_scores_are_the_saved_adapters(tiny, table, tmp_path, capsys, blocks):
    """The validation rows are scored once an epoch and the kept epoch's scores fit the calibration, not
    scored again: they must be what the saved adapter gives those rows, also when an earlier epoch is kept.
    With LoRA on the last block only they come from the frozen block's output, computed once."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from agile.adapters import load_adapter, merge_adapter
    from agile.models import load_model
    from agile.prompt import PromptTemplate
    from agile.scoring import LabelScorer, ScoringSettings
    from agile.trainer.data import load_examples, validation_split

    out = tmp_path / "kept"
    assert main(["train", "--data", str(table), "--text-column", "comment", "--label-column", "verdict",
                 "--labels", "Safe,Toxic", "--model", tiny, "--epochs", "4", "--learning-rate", "3e-2",
                 "--validation-fraction", "0.4", *blocks, "--out", str(out)]) == 0, capsys.readouterr().err
    meta = json.loads((out / "adapter.json").read_text())
    history, best = meta["metrics"]["history"], meta["metrics"]["best_epoch"]
    assert best < len(history)  # an earlier epoch kept: its weights restored after the last
    rows = load_examples(str(table), ("Safe", "Toxic"), text_column="comment", label_column="verdict")
    _, validation = validation_split(rows, 0.4, meta["settings"]["seed"])
    model = load_model(tiny, sequence_length=meta["max_length"])
    merge_adapter(model, load_adapter(out))
    probs = LabelScorer(model, PromptTemplate(("Safe", "Toxic")), ScoringSettings(meta["max_length"])).score(
        validation.texts).probs[:, 1]
    assert roc_auc_score(validation.labels, probs) == pytest.approx(history[best - 1]["validation_roc_auc"])
    brier = float(np.mean((probs - validation.labels) ** 2))  # continuous in the scores, unlike a 4-row AUC
    assert brier == pytest.approx(meta["metrics"]["calibration"]["validation"]["brier_before"], abs=1e-4)
