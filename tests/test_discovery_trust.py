"""The CLI forwards a query only to a verified loopback server of the same index (server/discovery.py).

Planted discovery files, foreign and non-loopback URLs, a server of another index, a ``cp -r`` copy,
servers that hang or answer garbage, a FIFO in place of the file: the CLI never sends the key or the
photo where it should not, never hangs, never prints a traceback, and falls back to searching here.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from mmsearch.cli import app
from mmsearch.search.query import Query
from mmsearch.server import discovery

runner = CliRunner()


class Recorder:
    """A loopback TCP server that records every byte it receives and answers ``reply`` (or nothing)."""

    def __init__(self, reply: bytes | None = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.reply = reply
        self.received = b""
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            conn.settimeout(0.5)
            try:
                while True:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    self.received += chunk
                    if b"\r\n\r\n" in self.received and self.reply is not None:
                        conn.sendall(self.reply)
                        break
            except OSError:
                pass
            if self.reply is not None:
                conn.close()

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.fixture()
def recorder():
    rec = Recorder()
    yield rec
    rec.close()


def plant(folder, /, **info) -> None:
    path = folder / discovery.FILE
    path.write_text(json.dumps(info))
    path.chmod(0o644)


def full_info(index, port: int, pid: int | None = None, host: str = "127.0.0.1") -> dict:
    return {"url": f"http://{host}:{port}", "pid": os.getpid() if pid is None else pid,
            **discovery.identity(index)}


@pytest.fixture()
def own_index(tiny_index, tmp_path):
    """A private copy of the tiny index (the planted files must not leak into the shared one)."""
    dst = tmp_path / "index"
    shutil.copytree(tiny_index, dst)
    return dst


def query(index, *extra, env=None):
    res = runner.invoke(app, ["query", "red shoes", "--index", str(index), "--device", "cpu", "--json", *extra],
                        env=env)
    assert res.exit_code == 0, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    return json.loads(res.output)


# ------------------------------------------------------------------------------------ item 2: trust
def test_planted_file_without_identity_gets_nothing(own_index, recorder, sample_catalog):
    plant(own_index, url=f"http://127.0.0.1:{recorder.port}", pid=1)  # the planted file
    photo = str(sorted(sample_catalog.rglob("*.webp"))[0])
    res = runner.invoke(app, ["query", photo, "--index", str(own_index), "--device", "cpu", "--json"],
                        env={"MMSEARCH_API_KEY": "sekrit"})
    assert res.exit_code == 0, res.output
    assert recorder.received == b""
    assert all(not h["path"].startswith("/etc") for h in json.loads(res.output))


def test_planted_file_with_identity_but_another_pid_gets_nothing(own_index, recorder):
    plant(own_index, **full_info(own_index, recorder.port, pid=1))  # pid 1 does not listen on that port
    hits = query(own_index, env={"MMSEARCH_API_KEY": "sekrit"})
    assert recorder.received == b"" and len(hits) == 10


@pytest.mark.parametrize("url", ["http://10.1.2.3:8000", "http://example.com:80", "https://127.0.0.1:8000",
                                 "http://localhost:8000", "http://user:pw@127.0.0.1:8000",
                                 "http://127.0.0.1:8000/x", "http://127.0.0.1:8000?q", "http://127.0.0.1",
                                 "http://[::ffff:10.0.0.1]:80", "http://0.0.0.0:8000", "ftp://127.0.0.1:21",
                                 "http://127.0.0.1:8000\n", "http://[fe80::1%25eth0]:80", 42, None])
def test_only_plain_loopback_urls(url):
    assert discovery.loopback_url(url) is None


@pytest.mark.parametrize("url,want", [("http://127.0.0.1:8000", ("127.0.0.1", 8000)),
                                      ("http://127.9.8.7:1/", ("127.9.8.7", 1)),
                                      ("http://[::1]:65535", ("::1", 65535))])
def test_loopback_urls_accepted(url, want):
    assert discovery.loopback_url(url) == want


def test_non_loopback_url_is_never_contacted(own_index, monkeypatch):
    contacted = []
    monkeypatch.setattr(http.client.HTTPConnection, "connect", lambda self: contacted.append(self.host))
    monkeypatch.setattr(socket, "create_connection", lambda addr, *a, **k: contacted.append(addr))
    plant(own_index, **{**full_info(own_index, 80), "url": "http://10.1.2.3:80"})
    assert discovery.ask(own_index, Query.of(text="x", k=5)) is None
    assert contacted == []


def test_group_writable_or_foreign_file_is_ignored(own_index, recorder):
    plant(own_index, **full_info(own_index, recorder.port))
    (own_index / discovery.FILE).chmod(0o666)
    assert discovery.find(own_index) is None
    (own_index / discovery.FILE).chmod(0o644)
    assert discovery.find(own_index) is not None  # the same file, owned and not writable by others


@pytest.fixture()
def served(own_index):
    """A real server of ``own_index`` in this process, advertised in the folder."""
    import time

    import uvicorn

    from mmsearch import SearchEngine
    from mmsearch.server import ServeCfg, create_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(SearchEngine.open(own_index, device="cpu"),
                                                      ServeCfg(port=port, reload_interval_s=0)),
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    with discovery.advertise(own_index, "127.0.0.1", port):
        thread.start()
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        yield own_index, port
        server.should_exit = True
        thread.join(10)
    sock.close()


def test_real_server_is_used(served, monkeypatch):
    index, _ = served
    asked = []
    real = discovery.post
    monkeypatch.setattr(discovery, "post", lambda *a, **k: asked.append(a) or real(*a, **k))
    rows = discovery.ask(index, Query.of(text="red shoes", k=5))
    assert rows is not None and len(rows) == 5 and asked


def test_copy_of_an_index_is_not_answered_by_the_original_server(served, tmp_path, monkeypatch):
    from mmsearch import SearchEngine

    index, _ = served
    copy = tmp_path / "copy"
    shutil.copytree(index, copy)  # carries the discovery file along
    assert (copy / discovery.FILE).exists()
    first = query(copy)[0]["id"]
    SearchEngine.open(copy, device="cpu").remove([first])  # the copy changes, the served original does not
    asked = []
    monkeypatch.setattr(discovery, "post", lambda *a, **k: asked.append(a))
    hits = query(copy)
    assert asked == [] and first not in [h["id"] for h in hits]


def test_server_of_another_index_is_refused(served, tmp_path, tiny_index):
    # a file in another index that names this folder correctly but points at the served one's port:
    # the server answers with its own identity, which the CLI refuses
    _, port = served
    other = tmp_path / "other"
    shutil.copytree(tiny_index, other)
    plant(other, **full_info(other, port))
    assert discovery.find(other) is not None  # the file itself passes; only the answer gives it away
    assert discovery.ask(other, Query.of(text="red shoes", k=5)) is None


def test_server_behind_the_current_snapshot_is_not_asked(served):
    index, _ = served
    (index / "CURRENT").write_text("20990101T000000-abcdef\n")  # a rebuild the server has not loaded yet
    assert discovery.ask(index, Query.of(text="red shoes", k=5)) is None


# ----------------------------------------------------------------------- item 3: hangs and crashes
def test_server_that_never_answers_falls_back_quickly(own_index, monkeypatch):
    import time

    silent = Recorder(reply=None)
    try:
        plant(own_index, **full_info(own_index, silent.port))
        monkeypatch.setattr(discovery, "ANSWER_TIMEOUT_S", 0.3)
        t0 = time.monotonic()
        assert discovery.ask(own_index, Query.of(text="x", k=5)) is None
        assert time.monotonic() - t0 < 30  # not the 60 s of before; generous for a loaded machine
        assert b"POST /cli/query" in silent.received
    finally:
        silent.close()


def test_fifo_in_place_of_the_discovery_file_does_not_hang(own_index):
    os.mkfifo(own_index / discovery.FILE)
    assert discovery.find(own_index) is None  # returns at once; a blocking open would hang here
    hits = query(own_index)
    assert len(hits) == 10


def test_fifo_as_the_photo_is_not_read_by_the_forwarder(served, tmp_path):
    index, _ = served
    os.mkfifo(tmp_path / "photo.jpg")
    assert discovery.ask(index, Query.of(image=str(tmp_path / "photo.jpg"), k=5)) is None


@pytest.mark.parametrize("body", [b"{", b'{"hits": [', b"null", b'{"hits": "x"}', b"\xff\xfe",
                                  b'{"hits": [{"rank": 1}]}'])
def test_malformed_or_cut_answers_fall_back(own_index, body):
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body) + 50, body)  # cut short
    rec = Recorder(reply=reply)
    try:
        plant(own_index, **full_info(own_index, rec.port))
        assert discovery.ask(own_index, Query.of(text="x", k=5)) is None
        hits = query(own_index)
        assert len(hits) == 10
    finally:
        rec.close()


# ------------------------------------------------------------------------------- item 3: Hypothesis
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                           lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                                                     max_size=4),
                           max_leaves=20)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(info=st.dictionaries(st.sampled_from(["url", "pid", "index", "folder", "x"]), json_values | st.text(),
                            max_size=5) | json_values,
       url=st.none() | st.text(max_size=40) | st.from_regex(r"\Ahttps?://[0-9a-z.:\[\]@%]{1,30}(:[0-9]{1,6})?/?\Z"))
def test_random_discovery_files_never_crash_nor_leave_loopback(own_index, monkeypatch, info, url):
    contacted = []
    monkeypatch.setattr(discovery, "post", lambda addr, port, *a, **k: contacted.append(addr))
    if isinstance(info, dict) and url is not None:
        info = {**discovery.identity(own_index), **info, "url": url, "pid": os.getpid()}
    (own_index / discovery.FILE).write_text(json.dumps(info))
    (own_index / discovery.FILE).chmod(0o644)
    discovery.ask(own_index, Query.of(text="x", k=5))
    import ipaddress

    assert all(ipaddress.ip_address(a).is_loopback for a in contacted)


hit = st.fixed_dictionaries({"rank": st.integers(), "id": st.text(max_size=10), "path": st.text(max_size=10),
                             "score": st.floats(), "title": st.text(max_size=5),
                             "metadata": st.dictionaries(st.text(max_size=5), json_values, max_size=3)})


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=200) | st.builds(lambda v: json.dumps(v).encode(), json_values)
       | st.builds(lambda hits, snap, good: json.dumps({"hits": hits, "snapshot": snap,
                                                         "identity": {"index": "/i", "folder": "1:2"}
                                                         if good else {}}).encode(),
                   st.lists(hit | json_values, max_size=6), st.sampled_from(["s", "t"]), st.booleans()))
def test_random_answers_never_crash(raw):
    rows = discovery.parse_answer(raw, {"index": "/i", "folder": "1:2"}, "s", 5)
    if rows is not None:
        for row in rows:
            assert set(row) == set(discovery.HIT_FIELDS) and isinstance(row["id"], str)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=300), status=st.sampled_from([200, 200, 302, 500]),
       length=st.integers(0, 400))
def test_random_server_answers_over_a_socket_never_crash(own_index, body, status, length):
    reply = b"HTTP/1.1 %d X\r\nContent-Length: %d\r\nLocation: http://10.0.0.1/\r\n\r\n%s" % (status, length, body)
    rec = Recorder(reply=reply)
    try:
        plant(own_index, **full_info(own_index, rec.port))
        assert discovery.ask(own_index, Query.of(text="x", k=5)) is None
    finally:
        rec.close()
