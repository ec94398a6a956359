"""The codelab's ETHOS split and the generic table loader, with each kind of bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from agile.trainer.data import (
    DataError,
    ethos_attribute_split,
    ethos_split,
    is_builtin,
    load_examples,
    load_table,
    validation_split,
)


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


ATTRIBUTE_POSITIVES = {"violence": 142, "directed_vs_generalized": 135, "gender": 86, "race": 76,
                       "national_origin": 74, "disability": 53, "religion": 81, "sexual_orientation": 73}


@pytest.mark.parametrize(("attribute", "positives"), ATTRIBUTE_POSITIVES.items())
def test_ethos_attributes_are_binarised_at_half_the_annotators(attribute, positives):
    train, test = ethos_attribute_split(attribute, labels=("none", attribute[:4]))
    assert (len(train), len(test)) == (346, 87)
    assert int(train.labels.sum() + test.labels.sum()) == positives
    assert train.source == f"ethos:{attribute}-train" and test.source == f"ethos:{attribute}-test"
    df = pd.read_csv("data/ethos/Ethos_Dataset_Multi_Label.csv", delimiter=";").sample(frac=1, random_state=32)
    assert train.texts + test.texts == df["comment"].tolist()  # one shuffle, the same rows for every attribute
    assert (train.labels.tolist() + test.labels.tolist()) == (df[attribute] >= 0.5).astype(int).tolist()


def test_ethos_attribute_specs_load_their_parts():
    labels = ("none", "violence")
    train = load_examples("ethos:violence", labels)
    test = load_examples("ethos:violence", labels, part="test")
    assert is_builtin("ethos:violence") and is_builtin("ethos") and not is_builtin("ethos.csv")
    assert len(train) == 346 and len(test) == 87 and not set(train.texts) & set(test.texts)
    fit, val = validation_split(train, 0.2, seed=1234)
    assert (len(fit), len(val)) == (277, 69) and val.labels.sum() == round(train.labels.sum() * 0.2)


@pytest.mark.parametrize(
    ("spec_or_file", "message"),
    [
        ("ethos:toxicity", "no attribute 'toxicity'; choose one of violence, directed_vs_generalized"),
        (b"comment;violence\nyou;0.7\nthem;high\n", "row 1, column 'violence': rating 'high' is not a number"),
        (b"comment;violence\nyou;1.5\n", "row 0, column 'violence': rating '1.5' is not a number"),
        (b"comment;race\nyou;0.7\n", "no column 'violence'"),
    ],
)
def test_bad_attribute_or_file_is_one_clear_error(tmp_path, spec_or_file, message):
    if isinstance(spec_or_file, str):
        with pytest.raises(DataError, match=message):
            load_examples(spec_or_file, ("none", "violence"))
        return
    path = tmp_path / "multi.csv"
    path.write_bytes(spec_or_file)
    with pytest.raises(DataError, match=message) as info:
        ethos_attribute_split("violence", path, ("none", "violence"))
    assert str(path) in str(info.value)
    with pytest.raises(DataError, match="ETHOS multi-label is binary: give two label words"):
        ethos_attribute_split("violence", labels=("a", "b", "c"))


@pytest.mark.parametrize(
    ("name", "content", "where"),
    [
        ("bad.jsonl", b'{"text": "a", "label": 0}\n{"text": "b\xff", "label": 1}\n', "row 1 (line 2, byte offset 37)"),
        ("bad.csv", b"text,label\nhello,Positive\n\xff\xfe bad,Negative\n", "row 1 (line 3, byte offset 26)"),
    ],
)
def test_a_bad_byte_is_named_by_row_line_and_offset_as_agile_submit_names_it(tmp_path, name, content, where):
    from agile.tables import TableError, read_chunks

    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        load_table(path)
    assert str(info.value) == f"{path}: invalid UTF-8 at {where}: invalid start byte"
    with pytest.raises(TableError) as submitted:  # what agile submit and agile score read through
        list(read_chunks(path))
    assert str(submitted.value) == str(info.value)


def test_a_first_row_with_an_extra_field_is_refused_not_shifted(tmp_path):
    path = tmp_path / "shifted.csv"
    path.write_text("text,label\nyou people, all of you,Negative\nnice day,Positive\n")
    with pytest.raises(DataError, match=r"shifted\.csv: row 0 has more fields than the header "
                                        r"\(Expected 2 fields in line 2, saw 3\)"):
        load_table(path)


def test_an_excel_semicolon_csv_is_read_with_its_delimiter(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes(b'label;text\r\n1;"you; all of you"\r\n0;"nice, calm day"\r\n')
    got = load_table(path)
    assert got.texts == ["you; all of you", "nice, calm day"] and got.labels.tolist() == [1, 0]


def test_ethos_is_read_from_agile_data_when_set(tmp_path, monkeypatch):
    """An installed agile has no data/ (ETHOS is GPL-3.0, not in a wheel): AGILE_DATA names a copy of it."""
    import shutil

    copy = tmp_path / "data" / "ethos"
    copy.mkdir(parents=True)
    for name in ("Ethos_Dataset_Binary.csv", "Ethos_Dataset_Multi_Label.csv"):
        shutil.copy(f"data/ethos/{name}", copy / name)
    df = pd.read_csv(copy / "Ethos_Dataset_Binary.csv", delimiter=";")
    df.loc[0, "comment"] = "a row only the copy has"
    df.to_csv(copy / "Ethos_Dataset_Binary.csv", sep=";", index=False)
    monkeypatch.setenv("AGILE_DATA", str(tmp_path / "data"))
    train, test = ethos_split()
    assert "a row only the copy has" in train.texts + test.texts
    assert len(ethos_attribute_split("race")[0]) == 346


def test_ethos_missing_from_agile_data_is_one_error_naming_it(tmp_path, monkeypatch, capsys):
    from agile.cli.main import main

    monkeypatch.setenv("AGILE_DATA", str(tmp_path))
    code = main(["train", "--data", "ethos", "--model", str(tmp_path / "no-model"), "--out", str(tmp_path / "p")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"ethos/Ethos_Dataset_Binary.csv is not in AGILE_DATA={tmp_path}" in err
    assert "a copy of its data/ folder" in err and not (tmp_path / "p").exists()
