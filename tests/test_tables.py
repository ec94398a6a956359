"""Comment files in and out, streamed in chunks, with errors that name the file, row and column."""

import json

import pandas as pd
import pytest

from agile.tables import TableError, TableWriter, read_chunks, sniff_delimiter


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
    path.write_bytes(b'{"text": "a"}\n{"text": "b\xff"}\n')  # the bad byte itself, as in a CSV (agile train too)
    with pytest.raises(TableError, match=r"invalid UTF-8 at row 1 \(line 2, byte offset 25\)"):
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


def test_a_first_row_with_one_field_more_than_the_header_is_refused_not_shifted(tmp_path):
    """pandas would take the first column as the index and shift every column by one, without a word."""
    path = tmp_path / "dump.csv"
    rows = "".join(f"h{i},a fine comment {i},0\n" for i in range(2, 25))
    path.write_text("id,text,hateful\n\nh1,go back where you came from, nobody wants your kind here,1\n" + rows)
    with pytest.raises(TableError, match=r"dump\.csv: row 0 has more fields than the header "
                                         r"\(Expected 3 fields in line 3, saw 4\); quote a field that holds ','"):
        list(read_chunks(path))
    path.write_text("id,text,hateful\n" + rows + "h1,go back where you came from, nobody wants your kind here,1\n")
    with pytest.raises(TableError, match=r"after row 0: Expected 3 fields in line 25, saw 4"):  # as before
        list(read_chunks(path))
    path.write_text('id,text,hateful\nh1,"go back where you came from, nobody wants your kind here",1\n' + rows)
    (chunk,) = read_chunks(path)
    assert chunk.ids[:2] == ["h1", "h2"] and chunk.texts[0].startswith("go back where")


EXCEL = {  # Excel's `;` CSVs: CRLF line ends, quoted fields holding `;` (csv.Sniffer gave up on all three: `,`)
    "quoted_last": 'id;text\r\n1;"a; b"\r\n2;c, d\r\n',
    "all_quoted": 'id;hateful;text\r\n1;1;"Hello; world, friend"\r\n2;0;"plain, text"\r\n3;0;"ok, fine"\r\n',
    "quoted_newline": 'id;hateful;text\r\n1;1;"first line;\r\nsecond, line"\r\n2;0;"c, d"\r\n',
}


@pytest.mark.parametrize("layout", EXCEL)
def test_excel_semicolon_csvs_are_sniffed_as_semicolon(tmp_path, layout):
    path = tmp_path / "excel.csv"
    path.write_bytes(EXCEL[layout].encode())
    (chunk,) = read_chunks(path)
    expected = {"quoted_last": ["a; b", "c, d"], "all_quoted": ["Hello; world, friend", "plain, text", "ok, fine"],
                "quoted_newline": ["first line;\r\nsecond, line", "c, d"]}[layout]
    assert chunk.texts == expected and chunk.ids == [str(i) for i in range(1, len(expected) + 1)]


@pytest.mark.parametrize(("delimiter", "text"), [(",", "id,text\n1,a; b\n"), ("\t", "id\ttext\n1\ta, b; c\n"),
                                                 ("|", "id|text\n1|a, b\n"), (",", "text\nhello; there\n")])
def test_the_delimiter_is_the_one_that_splits_rows_like_the_header(tmp_path, delimiter, text):
    path = tmp_path / "t.csv"
    path.write_text(text)
    assert sniff_delimiter(path) == delimiter


def test_a_header_split_by_another_delimiter_hints_at_delimiter(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes(b'id;text;hateful\r\n1;"a; b";1\r\n2;c;0\r\n')
    with pytest.raises(TableError, match=r"no column 'text' \(columns: id;text;hateful\); the header looks split "
                                         r"by ';': give --delimiter ';'$"):
        list(read_chunks(path, delimiter=","))
    with pytest.raises(TableError, match=r"no column 'body' .*; name the column with --text-column$"):
        list(read_chunks(path, text_column="body"))


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_an_array_or_object_id_is_refused_naming_row_and_column(tmp_path, suffix):
    """A JSON array id came back as `["1"]`: it cannot come back as written, so it is refused."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / f"ids.{suffix}"
    for kind, bad in (("an array", [1]), ("an object", {"n": 1})):
        records = [{"id": 12, "text": "a"}, {"id": bad, "text": "b"}]
        if suffix == "jsonl":
            path.write_text("".join(json.dumps(r) + "\n" for r in records))
        else:
            pq.write_table(pa.Table.from_pylist(records[1:]), path)
        row = 1 if suffix == "jsonl" else 0
        with pytest.raises(TableError, match=rf"row {row}, column 'id': an id is one value .*, not {kind}; "
                                             "name another id column with --id-column"):
            list(read_chunks(path))
