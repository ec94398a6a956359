"""Two real workers on a private, password-protected Redis: the job path, foreign clients, bad input.

The workers live for the whole module; each test uses the same queue. One logs
text, the other JSON with its metrics port open.
"""

from __future__ import annotations

import json
import re
import urllib.request
import uuid

import pytest
from celery import Celery
from kombu import Connection
from queue_fixtures import free_port, queue_env, read_output, run_cli, settings_of, write_csv

from agile.producer.client import ScoringClient
from agile.wire import TASK_NAME, JobKeys

PASSWORD = "s3cret-" + uuid.uuid4().hex[:6]
BATCH_LINE = re.compile(r"batch ([0-9a-f]+)/(b\d+): \d+ scored")


@pytest.fixture(scope="module")
def fleet(module_processes, tiny_preset, adapter_dir):
    redis = module_processes.redis(password=PASSWORD)
    env = queue_env(redis.url, tiny_preset, adapter_dir, QUEUE_TEST_DELAY="0.02")
    ports = [free_port(), free_port()]
    workers = [module_processes.worker("w1", {**env, "AGILE_METRICS_PORT": str(ports[0])}),
               module_processes.worker("w2", {**env, "AGILE_LOG_FORMAT": "json", "AGILE_METRICS_PORT": str(ports[1])})]
    for w in workers:
        w.wait_ready()
    return {"env": env, "workers": workers, "redis": redis, "metrics": ports}


@pytest.fixture
def producer_env(fleet, monkeypatch):
    for key, value in fleet["env"].items():
        if key.startswith("AGILE_"):
            monkeypatch.setenv(key, value)
    return settings_of(fleet["env"])


def batches_by_worker(fleet, job_id: str) -> list[list[str]]:
    found = []
    for w in fleet["workers"]:
        found.append([b for j, b in BATCH_LINE.findall(w.text()) if j == job_id])
    return found


def test_moderate_spreads_one_job_over_two_workers_with_no_duplicate(fleet, producer_env, tmp_path, capsys):
    source = write_csv(tmp_path / "dump.csv", 400)
    out = tmp_path / "scores.csv"
    assert run_cli(["moderate", str(source), "-o", str(out), "--adapter", "tiny-toxic", "--batch-size", "8"]) == 0
    job_id = re.search(r"job ([0-9a-f]+):", capsys.readouterr().out).group(1)
    rows = read_output(out)
    assert [r["id"] for r in rows] == [f"c{i}" for i in range(400)]  # in input order
    assert {r["prediction"] for r in rows} <= {"Toxic", "Safe"}
    assert all(r["error"] == "" and abs(r["p_Toxic"] + r["p_Safe"] - 1) < 1e-4 for r in rows)
    first, second = batches_by_worker(fleet, job_id)
    assert first and second, "both workers should have scored batches of the job"
    assert sorted(first + second) == sorted(f"b{i}" for i in range(50))  # each batch once, none twice
    # drained: nothing of the job is left in Redis but its delivered marker
    keys = fleet["redis"].client().keys(f"{producer_env.key_prefix}:job:{{{job_id}}}:*")
    assert keys == [f"{producer_env.key_prefix}:job:{{{job_id}}}:meta"]


def test_rows_without_ids_get_row_numbers_and_bad_rows_get_reasons(fleet, producer_env, tmp_path, capsys):
    source = tmp_path / "dump.jsonl"
    texts = ["a normal comment", "", "x" * 250_000, "x" * 20_000, "another comment"]
    source.write_text("".join(json.dumps({"body": t}) + "\n" for t in texts))
    out = tmp_path / "scores.jsonl"
    assert run_cli(["moderate", str(source), "-o", str(out), "--text-column", "body"]) == 1  # some rows failed
    rows = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert list(rows) == ["0", "1", "2", "3", "4"]
    assert rows["1"]["error"] == "text is empty"
    assert "250,000 characters" in rows["2"]["error"]
    assert rows["3"]["truncated"] is True and rows["3"]["error"] == ""  # long, but scored: cut to fit
    assert rows["0"]["prediction"] in ("Positive", "Negative") and rows["4"]["error"] == ""
    assert rows["0"]["truncated"] is False


