"""The codelab's ETHOS split and the generic table loader, with each kind of bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from agile.trainer.data import DataError, ethos_split, load_table, validation_split


def test_ethos_split_is_the_codelabs():
    train, test = ethos_split()
    assert (len(train), len(test)) == (800, 198)
    # SOURCE.md: the median is 1/3, 51.6% hateful overall, 57.1% of the test rows.
    assert round(test.labels.mean(), 3) == 0.571
    assert round((train.labels.sum() + test.labels.sum()) / 998, 3) == 0.516
    df = pd.read_csv("data/ethos/Ethos_Dataset_Binary.csv", delimiter=";")
    first = df.sample(frac=1, random_state=32).iloc[0]
    assert train.texts[0] == first["comment"]
    assert train.label_names[train.labels[0]] == ("Negative" if first["isHate"] >= 1 / 3 else "Positive")
    assert train.head(200).texts == train.texts[:200]


def test_validation_split_is_seeded_stratified_and_disjoint():
    train, _ = ethos_split()
    fit, val = validation_split(train, 0.2, seed=7)
    again, val_again = validation_split(train, 0.2, seed=7)
    assert (len(fit), len(val)) == (640, 160)
    assert val.texts == val_again.texts and fit.texts == again.texts
    assert sorted(fit.texts + val.texts) == sorted(train.texts)  # a partition of the 800
    assert abs(val.labels.mean() - train.labels.mean()) < 0.01
    _, other = validation_split(train, 0.2, seed=8)
    assert other.texts != val.texts


def test_label_words_and_integers_in_csv_jsonl_parquet(tmp_path):
    rows = [("nice", "Safe"), ("awful", "Toxic"), ("fine", "Safe")]
    csv = tmp_path / "a.csv"
    pd.DataFrame(rows, columns=["comment", "y"]).to_csv(csv, index=False)
    got = load_table(csv, "comment", "y", labels=("Safe", "Toxic"))
    assert got.texts == ["nice", "awful", "fine"] and got.labels.tolist() == [0, 1, 0]

    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t, "label": int(y == "Toxic")}) + "\n" for t, y in rows))
    assert load_table(jsonl, labels=("Safe", "Toxic")).labels.tolist() == [0, 1, 0]

    parquet = tmp_path / "c.parquet"
    pd.DataFrame({"text": ["a", "b"], "label": [1.0, 0.0]}).to_parquet(parquet)
    assert load_table(parquet).labels.tolist() == [1, 0]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"text,label\nhello,Positive\nbye,Maybe\n", "row 1, column 'label': label 'Maybe'"),
        (b"text,label\nhello,2\n", "label '2' is not one of"),
        (b"text,label\nhello,Positive\n\xff\xfe bad,Negative\n", "invalid UTF-8"),
        (b"", "the file is empty"),
        (b"text,label\n", "no rows"),
        (b"body,label\nhello,Positive\n", "no column 'text'"),
    ],
)
def test_bad_tables_fail_with_one_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message.replace("(", r"\(")) as info:
        load_table(path)
    assert str(path) in str(info.value)


def test_untrainable_sets_are_refused(tmp_path):
    path = tmp_path / "one_class.csv"
    path.write_text("text,label\na,Positive\nb,Positive\nc,Positive\n")
    examples = load_table(path)
    with pytest.raises(DataError, match=r"no examples of label\(s\) \['Negative'\]"):
        examples.check_trainable(batch_size=2)
    with pytest.raises(DataError, match="3 rows is fewer than the batch size 4"):
        examples.check_trainable(batch_size=4)
    assert examples.checksum() != load_table(path, labels=("Positive", "Other")).checksum()
    assert np.array_equal(examples.labels, [0, 0, 0])
