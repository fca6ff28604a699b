"""What a message costs a far Celery worker: `python -m tests.benchmarks.message_cost`.

A plain Celery worker (prefork, concurrency 2, prefetch 1, no gossip, mingle or worker
heartbeat) consumes no-op tasks through a delay proxy to Redis, under four configurations:
Celery's defaults for our use (task events and the Redis transport's ack emulation on),
events off, both off (what a node runs), and both off with each result stored in the
result backend. For each: broker round trips per message (at 0 ms, counted by the proxy,
idle polling included) and the time to consume a burst at 150 ms round trip. Uses
FAILOVER_TEST_BROKER_URL when set, else an embedded Redis. Prints a table.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from contextlib import ExitStack

import redis
from celery import Celery

from tests.support.delay_proxy import DelayProxy
from tests.support.servers import broker_target, broker_url_via, clean_broker, start_servers

QUEUE = "bench.noop"
DONE_KEY = "bench:done"
CASES = {
    "events on, ack emulation on": {"events": "1", "ack_emulation": "1", "results": "0"},
    "events off, ack emulation on": {"events": "0", "ack_emulation": "1", "results": "0"},
    "events off, ack emulation off (a node)": {
        "events": "0",
        "ack_emulation": "0",
        "results": "0",
    },
    "as a node, plus a stored result": {"events": "0", "ack_emulation": "0", "results": "1"},
}

app = Celery("bench", set_as_current=False)
app.conf.update(
    broker_url=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/0"),
    result_backend=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/0"),
    broker_transport_options={"ack_emulation": os.environ.get("BENCH_ACK_EMULATION") == "1"},
    worker_send_task_events=os.environ.get("BENCH_EVENTS") == "1",
    task_send_sent_event=os.environ.get("BENCH_EVENTS") == "1",
    task_ignore_result=os.environ.get("BENCH_RESULTS") != "1",
    worker_prefetch_multiplier=1,
    task_serializer="json",
    accept_content=["json"],
)


@app.task(name="bench.noop")
def noop() -> None:
    """Count the task on Redis directly (not through the proxy), so the bench sees it done."""
    redis.Redis.from_url(os.environ["BENCH_DIRECT_URL"]).incr(DONE_KEY)


def run(direct_url: str, proxy: DelayProxy, case: dict[str, str], tasks: int) -> tuple[float, int]:
    """Seconds to consume `tasks` messages, and the proxy's round trips meanwhile."""
    client = redis.Redis.from_url(direct_url)
    client.delete(DONE_KEY, QUEUE)
    env = {
        **os.environ,
        "BENCH_BROKER_URL": broker_url_via(direct_url, proxy.port),
        "BENCH_DIRECT_URL": direct_url,
        "BENCH_EVENTS": case["events"],
        "BENCH_ACK_EMULATION": case["ack_emulation"],
        "BENCH_RESULTS": case["results"],
    }
    command = [
        sys.executable,
        *("-m", "celery", "-A", "tests.benchmarks.message_cost", "worker", "-Q", QUEUE),
        *("-c", "2", "-P", "prefork", "--without-gossip", "--without-mingle"),
        *("--without-heartbeat", "-l", "WARNING"),
    ]
    worker = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        sender = Celery(broker=direct_url, backend=direct_url, set_as_current=False)
        sender.conf.update(task_serializer="json", accept_content=["json"])
        sender.send_task("bench.noop", queue=QUEUE)
        while int(client.get(DONE_KEY) or 0) < 1:
            time.sleep(0.05)
        time.sleep(1.0)
        proxy.reset_counts()
        started = time.monotonic()
        for _ in range(tasks):
            sender.send_task("bench.noop", queue=QUEUE)
        while int(client.get(DONE_KEY) or 0) < tasks + 1:
            time.sleep(0.01)
        return time.monotonic() - started, proxy.round_trips
    finally:
        worker.terminate()
        worker.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=30)
    args = parser.parse_args()
    rows = []
    with ExitStack() as stack:
        servers = start_servers(stack)
        direct = stack.enter_context(clean_broker(servers.broker_url))
        if direct.startswith("redis+socket://"):
            raise SystemExit("run it with FAILOVER_TEST_BROKER_URL=redis://... (a TCP Redis)")
        for label, case in CASES.items():
            proxy = DelayProxy(broker_target(direct))
            stack.callback(proxy.close)
            _, round_trips = run(direct, proxy, case, args.tasks)
            proxy.one_way_delay = 0.075
            far, _ = run(direct, proxy, case, args.tasks)
            rows.append((label, round_trips / args.tasks, far))
            print(f"  {label}: {round_trips / args.tasks:.1f} round trips, {far:.1f} s", flush=True)
    print()
    print(f"| configuration | broker round trips per message | {args.tasks} messages at 150 ms |")
    print("| --- | --- | --- |")
    for label, per_message, far in rows:
        print(f"| {label} | {per_message:.1f} | {far:.1f} s |")


if __name__ == "__main__":
    main()
