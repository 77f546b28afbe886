"""Run `recipes/serve_reward.py` as a child process on a free loopback port (tests, benchmarks), and the loopback
image host and peak-memory probe that its guards are tested and measured with.

    with server_process(model_dir, "--max_wait_ms", "10") as (proc, url):
        RewardClient(url).score_groups(...)

The health check is a bounded loop; the process is always terminated (SIGTERM, then SIGKILL) on exit, and its log
tail is in the error when it fails to start. Needs a source checkout (the recipe lives beside the packages).
"""

from __future__ import annotations

import http.server
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from common.distributed import free_port

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "recipes" / "serve_reward.py"


@contextmanager
def server_process(model: str | Path, *flags: str, start_timeout_s: float = 180.0, env: dict | None = None,
                   repo: str | Path = REPO) -> Iterator[tuple[subprocess.Popen, str]]:  # fmt: skip
    """Start the server for `model` with extra CLI `flags`; yield (process, base URL); stop it on exit. `repo`: the
    source checkout to run (another one: a benchmark's baseline)."""
    port = free_port()
    script = Path(repo) / SCRIPT.relative_to(REPO)
    cmd = [sys.executable, str(script), "--model", str(model), "--port", str(port), *flags]
    child_env = {**os.environ, **(env or {})}
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(repo), child_env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + start_timeout_s
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    tail = log.read().decode(errors="replace")[-3000:]
                    raise RuntimeError(f"reward server did not start (exit code {proc.poll()}):\n{tail}")
                try:
                    if httpx.get(url + "/health", timeout=1.0).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            yield proc, url
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def peak_rss(pid: int) -> int:
    """The peak resident memory of process `pid` so far, in bytes (Linux `VmHWM`)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024


class _ImageHost(http.server.BaseHTTPRequestHandler):
    """`server.files[path]` with 200, `/redirect` (302 to /img.png), `/drip` (1 byte every `server.drip_s` for
    `server.drip_bytes` bytes of a longer body), anything else 404. Each request's path goes to `server.hits`."""

    def do_GET(self):
        self.server.hits.append(self.path)
        if self.path in self.server.files:
            self._send(200, self.server.files[self.path])
        elif self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/img.png")
            self.end_headers()
        elif self.path == "/drip":
            self.send_response(200)
            self.send_header("Content-Length", str(10 * self.server.drip_bytes))
            self.end_headers()
            try:
                for _ in range(self.server.drip_bytes):
                    self.wfile.write(b"\x00")
                    self.wfile.flush()
                    time.sleep(self.server.drip_s)
            except OSError:
                pass  # the client hung up
        else:
            self._send(404, b"not found")

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@contextmanager
def image_host(files: dict[str, bytes], drip_s: float = 0.5, drip_bytes: int = 120) -> Iterator[tuple]:
    """A loopback HTTP image host (`_ImageHost`) in a thread; yields (server, base URL); `server.hits` lists the paths
    requested."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ImageHost)
    server.daemon_threads, server.request_queue_size = True, 128
    server.files, server.hits, server.drip_s, server.drip_bytes = files, [], drip_s, drip_bytes
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