def test_a_file_with_invalid_utf8_is_refused_naming_the_row(fleet, producer_env, tmp_path, capsys):
    source = tmp_path / "dump.csv"
    source.write_bytes(b"id,text\na,fine\nb,bro\xffken\n")
    assert run_cli(["moderate", str(source), "-o", str(tmp_path / "out.csv")]) == 2
    assert "invalid UTF-8 at row 1 (line 3, byte offset 20)" in capsys.readouterr().err


def test_a_missing_column_and_an_unknown_adapter_say_what_is_wrong(fleet, producer_env, tmp_path, capsys):
    source = write_csv(tmp_path / "dump.csv", 20)
    assert run_cli(["submit", str(source), "--text-column", "comment"]) == 2
    assert "no column 'comment'" in capsys.readouterr().err
    out = tmp_path / "scores.csv"
    assert run_cli(["moderate", str(source), "-o", str(out), "--adapter", "no-such-adapter"]) == 1
    rows = read_output(out)
    assert len(rows) == 20 and all("unknown adapter 'no-such-adapter'" in r["error"] for r in rows)
    assert "0 scored, 20 FAILED" in capsys.readouterr().out


def foreign_client(fleet) -> Celery:
    """What a service with only Celery (or any Celery-protocol client) configures: nothing of ours."""
    app = Celery("foreign", broker=fleet["redis"].url, backend=fleet["redis"].url)
    app.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json")
    return app


def test_a_foreign_celery_client_gets_scores_or_clear_errors(fleet):
    app = foreign_client(fleet)
    queue = fleet["env"]["AGILE_QUEUE"]
    ok = app.send_task(TASK_NAME, kwargs={"items": [{"id": 1, "text": "hello"}, {"id": "2", "text": ""}],
                                          "labels": ["Toxic", "Safe"]}, queue=queue)
    result = ok.get(timeout=30)
    assert result["labels"] == ["Toxic", "Safe"] and result["adapter"] is None
    assert set(result["results"]["1"]) == {"p_Toxic", "p_Safe", "prediction", "truncated"}
    assert result["results"]["2"] == {"error": "text is empty"}
    bad = [({"items": {"id": "a"}}, "items must be a non-empty list"),
           ({"items": [{"id": "a", "text": "x"}], "model": "gemma3_1b"}, "serves model"),
           ({"items": [{"id": "a", "text": "x"}], "adapter": "../../etc"}, "not a plain name"),
           ({"itmes": []}, "unknown payload key")]
    for kwargs, says in bad:
        with pytest.raises(Exception, match=re.escape(says)):
            app.send_task(TASK_NAME, kwargs=kwargs, queue=queue).get(timeout=30)
    # A body that is not JSON, and a pickled one: refused, and the worker keeps serving.
    with Connection(fleet["redis"].url) as conn:
        producer = conn.Producer()
        refused = ((b"{not json", "application/json"), (b"\x80\x04K\x01.", "application/x-python-serialize"))
        for body, content_type in refused:
            producer.publish(body, routing_key=queue, content_type=content_type, content_encoding="binary",
                             headers={"lang": "py", "task": TASK_NAME, "id": str(uuid.uuid4())})
    again = app.send_task(TASK_NAME, kwargs={"items": [{"id": "z", "text": "still there?"}]}, queue=queue)
    assert "z" in again.get(timeout=30)["results"]


def test_a_refused_job_batch_fails_its_rows_so_the_job_ends(fleet, producer_env):
    """Fail closed: a payload the worker refuses, but whose job and batch parse, is written back failed."""
    app = foreign_client(fleet)
    kwargs = {"items": [{"id": "0", "text": "a"}, {"id": "1", "text": "b"}], "labels": ["A"],
              "job_id": "foreignjob", "batch_id": "b0"}
    keys = JobKeys(producer_env.key_prefix, "foreignjob")
    fleet["redis"].client().hset(keys.meta, mapping={"created": "1", "status": "submitted"})  # the job exists
    with pytest.raises(Exception, match="labels must be a list of at least two strings"):
        app.send_task(TASK_NAME, kwargs=kwargs, queue=fleet["env"]["AGILE_QUEUE"]).get(timeout=30)
    r = fleet["redis"].client()
    record = json.loads(r.hget(keys.results, "b0"))
    assert record["n"] == 2 and "labels must be a list" in record["error"]
    assert r.sismember(keys.done, "b0") and r.hget(keys.meta, "failed") == "2"
    r.delete(*keys.all())


