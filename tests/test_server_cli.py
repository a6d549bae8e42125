"""`mmsearch serve` on the command line: where it may listen, and its failure paths."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from mmsearch.cli import app
from mmsearch.errors import ServeError
from mmsearch.server import ServeCfg, check_bind, is_loopback

runner = CliRunner()


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.8.9.10", True), ("localhost", True), ("::1", True), ("[::1]", True),
    ("0.0.0.0", False), ("::", False), ("192.168.1.20", False), ("10.0.0.1", False), ("example.com", False),
    ("localhost.example.com", False),
])
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_public_address_needs_a_key_or_insecure():
    check_bind(ServeCfg(host="127.0.0.1"))
    with pytest.raises(ServeError, match="--api-key"):
        check_bind(ServeCfg(host="0.0.0.0"))
    with pytest.raises(ServeError):
        check_bind(ServeCfg(host="0.0.0.0", api_key=""))  # an empty key is no key
    check_bind(ServeCfg(host="0.0.0.0", api_key="k"))
    check_bind(ServeCfg(host="0.0.0.0", insecure=True))


def test_cli_refuses_public_bind_without_key(tmp_path, monkeypatch):
    monkeypatch.delenv("MMSEARCH_API_KEY", raising=False)
    r = runner.invoke(app, ["serve", "--index", str(tmp_path / "missing"), "--host", "0.0.0.0"])
    assert r.exit_code == 1
    assert "refusing to listen on 0.0.0.0" in r.output and "--api-key" in r.output
    assert len(r.output.strip().splitlines()) == 1  # one line, no traceback


def test_cli_missing_index_is_one_line_error(tmp_path):
    r = runner.invoke(app, ["serve", "--index", str(tmp_path / "missing")])
    assert r.exit_code == 1 and "no index at" in r.output and "Traceback" not in r.output


def test_cli_bad_config_file_is_an_error(tmp_path):
    bad = tmp_path / "serve.json"
    bad.write_text(json.dumps({"max_pending": 0}))
    r = runner.invoke(app, ["serve", "--config", str(bad)])
    assert r.exit_code != 0 and "max_pending" in r.output
    bad.write_text(json.dumps({"no_such_setting": 1}))
    r = runner.invoke(app, ["serve", "--config", str(bad)])
    assert r.exit_code != 0 and "no_such_setting" in r.output


def test_cli_starts_uvicorn_with_the_settings(tiny_index, tmp_path, monkeypatch):
    import contextlib
    import socket

    import uvicorn

    from mmsearch.server import run

    seen = {}

    @contextlib.contextmanager
    def any_port(host, port):  # the asked-for port is recorded; the test listens on a free one
        seen.update(host=host, port=port)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            yield sock

    def fake_run(self, sockets=None):
        self.started = True
        seen.update(app=self.config.app)

    monkeypatch.setattr(run, "listening_socket", any_port)
    monkeypatch.setattr(uvicorn.Server, "run", fake_run)
    cfg = tmp_path / "serve.json"
    cfg.write_text(json.dumps({"port": 9001, "max_pending": 7, "max_text_chars": 50}))
    monkeypatch.setenv("MMSEARCH_API_KEY", "from-env")
    r = runner.invoke(app, ["serve", "--index", str(tiny_index), "--host", "0.0.0.0", "--config", str(cfg),
                            "--max-pending", "5", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert seen["host"] == "0.0.0.0" and seen["port"] == 9001  # from the file
    state = seen["app"].state.mm
    assert state.cfg.max_pending == 5  # the flag wins over the file
    assert state.cfg.max_text_chars == 50 and state.cfg.api_key == "from-env"
    with state.use() as use:
        assert len(use.engine) == 60
