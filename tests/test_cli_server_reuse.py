"""`mmsearch query` through a running `mmsearch serve` of the same index prints what it prints in-process."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
from typer.testing import CliRunner

from mmsearch.cli import app
from mmsearch.search.query import Query
from mmsearch.server import discovery

runner = CliRunner()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def running_server(tiny_index):
    import uvicorn

    from mmsearch import SearchEngine
    from mmsearch.server import ServeCfg, create_app

    port = free_port()
    cfg = ServeCfg(port=port, reload_interval_s=0)
    server = uvicorn.Server(uvicorn.Config(create_app(SearchEngine.open(tiny_index, device="cpu"), cfg),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    with discovery.advertise(tiny_index, "127.0.0.1", port) as path:
        assert path is not None and path.is_file()
        thread.start()
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        yield tiny_index
        server.should_exit = True
        thread.join(10)
    assert not (tiny_index / discovery.FILE).exists()  # removed when the server stops


@pytest.mark.parametrize("extra", [["--json"], [], ["--json", "--where", "category=shoes"], ["--json", "-k", "3"]])
def test_same_output_through_the_server_and_in_process(running_server, sample_catalog, monkeypatch, extra):
    photo = str(sorted(sample_catalog.rglob("*.webp"))[3])
    for query in (["red shoes"], [photo], [photo, "red shoes"], ["2:red shoes", "boot", "--not", "high heel"],
                  ["fruit", "--sort-by", "title", "--desc", "--offset", "2"], ["car", "--mode", "semantic"]):
        local = runner.invoke(app, ["query", *query, "--index", str(running_server), "--device", "cpu",
                                    "--no-server", *extra])
        assert local.exit_code == 0, local.output
        from mmsearch.search import engine as engine_mod

        def no_model(*a, **kw):
            raise AssertionError("searched in-process although a server is running")

        with monkeypatch.context() as m:
            m.setattr(engine_mod.SearchEngine, "open", no_model)
            served = runner.invoke(app, ["query", *query, "--index", str(running_server), *extra])
        assert served.exit_code == 0, served.output
        assert served.output == local.output
        if "--json" in extra and "--where" not in extra:
            assert len(json.loads(served.output)) == (3 if "3" in extra else 10)


def test_no_server_file_or_dead_server_means_in_process(tiny_index, tmp_path):
    assert discovery.find(tmp_path) is None
    (tmp_path / discovery.FILE).write_text(json.dumps({"url": "http://127.0.0.1:9", "pid": 2 ** 22 + 12345}))
    assert discovery.find(tmp_path) is None  # no such process
    assert discovery.ask(tmp_path, Query.of(text="x", k=5)) is None


def test_server_refusing_the_query_falls_back(tiny_index, tmp_path):
    import os

    # a live pid whose "server" refuses connections: the CLI searches in-process and still answers
    (tmp_path / discovery.FILE).write_text(json.dumps({"url": f"http://127.0.0.1:{free_port()}", "pid": os.getpid()}))
    assert discovery.ask(tmp_path, Query.of(text="x", k=5)) is None


def test_serve_advertises_itself_while_running(tiny_index, monkeypatch):
    import uvicorn

    seen = {}

    def fake_run(self, sockets=None):
        self.started = True
        seen.update(info=json.loads((tiny_index / discovery.FILE).read_text()), port=sockets[0].getsockname()[1])

    monkeypatch.setattr(uvicorn.Server, "run", fake_run)
    res = runner.invoke(app, ["serve", "--index", str(tiny_index), "--port", "0", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert seen["info"]["url"] == f"http://127.0.0.1:{seen['port']}"  # --port 0: the port it got
    assert not (tiny_index / discovery.FILE).exists()


@pytest.mark.slow
def test_sigterm_removes_the_discovery_file(tiny_index, tmp_path):
    import os
    import shutil
    import signal
    import subprocess
    import sys

    index = tmp_path / "index"
    shutil.copytree(tiny_index, index)
    proc = subprocess.Popen([sys.executable, "-m", "mmsearch", "serve", "--index", str(index), "--port", "0",
                             "--device", "cpu", "--reload-interval", "0"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        for _ in range(2400):  # the file appears once the model is loaded and the port bound (2 min at most)
            if (index / discovery.FILE).exists() or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert (index / discovery.FILE).exists(), proc.stderr.read().decode() if proc.poll() is not None else ""
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (index / discovery.FILE).exists()


def test_busy_port_is_one_line_and_exit_1(tiny_index):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        res = runner.invoke(app, ["serve", "--index", str(tiny_index), "--port", str(port), "--device", "cpu"])
    assert res.exit_code == 1
    assert f"port {port} on 127.0.0.1 is already in use" in res.output
    assert "Traceback" not in res.output and res.output.strip().count("\n") <= 1
