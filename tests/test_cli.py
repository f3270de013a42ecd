"""The console script's dispatch and the static server."""

from __future__ import annotations

import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from pipelines import cli
from pipelines.serve import make_server


def test_every_documented_command_is_listed_in_help():
    out = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in ("index", "extract-images", "extract-text", "train", "export", "rank", "serve", "demo", "bench"):
        assert command in out


def test_stage_flags_reach_the_stage_untouched(monkeypatch):
    seen = {}

    def fake_stage(argv):
        seen["argv"] = argv

    monkeypatch.setattr(cli, "_stage_function", lambda command: fake_stage)
    argv = ["index", "--input", "m.jsonl", "--out", "gs://b/o", "--runner", "DataflowRunner", "--setup_file", "./setup.py"]
    assert cli.main(argv) == 0
    assert seen["argv"] == argv[1:]


def test_serve_refuses_a_folder_without_a_site(tmp_path: Path):
    with pytest.raises(SystemExit, match="index.html"):
        make_server(str(tmp_path), port=0)


def test_serve_gives_es_modules_a_javascript_mime_type(tmp_path: Path):
    (tmp_path / "index.html").write_text("<!doctype html><title>t</title>")
    (tmp_path / "js").mkdir()
    (tmp_path / "js" / "app.js").write_text("export const x = 1;")
    server = make_server(str(tmp_path), port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_address[1]}/js/app.js") as r:
            assert r.headers["Content-Type"].startswith("text/javascript")
            assert r.read() == b"export const x = 1;"
    finally:
        server.shutdown()
        server.server_close()


def test_serve_logs_a_cancelled_request_in_one_line(tmp_path: Path, caplog, capsys):
    """A browser that drops a thumbnail request mid-answer: one log line, no traceback."""
    import logging
    import socket

    (tmp_path / "index.html").write_text("<!doctype html><title>t</title>")
    (tmp_path / "big.jpg").write_bytes(b"x" * (8 << 20))
    server = make_server(str(tmp_path), port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with caplog.at_level(logging.INFO, logger="pipelines.serve"):
            sock = socket.create_connection(("127.0.0.1", server.server_address[1]))
            # close at once with a reset (SO_LINGER 0): the server's writes then fail
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            sock.sendall(b"GET /big.jpg HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.recv(1024)
            sock.close()
            for _ in range(100):
                if any("cancelled" in r.getMessage() for r in caplog.records):
                    break
                threading.Event().wait(0.05)
    finally:
        server.shutdown()
        server.server_close()
    assert any("cancelled /big.jpg" in r.getMessage() for r in caplog.records), caplog.text
    assert "Traceback" not in capsys.readouterr().err
