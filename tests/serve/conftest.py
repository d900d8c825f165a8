"""Fixtures for the `qnext serve` tests. tests/test_serve.sh starts the main server and
passes its URL, API key and model directory in the environment; tests that need a server
of their own (the scripted-output test hook, SIGTERM) start one with start_server()."""
import os
import signal
import socket
import subprocess
import time

import openai
import pytest
import requests

URL = os.environ.get("QNEXT_SERVE_URL", "")
KEY = os.environ.get("QNEXT_SERVE_KEY", "")
MODEL_DIR = os.environ.get("QNEXT_SERVE_MODEL", "")
BIN = os.environ.get("QNEXT_BIN", "build/qnext")
# ASan builds are several times slower: scale the time limits
SLOW = 4.0 if os.environ.get("QNEXT_ASAN") else 1.0


def auth():
    return {"Authorization": f"Bearer {KEY}"}


def metrics(url=None, key=None):
    """/metrics as {name: value}."""
    r = requests.get((url or URL) + "/metrics", headers={"Authorization": f"Bearer {key or KEY}"}, timeout=10)
    r.raise_for_status()
    out = {}
    for line in r.text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.split()
            out[name] = float(value)
    return out


def linked_model(tmp_path, name, files):
    """A directory of its own for the test model, with links to these of its files (the
    caller writes the others: a changed config, a chat template)."""
    model = tmp_path / name
    model.mkdir()
    for f in files:
        os.symlink(os.path.join(MODEL_DIR, f), model / f)
    return model


@pytest.fixture(scope="session")
def url():
    if not URL:
        pytest.fail("run through tests/test_serve.sh (QNEXT_SERVE_URL is not set)")
    return URL


@pytest.fixture(scope="session")
def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key=KEY, timeout=60 * SLOW, max_retries=0)


class Server:
    def __init__(self, args=(), env=None):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.log = open(os.path.join(os.environ.get("TMPDIR", "/tmp"), f"qnext_serve_{self.port}.log"), "w+")
        model = full_env.pop("QNEXT_SERVE_MODEL", MODEL_DIR) if env and "QNEXT_SERVE_MODEL" in env else MODEL_DIR
        self.proc = subprocess.Popen([BIN, "serve", "-m", model, "--port", str(self.port), "-t", "1", *args],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=full_env)
        deadline = time.time() + 30 * SLOW
        while time.time() < deadline:
            try:
                if requests.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("server did not start: " + self.output())

    def output(self):
        self.log.seek(0)
        return self.log.read()

    def stop(self, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout * SLOW)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def start_server():
    servers = []

    def start(args=(), env=None):
        s = Server(args, env)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()
        s.log.close()
