"""TLS between the manager and its clients: the CLI's HTTP client and a real agent.

The manager serves HTTPS with a throw-away self-signed certificate; one of its
listeners is bound inside a throw-away namespace where a real `hostvlan agent` runs
and follows its feed over TLS, verifying the certificate with --cacert.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hostvlan.datapath.bridge.tc import BPFFS
from hostvlan.testbed import netns


@pytest.fixture
def cert(tmp_path: Path) -> tuple[Path, Path]:
    key, crt = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(crt),
            "-days",
            "1",
            "-subj",
            "/CN=hostvlan-test",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return crt, key


@pytest.fixture
def ns() -> Iterator[str]:
    prefix = netns.new_prefix()
    name = f"{prefix}-tls"
    try:
        netns.create(name)
        with netns.iproute(name) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            ipr.link("add", ifname="uplink0", kind="veth", address="0e:00:00:00:00:01", peer={"ifname": "wire0"})
        yield name
    finally:
        netns.sweep(prefix)


def _start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as fh:
        return subprocess.Popen(argv, stdout=fh, stderr=fh, start_new_session=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the process group; one that already exited (a failed start) is only reaped."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(5)
    except ProcessLookupError:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def _wait(path: Path, proc: subprocess.Popen[bytes], log: Path) -> dict[str, object]:
    end = time.monotonic() + 20
    while time.monotonic() < end:
        if path.exists():
            data: dict[str, object] = json.loads(path.read_text())
            return data
        assert proc.poll() is None, log.read_text()
        time.sleep(0.05)
    raise AssertionError(f"not ready: {log.read_text()}")


@pytest.mark.root  # an agent in a namespace programs its bridge
def test_manager_over_tls_with_cli_client_and_agent(tmp_path: Path, cert: tuple[Path, Path], ns: str) -> None:
    crt, key = cert
    hv = [sys.executable, "-m", "hostvlan.cli"]
    mgr = _start(
        [
            *hv,
            "manager",
            "--db",
            str(tmp_path / "m.db"),
            "--listen",
            "127.0.0.1:0",
            "--listen",
            f"{ns}/127.0.0.1:7443",
            "--tls-cert",
            str(crt),
            "--tls-key",
            str(key),
            "--ready-file",
            str(tmp_path / "ready"),
        ],
        tmp_path / "manager.log",
    )
    agent = None
    try:
        ready = _wait(tmp_path / "ready", mgr, tmp_path / "manager.log")
        listen = ready["listen"]
        assert isinstance(listen, list)
        url = listen[0]["url"]
        assert url.startswith("https://")
        token = (tmp_path / "m.db.admin-token").read_text().strip()
        auth = {"Authorization": f"Bearer {token}"}

        # without the CA the certificate is refused; with it, the call goes through
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/v1/revision", headers=auth)
        with httpx.Client(base_url=url, headers=auth, verify=ssl.create_default_context(cafile=str(crt))) as api:
            host_token = api.post("/v1/hosts", json={"name": "h1"}).json()["token"]
            assert api.post("/v1/reg", json={"lnid": 7, "mac": "52:54:00:00:00:07", "host": "h1"}).status_code == 200
            (tmp_path / "h1.token").write_text(host_token)

            # a real agent, in its own namespace, follows the feed over TLS
            agent = _start(
                [
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    *hv,
                    "agent",
                    "--manager",
                    "https://127.0.0.1:7443",
                    "--host",
                    "h1",
                    "--token-file",
                    str(tmp_path / "h1.token"),
                    "--cacert",
                    str(crt),
                    "--uplink",
                    "uplink0",
                    "--bpf-pins",
                    str(BPFFS / ns),
                    "-v",
                ],
                tmp_path / "agent.log",
            )
            end = time.monotonic() + 20
            while time.monotonic() < end:
                hosts = {h["name"]: h for h in api.get("/v1/hosts").json()}
                if hosts["h1"]["in_sync"]:
                    break
                assert agent.poll() is None, (tmp_path / "agent.log").read_text()
                time.sleep(0.05)
            assert hosts["h1"]["in_sync"], (tmp_path / "agent.log").read_text()
            assert hosts["h1"]["revision_applied"] >= 2
        listed = subprocess.run(
            ["ip", "netns", "exec", ns, "nft", "-j", "list", "set", "bridge", "hostvlan", "known"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "52:54:00:00:00:07" in listed
    finally:
        if agent is not None:
            _stop(agent)
        _stop(mgr)
        shutil.rmtree(BPFFS / ns, ignore_errors=True)
