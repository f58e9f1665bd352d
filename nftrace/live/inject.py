"""Building and sending the test packet.

The IPv4 datagram is built here (header, TCP/UDP/ICMP with correct checksums, a
chosen IP ID that every log line carries).  A locally originated packet is sent
through a raw socket (IPPROTO_RAW, so IP_HDRINCL) in the host's namespace: it goes
through the host's own OUTPUT and POSTROUTING chains like any socket's (scapy's
default ``send()`` uses a PF_PACKET socket below IP, which bypasses them).

An ingress packet is sent as an Ethernet frame from inside the namespace on the
ingress side (a pod's, a container's): on that namespace's end of the ingress link
(the veth peer of the host's input interface; else the interface its route to the
destination uses), addressed to the host interface's MAC.  It reaches the host
exactly as that pod's traffic would, including packets the pod's own stack would
not route (a destination of 127.0.0.1, a foreign source).
"""

from __future__ import annotations

import ipaddress
import json
import random
import socket
import struct
from dataclasses import dataclass

from nftrace.live.system import LiveError, Target

SOL_IP = 0
IP_FREEBIND = 15
SO_MARK = 36
SO_BINDTODEVICE = 25
_PROTO = {"icmp": 1, "tcp": 6, "udp": 17}
_TCP_BITS = {"FIN": 0x01, "SYN": 0x02, "RST": 0x04, "PSH": 0x08, "ACK": 0x10, "URG": 0x20, "ECE": 0x40, "CWR": 0x80}
_ICMP_ERRORS = {3, 4, 5, 11, 12}


@dataclass
class Datagram:
    proto: str
    src: str
    dst: str
    sport: int | None = None
    dport: int | None = None
    icmp_type: int = 8
    icmp_code: int = 0
    tcp_flags: str = "SYN"
    ttl: int = 64
    ip_id: int = 0
    mark: int = 0  # local only: SO_MARK
    oif: str | None = None  # local only: SO_BINDTODEVICE
    length: int | None = None  # total IP length wanted (padding in the payload)


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def new_ip_id() -> int:
    return random.randint(1, 0xFFFF)


def _ip_header(src: str, dst: str, proto: int, ip_id: int, ttl: int, payload_len: int) -> bytes:
    hdr = struct.pack(
        "!BBHHHBBH4s4s",
        0x45, 0, 20 + payload_len, ip_id, 0x4000, ttl, proto, 0, socket.inet_aton(src), socket.inet_aton(dst),
    )  # fmt: skip
    return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]


def _l4_sum(d: Datagram, proto: int, seg: bytes) -> int:
    pseudo = socket.inet_aton(d.src) + socket.inet_aton(d.dst) + struct.pack("!BBH", 0, proto, len(seg))
    return checksum(pseudo + seg)


def build(d: Datagram) -> bytes:
    """The complete IPv4 datagram."""
    proto = d.proto.lower()
    if proto not in _PROTO:
        raise ValueError(f"cannot build a {d.proto} packet (tcp, udp or icmp)")
    pnum = _PROTO[proto]
    pad = b""
    if proto == "tcp":
        bits = 0
        for f in (x.strip().upper() for x in d.tcp_flags.split(",") if x.strip()):
            if f not in _TCP_BITS:
                raise ValueError(f"unknown TCP flag {f!r}")
            bits |= _TCP_BITS[f]
        seq = random.getrandbits(32)
        ack = random.getrandbits(32) | 1 if bits & _TCP_BITS["ACK"] else 0
        opts = struct.pack("!BBH", 2, 4, 1460) if bits & _TCP_BITS["SYN"] else b""
        off = (20 + len(opts)) // 4
        seg = struct.pack("!HHIIBBHHH", d.sport or 0, d.dport or 0, seq, ack, off << 4, bits, 64240, 0, 0) + opts
        if d.length and d.length > 20 + len(seg):
            seg += b"\0" * (d.length - 20 - len(seg))
        seg = seg[:16] + struct.pack("!H", _l4_sum(d, pnum, seg)) + seg[18:]
    elif proto == "udp":
        data = b"nftrace live probe\n"
        if d.length and d.length > 28 + len(data):
            pad = b"\0" * (d.length - 28 - len(data))
        data += pad
        seg = struct.pack("!HHHH", d.sport or 0, d.dport or 0, 8 + len(data), 0) + data
        seg = seg[:6] + struct.pack("!H", _l4_sum(d, pnum, seg) or 0xFFFF) + seg[8:]
    else:
        if d.icmp_type in _ICMP_ERRORS:
            # an ICMP error quotes the datagram it answers: a UDP packet from dst back to src
            inner_l4 = struct.pack("!HHHH", 53, 53, 8, 0)
            inner = _ip_header(d.dst, d.src, 17, (d.ip_id ^ 0x5A5A) or 1, 64, len(inner_l4)) + inner_l4
            rest, data = b"\0\0\0\0", inner
        else:
            rest, data = struct.pack("!HH", d.sport or random.randint(1, 0xFFFF), 1), b"nftrace!"
        if d.length and d.length > 28 + len(data):
            data += b"\0" * (d.length - 28 - len(data))
        seg = struct.pack("!BBH", d.icmp_type, d.icmp_code, 0) + rest + data
        seg = seg[:2] + struct.pack("!H", checksum(seg)) + seg[4:]
    return _ip_header(d.src, d.dst, pnum, d.ip_id, d.ttl, len(seg)) + seg


