"""The producer's guards around a job (issue 20): what an operator can get wrong is one clear error, never lost work.

An output over the job's own dump (by name, `x/../`, symlink or hard link), an
output nobody can write, an adapter name that is a path, a dump edited in place
with its mtime kept, two collectors on one job, a killed `agile submit`, and
the status line of a cancelled job. Real files, a real private Redis, real
`agile` processes; no worker listens, so every job stays in flight as long as
a test needs it to.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time

import pytest
from queue_fixtures import ROOT, queue_env, wait_for, write_csv

from agile.files import OutputError, check_output
from agile.producer.cli import describe
from agile.producer.commands import prepare, start
from agile.producer.jobs import Job
from agile.producer.source import FileSource, SourceChanged


@pytest.fixture
def env(private_redis, redis_settings, tiny_preset):
    """`agile` commands on the private Redis, on a queue no worker listens to."""
    return queue_env(private_redis.url, tiny_preset, key_prefix=redis_settings.key_prefix, queue="nobody-listens")


def agile(env, *argv, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agile.cli.main", *argv], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=timeout)


def popen(env, *argv) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "agile.cli.main", *argv], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def one_error(proc: subprocess.CompletedProcess, says: str) -> None:
    """Exit 2 with one line naming the problem, no traceback."""
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err and says in err, err


def job_of(settings, path, **source) -> Job:
    """A job made from `path`, queued nowhere yet (its batches go out when something carries it on)."""
    src = FileSource.of(path, **source)
    return start(settings, src, [{}], prepare(settings, src, [{}]))


def the_same_file(tmp_path, how: str):
    dump = write_csv(tmp_path / "same.csv", 12)
    (tmp_path / "x").mkdir()
    if how == "name":
        return dump, dump
    if how == "dotdot":
        return dump, tmp_path / "x" / ".." / "same.csv"
    if how == "relative":
        return dump, os.path.relpath(dump)
    out = tmp_path / "x" / "out.csv"
    (out.symlink_to if how == "symlink" else out.hardlink_to)(dump)
    return dump, out


@pytest.mark.parametrize("how", ["name", "dotdot", "relative", "symlink", "hardlink"])
def test_an_output_that_is_the_input_is_refused(tmp_path, how):
    dump, out = the_same_file(tmp_path, how)
    with pytest.raises(OutputError, match="which this run reads"):
        check_output(out, (dump,))
    check_output(tmp_path / "x" / "other.csv", (dump,))  # a new file beside it is fine


@pytest.mark.parametrize("how", ["dotdot", "symlink", "hardlink"])
def test_moderate_results_and_score_leave_the_dump_alone(env, redis_settings, tiny_preset, tmp_path, how):
    dump, out = the_same_file(tmp_path, how)
    before = dump.read_bytes()
    one_error(agile(env, "moderate", str(dump), "-o", str(out)), "which this run reads")
    assert redis_settings.redis_client().keys(f"{redis_settings.key_prefix}:*") == []  # no job was made
    job = job_of(redis_settings, dump)
    one_error(agile(env, "results", job.job_id, "-o", str(out)), "which this run reads")
    assert redis_settings.redis_client().llen("nobody-listens") == 0  # nothing was sent either
    one_error(agile(env, "score", "--model", str(tiny_preset), "-i", str(dump), "-o", str(out)),
              "which this run reads")
    assert dump.read_bytes() == before


def test_a_policy_set_file_is_an_input_too(env, redis_settings, tmp_path):
    dump = write_csv(tmp_path / "dump.csv", 4)
    policies = tmp_path / "set.json"
    policies.write_text(json.dumps({"policies": [{"name": "ethos-hate"}]}))
    one_error(agile(env, "moderate", str(dump), "-o", str(policies), "--policy-set", str(policies)),
              "which this run reads")
    assert json.loads(policies.read_text()) == {"policies": [{"name": "ethos-hate"}]}


def test_an_unwritable_output_is_one_error_before_any_work(env, redis_settings, tiny_preset, tmp_path):
    dump = write_csv(tmp_path / "dump.csv", 8)
    (tmp_path / "dir.csv").mkdir()
    for out, says in (("/sys/agile-out.csv", "cannot write in /sys"),
                      (str(tmp_path / "absent" / "out.csv"), "does not exist"),
                      (str(tmp_path / "dir.csv"), "is a directory")):
        one_error(agile(env, "moderate", str(dump), "-o", out), says)
        assert redis_settings.redis_client().keys(f"{redis_settings.key_prefix}:*") == []
        one_error(agile(env, "score", "--model", str(tiny_preset), "-i", str(dump), "-o", out), says)
    job = job_of(redis_settings, dump)
    one_error(agile(env, "results", job.job_id, "-o", "/sys/agile-out.csv"), "cannot write in /sys")
    assert job.status().next_batch == 0  # refused before a batch went out


def test_an_adapter_name_that_is_a_path_is_refused_before_a_job_exists(env, redis_settings, tmp_path):
    dump = write_csv(tmp_path / "dump.csv", 8)
    for name in ("../../etc", "/etc/passwd", ".hidden"):
        one_error(agile(env, "submit", str(dump), "--adapter", name), "is not a plain name")
    assert redis_settings.redis_client().keys(f"{redis_settings.key_prefix}:*") == []


def test_a_same_size_edit_with_the_mtime_kept_is_seen(tmp_path):
    dump = write_csv(tmp_path / "dump.csv", 12)
    source = FileSource.of(dump)
    fingerprint = source.fingerprint()
    stat = dump.stat()
    dump.write_bytes(dump.read_bytes().replace(b"c3,", b"c9,", 1))  # same size, other bytes
    os.utime(dump, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as `touch -r`, `cp -p` or `rsync -t` leave it
    assert dump.stat().st_size == stat.st_size and dump.stat().st_mtime_ns == stat.st_mtime_ns
    with pytest.raises(SourceChanged, match="same size, other bytes"):
        source.check(fingerprint)


def test_a_dump_is_hashed_once_per_process_until_its_inode_changes(tmp_path, monkeypatch):
    """The hash of a settled file is kept while its change time stands (`agile moderate` checks the dump
    three times); a same-size edit with the mtime put back still changes that time, and is seen."""
    import agile.producer.source as source_module

    monkeypatch.setattr(source_module, "_SETTLED_NS", 0)  # a file written a moment ago counts as settled
    dump = write_csv(tmp_path / "dump.csv", 12)
    source = FileSource.of(dump)
    fingerprint = source.fingerprint()
    real_open = type(dump).open
    reads = []
    monkeypatch.setattr(type(dump), "open", lambda self, *a, **k: reads.append(self) or real_open(self, *a, **k))
    source.check(fingerprint)
    assert reads == [], "an unchanged file is not read again"
    time.sleep(0.05)  # past a coarse clock tick (the real rule: settled for 2 s)
    stat = dump.stat()
    dump.write_bytes(dump.read_bytes().replace(b"c3,", b"c9,", 1))
    os.utime(dump, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(SourceChanged, match="same size, other bytes"):
        source.check(fingerprint)
    assert reads, "the edited file was hashed again"


def test_an_edit_between_submit_and_results_is_refused_and_writes_nothing(env, redis_settings, tmp_path):
    dump = write_csv(tmp_path / "dump.csv", 12)
    job = job_of(redis_settings, dump)
    stat = dump.stat()
    dump.write_bytes(dump.read_bytes().replace(b"c3,", b"c9,", 1))
    os.utime(dump, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    out = tmp_path / "out.csv"
    one_error(agile(env, "results", job.job_id, "-o", str(out)), "same size, other bytes")
    assert not out.exists() and job.status().next_batch == 0


def lease_holder(redis_settings, job: Job) -> dict:
    held = redis_settings.redis_client().get(job.lease_key)
    return json.loads(held) if held else {}


def test_one_collector_at_a_time_the_second_says_who_and_a_dead_one_is_taken_over(env, redis_settings,
                                                                                     tmp_path):
    dump = write_csv(tmp_path / "dump.csv", 40)
    job = job_of(redis_settings, dump)
    first = popen(env, "results", job.job_id, "-o", str(tmp_path / "one.csv"))
    try:
        wait_for(lambda: lease_holder(redis_settings, job), 60, "the first collector's lease")
        assert lease_holder(redis_settings, job)["holder"].endswith(f"/{first.pid}")
        second = agile(env, "results", job.job_id, "-o", str(tmp_path / "two.csv"))
        one_error(second, f"/{first.pid}")
        assert "one process at a time" in second.stderr and "collecting it into" in second.stderr
        assert not list(tmp_path.glob("two.csv")) and first.poll() is None  # the first goes on
        first.kill()  # killed: its lease stays in Redis, naming a process that is gone
        first.wait(10)
        assert lease_holder(redis_settings, job)
        third = popen(env, "results", job.job_id, "-o", str(tmp_path / "three.csv"))
        wait_for(lambda: lease_holder(redis_settings, job).get("holder", "").endswith(f"/{third.pid}"), 60,
                 "the third collector takes the dead one's lease over at once")
        # cancelled from another shell, the collector ends with one line and leaves no spool to resume
        assert agile(env, "cancel", job.job_id, "--queue", "nobody-listens").returncode == 0
        _, err = third.communicate(timeout=60)
        assert third.returncode == 2 and "was cancelled at" in err and "Traceback" not in err, err
        assert not list(tmp_path.glob(".agile-*")) and not lease_holder(redis_settings, job)
    finally:
        for proc in (first, locals().get("third")):
            if proc is not None and proc.poll() is None:
                proc.kill()


def test_submit_prints_the_job_id_first_so_a_killed_submit_can_be_resumed(env, redis_settings, tmp_path):
    dump = write_csv(tmp_path / "dump.csv", 40)
    # no worker listens and two batches may be in flight: the submission blocks after the second batch
    proc = popen({**env, "AGILE_MAX_IN_FLIGHT": "2"}, "submit", str(dump), "--batch-size", "4")
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "no job id on stdout while the submission runs"
        job_id = proc.stdout.readline().strip()
        assert proc.poll() is None  # printed before the submission ended
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        job = Job.open(redis_settings, job_id)
        assert job.status().state == "submitting" and job.status().next_batch < job.total_batches
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_cancelled_job_shows_when_and_no_eta(redis_settings, tmp_path):
    job = job_of(redis_settings, write_csv(tmp_path / "dump.csv", 20))
    redis = redis_settings.redis_client()
    now = time.time()
    redis.hset(job.keys.meta, mapping={"created": now - 10, "last_done_at": now, "scored": 8})  # 0.8/s so far
    assert job.status().eta is not None and "ETA" in describe(job.status())
    job.cancel()
    line = describe(job.status())
    assert "cancelled at" in line and "ETA" not in line, line
