"""Nothing acknowledged is lost (SPEC §7): `kill -9` the manager in a burst of commands.

A thread registers MACs one by one and records each acknowledged (MAC, revision); the
manager is SIGKILLed mid-burst, restarted on the same database, and must hold every
acknowledged registration, at a revision never below an acknowledged one, with each
host's snapshot equal to the model's view of what it holds.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from hostvlan.model.datacenter import DataCenter
from hostvlan.model.ids import GLOBAL, HostId, Lnid, Mac, int_to_mac
from managerproc import Manager

BURST = 5000
KILL_AFTER = 40


def macs_of(n: int) -> list[str]:
    return [int_to_mac(0x525400000000 + 0x10000 + i) for i in range(n)]


def test_kill_9_mid_burst_loses_no_acknowledged_registration(tmp_path: Path) -> None:
    mgr = Manager(tmp_path)
    mgr.start()
    try:
        with mgr.client() as admin:
            tokens = {h: admin.post("/v1/hosts", json={"name": h}).json()["token"] for h in ("H1", "H2")}
        base = mgr.url
        acked: list[tuple[str, str, int, int]] = []  # (mac, host, lnid, revision)
        in_flight: list[str] = []
        errors: list[BaseException] = []

        def burst() -> None:
            try:
                with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {mgr.token}"}) as c:
                    for i, mac in enumerate(macs_of(BURST)):
                        host, lnid = ("H1", "H2")[i % 2], 1 + i % 7
                        in_flight[:] = [mac]
                        try:
                            r = c.post("/v1/reg", json={"lnid": lnid, "mac": mac, "host": host})
                        except httpx.TransportError:
                            return  # the manager died: this one was never acknowledged
                        assert r.status_code == 200, r.text
                        acked.append((mac, host, lnid, r.json()["revision"]))
            except BaseException as exc:
                errors.append(exc)

        t = threading.Thread(target=burst)
        t.start()
        deadline = time.monotonic() + 20
        while len(acked) < KILL_AFTER and t.is_alive() and time.monotonic() < deadline:
            time.sleep(0.002)
        mgr.stop(kill=True)  # SIGKILL, in the middle of the burst
        t.join(10)
        assert not t.is_alive() and not errors, errors
        assert KILL_AFTER <= len(acked) < BURST, "the kill did not land in the middle of the burst"
        revisions = [a[3] for a in acked]
        assert revisions == sorted(set(revisions)), "acknowledged revisions are not strictly increasing"

        mgr.start()
        with mgr.client() as admin:
            rows = {r["mac"]: r for r in admin.get("/v1/macs").json()}
            for mac, host, lnid, _ in acked:
                assert mac in rows, f"acknowledged registration of {mac} lost"
                assert rows[mac]["host"] == host and rows[mac]["lnids"] == [lnid]
            assert set(rows) - {a[0] for a in acked} <= set(in_flight), "a MAC appeared that was never sent"
            rev = admin.get("/v1/revision").json()["revision"]
            assert rev >= revisions[-1]
            after = admin.post("/v1/reg", json={"lnid": 1, "mac": "52:54:00:ff:ff:01", "host": "H1"}).json()
            assert after["revision"] == rev + 1

            # the host views after the restart are the model's views of the stored table
            dc = DataCenter()
            for h in tokens:
                dc.add_host(HostId(h))
            for r in admin.get("/v1/macs").json():
                for lnid in r["lnids"]:
                    dc.reg(Mac(r["mac"]), Lnid(0 if lnid == "global" else lnid), HostId(r["host"]), None)
        for h, tok in tokens.items():  # host tokens survive the restart too
            snap = mgr.snapshot(h, tok)
            view = dc.view(HostId(h))
            assert snap["revision"] == rev + 1
            want = {m: ["global" if x == GLOBAL else int(x) for x in sorted(ls)] for m, ls in view.entries.items()}
            assert snap["entries"] == want
            assert snap["local"] == dict(view.local)
            assert len(snap["local"]) >= KILL_AFTER // 2
    finally:
        mgr.stop()
