"""Results out of a private Redis: drained through a synced spool, one row per input row, in input order."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from agile.models import ModelInfo
from agile.policy import Policy
from agile.policy_set import Scored
from agile.producer.jobs import Job
from agile.producer.results import Drain, Totals, record_results
from agile.producer.source import FileSource, SourceChanged, batches
from agile.prompt import PromptTemplate
from agile.wire import BatchRequest
from agile.worker.store import Store

POLICY = Policy(PromptTemplate(("Safe", "Toxic")), "tiny-toxic", "Toxic")
FIELDS = {"p_Toxic": 0.7, "p_Safe": 0.3, "prediction": "Toxic", "flagged": True, "truncated": False}


@pytest.fixture
def job(redis_settings, tmp_path):
    """A 10-row job (ids with a duplicate, a blank and a leading zero), batch size 4: b0 b1 b2."""
    path = tmp_path / "dump.csv"
    path.write_text("id,text\n0012,a\nx,b\nx,c\n,d\ny,\nz,f\nw,g\nv,h\nu,i\nt,j\n")
    source = FileSource.of(path)
    plan = source.inspect(4)
    job = Job.create(redis_settings, [{"adapter": "tiny-toxic"}], plan, 4,
                     {"source": source.to_json(), "fingerprint": json.dumps(source.fingerprint())})
    return job, source


def write_back(job: Job, source: FileSource, numbers) -> None:
    """What a worker's write-back does for the given batches (empty text fails, as on a worker)."""
    store = Store(job.settings)
    for batch in batches(source.chunks(), 4):
        if batch.number in numbers:
            req = BatchRequest.from_task((), {"texts": batch.texts,
                                              "job_id": job.job_id, "batch_id": batch.id})
            todo = [k for k in range(len(req)) if k not in req.problems]
            values = {key: [value] * len(todo) for key, value in FIELDS.items()}
            store.finish(req, "t", {"tiny-toxic": Scored(values)}, todo, ModelInfo("m", "c"), {"tiny-toxic": POLICY})


def write_output(drain: Drain, source: FileSource) -> Totals:
    """What `agile results` does with a job whose batches are all in: the 10 rows, batches of 4."""
    drain.open_output(batches(source.chunks(), 4), 4, 10, [])
    return drain.finish()


@pytest.mark.parametrize("suffix", ["csv", "jsonl", "parquet"])
def test_every_input_row_comes_back_once_in_order_with_its_id_as_written(job, tmp_path, suffix):
    job, source = job
    write_back(job, source, {2, 0, 1})
    out = tmp_path / f"out.{suffix}"
    drain = Drain(job, out)
    assert drain.step() == 3 and job.redis.hlen(job.keys.results) == 0
    assert drain.complete(3)
    totals = write_output(drain, source)
    frame = {"csv": lambda p: pd.read_csv(p, dtype={"id": str}, keep_default_na=False),
             "jsonl": lambda p: pd.read_json(p, lines=True, dtype={"id": str}),
             "parquet": pd.read_parquet}[suffix](out)
    assert list(frame.columns) == ["id", "p_Toxic", "p_Safe", "prediction", "flagged", "truncated", "model",
                                   "policy", "error"]
    assert frame["id"].tolist() == ["0012", "x", "x", "", "y", "z", "w", "v", "u", "t"]
    assert frame["error"].tolist()[4] == "text is empty" and frame["error"].tolist()[3] == ""
    assert (totals.rows, totals.scored, totals.failed) == (10, 9, 1)
    assert not list(tmp_path.glob(".agile-*")) and not list(tmp_path.glob(".out*"))  # spool and temp gone


def test_the_output_is_written_batch_by_batch_in_order_as_the_batches_come_in(job, tmp_path):
    """A batch goes to the temporary output once it and every batch before it are in; the output
    appears only whole. A run cut short drops its temporary file and the next writes it all again."""
    job, source = job
    out = tmp_path / "out.csv"
    drain = Drain(job, out)
    drain.open_output(batches(source.chunks(), 4), 4, 10, [])
    work = lambda: list(tmp_path.glob(".out.csv.*.tmp"))  # noqa: E731
    write_back(job, source, {1})
    drain.step()
    assert not work() or len(work()[0].read_text().splitlines()) <= 1  # b1 waits for b0
    write_back(job, source, {0})
    drain.step()
    (temp,) = work()
    assert len(pd.read_csv(temp)) == 8 and not out.exists()  # b0 and b1, not yet in place
    drain.abort()  # Ctrl-C here
    assert not work() and drain.spool.exists()
    write_back(job, source, {2})
    again = Drain(job, out)
    again.open_output(batches(source.chunks(), 4), 4, 10, [])
    again.step()
    totals = again.finish()
    assert pd.read_csv(out, dtype={"id": str}, keep_default_na=False)["id"].tolist() == \
        ["0012", "x", "x", "", "y", "z", "w", "v", "u", "t"]
    assert (totals.rows, totals.failed) == (10, 1) and not work() and not again.spool.exists()


