"""Test doubles shipped with raygrade: :mod:`raygrade.testing.fake_openai`, an OpenAI-compatible
server with rate limits, 429s, latency and faults (``pip install 'raygrade[fake]'``)."""
