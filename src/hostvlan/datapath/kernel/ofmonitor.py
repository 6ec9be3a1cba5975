"""The packet-ins of a bridge's `controller` actions, over its OpenFlow management socket.

`PacketIns` is a service connection to `<rundir>/<bridge>.mgmt` (the socket ovs-ofctl uses),
speaking just enough OpenFlow 1.3: HELLO, SET_CONFIG with a non-zero miss_send_len (OVS sends
asynchronous messages to a service connection only once it has asked for them), ECHO replies,
and OFPT_PACKET_IN, of which it keeps the flow's cookie and the frame's first bytes. It never
blocks: `poll()` reads what has arrived (connecting first if needed) and returns it; a switch
that is gone or restarting yields nothing until the next poll reconnects.
May import the standard library only.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct

OFP13 = 4
HELLO, ERROR, ECHO_REQUEST, ECHO_REPLY, SET_CONFIG, PACKET_IN = 0, 1, 2, 3, 9, 10
HEADER = struct.Struct("!BBHI")  # version, type, length, xid
PACKET_IN_HEAD = struct.Struct("!IHBBQ")  # buffer_id, total_len, reason, table_id, cookie
MATCH_HEAD = struct.Struct("!HH")  # ofp_match type, length (then OXMs, padded to 8)
MISS_SEND_LEN = 128
GONE = (errno.ENOENT, errno.ECONNREFUSED, errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN)


class PacketIns:
    """A non-blocking OpenFlow service connection that collects packet-ins (see module doc)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._sock: socket.socket | None = None
        self._buf = b""

    def _connect(self) -> bool:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(self.path)
            s.sendall(HEADER.pack(OFP13, HELLO, HEADER.size, 1))
            s.sendall(HEADER.pack(OFP13, SET_CONFIG, HEADER.size + 4, 2) + struct.pack("!HH", 0, MISS_SEND_LEN))
        except OSError as exc:
            s.close()
            if exc.errno in GONE:
                return False
            raise
        s.setblocking(False)
        self._sock, self._buf = s, b""
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def poll(self) -> list[tuple[int, bytes]]:
        """(cookie, frame's first bytes) of each packet-in received since the last poll."""
        if self._sock is None and not self._connect():
            return []
        assert self._sock is not None
        while True:
            try:
                chunk = self._sock.recv(1 << 16)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno not in GONE:
                    raise
                chunk = b""
            if not chunk:  # closed by the switch: reconnect at the next poll
                self.close()
                break
            self._buf += chunk
        return self._messages()

    def _messages(self) -> list[tuple[int, bytes]]:
        out = []
        buf = self._buf
        while len(buf) >= HEADER.size:
            version, kind, length, xid = HEADER.unpack_from(buf)
            if length < HEADER.size or len(buf) < length:
                break
            body, buf = buf[HEADER.size : length], buf[length:]
            if kind == ECHO_REQUEST and self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.send(HEADER.pack(version, ECHO_REPLY, length, xid) + body)
            elif kind == PACKET_IN and version == OFP13 and len(body) >= PACKET_IN_HEAD.size + MATCH_HEAD.size:
                cookie = PACKET_IN_HEAD.unpack_from(body)[4]
                _, match_len = MATCH_HEAD.unpack_from(body, PACKET_IN_HEAD.size)
                data_at = PACKET_IN_HEAD.size + (match_len + 7) // 8 * 8 + 2  # match padded to 8, 2 bytes pad
                out.append((cookie, body[data_at:]))
        self._buf = buf
        return out


__all__ = ["PacketIns"]
