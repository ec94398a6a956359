"""`agile label FILE`: label comments in the browser, one at a time, each label saved to FILE as it is made.

FILE is what `agile suggest` writes (or any CSV / JSONL / Parquet table with a text column): its
`p_<label>` columns give the label words and the policy's scores, its `label` column is filled in.
A local command on purpose, not a page of `agile serve`: the HTTP API is a network service for other
services and holds no data files; this page reads and writes a file the user named, on their machine
(docs/LABELLING.md). It binds to loopback and answers only requests that carry the random token it
prints. Every label rewrites the whole table beside FILE and renames it into place, so a killed server
or a closed tab loses at most the comment on screen; a lock file beside FILE keeps a second labeller off.

Light on purpose (the standard library's HTTP server, the project's table code; no torch or keras).
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import math
import os
import secrets
import socket
import sys
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

PAGE = Path(__file__).with_name("label_page.html")
LOOPBACK = "127.0.0.1"
MAX_LABELS = 9  # one key each: 1..9
MAX_BODY = 4096  # a request names a row and a label: nothing bigger is needed
TOKEN_HEADER = "X-Agile-Token"


class LabelFileError(ValueError):
    """FILE cannot be labelled as asked: one line for the user."""


@dataclass
class Table:
    """A whole comment table in memory, rows in order, every column and value as read."""

    path: Path
    fmt: str
    rows: list[dict[str, Any]]
    columns: list[str]
    schema: Any = None  # the Parquet schema, so a rewrite keeps the column types

    @classmethod
    def read(cls, path: Path, delimiter: str | None = None) -> Table:
        """Read FILE whole (a labelling round is small); ids and texts stay exactly as written."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from agile.tables import TableError, csv_frames, table_format

        if not path.is_file():
            raise TableError(f"{path}: no such file")
        fmt = table_format(path)
        if fmt == "csv":  # every value as the text written, as the trainer's data loader reads it
            frame = next(csv_frames(path, delimiter))
            return cls(path, fmt, frame.to_dict("records"), [str(c) for c in frame.columns])
        if fmt == "jsonl":
            rows = _jsonl_rows(path)
            return cls(path, fmt, rows, list(dict.fromkeys(k for row in rows for k in row)))
        try:
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise TableError(f"{path}: cannot read it as parquet: {exc}") from None
        return cls(path, fmt, table.to_pylist(), table.column_names, table.schema)

    def with_label_column(self, column: str) -> Table:
        """The column labels go in, added (empty) at the end when the file has none yet."""
        import pyarrow as pa

        if self.schema is not None:
            index = self.schema.get_field_index(column)
            if index < 0:
                self.schema = self.schema.append(pa.field(column, pa.string()))
            elif not pa.types.is_string(self.schema.field(index).type):  # e.g. all-null: labels are words
                self.schema = self.schema.set(index, pa.field(column, pa.string()))
                for row in self.rows:
                    row[column] = None if row.get(column) is None else str(row[column])
        if column not in self.columns:
            self.columns.append(column)
            for row in self.rows:
                row[column] = ""
        return self

    def save(self) -> None:
        """Rewrite FILE whole: a temporary file beside it, renamed into place (TableWriter's atomic close)."""
        from agile.tables import TableWriter

        with TableWriter(self.path, self.fmt, schema=self.schema) as writer:
            writer.write(self.rows)


def _jsonl_rows(path: Path) -> list[dict[str, Any]]:
    """One dict per line, its keys in order (a row keeps only the keys it had)."""
    from agile.tables import TableError

    rows = []
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise TableError(f"{path}: invalid UTF-8 at line {line_no}: {exc.reason}") from None
            except json.JSONDecodeError as exc:
                raise TableError(f"{path}: line {line_no} is not JSON: {exc.msg} (column {exc.colno})") from None
            if not isinstance(record, dict):
                raise TableError(f"{path}: line {line_no} is not a JSON object")
            rows.append(record)
    return rows


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == ""


def _shown(value: Any) -> str:
    return "" if _is_empty(value) else str(value)


def _probability(value: Any) -> float | None:
    try:
        p = float(value)
    except (TypeError, ValueError):
        return None
    return p if math.isfinite(p) else None


