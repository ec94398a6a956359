"""`agile score` end to end on the tiny model: files in, one row out per row in, clear errors."""

import pandas as pd
import pytest

from agile.cli.main import main


@pytest.fixture
def comments(tmp_path):
    path = tmp_path / "comments.csv"
    pd.DataFrame({"cid": ["a", "b", "c"], "body": ["you are lovely", "", "go away " * 400]}).to_csv(
        path, index=False
    )
    return path


@pytest.mark.parametrize("suffix", ["csv", "jsonl", "parquet"])
def test_scores_a_file_one_row_per_input_row(tiny_preset, comments, tmp_path, suffix, capsys):
    out = tmp_path / f"scores.{suffix}"
    code = main(["score", "--model", str(tiny_preset), "--input", str(comments), "--output", str(out),
                 "--text-column", "body", "--id-column", "cid", "--max-length", "256"])
    assert code == 1  # the empty row fails, as it does in a queue job; the others are scored
    assert "1 row(s) could not be scored" in capsys.readouterr().err
    df = {"csv": pd.read_csv, "jsonl": lambda p: pd.read_json(p, lines=True), "parquet": pd.read_parquet}[
        suffix](out)
    assert df["id"].astype(str).tolist() == ["a", "b", "c"]
    assert list(df.columns) == ["id", "p_Positive", "p_Negative", "prediction", "flagged", "truncated", "model",
                                "policy", "error"]
    scored = df[df["id"].astype(str) != "b"]
    assert ((scored["p_Positive"] + scored["p_Negative"]) - 1).abs().max() < 1e-5
    assert scored["truncated"].tolist() == [False, True]
    assert set(scored["prediction"]) <= {"Positive", "Negative"}
    empty = df[df["id"].astype(str) == "b"].iloc[0]
    assert empty["error"] == "text is empty" and pd.isna(empty["p_Positive"]) and pd.isna(empty["truncated"])


@pytest.mark.parametrize("by", ["name", "path"])
def test_failed_rows_stay_in_place_under_a_policy_set(tiny_preset, adapter_dir, tmp_path, capsys,
                                                       monkeypatch, by):
    """Empty rows fail the same way under a set, in their place, and the rest are scored."""
    monkeypatch.setenv("AGILE_ADAPTER_PATH", str(adapter_dir))
    toxic, threat = ("tiny-toxic", "tiny-threat") if by == "name" else (
        str(adapter_dir / "tiny-toxic"), str(adapter_dir / "tiny-threat"))
    path = tmp_path / "c.csv"
    pd.DataFrame({"id": ["0012", "x", "y", "z"], "text": ["fine", "   ", "ok then", ""]}).to_csv(path, index=False)
    out = tmp_path / "o.csv"
    code = main(["score", "--model", str(tiny_preset), "-i", str(path), "-o", str(out), "--max-length", "256",
                 "--policy", toxic, "--policy", threat])
    assert code == 1
    assert "2 row(s) could not be scored" in capsys.readouterr().err
    df = pd.read_csv(out, dtype={"id": str}, keep_default_na=False)
    assert df["id"].tolist() == ["0012", "x", "y", "z"]
    assert df["error"].tolist() == ["", "text is empty", "", "text is empty"]
    assert (df[f"p_{toxic}"] != "").tolist() == [True, False, True, False]