def test_the_service_client_streams_and_waits(fleet, producer_env):
    client = ScoringClient(producer_env, adapter="tiny-toxic")
    items = [(f"s{i}", f"comment number {i}") for i in range(70)] + [("bad", "broken \udc80 text")]
    scores = client.score(items, timeout=60)
    assert sorted(scores) == sorted(i for i, _ in items)
    assert "not valid UTF-8 (unpaired surrogate at character 7)" in scores.pop("bad")["error"]
    assert all(s["prediction"] in ("Toxic", "Safe") and "flagged" in s for s in scores.values())
    results_before = set(fleet["redis"].client().keys("celery-task-meta-*"))
    now = client.score_now([("n1", "quick one")])
    assert now["adapter"] == "tiny-toxic" and len(now["adapter_version"]) == 12
    assert set(now["results"]) == {"n1"}
    assert set(fleet["redis"].client().keys("celery-task-meta-*")) <= results_before  # read once, forgotten


def metric_sum(texts: list[str], pattern: str) -> float:
    return sum(float(v) for text in texts for v in re.findall(pattern, text, re.M))


def test_metrics_json_logs_and_no_password_in_logs(fleet):
    app = foreign_client(fleet)
    for _ in range(4):  # payload errors, wherever they land
        with pytest.raises(Exception, match="unknown payload key"):
            app.send_task(TASK_NAME, kwargs={"itmes": []}, queue=fleet["env"]["AGILE_QUEUE"]).get(timeout=30)
    texts = [urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
             for port in fleet["metrics"]]
    assert metric_sum(texts, r'^agile_comments_scored_total\{adapter="[^"]+"\} (\S+)$') > 0
    text = texts[1]
    assert re.search(r'^agile_queue_depth\{state="in_flight"\} \d', text, re.M)
    assert re.search(r'^agile_model_loaded\{checksum="[0-9a-f]{12}",model="[^"]+"\} 1\.0$', text, re.M)
    assert "agile_batch_seconds_bucket" in text and "agile_tokens_total" in text
    assert metric_sum(texts, r'^agile_errors_total\{kind="payload"\} (\S+)$') >= 4
    lines = [json.loads(line) for line in fleet["workers"][1].text().splitlines() if line.startswith("{")]
    batch_lines = [x for x in lines if x.get("batch_id")]
    assert batch_lines and all(x["job_id"] and x["task_id"] for x in batch_lines)
    for w in fleet["workers"]:
        assert PASSWORD not in w.text()


def test_an_adapter_s_output_names_are_what_jobs_and_clients_read(fleet, producer_env, tmp_path, capsys):
    """tiny-named is tiny-threat (same prompt, same weights) with outputs `threat`/`ok`: the same
    scores, under the names, in a job's output and in the worker's result; tiny-threat is unchanged."""
    source = write_csv(tmp_path / "dump.csv", 12)
    outs = {name: tmp_path / f"{name}.csv" for name in ("tiny-named", "tiny-threat")}
    for name, out in outs.items():
        assert run_cli(["moderate", str(source), "-o", str(out), "--adapter", name, "--batch-size", "4"]) == 0
    named, plain = (read_output(out) for out in outs.values())
    assert list(named[0])[:4] == ["id", "p_threat", "p_ok", "prediction"]
    assert list(plain[0])[:4] == ["id", "p_Negative", "p_Positive", "prediction"]
    for a, b in zip(named, plain, strict=True):
        assert abs(a["p_threat"] - b["p_Negative"]) < 1e-6 and abs(a["p_ok"] - b["p_Positive"]) < 1e-6
        assert a["prediction"] == {"Negative": "threat", "Positive": "ok"}[b["prediction"]]
        assert a["flagged"] == b["flagged"]
    now = ScoringClient(producer_env, adapter="tiny-named").score_now([("n1", "quick one")])
    assert now["labels"] == ["threat", "ok"] and now["positive_label"] == "threat"
    assert set(now["results"]["n1"]) >= {"p_threat", "p_ok", "prediction", "flagged"}
