"""Shared fixtures. Unit tests need none of these; integration tests share one local
Ray cluster, one Serve instance on 127.0.0.1 and one fake OpenAI server per session."""

import os

# Set before Ray starts: workers inherit the environment of the cluster's first driver.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAYGRADE_FAKE_KEY", "sk-test")
os.environ.setdefault("RAY_SERVE_LOG_TO_STDERR", "0")
