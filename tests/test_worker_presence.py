"""Workers announce their device in Redis, and producers size tasks by it: a real Celery worker on
the tiny model and a private Redis. A GPU worker is stood in for by its announcement (this machine
has no GPU): the producer reads nothing else."""

from __future__ import annotations

import signal

from queue_fixtures import queue_env, settings_of, wait_for, write_csv

from agile.fleet import CPU_TASK_SIZE, GPU_TASK_SIZE, STALE_SECONDS, announce, live_workers, task_size, workers_key
from agile.producer.commands import prepare, sized, start
from agile.producer.jobs import Job
from agile.producer.source import FileSource


def test_a_worker_announces_its_device_and_leaves_on_shutdown(processes, tiny_preset):
    redis = processes.redis()
    env = queue_env(redis.url, tiny_preset)
    settings = settings_of(env)
    worker = processes.worker("pw1", env).wait_ready()
    client = redis.client()
    found = wait_for(lambda: live_workers(client, settings.key_prefix, settings.queue), 20, "the announcement")
    assert list(found.values()) == ["cpu"] and next(iter(found)).startswith("pw1@")
    assert task_size(found) == CPU_TASK_SIZE
    worker.signal(signal.SIGTERM)  # a warm shutdown removes the entry at once
    wait_for(lambda: worker.proc.poll() is not None, 30, "the worker to stop")
    assert live_workers(client, settings.key_prefix, settings.queue) == {}


def test_stale_and_garbled_entries_do_not_count_and_are_dropped(processes):
    client = processes.redis().client()
    announce(client, "p", "q", "gpu-old", "cuda", now=1000.0)
    announce(client, "p", "q", "cpu-now", "cpu", now=5000.0)
    client.hset(workers_key("p", "q"), "junk", "{not json")
    assert live_workers(client, "p", "q", now=5000.0 + STALE_SECONDS - 1) == {"cpu-now": "cpu"}
    assert client.hkeys(workers_key("p", "q")) == ["cpu-now"]
    assert live_workers(client, "p", "q", now=5000.0 + STALE_SECONDS + 1) == {}


def test_tasks_are_gpu_sized_while_a_gpu_worker_is_up_unless_the_size_is_given(processes, tmp_path):
    redis = processes.redis()
    settings = settings_of(queue_env(redis.url, tmp_path))
    assert settings.batch_size == 0  # nothing given
    client = redis.client()
    assert sized(settings).batch_size == CPU_TASK_SIZE  # no worker up
    announce(client, settings.key_prefix, settings.queue, "cpu-1", "cpu")
    assert sized(settings).batch_size == CPU_TASK_SIZE
    announce(client, settings.key_prefix, settings.queue, "gpu-1", "cuda")
    assert sized(settings).batch_size == GPU_TASK_SIZE
    assert sized(settings.with_(batch_size=32)).batch_size == 32  # AGILE_BATCH_SIZE / --batch-size win

    source = FileSource.of(write_csv(tmp_path / "dump.csv", 2100))
    plan = prepare(settings, source, [{}])
    job = Job.open(settings, start(settings, source, [{}], plan).job_id)  # as another process reads it
    assert (plan.batch_size, plan.batches, job.batch_size, job.total_batches) == (1024, 3, 1024, 3)
