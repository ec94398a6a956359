"""Comment files in and out, streamed in chunks, with errors that name the file, row and column."""

import json

import pandas as pd
import pytest

from agile.tables import TableError, TableWriter, read_chunks


def rows(n):
    return [{"id": f"c{i}", "text": f"comment number {i}"} for i in range(n)]


@pytest.mark.parametrize("suffix", ["csv", "jsonl", "parquet"])
def test_round_trip_in_chunks(tmp_path, suffix):
    path = tmp_path / f"in.{suffix}"
    with TableWriter(path) as w:
        w.write(rows(5))
        w.write(rows(12)[5:])
    chunks = list(read_chunks(path, chunk_rows=5))
    assert [len(c.ids) for c in chunks] == [5, 5, 2]
    assert [c.start for c in chunks] == [0, 5, 10]
    assert [i for c in chunks for i in c.ids] == [f"c{i}" for i in range(12)]
    assert chunks[2].texts[-1] == "comment number 11"


def test_csv_delimiter_is_detected_and_ids_default_to_row_numbers(tmp_path):
    path = tmp_path / "ethos_like.csv"
    path.write_text('comment;isHate\n"a; b";1.0\nhello;0.0\n', encoding="utf-8")
    (chunk,) = read_chunks(path, text_column="comment", id_column="id")
    assert chunk.texts == ["a; b", "hello"]
    assert chunk.ids == ["0", "1"]


def test_missing_text_column_names_the_column_and_the_choices(tmp_path):
    path = tmp_path / "x.csv"
    pd.DataFrame({"body": ["a"]}).to_csv(path, index=False)
    with pytest.raises(TableError, match=r"x.csv: no column 'text' \(columns: body\)"):
        list(read_chunks(path))


def test_invalid_utf8_names_the_file_and_keeps_earlier_chunks(tmp_path):
    path = tmp_path / "bad.csv"
    good = "".join(f"{i},fine {i}\n" for i in range(10)).encode()
    path.write_bytes(b"id,text\n" + good + b"10,bad \xff\xfe bytes\n")
    seen = []
    with pytest.raises(TableError, match=r"bad\.csv: invalid UTF-8"):
        for chunk in read_chunks(path, chunk_rows=4):
            seen.extend(chunk.ids)
    assert seen[:8] == [str(i) for i in range(8)]


def test_missing_values_are_empty_comments(tmp_path):
    path = tmp_path / "nan.jsonl"
    path.write_text(json.dumps({"id": 1, "text": None}) + "\n" + json.dumps({"id": 2, "text": "x"}) + "\n")
    (chunk,) = read_chunks(path)
    assert chunk.texts == ["", "x"] and chunk.ids == ["1", "2"]


def test_non_text_value_names_row_and_column(tmp_path):
    path = tmp_path / "num.jsonl"
    path.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"text": {"nested": 1}}) + "\n")
    with pytest.raises(TableError, match="row 1, column 'text'"):
        list(read_chunks(path))


def test_unknown_format_and_missing_file(tmp_path):
    with pytest.raises(TableError, match="unknown format 'xlsx'"):
        TableWriter(tmp_path / "out.xlsx")
    with pytest.raises(TableError, match="no such file"):
        list(read_chunks(tmp_path / "absent.csv"))
    with pytest.raises(TableError, match="does not exist"):
        TableWriter(tmp_path / "no" / "dir" / "out.csv")


def test_ids_are_read_as_written_and_a_missing_id_is_empty(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    jsonl = tmp_path / "ids.jsonl"
    jsonl.write_text('{"id": "0012", "text": "a"}\n{"text": "b"}\n{"id": 12, "text": "c"}\n\n'
                     '{"id": 1.50, "text": "d"}\n{"id": null, "text": "e"}\n')
    (chunk,) = read_chunks(jsonl)
    assert chunk.ids == ["0012", "", "12", "1.50", ""] and chunk.texts == ["a", "b", "c", "d", "e"]
    parquet = tmp_path / "ids.parquet"
    pq.write_table(pa.table({"id": pa.array([7, None, 9], pa.int64()), "text": ["x", "y", None]}), parquet)
    (chunk,) = read_chunks(parquet)
    assert chunk.ids == ["7", "", "9"] and chunk.texts == ["x", "y", ""]
    csv_path = tmp_path / "ids.csv"
    csv_path.write_text("id,text\n0012,a\n,b\nnan,c\n")
    (chunk,) = read_chunks(csv_path)
    assert chunk.ids == ["0012", "", "nan"]


def test_a_malformed_json_line_and_bad_utf8_name_the_row_line_and_byte(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"text": "a"}\n\n{"text": "b"}\n{"text": "c"\n')
    with pytest.raises(TableError, match=r"not a JSON line at row 2 \(line 4, byte offset 29\)"):
        list(read_chunks(path))
    path.write_bytes(b'{"text": "a"}\n{"text": "b\xff"}\n')
    with pytest.raises(TableError, match=r"invalid UTF-8 at row 1 \(line 2, byte offset 14\)"):
        list(read_chunks(path))
    csv_path = tmp_path / "bad.csv"
    csv_path.write_bytes(b'id,text\n0,"two\nlines"\n1,ok\n2,b\xffd\n')
    with pytest.raises(TableError, match=r"invalid UTF-8 at row 2 \(line 5, byte offset 30\)"):
        list(read_chunks(csv_path, chunk_rows=1))


@pytest.mark.parametrize("suffix", ["csv", "jsonl", "parquet"])
def test_an_output_appears_whole_or_not_at_all(tmp_path, suffix):
    path = tmp_path / f"out.{suffix}"
    path.write_text("the previous output\n")
    (tmp_path / f".out.{suffix}.999999999.tmp").write_text("left by a writer that was killed")
    with pytest.raises(RuntimeError), TableWriter(path) as w:
        w.write(rows(3))
        raise RuntimeError("killed half-way")
    assert path.read_text() == "the previous output\n" and sorted(tmp_path.iterdir()) == [path]
    with TableWriter(path) as w:
        w.write(rows(3))
        assert path.read_text() == "the previous output\n"  # nothing in place until the writer closes
    assert len(next(iter(read_chunks(path))).ids) == 3 and sorted(tmp_path.iterdir()) == [path]
