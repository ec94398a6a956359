"""`agile label FILE`: a real server process driven by a real browser, each label read back from disk.

The browser test needs Debian's chromium (/usr/bin/chromium) and playwright's Python client
(requirements-dev.txt); it never downloads a browser of its own. Set AGILE_LABEL_SCREENSHOT=PATH to keep
its screenshot (docs/label-page.png is made so).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from agile.cli.main import main
from agile.trainer.label_page import LabelServer, lock_path, open_labelling

pytestmark = pytest.mark.redis  # the integration tier: processes the test starts

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
XSS = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script> & <b>bold</b>'
COLUMNS = ["id", "text", "p_hate", "p_none", "label", "source"]
ROWS = [
    ["0012", "go back where you came from, nobody wants your kind here", "0.4812", "0.5188", "", "forum"],
    ["0013", XSS, "0.3", "0.7", "", "forum"],
    ["007", "you people ruin every thread you touch", "0.55", "0.45", "", "chat"],
    ["1e3", "women engineers built half of this bridge", "0.59", "0.41", "", "news"],
    ["0100", "line one\nline two, quoted \"like this\"", "0.2", "0.8", "", "chat"],
    ["0101", "what a lovely day for a walk", "0.05", "0.95", "", "news"],
]


def write_csv(path: Path, rows=ROWS, columns=COLUMNS) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows(rows)
    return path


def on_disk(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


class Labeller:
    """`python -m agile.cli.main label FILE --no-browser` with the URL it printed."""

    def __init__(self, path: Path, *args: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "agile.cli.main", "label", str(path), "--no-browser",
                                      *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.url = self.proc.stdout.readline().strip()  # "" when it ended instead
        if not self.url.startswith("http://"):
            _, err = self.proc.communicate(timeout=30)
            raise AssertionError(f"agile label did not start: rc {self.proc.returncode}: {err}")

    def interrupt(self) -> tuple[int, str]:
        """Ctrl-C, as a terminal sends it: the exit code and what it wrote on stderr."""
        self.proc.send_signal(signal.SIGINT)
        _, err = self.proc.communicate(timeout=30)
        return self.proc.returncode, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=30)


def status(url: str, method: str = "GET", body: dict | None = None, headers: dict | None = None) -> int:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def browser_or_skip():
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium: apt-get install -y chromium to run the browser test")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        pytest.skip("no playwright: pip install -r requirements-dev.txt to run the browser test")
    return sync_playwright, expect


def test_labelling_in_a_real_browser_saves_each_label_to_the_file(tmp_path):
    sync_playwright, expect = browser_or_skip()
    path = write_csv(tmp_path / "suggested.csv")
    before = path.read_bytes()
    server = Labeller(path)
    try:
        assert server.url.startswith("http://127.0.0.1:") and "/?token=" in server.url
        base, token = server.url.split("/?token=")
        # Without the token, nothing: not the page, not the state, not a label.
        assert status(base + "/") == 403
        assert status(base + "/api/state?token=wrong") == 403
        assert status(base + "/api/label", "POST", {"row": 0, "label": "hate"}, {"X-Agile-Token": "wrong"}) == 403
        assert status(base + "/api/state", headers={"X-Agile-Token": token}) == 200
        with urllib.request.urlopen(server.url, timeout=10) as response:  # only the page's own script may run
            assert "script-src 'nonce-" in response.headers["Content-Security-Policy"]
        assert path.read_bytes() == before

        def labels() -> list[str]:
            return on_disk(path)["label"].tolist()

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
            page = browser.new_page(viewport={"width": 900, "height": 540})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(server.url)

            def press(key: str, progress: str) -> None:
                page.keyboard.press(key)
                expect(page.locator("#progress")).to_have_text(progress)  # shown once saved

            expect(page.locator("#progress")).to_have_text("0 of 6 labelled")
            assert page.text_content("#text") == ROWS[0][1]
            assert page.text_content("#meta") == "row 1 of 6 · id 0012"
            assert [b.strip() for b in page.locator("#choices button").all_inner_texts()] == ["1hate", "2none"]
            assert page.locator("#scores .value").all_inner_texts() == ["0.48", "0.52"]

            press("1", "1 of 6 labelled")
            assert labels() == ["hate", "", "", "", "", ""]
            # The hostile comment is shown as the text it is: no element made from it, no script run.
            assert page.text_content("#text") == XSS
            assert page.locator("#text *").count() == 0
            assert page.evaluate("window.__xss") is None

            press("2", "2 of 6 labelled")
            assert labels() == ["hate", "none", "", "", "", ""]
            press("1", "3 of 6 labelled")
            assert labels() == ["hate", "none", "hate", "", "", ""]
            press("u", "2 of 6 labelled")  # undo: the last label back to empty, that comment on screen again
            assert labels() == ["hate", "none", "", "", "", ""]
            assert page.text_content("#meta") == "row 3 of 6 · id 007"
            press("s", "2 of 6 labelled · 1 skipped")  # skip: left empty, on to the next
            assert labels() == ["hate", "none", "", "", "", ""]
            assert page.text_content("#text") == ROWS[3][1]
            shot = tmp_path / "label-page.png"
            page.screenshot(path=str(shot), full_page=True)
            press("2", "3 of 6 labelled · 1 skipped")
            assert labels() == ["hate", "none", "", "none", "", ""]
            assert page.text_content("#text") == ROWS[4][1]  # newlines and quotes survive the round trip

            press("2", "4 of 6 labelled · 1 skipped")
            press("2", "5 of 6 labelled · 1 skipped")
            assert page.is_visible("#done") and not page.is_visible("#card")
            assert "1 skipped, still empty" in page.text_content("#done-detail")
            page.keyboard.press("r")  # the skipped one again
            expect(page.locator("#meta")).to_have_text("row 3 of 6 · id 007")
            press("1", "6 of 6 labelled")
            assert page.text_content("#done-title") == "All done"
            assert labels() == ["hate", "none", "hate", "none", "none", "none"]
            assert errors == []
            browser.close()
        if os.environ.get("AGILE_LABEL_SCREENSHOT"):
            shutil.copyfile(shot, os.environ["AGILE_LABEL_SCREENSHOT"])

        saved = on_disk(path)  # everything but the labels as it was: columns, order, ids as written
        assert saved.columns.tolist() == COLUMNS
        expected = pd.DataFrame(ROWS, columns=COLUMNS).drop(columns="label")
        pd.testing.assert_frame_equal(saved.drop(columns="label"), expected)
        assert lock_path(path).exists()
        rc, err = server.interrupt()
        assert rc == 130 and "Traceback" not in err and "6 of 6 labelled" in err, err
        assert not lock_path(path).exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["label-page.png", "suggested.csv"]  # no temp left
    finally:
        server.kill()


def test_a_second_labeller_is_refused_while_the_first_lives_and_a_dead_ones_lock_is_taken_over(tmp_path):
    path = write_csv(tmp_path / "round.csv")
    first = Labeller(path)
    try:
        second = subprocess.run([sys.executable, "-m", "agile.cli.main", "label", str(path), "--no-browser"],
                                cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert second.returncode == 2 and second.stdout == ""
        assert second.stderr.count("\n") == 1 and f"process {first.proc.pid}" in second.stderr, second.stderr
    finally:
        first.kill()  # SIGKILL: its lock stays behind, naming a pid that is gone
    assert lock_path(path).read_text().strip() == str(first.proc.pid)
    again = Labeller(path, "--host", "0.0.0.0")
    try:
        assert lock_path(path).read_text().strip() == str(again.proc.pid)
        assert status(again.url.replace(socket.gethostname(), "127.0.0.1", 1)) == 200
        rc, err = again.interrupt()
        assert rc == 130
        assert "warning: --host 0.0.0.0 is not loopback" in err, err
    finally:
        again.kill()


def test_a_port_in_use_is_one_line(tmp_path):
    path = write_csv(tmp_path / "round.csv")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        run = subprocess.run([sys.executable, "-m", "agile.cli.main", "label", str(path), "--no-browser", "--port",
                              str(taken.getsockname()[1])], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and run.stderr.startswith("agile label: error: cannot listen on 127.0.0.1:")
    assert run.stderr.count("\n") == 1 and not lock_path(path).exists()


@pytest.mark.parametrize(("columns", "args", "says"), [
    (["id", "comment", "p_a", "p_b", "label"], [], "no column 'text'"),
    (["id", "text", "label"], [], "no p_<label> columns"),
    (["id", "text", "p_a", "p_b", "label"], ["--labels", "only"], "give 2 to 9 different words"),
    (["id", "text", "p_a", "p_a2", "label"], ["--labels", "x,x"], "give 2 to 9 different words"),
])
def test_a_file_that_cannot_be_labelled_is_refused_in_one_line(tmp_path, capsys, columns, args, says):
    path = write_csv(tmp_path / "bad.csv", [["1", "hello", "0.5", "0.5", ""][: len(columns)]], columns)
    assert main(["label", str(path), "--no-browser", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("agile label: error: ") and says in err and err.count("\n") == 1, err
    assert not lock_path(path).exists()


def test_a_first_row_with_an_extra_field_is_refused_not_shifted(tmp_path):
    """pandas would take the ids as the index: every label would go beside another column's value."""
    path = tmp_path / "shifted.csv"
    path.write_text("id,text,p_a,p_b\nc1,go back, nobody wants you,0.5,0.5\nc2,fine,0.1,0.9\n")
    run = subprocess.run([sys.executable, "-m", "agile.cli.main", "label", str(path), "--no-browser"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)  # read shifted, it would serve the page
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
    assert "row 0 has more fields than the header (Expected 4 fields in line 2, saw 5)" in run.stderr
    assert not lock_path(path).exists()


def test_labels_can_be_named_for_a_file_without_scores(tmp_path):
    path = write_csv(tmp_path / "plain.csv", [["a1", "hello"]], ["id", "text"])
    labelling = open_labelling(path, "text", "id", ["spam", "ham"])
    labelling.label(0, "ham")
    assert on_disk(path).to_dict("records") == [{"id": "a1", "text": "hello", "label": "ham"}]  # label added


def test_jsonl_and_parquet_keep_every_column_and_id_as_written(tmp_path):
    lines = [{"id": "0012", "text": "first", "p_yes": 0.25, "p_no": 0.75, "label": "", "meta": {"k": [1]}},
             {"id": 7, "text": "second", "p_yes": 0.5, "p_no": 0.5, "label": ""},
             {"id": "0014", "text": "third", "p_yes": 0.125, "p_no": 0.875, "label": "no"}]
    jsonl = tmp_path / "round.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in lines))
    labelling = open_labelling(jsonl, "text", "id", None)
    assert labelling.labels == ["yes", "no"] and labelling.current() == 0
    labelling.label(0, "yes")
    labelling.skip(1)
    assert labelling.current() is None and labelling.state()["labelled"] == 2
    written = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert written == [{**lines[0], "label": "yes"}, lines[1], lines[2]]

    parquet = tmp_path / "round.parquet"
    schema = pa.schema([("id", pa.string()), ("text", pa.string()), ("p_yes", pa.float64()), ("p_no", pa.float64()),
                        ("label", pa.null())])  # a label column with nothing in it yet
    pq.write_table(pa.Table.from_pylist([{"id": "0012", "text": "a", "p_yes": 0.1, "p_no": 0.9},
                                         {"id": "0013", "text": "b", "p_yes": 0.6, "p_no": 0.4}], schema), parquet)
    labelling = open_labelling(parquet, "text", "id", None)
    labelling.label(0, "no")
    labelling.label(1, "yes")
    labelling.undo()
    table = pq.read_table(parquet)
    assert table.schema.field("label").type == pa.string() and table.schema.field("p_yes").type == pa.float64()
    assert table.to_pylist() == [{"id": "0012", "text": "a", "p_yes": 0.1, "p_no": 0.9, "label": "no"},
                                 {"id": "0013", "text": "b", "p_yes": 0.6, "p_no": 0.4, "label": None}]


@pytest.fixture
def served(tmp_path):
    """A LabelServer on a thread, for what the page's requests can and cannot do."""
    path = write_csv(tmp_path / "round.csv")
    server = LabelServer(("127.0.0.1", 0), open_labelling(path, "text", "id", None), "secret")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def post(url: str, action: str, body, content_type: str = "application/json") -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f"{url}/api/{action}", data=data, method="POST",
                                     headers={"Content-Type": content_type, "X-Agile-Token": "secret"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_stale_wrong_or_malformed_requests_change_nothing(served):
    path, url = served
    before = path.read_bytes()
    assert post(url, "label", {"row": 1, "label": "hate"})[0] == 409  # not the comment on screen (a stale tab)
    assert post(url, "label", {"row": True, "label": "hate"})[0] == 409
    assert post(url, "label", {"row": 0, "label": "Hate"})[0] == 400
    assert post(url, "label", b"{not json")[0] == 400
    assert post(url, "label", b"row=0&label=hate", "application/x-www-form-urlencoded")[0] == 400
    assert post(url, "label", [0, "hate"])[0] == 400
    code, answer = post(url, "undo", {})
    assert code == 409 and answer["error"] == "no label to undo" and answer["state"]["current"]["row"] == 0
    assert path.read_bytes() == before
    code, answer = post(url, "label", {"row": 0, "label": "hate"})
    assert code == 200 and answer["state"]["labelled"] == 1 and answer["state"]["current"]["row"] == 1


def test_a_file_changed_by_something_else_is_never_saved_over(served):
    path, url = served
    assert post(url, "label", {"row": 0, "label": "hate"})[0] == 200
    edited = write_csv(path, [[*row[:4], "none", row[5]] for row in ROWS]).read_bytes()  # e.g. a spreadsheet
    code, answer = post(url, "label", {"row": 1, "label": "hate"})
    assert code == 409 and "changed on disk" in answer["error"]
    assert path.read_bytes() == edited
