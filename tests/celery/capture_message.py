"""Captures the exact task message Python Celery LPUSHes for one job, as a fixture for the Rust envelope.

Usage: FACILITATOR_CELERY_TEST_BROKER=redis://127.0.0.1:PORT/0 python capture_message.py VECTOR_NAME > fixture.json

It takes the wire text of the named vector in tests/data/job_requests.json, has Celery send it as the one argument
of a task (`send_task(name, args=(job,), queue="organic_jobs", expires=600)`, exactly what the Rust handler
emulates), reads the raw list entry back from Redis with LRANGE (removing it, so no worker runs it), and prints
{"vector", "task", "queue", "expires_seconds", "sent_at", "message"} with the message as the raw string.
"""

import json
import os
import sys
import time
from pathlib import Path

import redis
from celery import Celery

HERE = Path(__file__).resolve().parent
TASK = "facilitator_client_tests.execute_organic_job"
QUEUE = "organic_jobs"
EXPIRES = 600


def main():
    name = sys.argv[1] if len(sys.argv) > 1 else "unicode_and_escapes"
    vectors = json.loads((HERE.parent / "data" / "job_requests.json").read_text())
    wire = next(c["wire_json"] for c in vectors["cases"] if c["name"] == name)
    broker = os.environ["FACILITATOR_CELERY_TEST_BROKER"]
    app = Celery("capture", broker=broker, backend=broker)
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"])
    r = redis.Redis.from_url(broker)
    r.delete(QUEUE)
    sent_at = time.time()
    result = app.send_task(TASK, args=(json.loads(wire),), queue=QUEUE, expires=EXPIRES)
    raw = r.lrange(QUEUE, 0, -1)
    r.delete(QUEUE)
    assert len(raw) == 1, raw
    print(
        json.dumps(
            {
                "vector": name,
                "task": TASK,
                "queue": QUEUE,
                "expires_seconds": EXPIRES,
                "sent_at": sent_at,
                "task_id": result.id,
                "message": raw[0].decode("utf-8"),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