def send_raw(target: Target, d: Datagram) -> None:
    """Send d from a raw socket opened in the target namespace (raises OSError as the kernel refuses)."""
    data = build(d)
    s = target.call(lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.IPPROTO_RAW))
    try:
        s.setsockopt(SOL_IP, IP_FREEBIND, 1)
        if d.mark:
            s.setsockopt(socket.SOL_SOCKET, SO_MARK, d.mark)
        if d.oif:
            s.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, d.oif.encode())
        s.bind((d.src, 0))  # `ip rule from ...` sees the packet's source, as for a bound socket
        s.sendto(data, (d.dst, 0))
    finally:
        s.close()


# ------------------------------------------------------------------------------ ingress (layer 2)


@dataclass
class IngressPath:
    ifname: str  # interface inside the sending namespace
    dst_mac: bytes  # the host's input interface (or broadcast/multicast for such destinations)


def _mac(text: str) -> bytes:
    return bytes(int(x, 16) for x in text.split(":"))


def ingress_path(host: Target, iif: str, sender: Target, dst: str) -> IngressPath:
    """Where to send from in `sender` so the frame arrives on the host's `iif`."""
    try:
        h = json.loads(host.output(["ip", "-j", "-d", "addr", "show", "dev", iif]))[0]
        links = json.loads(sender.output(["ip", "-j", "link", "show"]))
    except (json.JSONDecodeError, IndexError, KeyError):
        raise LiveError(f"cannot read the links of {iif} and of the sending namespace") from None
    mac = h.get("address") or "ff:ff:ff:ff:ff:ff"
    ifname = None
    for lk in links:  # the veth peer of iif: its ifindex is iif's link_index and the other way round
        if h.get("link_index") is not None and lk.get("ifindex") == h["link_index"]:
            if lk.get("link_index") == h.get("ifindex"):
                ifname = str(lk["ifname"])
                break
    if ifname is None:  # a bridge port or similar: the sender's own route to dst
        p = sender.run(["ip", "-j", "route", "get", dst])
        try:
            dev = json.loads(p.stdout)[0].get("dev") if p.returncode == 0 else None
        except (json.JSONDecodeError, IndexError):
            dev = None
        if not dev or dev == "lo":
            raise LiveError(
                f"the sending namespace has no link to {iif} and no route toward {dst}: "
                "give --from-netns the namespace at the other end of the ingress interface"
            )
        ifname = str(dev)
    return IngressPath(ifname, _dst_mac(dst, mac, h.get("addr_info") or []))


def _dst_mac(dst: str, iif_mac: str, addr_info: list[dict[str, object]]) -> bytes:
    a = ipaddress.ip_address(dst)
    if dst == "255.255.255.255":
        return b"\xff" * 6
    for ai in addr_info:
        if ai.get("family") == "inet" and ai.get("broadcast") == dst:
            return b"\xff" * 6
    if a.is_multicast:
        low = int(a) & 0x7FFFFF
        return bytes([0x01, 0x00, 0x5E, low >> 16, (low >> 8) & 0xFF, low & 0xFF])
    return _mac(iif_mac)


def send_frame(sender: Target, path: IngressPath, d: Datagram) -> None:
    """One Ethernet frame carrying d, out of path.ifname inside the sending namespace."""
    data = build(d)
    s = sender.call(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0))
    try:
        s.bind((path.ifname, 0))
        src_mac = s.getsockname()[4][:6]
        s.send(path.dst_mac + src_mac + b"\x08\x00" + data)
    finally:
        s.close()
