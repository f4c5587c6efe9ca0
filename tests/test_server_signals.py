"""`hero up` stops on SIGTERM or Ctrl-C at any moment, also while it is still starting (issue 9 follow-up)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hero.nodelock import NodeLock
from tests.conftest import ROOT, free_port


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_start_up_stops_the_node_promptly_and_cleanly(tmp_path: Path, sig: int):
    port = free_port()
    data = tmp_path / "data"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hero.cli", "up", "--data", str(data), "--port", str(port), "--no-overlay"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 60
        while True:  # the port is bound first, then the parts start: signal the node in between
            assert proc.poll() is None and time.monotonic() < deadline, "the node did not bind its port"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.01)
        proc.send_signal(sig)
        signalled = time.monotonic()
        out, _ = proc.communicate(timeout=20)
        took_s = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "hero: model" not in out, "the signal came too late for this test: the node was already serving"
    assert proc.returncode == 0 and "Traceback" not in out, out
    assert "stopped during start-up" in out
    assert took_s < 10
    # clean: the data dir's lock is free and the port too, so the node starts again at once
    with NodeLock.acquire(data, port=port):
        pass
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))
