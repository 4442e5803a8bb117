"""Ports handed to another process (``raygrade.testing.ports``): distinct, free, and outside the
kernel's ephemeral range, from which Ray's own processes take theirs as they start."""

import socket

import pytest

from raygrade.testing.ports import HANDED_OUT_PORTS, ports_for_another_process


def test_ports_for_another_process_are_distinct_free_and_outside_the_ephemeral_range():
    ports = ports_for_another_process(7)
    assert len(set(ports)) == 7
    low, high = HANDED_OUT_PORTS
    ephemeral = open("/proc/sys/net/ipv4/ip_local_port_range").read().split()
    assert all(low <= p <= high < int(ephemeral[0]) for p in ports)
    for p in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))


def test_a_port_taken_is_not_handed_out(monkeypatch):
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        monkeypatch.setattr("raygrade.testing.ports.HANDED_OUT_PORTS", (taken.getsockname()[1],) * 2)
        with pytest.raises(RuntimeError, match="fewer than 1 free ports"):
            ports_for_another_process(1, tries=5)