def _stamp(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, st.st_size


@dataclass
class Labelling:
    """The labelling of one table: which row is on screen, the labels made (for undo), the rows skipped.

    Every change goes through `lock` and is on disk before the answer: the page shows only what is saved.
    """

    table: Table
    labels: list[str]
    text_column: str
    id_column: str | None
    label_column: str
    skipped: set[int] = field(default_factory=set)
    made: list[tuple[int, Any]] = field(default_factory=list)  # (row, its value before), newest last
    lock: threading.Lock = field(default_factory=threading.Lock)
    stamp: tuple[int, int, int] = (0, 0, 0)

    def __post_init__(self) -> None:
        self.stamp = _stamp(self.table.path)
        self.scores = [c for c in self.table.columns if c.startswith("p_")]

    def current(self) -> int | None:
        """The next row to label: the first one still empty that was not skipped."""
        column = self.label_column
        return next((i for i, row in enumerate(self.table.rows)
                     if i not in self.skipped and _is_empty(row.get(column))), None)

    def state(self) -> dict[str, Any]:
        """What the page shows: the comment on screen, its scores, the progress."""
        rows, now = self.table.rows, self.current()
        shown = None
        if now is not None:
            shown = {"row": now, "id": self._id(now), "text": _shown(rows[now].get(self.text_column)),
                     "scores": [{"label": c[2:], "p": _probability(rows[now].get(c))} for c in self.scores]}
        last = None
        if self.made:
            row = self.made[-1][0]
            last = {"row": row, "id": self._id(row), "label": _shown(rows[row].get(self.label_column))}
        return {"file": self.table.path.name, "labels": self.labels, "total": len(rows),
                "labelled": sum(not _is_empty(row.get(self.label_column)) for row in rows),
                "skipped": len(self.skipped), "current": shown, "last": last}

    def _id(self, row: int) -> str:
        """The row's id as written, or its row number when the file has no id column (as agile score does)."""
        values = self.table.rows[row]
        return _shown(values.get(self.id_column)) if self.id_column in values else str(row)

    def _check_row(self, row: Any) -> int:
        now = self.current()
        if isinstance(row, bool) or row != now:
            raise Conflict(f"row {row!r} is not the comment to label now (that is row {now}); the page reloads")
        return now

    def _write(self, row: int, value: Any) -> None:
        """Set one row's label and put the whole table on disk; on failure the table stays as it was."""
        path = self.table.path
        if _stamp(path) != self.stamp:
            raise Conflict(f"{path.name} was changed on disk by something else since it was read; nothing was "
                           "saved over it: stop agile label and start it again")
        before = self.table.rows[row].get(self.label_column)
        self.table.rows[row][self.label_column] = value
        try:
            self.table.save()
        except (OSError, ValueError) as exc:  # TableError is a ValueError
            self.table.rows[row][self.label_column] = before
            raise SaveFailed(f"could not save {path.name}: {exc}") from exc
        self.stamp = _stamp(path)

    def label(self, row: Any, label: Any) -> None:
        with self.lock:
            now = self._check_row(row)
            if label not in self.labels:
                raise BadRequest(f"{label!r} is not one of the labels {self.labels}")
            before = self.table.rows[now].get(self.label_column)
            self._write(now, label)
            self.made.append((now, before))

    def skip(self, row: Any) -> None:
        with self.lock:
            self.skipped.add(self._check_row(row))

    def undo(self) -> None:
        """The last label made goes back to what it was (empty); that comment is on screen again."""
        with self.lock:
            if not self.made:
                raise Conflict("no label to undo")
            row, before = self.made[-1]
            self._write(row, before)
            self.made.pop()
            self.skipped.discard(row)

    def revisit(self) -> None:
        """Go through the skipped comments again."""
        with self.lock:
            self.skipped.clear()


class BadRequest(ValueError):
    status = HTTPStatus.BAD_REQUEST


class Conflict(BadRequest):
    status = HTTPStatus.CONFLICT


class SaveFailed(BadRequest):
    status = HTTPStatus.INTERNAL_SERVER_ERROR


def open_labelling(path: Path, text_column: str, id_column: str | None, labels: list[str] | None,
                   delimiter: str | None = None) -> Labelling:
    """FILE ready to label, or one line saying why not (no text column, no label words)."""
    from agile.trainer.suggest import LABEL_COLUMN

    table = Table.read(path, delimiter)
    if text_column not in table.columns:
        raise LabelFileError(f"{path}: no column {text_column!r} (columns: {', '.join(table.columns) or 'none'}); "
                             "name the column with --text-column")
    words = labels or [c[2:] for c in table.columns if c.startswith("p_") and c[2:]]
    if not words:
        raise LabelFileError(f"{path}: no p_<label> columns to take the label words from; name them with "
                             "--labels a,b")
    if len(set(words)) != len(words) or not 2 <= len(words) <= MAX_LABELS:
        raise LabelFileError(f"labels {words}: give 2 to {MAX_LABELS} different words (one key each)")
    if LABEL_COLUMN in (text_column, id_column):
        raise LabelFileError(f"{path}: the text or id column is {LABEL_COLUMN!r}, where labels go; rename it")
    return Labelling(table.with_label_column(LABEL_COLUMN), words, text_column, id_column, LABEL_COLUMN)


class LockHeld(LabelFileError):
    """Another live process labels the same file."""


def lock_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.lock")


def take_lock(path: Path) -> Path:
    """A lock file beside FILE naming this pid; a lock left by a process that is gone is taken over."""
    lock = lock_path(path)
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and _alive(pid):
                raise LockHeld(f"{path} is being labelled by process {pid} (its lock is {lock}); stop that one "
                               "first (or delete the lock if that process is not agile label)") from None
            lock.unlink(missing_ok=True)  # its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        return lock
    raise LockHeld(f"{lock}: could not take the lock (another agile label is starting?)")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def release_lock(lock: Path) -> None:
    with contextlib.suppress(OSError):
        if lock.read_text().strip() == str(os.getpid()):
            lock.unlink()


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class Handler(BaseHTTPRequestHandler):
    """The page and its four actions; every request needs the token, or it gets 403."""

    server: LabelServer
    server_version = "agile-label"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: each comment's request would bury the URL the user needs."""

    def _authorised(self) -> bool:
        given = self.headers.get(TOKEN_HEADER) or parse_qs(urlsplit(self.path).query).get("token", [""])[0]
        return hmac.compare_digest(given.encode(), self.server.token.encode())

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("X-Frame-Options", "DENY")
        nonce = getattr(self, "nonce", None)
        if nonce:  # only the page's own inline script and style run: injected markup could do nothing
            self.send_header("Content-Security-Policy", f"default-src 'none'; script-src 'nonce-{nonce}'; "
                             f"style-src 'nonce-{nonce}'; connect-src 'self'; img-src data:; "
                             "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        self._send(status, json.dumps(payload, ensure_ascii=False).encode(), "application/json; charset=utf-8")

    def _forbidden(self) -> None:
        self._send(HTTPStatus.FORBIDDEN, b"403: this page needs the token that agile label printed "
                   b"(open the URL it printed, ?token=... included)\n", "text/plain; charset=utf-8")

    def do_GET(self) -> None:
        if not self._authorised():
            return self._forbidden()
        route = urlsplit(self.path).path
        if route == "/":
            self.nonce = secrets.token_urlsafe(16)
            page = self.server.page.replace("{{nonce}}", self.nonce)
            return self._send(HTTPStatus.OK, page.encode(), "text/html; charset=utf-8")
        if route == "/api/state":
            with self.server.labelling.lock:
                return self._json(HTTPStatus.OK, {"state": self.server.labelling.state()})
        return self._json(HTTPStatus.NOT_FOUND, {"error": f"no such page: {route}"})

    do_HEAD = do_GET

    def do_POST(self) -> None:
        if not self._authorised():
            return self._forbidden()
        labelling, route = self.server.labelling, urlsplit(self.path).path
        actions = {"/api/label": lambda body: labelling.label(body.get("row"), body.get("label")),
                   "/api/skip": lambda body: labelling.skip(body.get("row")),
                   "/api/undo": lambda body: labelling.undo(),
                   "/api/revisit": lambda body: labelling.revisit()}
        if route not in actions:
            return self._json(HTTPStatus.NOT_FOUND, {"error": f"no such action: {route}"})
        error, status = None, HTTPStatus.OK
        try:
            actions[route](self._body())
        except BadRequest as exc:
            error, status = str(exc), exc.status
        with labelling.lock:
            payload = {"state": labelling.state()}
        if error:
            payload["error"] = error
        self._json(status, payload)

    def _body(self) -> dict[str, Any]:
        if "application/json" not in self.headers.get("Content-Type", ""):
            raise BadRequest("send JSON (Content-Type: application/json)")
        try:
            size = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            raise BadRequest("bad Content-Length") from None
        if not 0 <= size <= MAX_BODY:
            raise BadRequest(f"a request body is at most {MAX_BODY} bytes")
        try:
            body = json.loads(self.rfile.read(size) or b"{}")
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise BadRequest("the body is not JSON") from None
        if not isinstance(body, dict):
            raise BadRequest("the body is not a JSON object")
        return body


class LabelServer(ThreadingHTTPServer):
    """The HTTP server with what its handlers need: the labelling, the token, the page."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], labelling: Labelling, token: str):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.labelling, self.token = labelling, token
        self.page = PAGE.read_text(encoding="utf-8")
        super().__init__(address, Handler)

    def url(self) -> str:
        host, port = self.server_address[:2]
        if ipaddress.ip_address(host).is_unspecified:
            host = socket.gethostname()
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/?token={self.token}"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "label", help="label comments in the browser, each label saved to the file as it is made",
        description="Serve a labelling page for FILE (what agile suggest writes) on this machine: one comment at "
                    "a time with the policy's scores, keys 1..k for the labels, u undo, s skip. Each label is "
                    "written to FILE's label column at once (docs/LABELLING.md).")
    p.add_argument("file", type=Path, metavar="FILE", help="the table to label: .csv, .jsonl or .parquet")
    p.add_argument("--text-column", default="text")
    p.add_argument("--id-column", default="id", help="id column, shown beside each comment (default id)")
    p.add_argument("--labels", type=lambda s: [w.strip() for w in s.split(",") if w.strip()],
                   help="label words, comma-separated (default: the words of FILE's p_<label> columns)")
    p.add_argument("--delimiter", help="CSV delimiter (detected when omitted; FILE is written back with commas)")
    p.add_argument("--host", default=None, help=f"address to listen on (default {LOOPBACK}, this machine only)")
    p.add_argument("--port", type=int, default=0, help="port (default 0: a free one)")
    p.add_argument("--no-browser", action="store_true", help="print the URL, do not open a browser")
    p.set_defaults(func=run)


def run(args) -> int:
    from agile.tables import TableError

    host = args.host or LOOPBACK
    try:
        labelling = open_labelling(args.file, args.text_column, args.id_column, args.labels, args.delimiter)
        lock = take_lock(args.file)
    except (LabelFileError, TableError, OSError) as exc:
        print(f"agile label: error: {exc}", file=sys.stderr)
        return 2
    try:
        try:
            server = LabelServer((host, args.port), labelling, secrets.token_urlsafe(24))
        except (OSError, ValueError, OverflowError) as exc:  # in use, no such address, port out of range
            print(f"agile label: error: cannot listen on {host}:{args.port}: {exc}", file=sys.stderr)
            return 2
        if not is_loopback(host):
            print(f"agile label: warning: --host {host} is not loopback: anyone on the network who has the token "
                  "can read and label these comments", file=sys.stderr)
        state = labelling.state()
        print(f"agile label: {state['labelled']} of {state['total']} labelled in {args.file} "
              f"(labels: {', '.join(labelling.labels)}); open this URL, Ctrl-C stops:", file=sys.stderr)
        print(server.url(), flush=True)
        if not args.no_browser:
            import webbrowser

            webbrowser.open(server.url())
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            with labelling.lock:  # a save in flight finishes first
                state = labelling.state()
            print(f"agile label: stopped; {state['labelled']} of {state['total']} labelled, saved in {args.file}",
                  file=sys.stderr)
            raise
        finally:
            server.server_close()
    finally:
        with labelling.lock:
            release_lock(lock)
    return 0
