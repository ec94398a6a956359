"""Policy sets through the queue: several policies per comment in one job, the job contract for each.

Real Redis, real worker processes, two tiny random adapters (tests/queue_fixtures.py):
a set through the queue gives `agile score`'s rows, a worker SIGKILLed mid-job still
gives every row and policy exactly once, a gated policy runs only where its gate
flagged, a per-job threshold and an observe-only run, and bad sets are one error
before any job exists.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
from celery import Celery
from queue_fixtures import ROOT, drop_jobs, job_keys, queue_env, read_output, run_cli, use_env, wait_for, write_csv

from agile.cli.main import main as agile_main
from agile.wire import TASK_NAME

SET = ["--policy", "tiny-toxic", "--policy", "tiny-threat"]
POLICIES = ("tiny-toxic", "tiny-threat")


@pytest.fixture(scope="module")
def fleet(module_processes, tiny_preset, adapter_dir):
    redis = module_processes.redis(persist=False)
    env = queue_env(redis.url, tiny_preset, adapter_dir, QUEUE_TEST_DELAY="0.05")
    workers = [module_processes.worker(f"w{n}", env) for n in (1, 2)]
    for w in workers:
        w.wait_ready()
    return {"env": env, "redis": redis, "processes": module_processes}


@pytest.fixture
def env(fleet, monkeypatch):
    return use_env(fleet["env"], monkeypatch)


@pytest.fixture(autouse=True)
def no_jobs_left_over(fleet):
    drop_jobs(fleet)
    yield


def score_here(tiny_preset, source, out, *flags) -> list[dict]:
    """`agile score` in this process with the same set."""
    assert agile_main(["score", "--model", str(tiny_preset), "-i", str(source), "-o", str(out), *flags]) == 0
    return read_output(out)


def assert_same_rows(got: list[dict], want: list[dict]) -> None:
    assert [r["id"] for r in got] == [r["id"] for r in want]
    assert list(got[0]) == list(want[0])
    for g, w in zip(got, want, strict=True):
        for name in POLICIES:
            assert g[f"flagged_{name}"] == w[f"flagged_{name}"] and g[f"version_{name}"] == w[f"version_{name}"]
            if w[f"p_{name}"] == "":
                assert g[f"p_{name}"] == ""
            else:
                assert abs(float(g[f"p_{name}"]) - float(w[f"p_{name}"])) < 1e-4, (g, w)


def test_a_set_through_the_queue_equals_agile_score_row_for_row(env, tiny_preset, tmp_path):
    source = write_csv(tmp_path / "dump.csv", 37)
    out = tmp_path / "queue.csv"
    assert run_cli(["moderate", str(source), "-o", str(out), "--batch-size", "8", *SET]) == 0
    rows = read_output(out)
    assert list(rows[0]) == ["id", "p_tiny-toxic", "flagged_tiny-toxic", "version_tiny-toxic", "p_tiny-threat",
                             "flagged_tiny-threat", "version_tiny-threat", "truncated", "model", "error"]
    assert all(r["p_tiny-toxic"] != "" and r["p_tiny-threat"] != "" and r["error"] == "" for r in rows)
    assert {r["p_tiny-toxic"] for r in rows} != {r["p_tiny-threat"] for r in rows}  # two policies, not one twice
    assert_same_rows(rows, score_here(tiny_preset, source, tmp_path / "here.csv", *SET))


def test_a_single_policy_keeps_its_schema(env, tiny_preset, tmp_path):
    source = write_csv(tmp_path / "dump.csv", 9)
    out = tmp_path / "one.csv"
    assert run_cli(["moderate", str(source), "-o", str(out), "--policy", "tiny-toxic"]) == 0
    assert list(read_output(out)[0]) == ["id", "p_Toxic", "p_Safe", "prediction", "flagged", "truncated",
                                         "model", "policy", "error"]


def test_a_worker_killed_mid_job_still_gives_every_row_and_policy_once(fleet, env, tiny_preset, tmp_path):
    source = write_csv(tmp_path / "dump.csv", 60)
    slow = {**env, "AGILE_QUEUE": f"{env['AGILE_QUEUE']}-kill", "QUEUE_TEST_DELAY": "0.3"}
    sup = fleet["processes"].supervise("k", slow)
    sup.workers[0].wait_ready()
    out = tmp_path / "queue.csv"
    proc = subprocess.Popen([sys.executable, "-m", "agile.cli.main", "moderate", str(source), "-o", str(out),
                             "--batch-size", "4", *SET], cwd=ROOT, env=slow, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    meta = wait_for(lambda: [k for k in job_keys(fleet) if k.endswith(":meta")], 60, "the job")[0]
    client = fleet["redis"].client()
    wait_for(lambda: int(client.hget(meta, "scored") or 0) >= 12, 120, "some rows scored")
    sup.workers[-1].signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    sup.stop()
    assert proc.returncode == 0, err
    assert len(sup.workers) >= 2  # the kill happened and a new worker finished the job
    rows = read_output(out)
    assert [r["id"] for r in rows] == [f"c{i}" for i in range(60)]
    assert int(client.hget(meta, "scored")) == 60 and int(client.hget(meta, "failed")) == 0
    assert_same_rows(rows, score_here(tiny_preset, source, tmp_path / "here.csv", *SET))


def test_a_gated_policy_runs_only_where_its_gate_flagged(env, tiny_preset, tmp_path):
    source = write_csv(tmp_path / "dump.csv", 30)
    plain = score_here(tiny_preset, source, tmp_path / "plain.csv", *SET)
    p = sorted(float(r["p_tiny-toxic"]) for r in plain)
    cut = (p[10] + p[11]) / 2  # about two thirds of the rows flagged by the gate at this threshold
    policy_set = tmp_path / "set.json"
    policy_set.write_text(json.dumps({"policies": [{"name": "tiny-toxic", "threshold": cut},
                                                   {"name": "tiny-threat", "if": "tiny-toxic"}]}))
    out = tmp_path / "gated.csv"
    assert run_cli(["moderate", str(source), "-o", str(out), "--batch-size", "8", "--policy-set",
                    str(policy_set)]) == 0
    rows = read_output(out)
    flagged = [float(r["p_tiny-toxic"]) >= cut for r in plain]
    assert sum(flagged) == 19
    for row, gate_open, before in zip(rows, flagged, plain, strict=True):
        assert row["flagged_tiny-toxic"] is gate_open  # the set's threshold, not the adapter's 0.5
        if gate_open:
            assert abs(float(row["p_tiny-threat"]) - float(before["p_tiny-threat"])) < 1e-4
        else:
            assert (row["p_tiny-threat"], row["flagged_tiny-threat"], row["version_tiny-threat"]) == ("", "", "")
    here = score_here(tiny_preset, source, tmp_path / "here.csv", "--policy-set", str(policy_set))
    assert_same_rows(rows, here)


def test_threshold_override_and_observe_only(env, fleet, tmp_path):
    source = write_csv(tmp_path / "dump.csv", 20)
    base, low, seen = (tmp_path / f"{n}.csv" for n in ("base", "low", "observe"))
    assert run_cli(["moderate", str(source), "-o", str(base), "--policy", "tiny-toxic"]) == 0
    assert run_cli(["moderate", str(source), "-o", str(low), "--policy", "tiny-toxic",
                    "--threshold", "tiny-toxic=0"]) == 0
    assert run_cli(["moderate", str(source), "-o", str(seen), *SET, "--observe"]) == 0
    base, low, seen = read_output(base), read_output(low), read_output(seen)
    assert not all(r["flagged"] for r in base) and all(r["flagged"] is True for r in low)
    assert [r["p_Toxic"] for r in low] == [r["p_Toxic"] for r in base]
    assert all(r["flagged_tiny-toxic"] is False and r["flagged_tiny-threat"] is False for r in seen)
    assert all(abs(float(s["p_tiny-toxic"]) - float(b["p_Toxic"])) < 1e-4 for s, b in zip(seen, base, strict=True))
    metas = [k for k in job_keys(fleet) if k.endswith(":meta")]
    observed = [fleet["redis"].client().hget(k, "observe") for k in metas]
    assert sorted(observed) == ["0", "0", "1"]  # the job's meta records an observe-only run


@pytest.mark.parametrize("content, flags, says", [
    (None, [], "no such policy set file"),
    ("{not json", [], "not a valid JSON file"),
    ('{"policies": []}', [], "a non-empty list 'policies'"),
    ('{"policies": [{"name": "tiny-toxic", "treshold": 0.8}]}', [], "policies[0] must be {name, threshold?, if?}"),
    ('{"policies": [{"name": "tiny-threat", "if": "tiny-toxic"}, {"name": "tiny-toxic"}]}', [],
     "'if' must name a policy earlier in the set"),
    ('{"policies": [{"name": "tiny-toxic", "threshold": 1.5}]}', [], "threshold must be a number within [0, 1]"),
    ('{"policies": [{"name": "tiny-toxic"}, {"name": "tiny-toxic"}]}', [], "appears twice"),
    ('{"policies": [{"name": "tiny-toxic"}]}', ["--threshold", "tiny-hate=0.5"], "'tiny-hate' is not a policy"),
    ('{"policies": [{"name": "tiny-toxic"}]}', ["--threshold", "tiny-toxic=high"], "expected POLICY=P"),
])
def test_a_bad_set_is_one_error_and_no_job(env, fleet, tmp_path, content, flags, says):
    source = write_csv(tmp_path / "dump.csv", 5)
    policy_set = tmp_path / "set.json"
    if content is not None:
        policy_set.write_text(content)
    for command in (["moderate", str(source), "-o", str(tmp_path / "o.csv")], ["submit", str(source)]):
        proc = subprocess.run([sys.executable, "-m", "agile.cli.main", *command, "--policy-set", str(policy_set),
                               *flags], cwd=ROOT, env=env, text=True, capture_output=True, timeout=60)
        assert proc.returncode == 2
        assert proc.stderr.strip().count("\n") == 0 and says in proc.stderr, proc.stderr
    assert job_keys(fleet) == [] and fleet["redis"].client().llen(env["AGILE_QUEUE"]) == 0


def test_a_foreign_client_sends_a_set_or_a_single_adapter(env, fleet):
    app = Celery("foreign", broker=fleet["redis"].url, backend=fleet["redis"].url)
    app.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json")
    items = [{"id": "a", "text": "you are awful"}, {"id": "b", "text": ""}]
    one = app.send_task(TASK_NAME, kwargs={"items": items, "adapter": "tiny-toxic", "threshold": 0.0},
                        queue=env["AGILE_QUEUE"])
    both = app.send_task(TASK_NAME, kwargs={"items": items, "observe": True, "policies": [
        {"adapter": "tiny-toxic"}, {"adapter": "tiny-threat", "if": "tiny-toxic"}]}, queue=env["AGILE_QUEUE"])
    single, pair = one.get(timeout=60), both.get(timeout=60)
    one.forget()
    both.forget()
    assert single["results"]["a"]["flagged"] is True and single["results"]["b"] == {"error": "text is empty"}
    assert pair["results"]["a"]["tiny-toxic"]["flagged"] is False  # observe: nothing flagged
    assert set(pair["results"]["a"]) == set(POLICIES) and pair["results"]["b"] == {"error": "text is empty"}
    assert set(pair["versions"]) == set(POLICIES) and pair["positive_labels"]["tiny-threat"] == "Negative"
