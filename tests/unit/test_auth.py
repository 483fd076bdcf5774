"""Units of the handshake and log defences: the ZAP verdict, constant-time comparisons, the
connection table, and the bounded log. The real attacks are in test_other_user.py."""

from __future__ import annotations

import hmac
import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import zmq

from offcut.client.wire import PLAIN_USERNAME
from offcut.errors import OffcutError
from offcut.server import auth, logs, peers, protocol

TOKEN = "ab" * 32


@pytest.fixture
def zap() -> Any:
    ctx = zmq.Context()
    handler = auth.ZapHandler(ctx, TOKEN, lambda: True)
    yield handler
    handler.close()
    ctx.term()


def _request(mechanism: bytes = b"PLAIN", *creds: bytes) -> list[bytes]:
    return [b"7", auth.DOMAIN, b"127.0.0.1", b"", mechanism, *creds]


def test_zap_admits_only_the_user_name_and_the_token(zap: auth.ZapHandler) -> None:
    ok = zap.verdict(_request(b"PLAIN", PLAIN_USERNAME, TOKEN.encode()))
    assert ok[0] == auth.OK and ok[2]
    again = zap.verdict(_request(b"PLAIN", PLAIN_USERNAME, TOKEN.encode()))
    assert again[2] != ok[2]  # every connection gets a user id of its own
    for bad in (
        _request(b"PLAIN", PLAIN_USERNAME, TOKEN[:-1].encode()),
        _request(b"PLAIN", PLAIN_USERNAME, (TOKEN + "0").encode()),
        _request(b"PLAIN", b"admin", TOKEN.encode()),
        _request(b"PLAIN", PLAIN_USERNAME),
        _request(b"NULL"),
        _request(b"CURVE", b"x" * 32),
        [b"7", b"other-domain", b"127.0.0.1", b"", b"PLAIN", PLAIN_USERNAME, TOKEN.encode()],
        [],
    ):
        status, _, user = zap.verdict(bad)
        assert status == auth.DENIED and user == b"", bad


def test_zap_answers_full_when_the_peer_bound_is_reached() -> None:
    ctx = zmq.Context()
    handler = auth.ZapHandler(ctx, TOKEN, lambda: False)
    try:
        status, text, _ = handler.verdict(_request(b"PLAIN", PLAIN_USERNAME, TOKEN.encode()))
    finally:
        handler.close()
        ctx.term()
    assert status == auth.FULL and b"Too many" in text


def _spy(monkeypatch: pytest.MonkeyPatch, module: Any) -> list[tuple[Any, Any]]:
    calls: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(module.hmac, "compare_digest", spy)
    return calls


def test_the_token_is_compared_in_constant_time_at_the_handshake(
    zap: auth.ZapHandler, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A switch to ``==`` would leak the token byte by byte through timing; the spy sees it."""
    calls = _spy(monkeypatch, auth)
    status, _, _ = zap.verdict(_request(b"PLAIN", PLAIN_USERNAME, b"f" * 64))
    assert status == auth.DENIED
    assert (b"f" * 64, TOKEN.encode()) in calls
    assert (PLAIN_USERNAME, PLAIN_USERNAME) in calls  # both compared, whichever is wrong


def test_the_token_is_compared_in_constant_time_in_every_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = _spy(monkeypatch, protocol)
    with pytest.raises(OffcutError):
        protocol.check_token({"token": "f" * 64}, TOKEN)
    protocol.check_token({"token": TOKEN}, TOKEN)
    assert (b"f" * 64, TOKEN.encode()) in calls and (TOKEN.encode(), TOKEN.encode()) in calls


# ------------------------------------------------------------------------------ connections
def test_a_job_owner_is_the_connection_not_the_routing_id() -> None:
    table = peers.Peers(max_peers=4, max_pending=8)
    table.accepted(10)
    first, ended = table.owner(b"\x00abcd", 10, "u1")
    assert ended == [] and table.current(b"\x00abcd") is first
    assert table.owner(b"\x00abcd", 10, "u1") == (first, [])
    # The connection ends; another one (another fd, another ZAP user id) takes the same id.
    assert table.disconnected(10) is first and not first.open
    table.accepted(11)
    second, ended = table.owner(b"\x00abcd", 11, "u2")
    assert second is not first and ended == []
    # The same id from a connection the table never saw end: the old owner is ended with it.
    table.accepted(12)
    third, ended = table.owner(b"\x00abcd", 12, "u3")
    assert ended == [second] and not second.open and table.current(b"\x00abcd") is third


def test_a_reused_descriptor_ends_the_connection_that_had_it() -> None:
    table = peers.Peers(max_peers=4, max_pending=8)
    table.accepted(10)
    old, _ = table.owner(b"\x00aaaa", 10, "u1")
    newer, ended = table.owner(b"\x00bbbb", 10, "u2")  # fd 10 again, its DISCONNECTED not seen
    assert ended == [old] and not old.open and newer.open
    assert table.current(b"\x00aaaa") is None


def test_a_reused_descriptor_at_accept_time_ends_the_connection_whose_end_was_missed() -> None:
    table = peers.Peers(max_peers=4, max_pending=8)
    assert table.accepted(10) is None
    old, _ = table.owner(b"\x00aaaa", 10, "u1")
    assert table.accepted(10) is old  # its DISCONNECTED was dropped by the monitor
    assert not old.open and table.current(b"\x00aaaa") is None


def test_peer_bound_is_what_zap_asks() -> None:
    table = peers.Peers(max_peers=2, max_pending=8)
    for fd, ident in ((3, b"\x00aaaa"), (4, b"\x00bbbb")):
        assert table.admit()
        table.accepted(fd)
        table.owner(ident, fd, str(fd))
    assert not table.admit()
    table.disconnected(3)
    assert table.admit()


# ------------------------------------------------------------------------------ the log
def _logger(stream: Any) -> logging.Logger:
    log = logging.getLogger("offcut.test-bounded")
    log.handlers[:] = [logs.BoundedHandler(stream)]
    log.propagate = False
    log.setLevel(logging.INFO)
    return log


def test_log_lines_of_one_kind_are_rate_limited_and_counted() -> None:
    out = io.StringIO()
    log = _logger(out)
    for n in range(1000):
        log.info(json.dumps({"event": "auth_refused", "n": n}))
    log.info(json.dumps({"event": "segment", "seconds": 0.1}))  # another kind is not held back
    lines = out.getvalue().splitlines()
    assert len(lines) <= logs.BURST + 5
    assert json.loads(lines[-1])["event"] == "segment"


def test_long_lines_are_cut() -> None:
    out = io.StringIO()
    _logger(out).info("x" * 100_000)
    assert len(out.getvalue()) <= logs.MAX_LINE + 1


def test_a_log_file_past_its_bound_is_emptied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logs, "MAX_FILE", 4096)
    monkeypatch.setattr(logs, "BURST", 10_000)
    path = tmp_path / "sidecar.log"
    with open(path, "w") as fh:  # not O_APPEND: the offset must be reset too
        log = _logger(fh)
        for n in range(500):
            log.info(json.dumps({"event": "segment", "n": n, "pad": "p" * 60}))
        fh.flush()
        assert path.stat().st_size < 4096 + 200
    text = path.read_text()
    assert "\x00" not in text and "log_truncated" in text