def test_a_crash_between_sync_and_delete_writes_nothing_twice(job, tmp_path):
    job, source = job
    write_back(job, source, {0, 1, 2})
    out = tmp_path / "out.csv"
    first = Drain(job, out)
    record = json.loads(job.redis.hget(job.keys.results, "b1"))
    # a previous run synced b1, died before deleting it from Redis, and left half a line after it
    first.spool.write_text(json.dumps({"batch": "b1", "record": record}) + "\n" + '{"batch": "b2", "rec')
    drain = Drain(job, out)
    assert drain.step() == 2  # b0 and b2; b1 was already in the spool
    write_output(drain, source)
    assert len(pd.read_csv(out)) == 10


def test_a_changed_source_leaves_the_old_output_and_the_spool(job, tmp_path):
    job, source = job
    write_back(job, source, {0, 1, 2})
    out = tmp_path / "out.csv"
    out.write_text("earlier output\n")
    drain = Drain(job, out)
    drain.step()
    out.with_name("dump.csv").write_text("id,text\n" + "a,b\n" * 11)
    with pytest.raises(SourceChanged):
        source.check(json.loads(job.meta["fingerprint"]))
    with pytest.raises(SourceChanged, match=r"no longer has the rows|more rows"):
        write_output(drain, source)
    assert out.read_text() == "earlier output\n" and drain.spool.exists()
    assert not list(tmp_path.glob(".out.csv.*"))


@pytest.mark.parametrize("shape", ["rows of a set", "rows of one policy"])
def test_records_of_earlier_workers_still_make_the_same_output(job, tmp_path, shape):
    """A spool or a Redis kept over an upgrade holds records of an earlier shape: a row per comment,
    {policy: fields} (before columns) or fields alone with `policy` beside them (before one record
    shape). They are read into the same columns, and the output is the same."""
    job, source = job
    write_back(job, source, {0, 1, 2})
    new = tmp_path / "new.csv"
    drain = Drain(job, new)
    drain.step()
    entries = [json.loads(line) for line in drain.spool.read_text().splitlines()]
    write_output(drain, source)
    for entry in entries:
        record = entry["record"]
        rows = record_results(record, record["n"]).rows()
        old = ({**{k: v for k, v in record.items() if k not in ("n", "columns", "errors")}, "results": rows}
               if shape == "rows of a set" else
               {"model": record["model"], "policy": "tiny-toxic", "adapter_version": "",
                "results": [r if "error" in r else r["tiny-toxic"] for r in rows]})
        job.redis.hset(job.keys.results, entry["batch"], json.dumps(old))
    old_out = tmp_path / "old.csv"
    again = Drain(job, old_out)
    assert again.step() == 3
    write_output(again, source)
    assert old_out.read_text() == new.read_text()
    frame = pd.read_csv(new)
    assert frame["policy"].tolist().count("tiny-toxic") == 10 and frame["p_Toxic"].notna().sum() == 9


def test_the_spool_keeps_records_as_written_and_reads_their_counts_back(job, tmp_path):
    """Records go to the spool undecoded, one line each (a record spread over lines is re-encoded);
    the (scored, failed) a Redis restore needs are read back from it, and a new Drain sees the same."""
    job, source = job
    write_back(job, source, {0, 1, 2})
    raw = {bid: job.redis.hget(job.keys.results, bid) for bid in ("b0", "b1", "b2")}
    job.redis.hset(job.keys.results, "b2", json.dumps(json.loads(raw["b2"]), indent=1))
    drain = Drain(job, tmp_path / "out.csv")
    assert drain.step() == 3
    lines = drain.spool.read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(line)["batch"] in raw for line in lines)
    assert {json.loads(line)["batch"]: json.loads(line)["record"] for line in lines} == {
        bid: json.loads(r) for bid, r in raw.items()}
    assert drain.counts() == {"b0": (4, 0), "b1": (3, 1), "b2": (2, 0)}  # b1 holds the empty text
    assert Drain(job, tmp_path / "out.csv").counts() == drain.counts()
