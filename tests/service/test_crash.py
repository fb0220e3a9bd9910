"""`hrlm serve` in a real process, killed with SIGKILL under load: every acknowledged prediction is on disk."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from hrlm.store import make_engine
from hrlm.store.records import count_predictions, stored_request_ids
from tests.service.conftest import add_users, bearer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(model: Path, db_url: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HRLM_DATABASE_URL": db_url, "HRLM_RATE_LIMIT": "0", "HRLM_THREADS": "1"}
    cmd = [sys.executable, "-m", "hrlm.cli", "serve", "--model", str(model), "--port", str(port)]
    with log.open("wb") as out:  # the child keeps its own copy of the file descriptor
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"hrlm serve exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"hrlm serve did not become ready: {log.read_text()[-2000:]}")


def test_sigkill_under_load_loses_no_acknowledged_prediction(trained_model: Path, db_url: str, tmp_path: Path) -> None:
    tokens = add_users(db_url)
    port = free_port()
    proc = start_server(trained_model, db_url, port, tmp_path / "serve.log")
    acked: dict[str, int] = {}  # request id -> texts, for every 200 the clients received
    lock = threading.Lock()
    stop = threading.Event()

    def client(k: int) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=bearer(tokens.client), timeout=10) as http:
            i = 0
            while not stop.is_set():
                texts = [f"my salary is late {k} {i}", "vpn login locked"][: 1 + i % 2]
                try:
                    r = http.post("/v1/predict", json={"texts": texts})
                except httpx.HTTPError:
                    return  # the server is gone
                if r.status_code == 200 and r.json()["stored"]:
                    with lock:
                        acked[r.json()["request_id"]] = len(texts)
                i += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 60
        while len(acked) < 150 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # mid-load: requests are in the queue, the model and the store
        proc.wait(10)
    finally:
        stop.set()
        for t in threads:
            t.join(15)
        if proc.poll() is None:
            proc.kill()
    with lock:
        answered = dict(acked)
    assert len(answered) >= 150
    engine = make_engine(db_url)
    try:
        stored = stored_request_ids(engine)
        assert set(answered) <= stored, f"{len(set(answered) - stored)} acknowledged requests lost"
        assert count_predictions(engine, list(answered)) == sum(answered.values())
    finally:
        engine.dispose()
