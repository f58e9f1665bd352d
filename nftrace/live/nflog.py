"""A small nfnetlink_log (NFLOG) reader on a plain netlink socket.

The socket is opened inside the target network namespace (NFLOG instances are
per namespace), binds one group with NFULNL_MSG_CONFIG, asks for the packet
(first `copy_range` bytes) and for every message at once (queue threshold 1),
and decodes NFULNL_MSG_PACKET messages: prefix, input/output interface index,
mark and the IPv4 header of the payload.  The kernel drops the instance when
the socket closes, whichever way the process ends.

Constants are those of include/uapi/linux/netfilter/nfnetlink_log.h and
nfnetlink.h.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

NETLINK_NETFILTER = 12
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLMSG_ERROR = 2
NLMSG_DONE = 3
NFNETLINK_V0 = 0

NFULA_CFG_CMD = 1
NFULA_CFG_MODE = 2
NFULA_CFG_NLBUFSIZ = 3
NFULA_CFG_TIMEOUT = 4
NFULA_CFG_QTHRESH = 5
NFULA_CFG_FLAGS = 6
NFULNL_CFG_CMD_BIND = 1
NFULNL_CFG_CMD_UNBIND = 2
NFULNL_COPY_PACKET = 2
NFULNL_CFG_F_SEQ = 0x0001

NFULA_PACKET_HDR = 1
NFULA_MARK = 2
NFULA_TIMESTAMP = 3
NFULA_IFINDEX_INDEV = 4
NFULA_IFINDEX_OUTDEV = 5
NFULA_PAYLOAD = 9
NFULA_PREFIX = 10
NFULA_SEQ = 12

NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER
_HDR = struct.Struct("=IHHII")
_NLA = struct.Struct("=HH")
_PROTO_NAMES = {1: "ICMP", 6: "TCP", 17: "UDP"}


def _align(n: int) -> int:
    return (n + 3) & ~3


def nla(kind: int, payload: bytes) -> bytes:
    data = _NLA.pack(_NLA.size + len(payload), kind) + payload
    return data + b"\0" * (_align(len(data)) - len(data))


def config_message(group: int, attrs: bytes, seq: int, family: int = socket.AF_UNSPEC) -> bytes:
    body = struct.pack("=BB", family, NFNETLINK_V0) + struct.pack("!H", group) + attrs
    mtype = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG
    return _HDR.pack(_HDR.size + len(body), mtype, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


def parse_attrs(data: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    off = 0
    while off + _NLA.size <= len(data):
        length, kind = _NLA.unpack_from(data, off)
        if length < _NLA.size:
            break
        out.setdefault(kind & NLA_TYPE_MASK, data[off + _NLA.size : off + length])
        off += _align(length)
    return out


def split_messages(buf: bytes) -> list[tuple[int, int, bytes]]:
    """(type, seq, payload after the netlink header) for every message in a datagram."""
    out = []
    off = 0
    while off + _HDR.size <= len(buf):
        length, mtype, _flags, seq, _pid = _HDR.unpack_from(buf, off)
        if length < _HDR.size or off + length > len(buf):
            break
        out.append((mtype, seq, buf[off + _HDR.size : off + length]))
        off += _align(length)
    return out


@dataclass
class NflogPacket:
    prefix: str
    indev: int | None
    outdev: int | None
    mark: int
    payload: bytes
    seq: int | None = None
    fields: dict[str, str] = field(default_factory=dict)


def decode_packet(body: bytes) -> NflogPacket | None:
    """One NFULNL_MSG_PACKET (body = nfgenmsg + attributes)."""
    if len(body) < 4:
        return None
    attrs = parse_attrs(body[4:])
    prefix = attrs.get(NFULA_PREFIX, b"").split(b"\0", 1)[0].decode("utf-8", "replace")

    def u32(kind: int) -> int | None:
        v = attrs.get(kind)
        return struct.unpack("!I", v[:4])[0] if v is not None and len(v) >= 4 else None

    pkt = NflogPacket(
        prefix=prefix,
        indev=u32(NFULA_IFINDEX_INDEV),
        outdev=u32(NFULA_IFINDEX_OUTDEV),
        mark=u32(NFULA_MARK) or 0,
        payload=attrs.get(NFULA_PAYLOAD, b""),
        seq=u32(NFULA_SEQ),
    )
    pkt.fields = ipv4_fields(pkt.payload)
    return pkt


def ipv4_fields(data: bytes) -> dict[str, str]:
    """The fields a LOG line would show for an IPv4 packet (SRC DST ID PROTO SPT DPT TYPE CODE TTL)."""
    if len(data) < 20 or data[0] >> 4 != 4:
        return {}
    ihl = (data[0] & 0x0F) * 4
    total, ip_id, frag, ttl, proto = struct.unpack_from("!HHHBB", data, 2)
    f = {
        "SRC": socket.inet_ntoa(data[12:16]),
        "DST": socket.inet_ntoa(data[16:20]),
        "LEN": str(total),
        "TTL": str(ttl),
        "ID": str(ip_id),
        "PROTO": _PROTO_NAMES.get(proto, str(proto)),
    }
    l4 = data[ihl:]
    if frag & 0x1FFF:
        return f  # not the first fragment: no L4 header
    if proto in (6, 17) and len(l4) >= 4:
        sp, dp = struct.unpack_from("!HH", l4, 0)
        f["SPT"], f["DPT"] = str(sp), str(dp)
        if proto == 6 and len(l4) >= 14:
            bits = l4[13]
            for name, bit in (("FIN", 1), ("SYN", 2), ("RST", 4), ("PSH", 8), ("ACK", 16), ("URG", 32)):
                if bits & bit:
                    f[name] = ""
    elif proto == 1 and len(l4) >= 2:
        f["TYPE"], f["CODE"] = str(l4[0]), str(l4[1])
    return f


class NflogError(OSError):
    """A refused NFLOG configuration (EBUSY/EPERM: another listener has bound that group)."""


class NflogSocket:
    """A bound NFLOG group; `recv_packets()` never blocks."""

    def __init__(self, sock: socket.socket, group: int) -> None:
        self.sock = sock
        self.group = group
        self._seq = 100
        self.overruns = 0

    @classmethod
    def open(cls, group: int, copy_range: int = 256) -> NflogSocket:
        """Bind `group` in the calling thread's network namespace (EBUSY: another listener has it)."""
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
        try:
            s.bind((0, 0))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            s.settimeout(2.0)
            me = cls(s, group)
            me._request(nla(NFULA_CFG_CMD, struct.pack("=B", NFULNL_CFG_CMD_BIND)))
            me._request(
                nla(NFULA_CFG_MODE, struct.pack("!IBB", copy_range, NFULNL_COPY_PACKET, 0))
                + nla(NFULA_CFG_QTHRESH, struct.pack("!I", 1))
                + nla(NFULA_CFG_TIMEOUT, struct.pack("!I", 0))
                + nla(NFULA_CFG_FLAGS, struct.pack("!H", NFULNL_CFG_F_SEQ))
            )
            s.setblocking(False)
            return me
        except BaseException:
            s.close()
            raise

    def _request(self, attrs: bytes) -> None:
        self._seq += 1
        seq = self._seq
        self.sock.send(config_message(self.group, attrs, seq))
        while True:
            buf = self.sock.recv(65536)
            for mtype, mseq, payload in split_messages(buf):
                if mtype == NLMSG_ERROR and mseq == seq:
                    err = struct.unpack_from("=i", payload, 0)[0]
                    if err:
                        raise NflogError(-err, f"NFLOG group {self.group}: {os.strerror(-err)}")
                    return

    def recv_packets(self) -> list[NflogPacket]:
        out: list[NflogPacket] = []
        while True:
            try:
                buf = self.sock.recv(1 << 16)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    self.overruns += 1
                    continue
                raise
            if not buf:
                break
            for mtype, _seq, body in split_messages(buf):
                if mtype == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET:
                    p = decode_packet(body)
                    if p is not None:
                        out.append(p)
        return out

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        try:
            self.sock.setblocking(True)
            self.sock.settimeout(0.5)
            self._request(nla(NFULA_CFG_CMD, struct.pack("=B", NFULNL_CFG_CMD_UNBIND)))
        except (OSError, ValueError):
            pass  # closing the socket releases the instance anyway
        finally:
            self.sock.close()

    def __enter__(self) -> NflogSocket:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
