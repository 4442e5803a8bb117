"""Shared fixtures. Unit tests need none of these; integration tests share one local
Ray cluster, one Serve instance on 127.0.0.1 and one fake OpenAI server per session."""

import os
import tempfile

# Set before Ray starts: workers inherit the environment of the cluster's first driver.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAYGRADE_FAKE_KEY", "sk-test")
os.environ.setdefault("RAY_SERVE_LOG_TO_STDERR", "0")
# The job store's SQLite file (and anything else under RAYGRADE_HOME) goes to a temporary folder.
os.environ.setdefault("RAYGRADE_HOME", tempfile.mkdtemp(prefix="raygrade-tests-"))
os.environ.setdefault("RAYGRADE_WEBHOOK_SECRET", "whsec_" + "dGVzdC1zZWNyZXQtZm9yLXdlYmhvb2tz")
