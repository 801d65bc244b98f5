"""Ports for the processes a stack starts: free, never handed out twice by one launcher, and outside the
kernel's ephemeral range (where an outgoing connection could take one before its service binds it)."""

from __future__ import annotations

import socket

from services.cli import infra


def test_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    ports = [infra.free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    low = infra._ephemeral_low()
    if low > 12_000:
        assert all(10_000 <= p < low for p in ports)
    for port in ports[:20]:
        with socket.socket() as s:
            s.bind(("0.0.0.0", port))


def test_a_port_something_listens_on_is_never_handed_out(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        real_randint = infra.random.randint
        offered = []

        def randint(a: int, b: int) -> int:  # the busy port twice, then whatever chance gives
            offered.append(busy if len(offered) < 2 else real_randint(a, b))
            return offered[-1]

        monkeypatch.setattr(infra.random, "randint", randint)
        monkeypatch.setattr(infra, "_ephemeral_low", lambda: 65_000)
        assert infra.free_port() != busy
        assert offered[:2] == [busy, busy]
