"""A Celery task module that follows the facilitator client's celery-handler contract, for its tests.

The contract (tests/celery/README.md): one task takes ONE argument, the V2JobRequest as a dict (keys in the order the
facilitator sent them); it routes and runs the job; it publishes every status update of the job exactly as the
ComputeHorde validator's worker does, through channels_redis's RedisPubSubChannelLayer with the validator's settings
(`get_channel_layer().send(f"job_status_updates__{uuid}", {"type": "job_status_update", "payload": <the
V0JobStatusUpdate as a dict>})`), and it returns its terminal status update (the same dict) as its Celery result.

Here "routing" is trivial and "running" is chosen by the job's `env` (signed by the test, like any job):

  TEST_BEHAVIOUR=complete (default)  accepted, executor_ready, volumes_ready, execution_done, completed
  TEST_BEHAVIOUR=fail                accepted, then failed (job_failure_details)
  TEST_BEHAVIOUR=reject              rejected (no miner for the job), nothing else
  TEST_BEHAVIOUR=raise               accepted, then raises RuntimeError: no terminal status published
  TEST_BEHAVIOUR=return_only         accepted, then returns `completed` without publishing it
  TEST_SLEEP=<seconds>               sleep this long after `accepted` (timeouts, worker kills, Redis restarts)
  TEST_PID_FILE=<path>               write the worker process's pid there when the job starts
  TEST_PUBLISH_RECEIVED=1            also publish `received` first (the client must not forward it twice)

The broker and result backend are `$FACILITATOR_CELERY_TEST_BROKER` (redis://127.0.0.1:PORT/0), JSON serializer,
queue `organic_jobs`, as on a validator.
"""

import asyncio
import os
import time
from urllib.parse import urlparse

import django
from django.conf import settings

BROKER = os.environ.get("FACILITATOR_CELERY_TEST_BROKER", "redis://127.0.0.1:6379/0")
_broker = urlparse(BROKER)

if not settings.configured:
    # The validator's CHANNEL_LAYERS (compute_horde_validator/settings.py), pointed at the test Redis.
    settings.configure(
        CHANNEL_LAYERS={
            "default": {
                "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
                "CONFIG": {
                    "hosts": [(_broker.hostname or "127.0.0.1", _broker.port or 6379)],
                    "capacity": 50_000,
                    "expiry": 3600,
                },
            },
        },
    )
    django.setup()

from asgiref.sync import async_to_sync  # noqa: E402  (needs the settings above)
from celery import Celery  # noqa: E402
from channels.layers import get_channel_layer  # noqa: E402

app = Celery("facilitator_client_tests")
app.conf.update(
    broker_url=BROKER,
    result_backend=BROKER,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_default_queue="organic_jobs",
    result_expires=3600,
    broker_connection_retry_on_startup=True,
    # One job at a time per process, so a killed process takes exactly one job with it.
    worker_prefetch_multiplier=1,
)

TASK_NAME = "facilitator_client_tests.execute_organic_job"
CHEATED_TASK_NAME = "facilitator_client_tests.job_cheated"


def _status(uuid, status, metadata=None):
    """A V0JobStatusUpdate as `JobStatusUpdate.model_dump(mode="json")` writes it."""
    return {"message_type": "V0JobStatusUpdate", "uuid": uuid, "status": status, "metadata": metadata}


def _metadata(**details):
    """`JobStatusMetadata.model_dump(mode="json")`: every declared key, None where unset."""
    full = {
        "miner_response": None,
        "job_rejection_details": None,
        "job_failure_details": None,
        "horde_failure_details": None,
        "streaming_details": None,
    }
    full.update(details)
    return full


async def _publish(update):
    # Exactly what the validator's miner_driver.job_status_callback does.
    await get_channel_layer().send(
        f"job_status_updates__{update['uuid']}",
        {"type": "job_status_update", "payload": update},
    )


async def _run(job_request):
    uuid = job_request["uuid"]
    env = job_request.get("env") or {}
    behaviour = env.get("TEST_BEHAVIOUR", "complete")
    pid_file = env.get("TEST_PID_FILE")
    if pid_file:
        with open(pid_file, "w") as f:
            f.write(str(os.getpid()))

    if behaviour == "reject":
        rejected = _status(
            uuid,
            "rejected",
            _metadata(
                job_rejection_details={
                    "rejected_by": "validator",
                    "reason": "no_miner_for_job",
                    "message": "Job could not be routed to a miner",
                    "context": {"exception_type": "JobRoutingException"},
                }
            ),
        )
        await _publish(rejected)
        return rejected

    if env.get("TEST_PUBLISH_RECEIVED") == "1":
        await _publish(_status(uuid, "received"))
    await _publish(_status(uuid, "accepted"))
    sleep = float(env.get("TEST_SLEEP", "0"))
    if sleep > 0:
        await asyncio.sleep(sleep)

    if behaviour == "raise":
        raise RuntimeError(f"test task raised for job {uuid}")
    if behaviour == "fail":
        failed = _status(
            uuid,
            "failed",
            _metadata(
                job_failure_details={
                    "reason": "nonzero_return_code",
                    "stage": "execution",
                    "message": "the job's container exited with status 3",
                    "context": None,
                    "docker_process_exit_status": 3,
                    "docker_process_stdout": "partial output",
                    "docker_process_stderr": "boom",
                }
            ),
        )
        await _publish(failed)
        return failed

    completed = _status(
        uuid,
        "completed",
        _metadata(
            miner_response={
                "docker_process_stderr": "",
                "docker_process_stdout": f"done {uuid}",
                "artifacts": {},
                "upload_results": {},
            }
        ),
    )
    if behaviour == "return_only":
        return completed
    for status in ("executor_ready", "volumes_ready", "execution_done"):
        await _publish(_status(uuid, status))
    await _publish(completed)
    return completed


@app.task(name=TASK_NAME)
def execute_organic_job(job_request):
    """Routes (trivially) and runs one job; returns its terminal status update."""
    # Like the validator's `_execute_organic_job_on_worker`: one event loop for the whole job.
    return async_to_sync(_run)(job_request)


@app.task(name=CHEATED_TASK_NAME)
def job_cheated(report):
    """Receives a V0JobCheated report as one argument (a dict); returns it so a test can read it back."""
    return {"received_at": time.time(), "report": report}
