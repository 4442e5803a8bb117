"""Test infrastructure shared by the tiers (not shipped in the wheel): a PostgreSQL server on
127.0.0.1 for the store tests and a virtual clock for the rate limiter."""
