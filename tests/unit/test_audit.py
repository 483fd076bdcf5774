"""Audit mode's address rules, called directly (the integration tests run whole processes).

A host *name* that merely starts with "127." used to count as loopback for ``connect``; whatever
it resolves to, resolving it is a DNS query, so only literal loopback addresses pass now.
"""

from __future__ import annotations

from typing import Any

import pytest

from offcut.server import audit


@pytest.fixture
def enforcing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the hook as if enabled, without installing it in the test process."""
    monkeypatch.setattr(audit, "_enabled", True)
    monkeypatch.setattr(audit, "_violations", 0)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.255.3.4", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("127.evil.example", False),
        ("localhost", False),
        ("0.0.0.0", False),
        ("::", False),
        ("::ffff:10.0.0.1", False),
        ("10.0.0.1", False),
        ("fe80::1%lo", False),
        ("/dev/log", False),
        (b"\0abstract", False),
        (0, False),
        (None, False),
    ],
)
def test_only_literal_loopback_addresses_are_loopback(host: Any, loopback: bool) -> None:
    assert audit._is_loopback(host) is loopback


@pytest.mark.parametrize(
    ("event", "args", "blocked"),
    [
        ("socket.connect", (None, ("127.evil.example", 80)), True),
        ("socket.connect", (None, ("::ffff:127.0.0.1", 80, 0, 0)), False),
        ("socket.connect", (None, "/run/dbus/system_bus_socket"), True),
        ("socket.sendto", (None, ("127.0.0.1", 9)), False),
        ("socket.sendto", (None, ("192.0.2.1", 9)), True),
        ("socket.sendto", (None, ("eth0", 0x0800)), True),  # AF_PACKET
        ("socket.sendmsg", (None, None), False),  # connected: the connect was checked
        ("socket.sendmsg", (None, ("2001:db8::1", 9, 0, 0)), True),
        ("socket.bind", (None, ("::1", 0, 0, 0)), False),
        ("socket.bind", (None, ("", 0)), True),  # "" is INADDR_ANY
        ("socket.bind", (None, (0, 0)), True),  # AF_NETLINK
        ("os.setxattr", ("/tmp/x", "user.a", b"1", 0), True),
        ("sqlite3.connect", (":memory:",), True),
        ("syslog.openlog", ("offcut", 0, 8), True),
        ("open", ("/models/u2netp.onnx", "rb", 0), False),
    ],
)
def test_hook_rules(enforcing: None, event: str, args: tuple[Any, ...], blocked: bool) -> None:
    if blocked:
        with pytest.raises(PermissionError, match="offcut audit mode blocked"):
            audit._hook(event, args)
        assert audit.violations() == 1
    else:
        audit._hook(event, args)
        assert audit.violations() == 0
