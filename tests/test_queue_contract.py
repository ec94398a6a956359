"""The job contract on real dumps and real operators: every input row comes back exactly once, every job ends.

Two real workers on a private Redis for the whole module. Each test is a case
that broke before the job contract (issue 11): duplicate and missing ids, flags
the workers refuse, Ctrl-C during submit, a resume from a new process, a rerun
on a delivered job, cancel, and the output's and progress's manners.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from celery import Celery
from queue_fixtures import (
    ROOT,
    drop_jobs,
    job_keys,
    queue_env,
    read_output,
    run_cli,
    settings_of,
    use_env,
    wait_for,
    write_csv,
)

from agile.producer.jobs import Job
from agile.wire import TASK_NAME, JobKeys


@pytest.fixture(scope="module")
def fleet(module_processes, tiny_preset):
    redis = module_processes.redis(persist=False)
    env = queue_env(redis.url, tiny_preset, QUEUE_TEST_DELAY="0.05")
    workers = [module_processes.worker(f"w{n}", env) for n in (1, 2)]
    for w in workers:
        w.wait_ready()
    return {"env": env, "redis": redis}


@pytest.fixture
def env(fleet, monkeypatch):
    return use_env(fleet["env"], monkeypatch)


_started: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_process_outlives_its_test():
    """A test that fails while its `agile` process runs (a timeout) leaves no worker consuming behind it."""
    yield
    while _started:
        proc = _started.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def agile(env, *argv, **popen) -> subprocess.Popen:
    """`agile ...` as its own process, stdout and stderr to pipes unless told otherwise."""
    popen.setdefault("stdout", subprocess.PIPE)
    popen.setdefault("stderr", subprocess.PIPE)
    proc = subprocess.Popen([sys.executable, "-m", "agile.cli.main", *argv], cwd=ROOT, env=env, text=True, **popen)
    _started.append(proc)
    return proc


def only_job(fleet) -> str:
    metas = [k for k in job_keys(fleet) if k.endswith(":meta")]
    assert len(metas) == 1, metas
    return metas[0].split("{")[1].split("}")[0]


@pytest.fixture(autouse=True)
def no_jobs_left_over(fleet):
    drop_jobs(fleet)
    yield


def test_duplicate_ids_across_batches_come_back_row_for_row(env, fleet, tmp_path, capsys, caplog):
    source = tmp_path / "dump.csv"
    source.write_text("id,text\n" + "".join(f"d{i % 30},comment number {i}\n" for i in range(100)))
    out = tmp_path / "moderate.csv"
    assert run_cli(["moderate", str(source), "-o", str(out), "--batch-size", "16"]) == 0
    err = caplog.text
    assert "70 row(s) repeat an id" in err and "'d0', 'd1'" in err  # warned, naming the first few
    rows = read_output(out)
    assert [r["id"] for r in rows] == [f"d{i % 30}" for i in range(100)]
    assert len({(r["p_Positive"], r["id"]) for r in rows}) > 30  # each row scored on its own, none merged
    # submit + results (another process) gives the same rows
    submitted = agile(env, "submit", str(source), "--batch-size", "16")
    job_id = submitted.communicate(timeout=120)[0].strip()
    assert submitted.returncode == 0
    assert run_cli(["status", job_id, "--once"]) == 0
    line = capsys.readouterr().out
    assert "/100 rows" in line and "70 rows repeat an earlier id" in line
    again = tmp_path / "results.csv"
    assert run_cli(["results", job_id, "-o", str(again)]) == 0
    assert [r["id"] for r in read_output(again)] == [r["id"] for r in rows]


def test_missing_ids_stay_empty_and_ids_stay_as_written_in_jsonl_and_parquet(env, tmp_path):
    lines = []
    for i in range(40):
        record = {"text": f"comment {i}"}
        if i % 3:
            record["id"] = "0012" if i == 1 else (12 if i == 2 else f"c{i}")
        lines.append(json.dumps(record))
    lines[5] = '{"id": 1.50, "text": "a float id"}'
    jsonl = tmp_path / "dump.jsonl"
    jsonl.write_text("\n".join(lines) + "\n")
    expected = [json.loads(line).get("id") for line in lines]
    expected = ["" if v is None else ("1.50" if k == 5 else str(v)) for k, v in enumerate(expected)]
    out = tmp_path / "out.jsonl"
    assert run_cli(["moderate", str(jsonl), "-o", str(out)]) == 0
    got = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert got == expected  # 40 rows: 0012 stays 0012, 12 stays 12, a blank is "", never nan or 12.0

    parquet = tmp_path / "dump.parquet"
    ids = pa.array([None if i % 4 == 0 else i for i in range(40)], type=pa.int64())
    pq.write_table(pa.table({"id": ids, "text": [f"comment {i}" for i in range(40)]}), parquet)
    out = tmp_path / "out.parquet"
    assert run_cli(["moderate", str(parquet), "-o", str(out)]) == 0
    assert pd.read_parquet(out)["id"].tolist() == ["" if i % 4 == 0 else str(i) for i in range(40)]


@pytest.mark.parametrize("flags, says", [
    (["--labels", "A"], "labels must be a list of at least two strings"),
    (["--instructions", ""], "instructions must be a non-empty string"),
    (["--adapter", "ethos-hate", "--labels", "A,B"], "an adapter brings its own"),
])
def test_a_flag_the_workers_refuse_is_one_error_and_nothing_is_enqueued(env, fleet, tmp_path, flags, says):
    source = write_csv(tmp_path / "dump.csv", 20)
    proc = agile(env, "moderate", str(source), "-o", str(tmp_path / "out.csv"), *flags)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert err.strip().splitlines() == [err.strip()] and says in err and err.startswith("agile: error:")
    assert job_keys(fleet) == [] and fleet["redis"].client().llen(env["AGILE_QUEUE"]) == 0


def test_bad_input_creates_no_job(env, fleet, tmp_path):
    source = write_csv(tmp_path / "dump.csv", 20)
    for argv, says in ([str(tmp_path / "absent.csv")], "no such file"), \
                      ([str(source), "--text-column", "comment"], "no column 'comment'"):
        proc = agile(env, "submit", *argv)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 2 and says in err
    assert job_keys(fleet) == []


def sample_in_flight(fleet, job_id: str, stop: threading.Event, seen: list[int]) -> None:
    keys = JobKeys(fleet["env"]["AGILE_KEY_PREFIX"], job_id)
    client = fleet["redis"].client()
    while not stop.is_set():
        seen.append(client.hlen(keys.inflight))
        stop.wait(0.02)


def test_ctrl_c_during_submit_then_results_in_a_new_process_finishes_the_job(env, fleet, tmp_path):
    source = write_csv(tmp_path / "dump.csv", 160)
    submit = agile(env, "submit", str(source), "--batch-size", "8", "--max-in-flight", "2")
    wait_for(lambda: [k for k in job_keys(fleet) if k.endswith(":meta")], 60, "the job")
    job_id = only_job(fleet)
    meta = JobKeys(env["AGILE_KEY_PREFIX"], job_id).meta
    client = fleet["redis"].client()
    wait_for(lambda: int(client.hget(meta, "next_batch") or 0) >= 3, 60, "three batches sent")
    submit.send_signal(signal.SIGINT)
    _, err = submit.communicate(timeout=30)
    assert submit.returncode == 130 and f"agile results {job_id}" in err
    assert client.hget(meta, "status") == "submitting" and int(client.hget(meta, "next_batch")) < 20
    # the workers finish what was sent; only then is the resume hint due (a batch in flight may be
    # a live producer's)
    inflight = JobKeys(env["AGILE_KEY_PREFIX"], job_id).inflight
    wait_for(lambda: client.hlen(inflight) == 0, 60, "the batches sent are scored")
    status = agile(env, "status", job_id, "--once")
    line = status.communicate(timeout=30)[0]
    assert "/160 rows" in line and "ETA -" not in line and f"agile results {job_id}" in line
    # a new process, with another default batch size, resumes with the job's own: batches of 8
    stop, seen = threading.Event(), []
    sampler = threading.Thread(target=sample_in_flight, args=(fleet, job_id, stop, seen))
    sampler.start()
    out = tmp_path / "scores.csv"
    results = agile({**env, "AGILE_BATCH_SIZE": "64", "AGILE_MAX_IN_FLIGHT": "2"}, "results", job_id, "-o", str(out))
    stdout, err = results.communicate(timeout=180)
    stop.set()
    sampler.join()
    assert results.returncode == 0, err
    assert [r["id"] for r in read_output(out)] == [f"c{i}" for i in range(160)]
    assert max(seen) <= 2  # backpressure from Redis state: never more than the job's bound in flight
    assert "160 rows" in stdout and not list(tmp_path.glob(".agile-*"))  # spool removed
    # a rerun on the delivered job says when and where, exits non-zero, and leaves the output alone
    before = out.read_bytes()
    rerun = agile(env, "results", job_id, "-o", str(out))
    _, err = rerun.communicate(timeout=60)
    assert rerun.returncode == 2 and "was delivered at" in err and str(out) in err
    assert out.read_bytes() == before


def test_an_interrupted_moderate_names_its_spool_and_resumes_with_the_job_id(env, fleet, tmp_path):
    source = write_csv(tmp_path / "dump.csv", 200)
    out = tmp_path / "scores.csv"
    first = agile(env, "moderate", str(source), "-o", str(out), "--batch-size", "8", "--max-in-flight", "2")
    wait_for(lambda: list(tmp_path.glob(".agile-*.spool")) and only_job(fleet), 60, "a spool")
    job_id = only_job(fleet)
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=30)
    assert first.returncode == 130 and f".agile-{job_id}.spool" in err
    assert not out.exists()
    again = agile(env, "moderate", str(source), "-o", str(out), "--job", job_id)
    _, err = again.communicate(timeout=180)
    assert again.returncode == 0, err
    assert [r["id"] for r in read_output(out)] == [f"c{i}" for i in range(200)]
    assert not list(tmp_path.glob(".agile-*")) and not list(tmp_path.glob(".scores*"))


def test_without_a_tty_progress_is_a_line_every_few_seconds(env, tmp_path):
    source = write_csv(tmp_path / "dump.csv", 300)
    with (tmp_path / "err.txt").open("w") as err:
        proc = agile(env, "moderate", str(source), "-o", str(tmp_path / "out.csv"), "--batch-size", "8",
                     stderr=err)
        proc.communicate(timeout=180)
    assert proc.returncode == 0
    lines = (tmp_path / "err.txt").read_text().splitlines()
    assert len((tmp_path / "err.txt").read_text()) < 4000 and "\r" not in (tmp_path / "err.txt").read_text()
    counts = [line.split(": ")[1].split(" rows")[0].split("/") for line in lines if " rows" in line]
    assert counts and all(int(d.replace(",", "")) <= int(t.replace(",", "")) for d, t in counts)
    assert counts[-1] == ["300", "300"] and not any("ETA -" in line for line in lines)


def test_cancel_drops_the_job_and_its_queued_batches_and_a_late_batch_writes_nothing(env, fleet, tmp_path):
    source = write_csv(tmp_path / "dump.csv", 40)
    idle_queue = {**env, "AGILE_QUEUE": "nobody-listens"}
    proc = agile(idle_queue, "submit", str(source), "--batch-size", "8")
    job_id = proc.communicate(timeout=60)[0].strip()
    client = fleet["redis"].client()
    assert client.llen("nobody-listens") == 5
    assert run_cli(["cancel", job_id, "--queue", "nobody-listens"]) == 0
    assert client.llen("nobody-listens") == 0
    keys = JobKeys(env["AGILE_KEY_PREFIX"], job_id)
    assert job_keys(fleet) == [keys.meta] and client.hget(keys.meta, "status") == "cancelled"
    # a copy of one of its batches still reaches a worker: it writes nothing and makes no key again
    app = Celery("late", broker=fleet["redis"].url, backend=fleet["redis"].url)
    app.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json")
    late = app.send_task(TASK_NAME, kwargs={"items": [{"id": "0", "text": "x"}], "job_id": job_id,
                                            "batch_id": "b0"}, queue=env["AGILE_QUEUE"])
    assert late.get(timeout=30)["gone"] is True
    late.forget()
    assert job_keys(fleet) == [keys.meta]
    assert run_cli(["results", job_id, "-o", str(tmp_path / "o.csv")]) == 2


def test_a_job_open_in_another_process_reads_everything_from_redis(env, tmp_path):
    source = write_csv(tmp_path / "dump.csv", 24)
    proc = agile({**env, "AGILE_QUEUE": "nobody-listens-2"}, "submit", str(source), "--batch-size", "8",
                 "--labels", "Toxic,Safe")
    job_id = proc.communicate(timeout=60)[0].strip()
    job = Job.open(settings_of(env), job_id)
    assert (job.batch_size, job.total_batches, job.policy) == (8, 3, {"labels": ["Toxic", "Safe"]})
    assert json.loads(job.meta["source"])["path"] == str(source.resolve())
    assert set(json.loads(job.meta["fingerprint"])) == {"size", "mtime_ns", "blake2b"}
    os.utime(source, ns=(0, 0))  # touched (copied to another machine): the bytes decide
    from agile.producer.commands import job_source

    job_source(job)
    source.write_text(source.read_text().replace("c1,", "cX,"))
    with pytest.raises(Exception, match="changed since it was submitted"):
        job_source(job)
    job.cancel()


def test_a_worker_with_a_forking_pool_refuses_to_start(env):
    """Threads share the one model under a device lock (AGILE_TASKS_IN_HAND); a pool that forks would
    start CUDA in children and swap adapters in copies of the model (`processes`: Celery's other name
    for prefork, which a configured pool does not override)."""
    proc = agile(env, "worker", "--metrics-port", "0", "--", "--pool", "processes", stderr=subprocess.STDOUT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "pool 'prefork' is not supported" in out
