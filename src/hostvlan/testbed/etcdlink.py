"""A manager replica's link to the etcd cluster, as a process the testbed can cut.

`python -m hostvlan.testbed.etcdlink --ready FILE LISTEN=TARGET ...` forwards each loopback
port LISTEN to TARGET (an etcd member's client port). The testbed gives every replica its
own link and points the replica's `--store` at it; SIGSTOP on the link is the replica's
network link going down (its connections to etcd hang, nothing is refused, as with a
pulled cable), SIGCONT brings it back. Nothing else is in the path.

With `--netns NS --host IP` the listening sockets are bound inside namespace NS on IP:
that is how the testbed also offers the members' client URLs on the management network.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
from pathlib import Path


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            writer.close()


def _listener(host: str, port: int, netns: str | None) -> socket.socket:
    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        s.listen(1024)
        s.setblocking(False)
        return s

    if netns is None:
        return make()
    from hostvlan.testbed.netns import inside

    with inside(netns):
        return make()


async def _serve(pairs: list[tuple[int, int]], ready: Path, host: str, netns: str | None) -> None:
    async def forward(target: int, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            tr, tw = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            w.close()
            return
        await asyncio.gather(_pipe(r, tw), _pipe(tr, w))

    servers = []
    for listen, target in pairs:

        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter, target: int = target) -> None:
            await forward(target, r, w)

        servers.append(await asyncio.start_server(handle, sock=_listener(host, listen, netns)))
    ready.write_text(json.dumps({"ports": [p for p, _ in pairs]}))
    await asyncio.gather(*(s.serve_forever() for s in servers))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ready", required=True, type=Path)
    ap.add_argument("--netns", help="bind the listening sockets inside this network namespace")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on")
    ap.add_argument("pairs", nargs="+", help="LISTEN=TARGET (loopback ports)")
    args = ap.parse_args()
    pairs = [(int(a), int(b)) for a, b in (p.split("=") for p in args.pairs)]
    asyncio.run(_serve(pairs, args.ready, args.host, args.netns))


if __name__ == "__main__":
    main()
