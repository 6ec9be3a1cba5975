"""A real manager process for tests: `hostvlan manager` on 127.0.0.1:0 with its own db.

Shared by the unit tier (CLI against a live manager) and the integration tier (API,
feeds, durability). `running_manager` always stops the process; `FeedReader` follows a
host's feed in a thread and ends when the manager closes the stream.
"""

from __future__ import annotations

import json
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

HOSTVLAN = Path(sys.executable).parent / "hostvlan"
START_TIMEOUT = 20.0


class Manager:
    """One `hostvlan manager` subprocess over a database in `workdir` (restartable)."""

    def __init__(self, workdir: Path, args: tuple[str, ...] = ()) -> None:
        self.workdir = workdir
        self.args = list(args)  # more `hostvlan manager` options
        self.db = workdir / "m.db"
        self.ready = workdir / "ready"
        self.log = workdir / "manager.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.token = ""

    def start(self) -> None:
        assert self.proc is None, "already running"
        self.ready.unlink(missing_ok=True)
        argv = [str(HOSTVLAN), "manager", "--db", str(self.db), "--listen", "127.0.0.1:0"]
        argv += ["--ready-file", str(self.ready), *self.args]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not self.ready.exists():
            if self.proc.poll() is not None:
                self.proc = None
                raise AssertionError(f"the manager exited at start:\n{self.log.read_text()}")
            if time.monotonic() > deadline:
                self.stop(kill=True)
                raise AssertionError(f"the manager did not get ready in {START_TIMEOUT}s:\n{self.log.read_text()}")
            time.sleep(0.02)
        try:
            ready = json.loads(self.ready.read_text())
            self.url = ready["listen"][0]["url"]
            self.token = Path(ready["token_file"]).read_text().strip()
        except BaseException:
            self.stop(kill=True)  # never leave a manager behind a failed start
            raise

    def stop(self, kill: bool = False) -> None:
        """SIGTERM (graceful) or SIGKILL, and reap the process."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def client(self, token: str | None = None) -> httpx.Client:
        """An httpx client authenticated with `token` (default: the admin token)."""
        tok = self.token if token is None else token
        headers = {"Authorization": f"Bearer {tok}"} if tok else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10.0, trust_env=False)

    def snapshot(self, host: str, token: str | None = None) -> dict[str, Any]:
        """The first line of a fresh feed connection: the host's view now."""
        with self.client(token) as c, c.stream("GET", f"/v1/hosts/{host}/feed") as resp:
            assert resp.status_code == 200, resp.read()
            for line in resp.iter_lines():
                msg: dict[str, Any] = json.loads(line)
                assert msg["type"] == "snapshot", msg
                return msg
        raise AssertionError("the feed ended before its snapshot")


@contextmanager
def running_manager(workdir: Path, args: tuple[str, ...] = ()) -> Iterator[Manager]:
    mgr = Manager(workdir, args)
    mgr.start()
    try:
        yield mgr
    finally:
        mgr.stop()


_END: dict[str, Any] = {"type": "end"}


class FeedReader:
    """Follows `GET /v1/hosts/{host}/feed` in a thread; `next()` returns the next message.

    The thread ends when the manager ends the stream (stop, kill, token rotation); it
    owns its httpx client and never raises (the error, if any, is kept in `error`).
    """

    def __init__(self, url: str, host: str, token: str) -> None:
        self.host = host
        self.status: int | None = None
        self.error: BaseException | None = None
        self._q: queue.Queue[dict[str, Any]] = queue.Queue()
        self._client = httpx.Client(base_url=url, timeout=httpx.Timeout(10.0, read=60.0), trust_env=False)
        self._headers = {"Authorization": f"Bearer {token}"}
        self._thread = threading.Thread(target=self._run, name=f"feed-{host}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with self._client.stream("GET", f"/v1/hosts/{self.host}/feed", headers=self._headers) as resp:
                self.status = resp.status_code
                for line in resp.iter_lines():
                    if line:
                        self._q.put(json.loads(line))
        except Exception as exc:  # the manager went away: recorded, the test decides
            self.error = exc
        finally:
            self._client.close()
            self._q.put(_END)

    def next(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next snapshot or delta (heartbeats skipped); fails if none comes in time."""
        while True:
            try:
                msg = self._q.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no feed message for {self.host} in {timeout}s") from None
            if msg is _END:
                self._q.put(_END)
                raise AssertionError(f"the feed of {self.host} ended (status {self.status}, error {self.error!r})")
            if msg["type"] != "heartbeat":
                return msg

    def pending(self) -> list[dict[str, Any]]:
        """Messages already received and not yet taken (heartbeats and the end excluded)."""
        out = []
        while True:
            try:
                msg = self._q.get_nowait()
            except queue.Empty:
                return out
            if msg is _END:
                self._q.put(_END)
                return out
            if msg["type"] != "heartbeat":
                out.append(msg)

    def ended(self, timeout: float = 5.0) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()


def free_port() -> int:
    """A TCP port nothing listens on (bound then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def env_without_manager_settings() -> dict[str, str | None]:
    """CliRunner env entries that unset every HOSTVLAN_* connection variable."""
    return {n: None for n in ("HOSTVLAN_MANAGER", "HOSTVLAN_TOKEN", "HOSTVLAN_TOKEN_FILE", "HOSTVLAN_CACERT")}
