"""One local Ray cluster (and one Serve instance) shared by every pytest-xdist worker.

The first worker that needs Ray starts the head with ``ray start --head --block`` (a process
group of its own, on 127.0.0.1, free ports) and Serve on it, under a file lock, and writes
the cluster's address and ports to ``cluster.json`` in the run's shared folder; every other
worker reads that file and connects. The controller process (``pytest_unconfigure`` in
``tests/conftest.py``) stops the head, which stops every process it started. Workers keep to
their own Ray namespaces and Serve application names (``tests/integration/conftest.py``).

Why one cluster, not one per worker: two local clusters on one machine compete for Ray's
fixed default ports and, on 2 cores, for the CPUs both would think they own (tried: Serve
stopped answering on both).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from filelock import FileLock

from raygrade.testing.ports import ports_for_another_process

#: Environment variable naming the run's shared folder (set by the controller before workers start).
SHARED_DIR_ENV = "RAYGRADE_TEST_SHARED_DIR"
#: Logical CPUs of the shared cluster: two workers' deployments, Ray Data actors and a model's
#: CPU bundle at once (the machine has 2 physical cores either way).
NUM_CPUS = 8
#: Serve's tracing for the session: on (Serve's default exporter, span files under the session's
#: logs), sampling no trace by itself; a request carrying a sampled ``traceparent`` is traced
#: (tests/integration/test_job_trace.py).
TRACING = {"enabled": True, "sampling_ratio": 0.0}


def _info_path() -> Path:
    return Path(os.environ[SHARED_DIR_ENV]) / "cluster.json"


def connect(namespace: str) -> dict:
    """Start the shared cluster and Serve if no worker has yet, then connect this process to it
    in ``namespace``. Returns ``{"address", "serve_port", "metrics_port", "pid", "dashboard_url"}`` (the
    dashboard, on 127.0.0.1, takes ``ray job submit``: tests/integration/test_job_submit.py).

    Raises:
        RuntimeError: the head did not come up within 120 s (its log is in the message).
    """
    import ray

    info_path = _info_path()
    with FileLock(str(info_path) + ".lock"):
        if info_path.exists():
            info = json.loads(info_path.read_text())
            ray.init(address=info["address"], namespace=namespace, log_to_driver=False)
            return info
        # Outside the ephemeral range: Ray's own processes, starting meanwhile, take ports there.
        port, metrics_port, serve_port, dashboard_port, *agents = ports_for_another_process(7)
        # Its own temp folder: `ray start` writes the head's address to <temp>/ray_current_cluster,
        # where any `ray.init()` without an address (`serve run` in the quick-start test) would
        # otherwise find it and join this cluster. Short: Ray's socket paths must fit 107 bytes.
        temp_dir = tempfile.mkdtemp(prefix="rgt-", dir="/tmp")
        log = open(info_path.with_name("ray-head.log"), "wb")
        # Ray's worker processes inherit this process's environment (RAYGRADE_HOME, test keys).
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
             "--node-ip-address", "127.0.0.1", "--port", str(port), f"--num-cpus={NUM_CPUS}",
             "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
             # the agents on free ports too: their defaults (52365, …) are what `serve run`'s own cluster takes
             # in the quick-start test, and a job is submitted through the head's agent
             f"--dashboard-agent-listen-port={agents[0]}", f"--dashboard-agent-grpc-port={agents[1]}",
             f"--runtime-env-agent-port={agents[2]}",
             "--disable-usage-stats", f"--metrics-export-port={metrics_port}", f"--temp-dir={temp_dir}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                ray.init(address=address, namespace=namespace, log_to_driver=False)
                break
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    raise RuntimeError("the shared Ray head did not start:\n"
                                       + info_path.with_name("ray-head.log").read_text()[-3000:]) from None
                time.sleep(0.5)
        from ray import serve

        serve.start(http_options={"host": "127.0.0.1", "port": serve_port},
                    logging_config={"enable_access_log": False},
                    tracing_config=TRACING)
        info = {"address": address, "serve_port": serve_port, "metrics_port": metrics_port, "pid": proc.pid,
                "dashboard_url": f"http://127.0.0.1:{dashboard_port}"}
        info_path.write_text(json.dumps(info))
        return info


def stop(shared_dir: str) -> None:
    """Stop the shared cluster if a worker started one (SIGTERM to ``ray start --block``, which
    stops the processes it started; SIGKILL to its group after 60 s)."""
    path = Path(shared_dir) / "cluster.json"
    if not path.exists():
        return
    pid = json.loads(path.read_text())["pid"]
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)
    os.killpg(pid, signal.SIGKILL)