def test_texts_as_arguments_with_zero_shot_labels(tiny_preset, capsys):
    code = main(["score", "--model", str(tiny_preset), "--labels", "Toxic,Safe", "--max-length", "256",
                 "hello", "bye"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "id,p_Toxic,p_Safe,prediction,flagged,truncated,model,policy,error"
    assert len(lines) == 3


def test_missing_column_is_one_clear_error(tiny_preset, comments, tmp_path, capsys):
    code = main(["score", "--model", str(tiny_preset), "--input", str(comments), "-o", str(tmp_path / "o.csv")])
    assert code == 2
    err = capsys.readouterr().err
    assert "no column 'text'" in err and "Traceback" not in err


def test_a_first_row_with_an_extra_field_is_refused_not_scored_shifted(tiny_preset, tmp_path, capsys):
    """An unquoted comma in the first comment: pandas took the ids as the index and scored the labels as texts."""
    path = tmp_path / "dump.csv"
    path.write_text("id,text,hateful\nh1,go back where you came from, nobody wants your kind here,1\n"
                    + "".join(f"h{i},a fine comment {i},0\n" for i in range(2, 25)))
    out = tmp_path / "o.csv"
    code = main(["score", "--model", str(tiny_preset), "-i", str(path), "-o", str(out), "--max-length", "256"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and err.count("error:") == 1
    assert "dump.csv: row 0 has more fields than the header (Expected 3 fields in line 2, saw 4)" in err
    assert not out.exists()


def test_an_excel_semicolon_csv_is_scored_row_by_row(tiny_preset, tmp_path, capsys):
    path = tmp_path / "excel.csv"
    path.write_bytes(b'id;hateful;text\r\n0012;1;"you; all of you"\r\nx;0;"nice, calm day"\r\n')
    out = tmp_path / "o.csv"
    code = main(["score", "--model", str(tiny_preset), "-i", str(path), "-o", str(out), "--max-length", "256"])
    assert code == 0, capsys.readouterr().err
    assert pd.read_csv(out, dtype={"id": str})["id"].tolist() == ["0012", "x"]


def test_error_midway_keeps_rows_already_scored_and_never_touches_the_output(tiny_preset, tmp_path, capsys):
    path = tmp_path / "bad.csv"
    path.write_bytes(b"id,text\n" + b"".join(b"%d,fine\n" % i for i in range(6)) + b"6,\xff\n")
    out = tmp_path / "o.csv"
    out.write_text("id,earlier\n1,run\n")
    code = main(["score", "--model", str(tiny_preset), "-i", str(path), "-o", str(out), "--chunk-rows", "3",
                 "--max-length", "256"])
    assert code == 2
    assert "invalid UTF-8 at row 6 (line 8, byte offset 52)" in capsys.readouterr().err
    assert out.read_text() == "id,earlier\n1,run\n"  # an existing output is never emptied
    assert pd.read_csv(tmp_path / "o.partial.csv")["id"].tolist() == [0, 1, 2, 3, 4, 5]
    assert not list(tmp_path.glob(".o.csv*"))


def test_label_not_in_vocabulary(tiny_preset, capsys):
    code = main(["score", "--model", str(tiny_preset), "--labels", "Positive,Zyxwvutsrq", "hi"])
    assert code == 2
    assert "'Zyxwvutsrq' is not a single token" in capsys.readouterr().err


@pytest.mark.parametrize("policies", [[], ["--policy", "tiny-toxic", "--policy", "tiny-threat"]])
def test_ctrl_c_keeps_the_rows_already_scored(tiny_preset, adapter_dir, tmp_path, policies):
    """A real `agile score` process interrupted mid-file: exit 130, the scored rows kept in order in
    o.partial.csv, the existing output untouched, no temporary file left."""
    import os
    import signal
    import subprocess
    import sys
    import time

    path = tmp_path / "big.csv"
    pd.DataFrame({"id": [f"{i:05d}" for i in range(20_000)], "text": ["a fine comment"] * 20_000}).to_csv(
        path, index=False)
    out = tmp_path / "o.csv"
    out.write_text("id,earlier\n1,run\n")
    env = {**os.environ, "AGILE_ADAPTER_PATH": str(adapter_dir)}
    proc = subprocess.Popen([sys.executable, "-m", "agile.cli.main", "score", "--model", str(tiny_preset), "-i",
                             str(path), "-o", str(out), "--chunk-rows", "100", "--max-length", "64", *policies],
                            env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(w.stat().st_size > 5000 for w in tmp_path.glob(".o.csv.*")):
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130, err
    partial = pd.read_csv(tmp_path / "o.partial.csv", dtype={"id": str})
    assert 100 <= len(partial) < 20_000  # whole rows, a prefix: Ctrl-C may land inside a chunk's write
    assert partial["id"].tolist() == [f"{i:05d}" for i in range(len(partial))]
    assert f"the {len(partial)} rows scored before Ctrl-C are in" in err
    assert out.read_text() == "id,earlier\n1,run\n" and not list(tmp_path.glob(".o.csv*"))


@pytest.mark.parametrize("extra", [[], ["--policy", "ethos-hate"],
                                   ["--policy", "ethos-hate", "--policy", "ethos-race"]])
def test_a_comment_file_given_as_a_text_is_refused(comments, tmp_path, monkeypatch, capsys, extra):
    """`agile score dump.csv` would score the path as a comment; it is one clear error instead."""
    monkeypatch.chdir(tmp_path)
    code = main(["score", "comments.csv", "-o", str(tmp_path / "out.csv"), *extra])
    assert code == 2
    err = capsys.readouterr().err
    assert "'comments.csv' is a file" in err and "--input comments.csv" in err
    assert not (tmp_path / "out.csv").exists()
    assert main(["score"]) == 2
    assert "nothing to score" in capsys.readouterr().err


def test_a_text_that_only_looks_like_a_file_name_is_scored(tiny_preset, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["score", "--model", str(tiny_preset), "--max-length", "256", "no-such.csv"]) == 0
    assert capsys.readouterr().out.count("\n") == 2  # the header and one row
