"""Kernel-differential harness: rebuild a host in network namespaces, inject one
packet at a time and read the kernel's own netfilter trace.

A :class:`KernelHost` builds a *node* namespace from a
:class:`~nftrace.host.model.HostContext` (links as veth pairs whose far ends sit
in one *peer* namespace per link, addresses, routes of every table, ip rules,
sysctls, ipsets) and restores an ``iptables-save`` dump into it (and an
``ip6tables-save`` dump, ``rules_v6``). Each :meth:`KernelHost.send` injects one
IPv4 or IPv6 packet (by the family of its addresses), either as an Ethernet frame
arriving on a link (``origin="ingress"``) or from a raw socket of a local process
(``origin="local"``), and returns what the kernel reported:

* backend ``nft``: a private nft table (``inet nftrace_k``, base chains at
  prerouting/output priority -500) sets ``meta nftrace`` on every packet, and
  ``xtables-monitor --trace`` (running inside the node, stdout to a file) prints
  the events. Rule handles are mapped to 1-based positions with
  ``nft -j -a list ruleset``.
* backend ``legacy``: ``-j TRACE`` rules inserted at position 1 of raw
  PREROUTING/OUTPUT; the kernel's ``TRACE:`` log lines are read from
  ``/dev/kmsg`` (needs the host-wide ``net.netfilter.nf_log_all_netns=1``, saved
  and restored). The legacy log carries no verdicts: ``KEvent.verdict`` is ``""``
  there; ``text``/``target`` are filled in from the restored ruleset.

Every packet carries a unique, random, non-zero IPv4 ID; events are selected by
that ID, so the kernel's own replies (TCP RST, ICMP errors, echo replies) are
left out while a loopback re-entry (new trace id, same IP ID) is kept.

IPv6 (nft backend only): the unique id travels in the flow label, which
xtables-monitor prints (``FLOWLBL=``) and which NAT and forwarding keep; before
the first IPv6 packet the node gets ``net.ipv6.auto_flowlabels=0`` so the
kernel's own IPv6 packets carry label 0. Rule handles are mapped separately for
the ip6 family (its tables share their names with the ip family's). TCP/UDP
checksums use the IPv6 pseudo-header; ``proto`` ``icmp``/``icmpv6`` sends ICMPv6
(type 128 echo request by default, ``sport`` is the echo id).

Only namespaces named ``nft-k-<8 hex>`` (node) and ``nft-k-<8 hex>-p<N>`` (peers)
are created; nothing in the initial namespace is touched (the legacy backend's
``nf_log_all_netns`` sysctl excepted, which is restored).

What the kernel's trace prints (kernel 6.18, iptables 1.8.9; asserted in
tests/test_kernelhost.py):

* nf_tables: one ``PACKET:`` line per base-chain traversal, showing the packet as
  that chain saw it at its first matched rule (DNAT already applied in FORWARD,
  a MARK set by the printed rule already in ``MARK=``); then one ``TRACE:`` line
  per *matched* rule and one for a policy. A loopback re-entry gets a new trace
  id, the same IP ID.
* Verdicts: MARK, CONNMARK, LOG, TCPMSS, CT --notrack/NOTRACK -> CONTINUE; DNAT,
  SNAT, MASQUERADE -> ACCEPT; REJECT (any --reject-with) -> DROP; ``-j RETURN`` ->
  a rule event whose verdict xtables-monitor prints as ``0xfffffffb`` (decoded to
  RETURN here); ``-j CHAIN``/``-g CHAIN`` -> JUMP:CHAIN / GOTO:CHAIN.
* nf_tables prints nothing for falling off the end of a user chain (no implicit
  return event); legacy prints it (``table:CHAIN:return:N``) and prints every
  built-in chain of a loaded table (iptables-nft only creates, and the kernel only
  traverses, the base chains the dump declares or uses).
* Conntrack runs in a netns only once something needs it (a NAT target, -m
  conntrack/state, CT --zone/--helper (not --notrack), CONNMARK ...; the list is
  tests/test_kernel_gaps.py's): a nat table whose rules never NAT is then
  not traversed at all. Untracked packets skip nat. A dropped packet's conntrack
  entry is never confirmed (``ct`` None); a SYN answered by a RST is deleted at
  once.
* After a mark set in mangle OUTPUT re-routes a local packet, the remaining OUTPUT
  chains still see the old output interface (``-o`` matches it); POSTROUTING sees
  the new one.

State that survives between packets of one KernelHost: ``-m recent`` lists,
``-m limit``/``hashlimit`` budgets, ``statistic --mode nth`` counters, nfacct
counters (conntrack is flushed after every packet).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno
import ipaddress
import json
import os
import random
import re
import secrets
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from nftrace.host.model import (
    DEFAULT_IPV4_RULES,
    DEFAULT_IPV6_RULES,
    HostContext,
    IpRule,
    Link,
    Route,
)

NETNS_DIR = "/var/run/netns"
NS_PREFIX = "nft-k-"
TRACE_TABLE = "nftrace_k"
PEER_IFNAME = "peer0"
CLONE_NEWNET = 0x40000000
QUIET_S = 0.15  # a packet's events are complete once nothing new arrived for this long

HOOKS = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")
_NFT_HOOKS = {h.lower(): h for h in HOOKS}
_PROTO_NUMS = {"icmp": 1, "tcp": 6, "udp": 17}
_PROTO_NUMS6 = {"icmpv6": 58, "tcp": 6, "udp": 17}
_ICMP6_ALIASES = {"icmp": "icmpv6", "icmp6": "icmpv6", "ipv6-icmp": "icmpv6", "icmpv6": "icmpv6"}
_TCP_FLAG_BITS = {
    "FIN": 0x01,
    "SYN": 0x02,
    "RST": 0x04,
    "PSH": 0x08,
    "ACK": 0x10,
    "URG": 0x20,
    "ECE": 0x40,
    "CWR": 0x80,
}
_ICMP_ERROR_TYPES = {3, 4, 5, 11, 12}
_ICMP6_ERROR_TYPES = {1, 2, 3, 4}
# nfproto numbers xtables-monitor prints on PACKET lines -> nft family names
_NFPROTO_FAMILY = {"1": "inet", "2": "ip", "5": "netdev", "7": "bridge", "10": "ip6"}
# Verdict codes xtables-monitor prints as hex because it has no name for them.
_NFT_VERDICTS = {-1: "CONTINUE", -2: "BREAK", -3: "JUMP", -4: "GOTO", -5: "RETURN"}
_NF_VERDICTS = {0: "DROP", 1: "ACCEPT", 2: "STOLEN", 3: "QUEUE", 4: "REPEAT", 5: "STOP"}

SOL_IP = 0
IP_FREEBIND = 15
SOL_IPV6 = 41
IPV6_FREEBIND = 78
SO_MARK = 36
SO_BINDTODEVICE = 25

T = TypeVar("T")


class KernelHostError(RuntimeError):
    """The namespace host could not be built or driven."""


class KernelHostUnavailable(KernelHostError):
    """This machine cannot run the harness (not root, no netns, no log path): skip, don't fail."""


# --------------------------------------------------------------------------- data


@dataclass
class KPacket:
    origin: str  # "ingress" (arrives on iif from that link's peer namespace) or "local" (sent in the node)
    proto: str  # "tcp" "udp" "icmp" ("icmp"/"icmpv6" with IPv6 addresses: ICMPv6)
    src: str
    dst: str
    sport: int | None = None
    dport: int | None = None
    icmp_type: int = 8
    icmp_code: int = 0
    tcp_flags: str = "SYN"  # comma list of SYN,ACK,FIN,RST,PSH,URG
    iif: str | None = None  # ingress link name
    mark: int = 0  # local only (SO_MARK)
    oif: str | None = None  # local only (SO_BINDTODEVICE)
    ttl: int = 64

    @property
    def family(self) -> str:
        return "ipv4" if ipaddress.ip_address(self.src).version == 4 else "ipv6"


@dataclass
class KEvent:
    hook: str  # PREROUTING INPUT FORWARD OUTPUT POSTROUTING: base chain of the event's group
    table: str
    chain: str
    kind: str  # "rule" | "policy" | "return"
    rule: int | None  # 1-based position in its chain; None for policy/return
    verdict: str  # as the kernel printed it (uppercase); "" on the legacy backend
    target: str | None  # chain name for JUMP/GOTO
    text: str  # rule text as printed (nft: "-4 -t filter -A INPUT ..."; legacy: "-A INPUT ..." from the dump)
    packet: dict[str, str]  # fields of the PACKET line of the event's group
    trace_id: str = ""  # kernel trace id (nft backend); a loopback re-entry gets a new one
    group: int = 0  # index of the base-chain traversal this event belongs to (0-based, in order)
    handle: int | None = None  # nft rule handle (nft backend)

    @property
    def save_text(self) -> str:
        """The rule as iptables-save prints it ("-A CHAIN ..."), without xtables-monitor's prefix."""
        return re.sub(r"^-[46] -t \S+ ", "", self.text)

    def short(self) -> str:
        pos = f":{self.rule}" if self.rule is not None else ""
        tgt = f":{self.target}" if self.target else ""
        return f"{self.hook} {self.table}:{self.chain}:{self.kind}{pos}:{self.verdict}{tgt}"


@dataclass
class KResult:
    events: list[KEvent]
    ct: dict[str, Any] | None  # conntrack entry of the flow after the packet, None when untracked/none
    final: dict[str, Any]  # src dst sport dport (after NAT), oif, delivered_local
    raw: str  # the raw trace lines of this packet
    ip_id: int = 0
    error: str | None = None  # the local send failed (e.g. "ENETUNREACH: Network is unreachable")
    elapsed: float = 0.0  # seconds for the whole send (inject, wait, conntrack)

    def path(self) -> list[str]:
        """One "HOOK table:chain" string per base-chain traversal, in order."""
        out: list[str] = []
        last = -1
        for ev in self.events:
            if ev.group != last:
                out.append(f"{ev.hook} {ev.table}:{ev.chain}")
                last = ev.group
        return out

    def tables_at(self, hook: str) -> list[str]:
        return [p.split()[1].split(":")[0] for p in self.path() if p.split()[0] == hook]

    def describe(self) -> str:
        lines = [ev.short() + (f"  {ev.save_text}" if ev.text else "") for ev in self.events]
        lines.append(f"ct={self.ct}")
        lines.append(f"final={self.final} error={self.error}")
        lines.append("raw:\n" + self.raw)
        return "\n".join(lines)


# ------------------------------------------------------------------ environment


def _have(cmd: str) -> bool:
    return shutil.which(cmd) is not None


def unavailable_reason(backend: str = "nft") -> str | None:
    """Why the harness cannot run here (for pytest.skip), or None when it can."""
    if os.geteuid() != 0:
        return "kernel tests need root"
    if not os.path.exists("/proc/self/ns/net"):
        return "no network namespace support"
    needed = ["ip", "conntrack"]
    needed += (
        ["nft", "xtables-monitor", "iptables-nft-restore"]
        if backend == "nft"
        else ["iptables-legacy-restore", "iptables-legacy"]
    )
    missing = [c for c in needed if not _have(c)]
    if missing:
        return f"missing tools: {', '.join(missing)}"
    probe = f"{NS_PREFIX}{secrets.token_hex(4)}"
    p = subprocess.run(["ip", "netns", "add", probe], check=False, capture_output=True, text=True)
    if p.returncode != 0:
        return f"cannot create a network namespace: {p.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], check=False, capture_output=True)
    return None


def _run(
    argv: list[str], *, input: str | None = None, check: bool = True, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    try:
        p = subprocess.run(argv, check=False, input=input, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise KernelHostError(f"{' '.join(argv)}: timed out after {timeout}s") from exc
    if check and p.returncode != 0:
        raise KernelHostError(f"{' '.join(argv)} failed (exit {p.returncode}): {p.stderr.strip()}")
    return p


def _ns_argv(ns: str, argv: list[str]) -> list[str]:
    """argv run inside netns `ns` (nsenter is lighter than `ip netns exec`: no /sys remount)."""
    if _have("nsenter"):
        return ["nsenter", f"--net={NETNS_DIR}/{ns}", "--", *argv]
    return ["ip", "netns", "exec", ns, *argv]


_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if hasattr(os, "setns"):
        os.setns(fd, CLONE_NEWNET)
        return
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def in_netns(ns: str, fn: Callable[[], T]) -> T:
    """Run fn in a fresh thread that has joined netns `ns`; sockets it creates stay in `ns`."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            fd = os.open(f"{NETNS_DIR}/{ns}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(fd)
            finally:
                os.close(fd)
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
            box["error"] = exc

    t = threading.Thread(target=target, name=f"netns-{ns}", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


# ------------------------------------------------------------------ packets


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _ipv4_header(src: str, dst: str, proto: int, ip_id: int, ttl: int, payload_len: int, df: bool = True) -> bytes:
    hdr = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + payload_len,
        ip_id,
        0x4000 if df else 0,
        ttl,
        proto,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    return hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:]


def _l4_checksum(src: str, dst: str, proto: int, segment: bytes) -> int:
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, proto, len(segment))
    return _csum(pseudo + segment)


def tcp_flag_bits(flags: str) -> int:
    bits = 0
    for name in (f.strip().upper() for f in flags.split(",")):
        if not name:
            continue
        if name not in _TCP_FLAG_BITS:
            raise ValueError(f"unknown TCP flag {name!r}")
        bits |= _TCP_FLAG_BITS[name]
    return bits


def build_ipv4(pkt: KPacket, ip_id: int) -> bytes:
    """A complete IPv4 datagram for pkt with correct IP and L4 checksums."""
    if pkt.family != "ipv4":
        raise ValueError("build_ipv4: an IPv6 packet (use build_ipv6 or build_packet)")
    proto = pkt.proto.lower()
    if proto not in _PROTO_NUMS:
        raise ValueError(f"unsupported protocol {pkt.proto!r}")
    pnum = _PROTO_NUMS[proto]
    if proto == "tcp":
        bits = tcp_flag_bits(pkt.tcp_flags)
        seq = random.getrandbits(32)
        ack = random.getrandbits(32) | 1 if bits & _TCP_FLAG_BITS["ACK"] else 0
        opts = struct.pack("!BBH", 2, 4, 1460) if bits & _TCP_FLAG_BITS["SYN"] else b""
        off = (20 + len(opts)) // 4
        seg = struct.pack("!HHIIBBHHH", pkt.sport, pkt.dport, seq, ack, off << 4, bits, 64240, 0, 0) + opts
        seg = seg[:16] + struct.pack("!H", _l4_checksum(pkt.src, pkt.dst, pnum, seg)) + seg[18:]
    elif proto == "udp":
        data = b"nftrace\n"
        seg = struct.pack("!HHHH", pkt.sport, pkt.dport, 8 + len(data), 0) + data
        c = _l4_checksum(pkt.src, pkt.dst, pnum, seg) or 0xFFFF
        seg = seg[:6] + struct.pack("!H", c) + seg[8:]
    else:
        if pkt.icmp_type in _ICMP_ERROR_TYPES:
            # An error must quote the offending datagram: a UDP packet from dst back to src.
            inner_l4 = struct.pack("!HHHH", pkt.dport or 53, pkt.sport or 53, 8, 0)
            inner = _ipv4_header(pkt.dst, pkt.src, 17, (ip_id ^ 0x5A5A) or 1, 64, len(inner_l4)) + inner_l4
            rest, data = b"\0\0\0\0", inner
        else:
            rest, data = struct.pack("!HH", pkt.sport or 1, 1), b"nftrace!"
        seg = struct.pack("!BBH", pkt.icmp_type, pkt.icmp_code, 0) + rest + data
        seg = seg[:2] + struct.pack("!H", _csum(seg)) + seg[4:]
    return _ipv4_header(pkt.src, pkt.dst, pnum, ip_id, pkt.ttl, len(seg)) + seg


def _ipv6_header(src: str, dst: str, nexthdr: int, flow_label: int, hop_limit: int, payload_len: int) -> bytes:
    """Fixed IPv6 header (RFC 8200): version 6, traffic class 0, the given flow label."""
    first = (6 << 28) | (flow_label & 0xFFFFF)
    return struct.pack("!IHBB", first, payload_len, nexthdr, hop_limit) + _in6(src) + _in6(dst)


def _in6(addr: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, addr)


def _l4_checksum6(src: str, dst: str, nexthdr: int, segment: bytes) -> int:
    """Checksum over the IPv6 pseudo-header (RFC 8200 8.1: addresses, upper-layer length, next header)."""
    pseudo = _in6(src) + _in6(dst) + struct.pack("!I3xB", len(segment), nexthdr)
    return _csum(pseudo + segment)


def icmp6_proto(proto: str) -> str:
    """'icmpv6' for the names an IPv6 ICMP packet goes by (icmp, icmp6, ipv6-icmp, icmpv6)."""
    return _ICMP6_ALIASES.get(proto.lower(), proto.lower())


def build_ipv6(pkt: KPacket, flow_label: int) -> bytes:
    """A complete IPv6 packet for pkt (no extension headers) with a correct L4 checksum.

    The flow label carries the packet's unique id, as the IPv4 ID does for build_ipv4: the
    kernel's trace prints it (FLOWLBL=) and keeps it across NAT and forwarding."""
    if pkt.family != "ipv6":
        raise ValueError("build_ipv6: an IPv4 packet (use build_ipv4 or build_packet)")
    proto = icmp6_proto(pkt.proto)
    if proto not in _PROTO_NUMS6:
        raise ValueError(f"unsupported protocol {pkt.proto!r}")
    nh = _PROTO_NUMS6[proto]
    if proto == "tcp":
        bits = tcp_flag_bits(pkt.tcp_flags)
        seq = random.getrandbits(32)
        ack = random.getrandbits(32) | 1 if bits & _TCP_FLAG_BITS["ACK"] else 0
        opts = struct.pack("!BBH", 2, 4, 1440) if bits & _TCP_FLAG_BITS["SYN"] else b""
        off = (20 + len(opts)) // 4
        seg = struct.pack("!HHIIBBHHH", pkt.sport, pkt.dport, seq, ack, off << 4, bits, 64800, 0, 0) + opts
        seg = seg[:16] + struct.pack("!H", _l4_checksum6(pkt.src, pkt.dst, nh, seg)) + seg[18:]
    elif proto == "udp":
        data = b"nftrace\n"
        seg = struct.pack("!HHHH", pkt.sport, pkt.dport, 8 + len(data), 0) + data
        c = _l4_checksum6(pkt.src, pkt.dst, nh, seg) or 0xFFFF  # zero is not allowed over IPv6
        seg = seg[:6] + struct.pack("!H", c) + seg[8:]
    else:
        icmp_type = 128 if pkt.icmp_type == 8 else pkt.icmp_type  # the IPv4 default means echo request
        if icmp_type in _ICMP6_ERROR_TYPES:
            # An error quotes the offending packet: a UDP packet from dst back to src.
            inner_l4 = struct.pack("!HHHH", pkt.dport or 53, pkt.sport or 53, 8, 0)
            inner_l4 = inner_l4[:6] + struct.pack("!H", _l4_checksum6(pkt.dst, pkt.src, 17, inner_l4) or 0xFFFF)
            inner = _ipv6_header(pkt.dst, pkt.src, 17, flow_label ^ 0x5A5A, 64, len(inner_l4)) + inner_l4
            rest, data = (struct.pack("!I", 1280) if icmp_type == 2 else b"\0\0\0\0"), inner
        else:
            rest, data = struct.pack("!HH", pkt.sport or 1, 1), b"nftrace!"
        seg = struct.pack("!BBH", icmp_type, pkt.icmp_code, 0) + rest + data
        seg = seg[:2] + struct.pack("!H", _l4_checksum6(pkt.src, pkt.dst, nh, seg)) + seg[4:]
    return _ipv6_header(pkt.src, pkt.dst, nh, flow_label, pkt.ttl, len(seg)) + seg


def build_packet(pkt: KPacket, ident: int) -> bytes:
    """build_ipv4 or build_ipv6 by the packet's family; ident is the IPv4 ID or the IPv6 flow label."""
    return build_ipv6(pkt, ident) if pkt.family == "ipv6" else build_ipv4(pkt, ident)


def _mac_bytes(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


def _dst_mac_for(dst: str, link_mac: str, broadcasts: set[str]) -> bytes:
    addr = ipaddress.ip_address(dst)
    if addr.version == 6:
        if addr.is_multicast:  # RFC 2464: 33:33 and the low 32 bits of the group
            return b"\x33\x33" + addr.packed[-4:]
        return _mac_bytes(link_mac)
    if str(addr) == "255.255.255.255" or dst in broadcasts:
        return b"\xff" * 6
    if addr.is_multicast:
        low = int(addr) & 0x7FFFFF
        return bytes([0x01, 0x00, 0x5E, low >> 16, (low >> 8) & 0xFF, low & 0xFF])
    return _mac_bytes(link_mac)


# ------------------------------------------------------------------ trace parsing

_NFT_PACKET_RE = re.compile(r"^PACKET: (\d+) ([0-9a-f]+) ?(.*)$")
_NFT_TRACE_RE = re.compile(r"^TRACE: (\d+) ([0-9a-f]+) (\S+?):(\S+?):(rule|policy|return)(?::(.*))?$")
_NFT_RULE_RE = re.compile(r"^0x([0-9a-f]+):(0x[0-9a-f]+|[A-Z]+)(?::(\S+))?(?:\s+(.*))?$")
_LEGACY_RE = re.compile(r"TRACE: (\S+?):(\S+?):(rule|policy|return):(\d+) (.*)$")
# `nft monitor trace`: "trace id ID FAMILY TABLE CHAIN (packet:|rule|policy|verdict|return) REST"
_NFTMON_RE = re.compile(r"^trace id (\S+) (\S+) (\S+) (\S+) (packet:|rule|policy|verdict|return)\s?(.*)$")
# nft packet-line keys -> the xtables-monitor/LOG keys the rest of the harness reads
_NFTMON_KEYS = {
    "iif": "IN",
    "oif": "OUT",
    "saddr": "SRC",
    "daddr": "DST",
    "flowlabel": "FLOWLBL",
    "sport": "SPT",
    "dport": "DPT",
    "hoplimit": "HOPLIMIT",
    "length": "LEN",
    "mark": "MARK",
    "id": "ICMPID",
}


def parse_nft_packet(text: str) -> dict[str, str]:
    """Fields of an `nft monitor trace` packet line (`iif "eth0" ip6 saddr A ip6 daddr B ... tcp dport P`)
    under the keys xtables-monitor uses (IN OUT SRC DST FLOWLBL SPT DPT ...); `ip saddr` and
    `ether saddr` are told apart (MACSRC/MACDST for the latter)."""
    toks = text.replace('"', "").split()
    out: dict[str, str] = {}
    i = 0
    while i < len(toks):
        tok = toks[i]
        if tok in ("iif", "oif") and i + 1 < len(toks):
            out.setdefault(_NFTMON_KEYS[tok], toks[i + 1])
            i += 2
            continue
        if i + 2 < len(toks) and toks[i + 1] in _NFTMON_KEYS:
            proto, key, val = tok, toks[i + 1], toks[i + 2]
            if proto == "ether" and key in ("saddr", "daddr"):
                out.setdefault("MACSRC" if key == "saddr" else "MACDST", val)
            elif proto == "meta" and key == "mark":
                out.setdefault("MARK", val)
            elif proto in ("ip", "ip6", "tcp", "udp", "sctp", "dccp", "udplite", "icmpv6", "icmp"):
                out.setdefault(_NFTMON_KEYS[key], val)
                if proto in ("tcp", "udp", "icmpv6", "icmp"):
                    out.setdefault("PROTO", proto.upper())
            i += 3
            continue
        i += 1
    if "SPT" in out:
        out.setdefault("SPORT", out["SPT"])
    if "DPT" in out:
        out.setdefault("DPORT", out["DPT"])
    return out


def parse_fields(text: str) -> dict[str, str]:
    """KEY=VALUE tokens of a PACKET/LOG line; bare words (DF, SYN, LOOPBACK ...) map to ""."""
    text = re.sub(r"\b(ID=\d+)(?=[A-Z])", r"\1 ", text)  # xtables-monitor prints "ID=5" w/o space if no DF
    out: dict[str, str] = {}
    for tok in text.split():
        if "=" in tok:
            k, v = tok.split("=", 1)
            out.setdefault(k, v)
        else:
            out.setdefault(tok, "")
    if "SPORT" in out:
        out.setdefault("SPT", out["SPORT"])
    if "DPORT" in out:
        out.setdefault("DPT", out["DPORT"])
    return out


def decode_verdict(word: str) -> str:
    """Verdict name for what xtables-monitor printed ("ACCEPT", or "0xfffffffb" for RETURN)."""
    if not word.startswith("0x"):
        return word
    v = int(word, 16)
    if v >= 0x80000000:
        v -= 1 << 32
    if v < 0:
        return _NFT_VERDICTS.get(v, word)
    return _NF_VERDICTS.get(v & 0xFF, word)


@dataclass
class _Group:
    trace_id: str
    packet: dict[str, str]
    lines: list[str] = field(default_factory=list)
    events: list[tuple[str, str, str, str]] = field(default_factory=list)  # table, chain, kind, rest
    nfproto: str = ""  # the family number xtables-monitor prints first (2 ip, 10 ip6, 1 inet ...)


def _ip_id_re(ip_id: int) -> re.Pattern[str]:
    return re.compile(rf"\bID={ip_id}(?!\d)")


def _ident_re(ident: int, family: str) -> re.Pattern[str]:
    """What selects a packet's trace lines: its IPv4 ID, or its IPv6 flow label."""
    if family == "ipv6":  # xtables-monitor prints FLOWLBL=N, nft monitor trace "ip6 flowlabel N"
        return re.compile(rf"(?:\bFLOWLBL=|\bflowlabel ){ident}(?!\d)")
    return _ip_id_re(ident)


def _addr_eq(a: Any, b: Any) -> bool:
    """Two address strings name the same address (conntrack prints IPv6 compressed)."""
    if a == b:
        return True
    try:
        return bool(ipaddress.ip_address(str(a)) == ipaddress.ip_address(str(b)))
    except ValueError:
        return False


def parse_ct_line(line: str) -> dict[str, Any] | None:
    """One line of `conntrack -L -o extended`."""
    toks = line.split()
    if len(toks) < 6 or toks[0] not in ("ipv4", "ipv6"):
        return None
    ct: dict[str, Any] = {
        "family": toks[0],
        "proto": toks[2],
        "timeout": int(toks[4]),
        "state": None,
        "flags": [],
        "orig": {},
        "reply": {},
        "mark": 0,
    }
    cur: dict[str, Any] = ct["orig"]
    for tok in toks[5:]:
        if tok.startswith("[") and tok.endswith("]"):
            ct["flags"].append(tok[1:-1])
        elif "=" in tok:
            k, v = tok.split("=", 1)
            if k == "src" and cur is ct["orig"] and "src" in cur:
                cur = ct["reply"]
            if k in (
                "mark",
                "use",
                "zone",
                "secctx",
                "labels",
                "delta-time",
                "timestamp",
                "packets",
                "bytes",
            ):
                ct[k] = int(v) if v.isdigit() else v
            elif k in ("sport", "dport", "type", "code", "id"):  # "id" is the ICMP echo id
                cur[k] = int(v)
            else:
                cur[k] = v
        elif not ct["orig"] and ct["state"] is None:
            ct["state"] = tok
    return ct


# ------------------------------------------------------------------ the host


_LIVE: set[KernelHost] = set()
_LOG_KNOB = Path("/proc/sys/net/netfilter/nf_log_all_netns")
_log_lock = threading.Lock()
_log_users = 0
_log_saved: str | None = None


def _log_all_netns_acquire() -> None:
    """Set the host-wide nf_log_all_netns=1 while any legacy KernelHost of this process lives."""
    global _log_users, _log_saved
    with _log_lock:
        if _log_users == 0:
            _log_saved = _LOG_KNOB.read_text().strip()
            if _log_saved != "1":
                _LOG_KNOB.write_text("1")
        _log_users += 1


def _log_all_netns_release() -> None:
    global _log_users, _log_saved
    with _log_lock:
        _log_users -= 1
        if _log_users == 0 and _log_saved is not None:
            if _log_saved != "1":
                _LOG_KNOB.write_text(_log_saved)
            _log_saved = None


def _cleanup_all() -> None:
    for host in list(_LIVE):
        host.close()


atexit.register(_cleanup_all)


class KernelHost:
    """A host rebuilt in network namespaces; see the module docstring."""

    def __init__(
        self,
        ctx: HostContext,
        rules_v4: str,
        *,
        backend: str = "nft",
        ipsets: str | None = None,
        rules_v6: str | None = None,
    ) -> None:
        if backend not in ("nft", "legacy"):
            raise ValueError(f"backend must be 'nft' or 'legacy', not {backend!r}")
        reason = unavailable_reason(backend)
        if reason:
            raise KernelHostUnavailable(reason)
        self.ctx = ctx
        self.rules_v4 = rules_v4
        self.rules_v6 = rules_v6
        self.backend = backend
        self.ipsets = ipsets
        self.tag = secrets.token_hex(4)
        self.node = f"{NS_PREFIX}{self.tag}"
        self.peers: dict[str, str] = {}  # link name -> peer namespace
        self.namespaces: list[str] = []  # created, in order
        self.macs: dict[str, str] = {}  # node link name -> MAC
        self.notes: list[str] = []  # what could not be reproduced faithfully
        self._broadcasts: set[str] = set()
        self._ingress: dict[str, socket.socket] = {}
        self._peer_macs: dict[str, bytes] = {}
        self._procs: list[subprocess.Popen[bytes]] = []
        self._tmpdir: str | None = None
        self._mon_path: Path | None = None
        self._mon_file: Any = None
        self._mon_err: Any = None
        self._positions: dict[tuple[str, str, int], int] = {}
        self._basechains: dict[tuple[str, str], str] = {}
        self._policies: dict[tuple[str, str], str] = {}
        # the same for the ip6 family (ip6tables' tables share their names with iptables')
        self._positions6: dict[tuple[str, str, int], int] = {}
        self._basechains6: dict[tuple[str, str], str] = {}
        self._ipv6_ready = False
        self._mon6_path: Path | None = None
        self._mon6_file: Any = None
        self._mon6_err: Any = None
        self._legacy_rules: dict[tuple[str, str], list[str]] = {}
        self._user_chains: set[tuple[str, str]] = set()
        self._had_raw = True  # legacy: did the ruleset itself have a raw table?
        self._kmsg_fd: int | None = None
        self._log_all_netns_held = False
        self._used_ids: set[int] = set()
        self._next_id = random.randint(1, 0xFFFF)
        self._lock = threading.Lock()
        self._closed = False

    # ---------------------------------------------------------------- lifecycle

    def __enter__(self) -> Self:
        _LIVE.add(self)
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Kill our processes, delete our namespaces, restore the host sysctl. Idempotent; each step
        runs even when an earlier one failed."""
        if self._closed:
            return
        self._closed = True
        for proc in self._procs:
            with contextlib.suppress(Exception):
                if proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(timeout=3)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(timeout=3)
        for s in self._ingress.values():
            with contextlib.suppress(Exception):
                s.close()
        for f in (self._mon_file, self._mon_err, self._mon6_file, self._mon6_err):
            if f is not None:
                with contextlib.suppress(Exception):
                    f.close()
        if self._kmsg_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._kmsg_fd)
            self._kmsg_fd = None
        for ns in reversed(self.namespaces):
            with contextlib.suppress(Exception):
                subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True, timeout=30)
        if self._log_all_netns_held:
            self._log_all_netns_held = False
            with contextlib.suppress(OSError):
                _log_all_netns_release()
        if self._tmpdir and not os.environ.get("NFTRACE_KEEP_TRACE"):
            shutil.rmtree(self._tmpdir, ignore_errors=True)
        _LIVE.discard(self)

    # ---------------------------------------------------------------- building

    def _ip(self, *args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(["ip", "-n", ns or self.node, *args], check=check)

    def _add_ns(self, name: str) -> None:
        _run(["ip", "netns", "add", name])
        self.namespaces.append(name)

    def _links(self) -> list[Link]:
        return [lk for lk in self.ctx.links if lk.name != "lo" and lk.kind != "loopback" and "*" not in lk.name]

    def _build(self) -> None:
        self._tmpdir = tempfile.mkdtemp(prefix=f"{self.node}-")
        self._add_ns(self.node)
        self._ip("link", "set", "lo", "up")
        for n, link in enumerate(self._links(), start=1):
            peer = f"{self.node}-p{n}"
            self._add_ns(peer)
            self.peers[link.name] = peer
            argv = ["link", "add", link.name]
            if link.mac:
                argv += ["address", link.mac]
            if link.mtu:
                argv += ["mtu", str(link.mtu)]
            argv += ["type", "veth", "peer", "name", PEER_IFNAME, "netns", peer]
            self._ip(*argv)
            if link.mtu:
                self._ip("link", "set", PEER_IFNAME, "mtu", str(link.mtu), ns=peer)
            self._ip("link", "set", PEER_IFNAME, "up", ns=peer)
            self._ip("link", "set", link.name, "up")
            if link.kind not in (None, "veth"):
                self.notes.append(
                    f"link {link.name} is a {link.kind} on the real host: modelled as a veth (-i/-o match by name only)"
                )
            if link.master:
                self.notes.append(f"link {link.name} is enslaved to {link.master}: modelled standalone")
            if not link.up:
                self.notes.append(f"link {link.name} is down on the real host: brought up here")
        self._read_macs()
        self._add_addresses()
        self._add_routes()
        self._add_rules()
        self._set_sysctls()
        if self.ipsets:
            _run(_ns_argv(self.node, ["ipset", "restore", "-exist"]), input=self.ipsets)
        self._restore_rules()
        for name, peer in self.peers.items():
            self._ingress[name] = in_netns(peer, lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0))
            self._ingress[name].bind((PEER_IFNAME, 0))
            self._peer_macs[name] = self._ingress[name].getsockname()[4][:6]
        if self.backend == "nft":
            self._start_nft_trace()
        else:
            self._start_legacy_trace()

    def _read_macs(self) -> None:
        out = self._ip("-j", "link", "show").stdout
        for item in json.loads(out):
            self.macs[item["ifname"]] = item.get("address", "")

    def _add_addresses(self) -> None:
        for link in self.ctx.links:
            if "*" in link.name:
                continue
            dev = "lo" if link.name == "lo" or link.kind == "loopback" else link.name
            for addr in link.addresses:
                iface = ipaddress.ip_interface(addr)
                if dev == "lo" and str(iface) in ("127.0.0.1/8", "::1/128"):
                    continue
                peer = link.peers.get(addr)
                if iface.version == 4:
                    argv = ["addr", "add", str(iface.ip) if peer else str(iface), "dev", dev]
                    if peer:
                        argv += ["peer", peer]
                    elif iface.network.prefixlen < 31:
                        argv += ["brd", "+"]
                        self._broadcasts.add(str(iface.network.broadcast_address))
                else:
                    argv = ["-6", "addr", "add", str(iface), "dev", dev, "nodad"]
                    if peer:
                        argv[3:4] = [str(iface.ip), "peer", peer]
                p = self._ip(*argv, check=False)
                if p.returncode == 0 or "File exists" in p.stderr or "already assigned" in p.stderr:
                    continue
                if iface.version == 6:  # IPv6 is best effort until the harness injects IPv6
                    self.notes.append(f"ip {' '.join(argv)}: {p.stderr.strip()}")
                    continue
                raise KernelHostError(f"ip {' '.join(argv)}: {p.stderr.strip()}")

    def _connected(self, gateway: str, dev: str | None) -> bool:
        gw = ipaddress.ip_address(gateway)
        for name, iface in self.ctx.addresses("ipv4" if gw.version == 4 else "ipv6"):
            if (dev is None or name == dev) and gw in iface.network:
                return True
        return False

    def _route_argv(self, r: Route) -> list[str] | None:
        if r.proto == "kernel":
            return None  # the kernel made it from an address: it exists already
        if r.type == "nat":
            self.notes.append(f"route type nat {r.dst} not supported by the kernel any more: skipped")
            return None
        argv = ["-6" if r.family == "ipv6" else "-4", "route", "add"]
        if r.type != "unicast":
            argv.append(r.type)
        argv += [r.dst, "table", r.table]
        nodev = r.type in ("blackhole", "unreachable", "prohibit", "throw")
        if r.nexthops and not nodev:
            for gw, oif, weight in r.nexthops:
                argv.append("nexthop")
                if gw:
                    argv += ["via", gw]
                if oif:
                    argv += ["dev", oif]
                argv += ["weight", str(weight or 1)]
                if gw and oif and not self._connected(gw, oif):
                    argv.append("onlink")
        elif not nodev:
            if r.gateway:
                argv += ["via", r.gateway]
            if r.oif:
                argv += ["dev", r.oif]
            if r.gateway and r.oif and ("onlink" in r.flags or not self._connected(r.gateway, r.oif)):
                argv.append("onlink")
        if r.prefsrc:
            argv += ["src", r.prefsrc]
        if r.metric:
            argv += ["metric", str(r.metric)]
        if r.tos:
            argv += ["tos", str(r.tos)]
        if r.scope and r.scope != "universe" and not nodev:
            argv += ["scope", r.scope]
        if r.proto and r.proto not in ("kernel", "unspec"):
            argv += ["proto", r.proto]
        return argv

    def _add_routes(self) -> None:
        # Device routes first, so that gateways of later routes are reachable.
        ordered = sorted(self.ctx.routes, key=lambda r: r.gateway is not None or bool(r.nexthops))
        failures: list[str] = []
        for r in ordered:
            argv = self._route_argv(r)
            if argv is None:
                continue
            p = self._ip(*argv, check=False)
            if p.returncode != 0 and "File exists" not in p.stderr:
                msg = f"ip {' '.join(argv)}: {p.stderr.strip()}"
                if r.family == "ipv6":  # IPv6 is best effort until the harness injects IPv6
                    self.notes.append(msg)
                else:
                    failures.append(msg)
        if failures:
            raise KernelHostError("cannot add routes:\n" + "\n".join(failures))

    @staticmethod
    def _is_default_rule(r: IpRule) -> bool:
        defaults = DEFAULT_IPV4_RULES if r.family == "ipv4" else DEFAULT_IPV6_RULES
        return r in defaults

    def _rule_argv(self, r: IpRule) -> list[str]:
        argv = ["-6" if r.family == "ipv6" else "-4", "rule", "add"]
        if r.invert:
            argv.append("not")
        argv += ["pref", str(r.priority)]
        if r.src:
            argv += ["from", r.src]
        if r.dst:
            argv += ["to", r.dst]
        if r.iif:
            argv += ["iif", r.iif]
        if r.oif:
            argv += ["oif", r.oif]
        if r.fwmark is not None:
            argv += ["fwmark", f"{r.fwmark:#x}" + (f"/{r.fwmask:#x}" if r.fwmask is not None else "")]
        if r.tos:
            argv += ["tos", str(r.tos)]
        if r.ipproto:
            argv += ["ipproto", r.ipproto]
        if r.sport:
            argv += ["sport", f"{r.sport[0]}-{r.sport[1]}"]
        if r.dport:
            argv += ["dport", f"{r.dport[0]}-{r.dport[1]}"]
        if r.uidrange:
            argv += ["uidrange", f"{r.uidrange[0]}-{r.uidrange[1]}"]
        if r.l3mdev:
            argv.append("l3mdev")
        if r.action == "lookup":
            if not r.l3mdev:
                argv += ["lookup", r.table or "main"]
        elif r.action == "goto":
            argv += ["goto", str(r.goto)]
        else:
            argv.append(r.action)
        if r.suppress_prefixlength is not None:
            argv += ["suppress_prefixlength", str(r.suppress_prefixlength)]
        if r.suppress_ifgroup is not None:
            argv += ["suppress_ifgroup", str(r.suppress_ifgroup)]
        return argv

    def _add_rules(self) -> None:
        for r in self.ctx.rules:
            if self._is_default_rule(r):
                continue
            argv = self._rule_argv(r)
            p = self._ip(*argv, check=False)
            if p.returncode != 0 and "File exists" not in p.stderr:
                if r.family == "ipv6":
                    self.notes.append(f"ip {' '.join(argv)}: {p.stderr.strip()}")
                    continue
                raise KernelHostError(f"ip {' '.join(argv)}: {p.stderr.strip()}")

    def _set_sysctls(self) -> None:
        links = {lk.name for lk in self.ctx.links} | {"all", "default", "lo"}
        values: dict[str, str] = {"net.netfilter.nf_conntrack_tcp_loose": "1"}
        for key, val in self.ctx.sysctls.items():
            if key.startswith("net.bridge."):
                self.notes.append(f"sysctl {key} skipped (no bridge in the namespace host)")
                continue
            m = re.match(r"^net\.ipv[46]\.(?:conf|neigh)\.([^.]+)\.", key)
            if m and m.group(1) not in links:
                self.notes.append(f"sysctl {key} skipped (no link {m.group(1)})")
                continue
            values[key] = str(val)

        def rank(key: str) -> int:  # ip_forward rewrites every conf.*.forwarding: apply it first
            return 0 if key in ("net.ipv4.ip_forward", "net.ipv4.conf.all.forwarding") else 1

        for key in sorted(values, key=rank):
            path = Path("/proc/sys") / key.replace(".", "/")

            def write(path: Path = path, val: str = values[key]) -> bool:
                if not path.exists():
                    return False
                try:
                    path.write_text(val)
                except OSError:
                    return False
                return True

            if not in_netns(self.node, write):
                self.notes.append(f"sysctl {key} unknown or not writable in a netns: skipped")

    def _create_nfacct(self) -> None:
        """Create the nfacct objects `-m nfacct --nfacct-name X` refers to (kube-proxy makes them on real
        hosts; without them the rule fails with ENOENT). No `nfacct` tool needed: one netlink message each."""
        names = sorted(set(re.findall(r"--nfacct-name\s+(\S+)", (self.rules_v4 or "") + (self.rules_v6 or ""))))
        if not names:
            return
        sock = in_netns(self.node, lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12))
        try:
            sock.bind((0, 0))
            sock.settimeout(2.0)
            for seq, name in enumerate(names, start=1):
                raw_name = name.strip('"').encode() + b"\0"
                attr = struct.pack("=HH", 4 + len(raw_name), 1) + raw_name  # NFACCT_NAME
                attr += b"\0" * (-len(attr) % 4)
                body = struct.pack("=BBH", socket.AF_UNSPEC, 0, 0) + attr  # nfgenmsg
                # NFNL_SUBSYS_ACCT << 8 | NFNL_MSG_ACCT_NEW; NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE
                sock.send(struct.pack("=IHHII", 16 + len(body), 7 << 8, 0x1 | 0x4 | 0x400, seq, 0) + body)
                reply = sock.recv(65536)
                err = struct.unpack("=i", reply[16:20])[0] if len(reply) >= 20 else 0
                if err and -err not in (errno.EEXIST, errno.EBUSY):
                    raise KernelHostError(f"cannot create nfacct object {name}: {os.strerror(-err)}")
        finally:
            sock.close()

    def _restore_rules(self) -> None:
        self._create_nfacct()
        tool = "iptables-nft-restore" if self.backend == "nft" else "iptables-legacy-restore"
        p = _run(_ns_argv(self.node, [tool]), input=self.rules_v4, check=False)
        if p.returncode != 0:
            raise KernelHostError(f"{tool} rejected the IPv4 rules: {p.stderr.strip()}")
        if self.rules_v6:
            tool6 = tool.replace("iptables", "ip6tables")
            p = _run(_ns_argv(self.node, [tool6]), input=self.rules_v6, check=False)
            if p.returncode != 0:
                raise KernelHostError(f"{tool6} rejected the IPv6 rules: {p.stderr.strip()}")

    # ---------------------------------------------------------------- nft trace

    def _start_nft_trace(self) -> None:
        table = (
            f"table inet {TRACE_TABLE} {{\n"
            "  chain pre { type filter hook prerouting priority -500; policy accept; meta nftrace set 1; }\n"
            "  chain out { type filter hook output priority -500; policy accept; meta nftrace set 1; }\n"
            "}\n"
        )
        _run(_ns_argv(self.node, ["nft", "-f", "-"]), input=table)
        self.refresh_handles()
        assert self._tmpdir is not None
        self._mon_path = Path(self._tmpdir) / "xtables-monitor.out"
        out = open(self._mon_path, "wb")  # noqa: SIM115 - kept open for the life of the monitor
        self._mon_err = open(Path(self._tmpdir) / "xtables-monitor.err", "wb")  # noqa: SIM115
        argv = ["xtables-monitor", "--trace"]
        if self.rules_v6 is not None:
            # xtables-monitor 1.8.9 exits ("unsupported layer 4 protocol value") when it prints an ip6
            # rule `-p tcp -m tcp --dport N -j DNAT/REDIRECT ...`: with -4 it never parses ip6 events.
            # IPv6 is traced by `nft monitor trace` instead (see _start_nft_trace6).
            argv.append("-4")
        if _have("stdbuf"):
            argv = ["stdbuf", "-oL", *argv]
        self._procs.append(
            subprocess.Popen(_ns_argv(self.node, argv), stdout=out, stderr=self._mon_err, stdin=subprocess.DEVNULL)
        )
        out.close()
        self._mon_file = open(self._mon_path, "rb")  # noqa: SIM115
        self._wait_ready()

    def _start_nft_trace6(self) -> None:
        """IPv6 trace events come from `nft -a monitor trace` (nft syntax, rule handles): xtables-monitor
        1.8.9 dies on some ip6 NAT rules (see _start_nft_trace)."""
        assert self._tmpdir is not None
        self._mon6_path = Path(self._tmpdir) / "nft-monitor.out"
        out = open(self._mon6_path, "wb")  # noqa: SIM115 - kept open for the life of the monitor
        err = open(Path(self._tmpdir) / "nft-monitor.err", "wb")  # noqa: SIM115
        self._mon6_err = err
        argv = ["nft", "-a", "monitor", "trace"]
        if _have("stdbuf"):
            argv = ["stdbuf", "-oL", *argv]
        proc = subprocess.Popen(_ns_argv(self.node, argv), stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        self._procs.append(proc)
        out.close()
        self._mon6_file = open(self._mon6_path, "rb")  # noqa: SIM115
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            label = self._new_id()
            start = self._mon6_path.stat().st_size
            self._send_local_raw6(KPacket("local", "udp", "::1", "::1", 9, 9), label)
            t_end = time.monotonic() + 0.2
            while time.monotonic() < t_end:
                if _ident_re(label, "ipv6").search(self._read6_from(start)):
                    time.sleep(QUIET_S)
                    self._flush_conntrack()
                    return
                time.sleep(0.01)
            if proc.poll() is not None:
                break
        err.flush()
        msg = Path(err.name).read_text(errors="replace").strip()
        raise KernelHostUnavailable(
            f"nft monitor trace in {self.node} never showed the IPv6 probe packet" + (f": {msg}" if msg else "")
        )

    def _read6_from(self, offset: int) -> str:
        assert self._mon6_file is not None
        self._mon6_file.seek(offset)
        return bytes(self._mon6_file.read()).decode("utf-8", "replace")

    def _mon6_size(self) -> int:
        assert self._mon6_path is not None
        return self._mon6_path.stat().st_size

    def refresh_handles(self) -> None:
        """Map nft rule handles to 1-based positions (rules of a chain in order)."""
        data = json.loads(_run(_ns_argv(self.node, ["nft", "-j", "-a", "list", "ruleset"])).stdout)
        positions: dict[tuple[str, str, int], int] = {}
        counts: dict[tuple[str, str], int] = {}
        positions6: dict[tuple[str, str, int], int] = {}
        counts6: dict[tuple[str, str], int] = {}
        for obj in data.get("nftables", []):
            if "chain" in obj:
                c = obj["chain"]
                if c.get("hook") and c.get("family") in ("ip", "inet"):
                    self._basechains[(c["table"], c["name"])] = _NFT_HOOKS.get(c["hook"], c["hook"].upper())
                    self._policies[(c["table"], c["name"])] = str(c.get("policy", "accept")).upper()
                if c.get("hook") and c.get("family") in ("ip6", "inet"):
                    self._basechains6[(c["table"], c["name"])] = _NFT_HOOKS.get(c["hook"], c["hook"].upper())
            elif "rule" in obj:
                r = obj["rule"]
                if r.get("family") in ("ip6", "inet"):
                    key = (r["table"], r["chain"])
                    counts6[key] = counts6.get(key, 0) + 1
                    positions6[(r["table"], r["chain"], int(r["handle"]))] = counts6[key]
                if r.get("family") not in ("ip", "inet"):
                    continue
                key = (r["table"], r["chain"])
                counts[key] = counts.get(key, 0) + 1
                positions[(r["table"], r["chain"], int(r["handle"]))] = counts[key]
        self._positions = positions
        self._positions6 = positions6

    def _mon_size(self) -> int:
        assert self._mon_path is not None
        return self._mon_path.stat().st_size

    def _read_from(self, offset: int) -> str:
        assert self._mon_file is not None
        self._mon_file.seek(offset)
        return bytes(self._mon_file.read()).decode("utf-8", "replace")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            ip_id = self._new_id()
            start = self._mon_size()
            # the ruleset's OUTPUT may drop the probe (EPERM): its trace events still come
            with contextlib.suppress(OSError):
                self._send_local_raw(KPacket("local", "udp", "127.0.0.1", "127.0.0.1", 9, 9), ip_id)
            t_end = time.monotonic() + 0.2
            while time.monotonic() < t_end:
                if _ip_id_re(ip_id).search(self._read_from(start)):
                    time.sleep(QUIET_S)
                    self._flush_conntrack()
                    return
                time.sleep(0.01)
            if self._procs[-1].poll() is not None:
                break
        err = ""
        if self._mon_err is not None:
            self._mon_err.flush()
            err = (Path(self._mon_err.name).read_text(errors="replace")).strip()
        raise KernelHostUnavailable(
            f"xtables-monitor --trace in {self.node} never showed the probe packet" + (f": {err}" if err else "")
        )

    # ---------------------------------------------------------------- legacy trace

    def _start_legacy_trace(self) -> None:
        if not _LOG_KNOB.exists():
            raise KernelHostUnavailable("no net.netfilter.nf_log_all_netns: TRACE in a netns cannot log")
        try:
            self._kmsg_fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            raise KernelHostUnavailable(f"cannot read /dev/kmsg: {exc}") from exc
        os.lseek(self._kmsg_fd, 0, os.SEEK_END)
        _log_all_netns_acquire()
        self._log_all_netns_held = True

        def logger_bound() -> str:
            p = Path("/proc/sys/net/netfilter/nf_log/2")
            if p.exists() and p.read_text().strip() == "NONE":
                with contextlib.suppress(OSError):
                    p.write_text("nf_log_ipv4")
            return p.read_text().strip() if p.exists() else "NONE"

        if in_netns(self.node, logger_bound) == "NONE":
            raise KernelHostUnavailable("no IPv4 nf_log backend (nf_log_ipv4/nf_log_syslog) in the kernel")
        for chain in ("PREROUTING", "OUTPUT"):
            p = _run(
                _ns_argv(self.node, ["iptables-legacy", "-w", "-t", "raw", "-I", chain, "1", "-j", "TRACE"]),
                check=False,
            )
            if p.returncode != 0:
                raise KernelHostUnavailable(f"cannot insert a legacy TRACE rule: {p.stderr.strip()}")
        self._had_raw = bool(re.search(r"^\*raw\s*$", self.rules_v4, re.M))
        self._load_legacy_rules()
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            ip_id = self._new_id()
            self._send_local_raw(KPacket("local", "udp", "127.0.0.1", "127.0.0.1", 9, 9), ip_id)
            t_end = time.monotonic() + 0.3
            text = ""
            while time.monotonic() < t_end:
                text += self._read_kmsg()
                if _ip_id_re(ip_id).search(text):
                    time.sleep(QUIET_S)
                    self._read_kmsg()
                    self._flush_conntrack()
                    return
                time.sleep(0.01)
        raise KernelHostUnavailable("legacy TRACE lines never reached /dev/kmsg (nf_log_all_netns / nf_log)")

    def _load_legacy_rules(self) -> None:
        text = _run(_ns_argv(self.node, ["iptables-legacy-save"])).stdout
        rules: dict[tuple[str, str], list[str]] = {}
        table = ""
        for line in text.splitlines():
            if line.startswith("*"):
                table = line[1:].strip()
            elif line.startswith(":"):
                name, policy = line[1:].split()[:2]
                if policy != "-":
                    self._policies[(table, name)] = policy
                else:
                    self._user_chains.add((table, name))
            elif line.startswith("-A "):
                rules.setdefault((table, line.split()[1]), []).append(line)
        for chain in ("PREROUTING", "OUTPUT"):  # our TRACE rules sit at position 1
            lst = rules.get(("raw", chain), [])
            if lst and lst[0] == f"-A {chain} -j TRACE":
                lst.pop(0)
        self._legacy_rules = rules

    def _read_kmsg(self) -> str:
        assert self._kmsg_fd is not None
        out: list[str] = []
        while True:
            try:
                rec = os.read(self._kmsg_fd, 8192)
            except BlockingIOError:
                break
            except BrokenPipeError:  # records were overwritten before we read them
                continue
            if not rec:
                break
            msg = rec.decode("utf-8", "replace").split(";", 1)[-1].split("\n", 1)[0]
            if "TRACE: " in msg:
                out.append(msg + "\n")
        return "".join(out)

    # ---------------------------------------------------------------- sending

    def _new_id(self) -> int:
        with self._lock:
            while True:
                self._next_id = self._next_id % 0xFFFF + 1  # 1..65535, never 0
                if self._next_id not in self._used_ids:
                    self._used_ids.add(self._next_id)
                    if len(self._used_ids) > 60000:
                        self._used_ids.clear()
                    return self._next_id

    def _send_local_raw(self, pkt: KPacket, ip_id: int) -> None:
        if pkt.family == "ipv6":
            self._send_local_raw6(pkt, ip_id)
            return
        data = build_ipv4(pkt, ip_id)

        def make() -> socket.socket:
            return socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)

        s = in_netns(self.node, make)
        try:
            s.setsockopt(SOL_IP, IP_FREEBIND, 1)
            if pkt.mark:
                s.setsockopt(socket.SOL_SOCKET, SO_MARK, pkt.mark)
            if pkt.oif:
                s.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, pkt.oif.encode())
            s.bind((pkt.src, 0))  # routing (ip rule from ...) sees the packet's source address
            s.sendto(data, (pkt.dst, 0))
        finally:
            s.close()

    def _send_local_raw6(self, pkt: KPacket, flow_label: int) -> None:
        """An IPv6 raw socket with IPPROTO_RAW: the kernel takes our header as it is (IPV6_HDRINCL)."""
        data = build_ipv6(pkt, flow_label)

        def make() -> socket.socket:
            return socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)

        s = in_netns(self.node, make)
        try:
            try:
                s.setsockopt(SOL_IPV6, IPV6_FREEBIND, 1)
            except OSError:
                s.setsockopt(SOL_IP, IP_FREEBIND, 1)
            if pkt.mark:
                s.setsockopt(socket.SOL_SOCKET, SO_MARK, pkt.mark)
            if pkt.oif:
                s.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, pkt.oif.encode())
            s.bind((pkt.src, 0, 0, 0))
            s.sendto(data, (pkt.dst, 0, 0, 0))
        finally:
            s.close()

    def _send_ingress(self, pkt: KPacket, ip_id: int) -> None:
        if not pkt.iif or pkt.iif not in self._ingress:
            raise ValueError(f"ingress packet needs iif naming one of {sorted(self._ingress)}, got {pkt.iif!r}")
        ethertype = b"\x86\xdd" if pkt.family == "ipv6" else b"\x08\x00"
        frame = (
            _dst_mac_for(pkt.dst, self.macs[pkt.iif], self._broadcasts)
            + self._peer_macs[pkt.iif]
            + ethertype
            + build_packet(pkt, ip_id)
        )
        self._ingress[pkt.iif].send(frame)

    def _prepare_ipv6(self) -> None:
        """Before the first IPv6 packet: kernel-made IPv6 packets (echo replies, RSTs, ICMPv6 errors) get
        flow label 0 (net.ipv6.auto_flowlabels=0 in the node), so that only ours carry our labels."""
        if self._ipv6_ready:
            return
        if self.backend != "nft":
            raise KernelHostError("IPv6 packets are traced on the nft backend only (xtables-monitor)")

        def write() -> None:
            Path("/proc/sys/net/ipv6/auto_flowlabels").write_text("0")
            Path("/proc/sys/net/ipv6/flowlabel_reflect").write_text("0")

        in_netns(self.node, write)
        self.refresh_handles()
        self._start_nft_trace6()
        self._ipv6_ready = True

    def _normalise(self, pkt: KPacket) -> KPacket:
        proto = pkt.proto.lower()
        if pkt.family == "ipv6":
            proto = icmp6_proto(proto)
            if proto != pkt.proto:
                pkt = replace(pkt, proto=proto)
            if proto == "icmpv6" and pkt.icmp_type == 8:
                pkt = replace(pkt, icmp_type=128)  # KPacket's default (IPv4 echo request) in ICMPv6
            if ipaddress.ip_address(pkt.dst).version != 6:
                raise ValueError(f"source {pkt.src} and destination {pkt.dst} are of different families")
            pkt = replace(pkt, src=str(ipaddress.ip_address(pkt.src)), dst=str(ipaddress.ip_address(pkt.dst)))
        if pkt.origin not in ("ingress", "local"):
            raise ValueError(f"origin must be 'ingress' or 'local', not {pkt.origin!r}")
        if proto in ("tcp", "udp"):
            if pkt.dport is None:
                raise ValueError(f"{proto} packet needs a dport")
            if pkt.sport is None:
                pkt = replace(pkt, sport=random.randint(20000, 60999))
        elif proto in ("icmp", "icmpv6") and pkt.sport is None:  # sport doubles as the echo id
            pkt = replace(pkt, sport=random.randint(1, 0xFFFF))
        return pkt

    def send(self, pkt: KPacket, timeout: float = 2.0) -> KResult:
        """Inject one packet, wait for its trace, read and flush conntrack."""
        if self._closed:
            raise KernelHostError("KernelHost is closed")
        t0 = time.monotonic()
        pkt = self._normalise(pkt)
        if pkt.family == "ipv6":
            self._prepare_ipv6()
        ip_id = self._new_id()
        if pkt.family == "ipv6":
            start = self._mon6_size()
        else:
            start = self._mon_size() if self.backend == "nft" else 0
        if self.backend == "legacy":
            self._read_kmsg()  # discard what is already there
        error: str | None = None
        try:
            if pkt.origin == "ingress":
                self._send_ingress(pkt, ip_id)
            else:
                self._send_local_raw(pkt, ip_id)
        except OSError as exc:
            if pkt.origin == "ingress":
                raise
            error = f"{errno.errorcode.get(exc.errno or 0, 'E?')}: {exc.strerror}"
        text = self._collect(start, ip_id, timeout, expect=error is None, family=pkt.family)
        if pkt.family == "ipv6":
            events, raw = self._nftmon_events(text, ip_id)
        elif self.backend == "nft":
            events, raw = self._nft_events(text, ip_id, family=pkt.family)
        else:
            events, raw = self._legacy_events(text, ip_id)
        for ev in events:
            ev.packet.setdefault("PROTO", pkt.proto.upper())
        ct = self._conntrack(pkt)
        self._flush_conntrack()
        return KResult(
            events=events,
            ct=ct,
            final=self._final(pkt, events, ct),
            raw=raw,
            ip_id=ip_id,
            error=error,
            elapsed=time.monotonic() - t0,
        )

    def _collect(self, start: int, ip_id: int, timeout: float, expect: bool, family: str = "ipv4") -> str:
        """Trace text from `start` until this packet's events stopped coming (QUIET_S) or timeout.

        Only lines of this packet (its IP ID or IPv6 flow label, or a trace id first seen with it)
        restart the quiet timer, so the kernel's own replies (RST, ICMP errors) don't prolong the wait.
        """
        pat = _ident_re(ip_id, family)
        t0 = time.monotonic()
        deadline = t0 + timeout
        text = ""
        consumed = 0  # bytes of `text` (nft: offset from `start`)
        trace_ids: set[str] = set()
        seen = False
        last = t0
        while True:
            time.sleep(0.01)
            now = time.monotonic()
            if family == "ipv6":
                new = self._read6_from(start + consumed)
            else:
                new = self._read_from(start + consumed) if self.backend == "nft" else self._read_kmsg()
            if new:
                consumed += len(new.encode())
                text += new
                relevant = False
                for line in new.splitlines():
                    if pat.search(line):
                        relevant = True
                        m = _NFT_PACKET_RE.match(line.strip()) or _NFTMON_RE.match(line.strip())
                        if m:
                            trace_ids.add(m.group(2) if m.re is _NFT_PACKET_RE else m.group(1))
                    elif trace_ids and any(f" {tid} " in line for tid in trace_ids):
                        relevant = True
                if relevant:
                    seen = True
                    last = now
            if now >= deadline:
                break
            if (seen or not expect) and now - last >= QUIET_S:
                if family == "ipv4" and self.backend == "nft":
                    text += self._drain_with_sentinel(start + consumed)
                break
        return text

    def _drain_with_sentinel(self, offset: int) -> str:
        """Send a marker packet and read until its trace line is written.

        The kernel emits trace events in order and xtables-monitor writes them in order, so
        once the marker's line is in the file, every event of the packet before it is too,
        however slowly a loaded machine ran the monitor."""
        sid = self._new_id()
        with contextlib.suppress(OSError):  # the ruleset's OUTPUT may drop it: it is traced before that
            self._send_local_raw(KPacket("local", "udp", "127.0.0.1", "127.0.0.1", 9, 9), sid)
        pat = _ip_id_re(sid)
        deadline = time.monotonic() + 3.0
        text = ""
        while time.monotonic() < deadline:
            text = self._read_from(offset)
            if pat.search(text):
                break
            time.sleep(0.01)
        return text

    def _nft_events(self, text: str, ip_id: int, family: str = "ipv4") -> tuple[list[KEvent], str]:
        """The packet's events; for IPv6 (family "ipv6") ip_id is the flow label and rule handles
        are those of the ip6 (and inet) tables."""
        if family == "ipv6":
            ident_key = "FLOWLBL"
            basechains, positions_of = self._basechains6, lambda: self._positions6
        else:
            ident_key = "ID"
            basechains, positions_of = self._basechains, lambda: self._positions
        groups: list[_Group] = []
        current: dict[str, _Group] = {}
        for line in text.splitlines():
            line = line.strip()
            m = _NFT_PACKET_RE.match(line)
            if m:
                g = _Group(m.group(2), parse_fields(m.group(3)), [line], nfproto=m.group(1))
                groups.append(g)
                current[g.trace_id] = g
                continue
            m = _NFT_TRACE_RE.match(line)
            if m:
                tid = m.group(2)
                if tid not in current:
                    current[tid] = _Group(tid, {})
                    groups.append(current[tid])
                current[tid].lines.append(line)
                current[tid].events.append((m.group(3), m.group(4), m.group(5), (m.group(6) or "").strip()))
        mine = [g for g in groups if g.packet.get(ident_key) == str(ip_id)]
        events: list[KEvent] = []
        raw: list[str] = []
        refreshed = False
        gi = 0
        for g in mine:
            evs = [e for e in g.events if e[0] != TRACE_TABLE]
            if not evs:
                continue
            raw += g.lines
            hook = next(
                (basechains[(t, c)] for t, c, _, _ in evs if (t, c) in basechains),
                evs[0][1].upper(),
            )
            for table, chain, kind, rest in evs:
                rule: int | None = None
                verdict, target, txt, handle = "", None, "", None
                if kind == "rule":
                    rm = _NFT_RULE_RE.match(rest)
                    if rm:
                        handle = int(rm.group(1), 16)
                        verdict = decode_verdict(rm.group(2))
                        target = rm.group(3)
                        txt = (rm.group(4) or "").strip()
                        rule = positions_of().get((table, chain, handle))
                        if rule is None and not refreshed:
                            self.refresh_handles()
                            refreshed = True
                            rule = positions_of().get((table, chain, handle))
                elif kind == "policy":
                    verdict = decode_verdict(rest.split()[0]) if rest else ""
                else:
                    verdict = "RETURN"
                    target = rest or None
                events.append(
                    KEvent(
                        hook=hook,
                        table=table,
                        chain=chain,
                        kind=kind,
                        rule=rule,
                        verdict=verdict,
                        target=target,
                        text=txt,
                        packet=dict(g.packet),
                        trace_id=g.trace_id,
                        group=gi,
                        handle=handle,
                    )
                )
            gi += 1
        return events, "\n".join(raw)

    def _nftmon_events(self, text: str, flow_label: int) -> tuple[list[KEvent], str]:
        """The events of the IPv6 packet with this flow label, from `nft -a monitor trace` text."""
        groups: list[_Group] = []
        current: dict[str, _Group] = {}
        for raw_line in text.splitlines():
            m = _NFTMON_RE.match(raw_line.strip())
            if not m:
                continue
            tid, fam, table, chain, kind, rest = m.groups()
            line = raw_line.strip()
            if kind == "packet:":
                g = _Group(tid, parse_nft_packet(rest), [line], nfproto=fam)
                g.packet["NFT_FAMILY"] = fam
                groups.append(g)
                current[tid] = g
                continue
            if tid not in current:
                current[tid] = _Group(tid, {}, nfproto=fam)
                groups.append(current[tid])
            g = current[tid]
            g.lines.append(line)
            g.events.append((table, chain, kind, rest))
            if fam != g.nfproto and g.packet.get("NFT_FAMILY") != fam:
                # a new base chain of another family without its own packet line: keep families apart
                g.packet["NFT_FAMILY"] = fam
        mine = [g for g in groups if g.packet.get("FLOWLBL") == str(flow_label)]
        events: list[KEvent] = []
        raw: list[str] = []
        refreshed = False
        gi = 0
        for g in mine:
            evs = [e for e in g.events if e[0] != TRACE_TABLE]
            if not evs:
                continue
            raw += g.lines
            hook = next(
                (self._basechains6[(t, c)] for t, c, _, _ in evs if (t, c) in self._basechains6),
                evs[0][1].upper(),
            )
            for table, chain, kind, rest in evs:
                rule: int | None = None
                verdict, target, txt, handle = "", None, "", None
                if kind == "rule":
                    body, _, tail = rest.rpartition(" (verdict ")
                    words = tail.rstrip(")").split()
                    verdict = words[0].upper() if words else ""
                    target = words[1] if len(words) > 1 and verdict in ("JUMP", "GOTO") else None
                    hm = re.search(r"\s*# handle (\d+)\s*$", body)
                    if hm:
                        handle = int(hm.group(1))
                        body = body[: hm.start()]
                    txt = body.strip()
                    if handle is not None:
                        rule = self._positions6.get((table, chain, handle))
                        if rule is None and not refreshed:
                            self.refresh_handles()
                            refreshed = True
                            rule = self._positions6.get((table, chain, handle))
                elif kind == "policy":
                    verdict = rest.split()[0].upper() if rest.split() else ""
                else:
                    kind = "return"
                    verdict = "RETURN"
                events.append(
                    KEvent(
                        hook=hook,
                        table=table,
                        chain=chain,
                        kind=kind,
                        rule=rule,
                        verdict=verdict,
                        target=target,
                        text=txt,
                        packet=dict(g.packet),
                        trace_id=g.trace_id,
                        group=gi,
                        handle=handle,
                    )
                )
            gi += 1
        return events, "\n".join(raw)

    def _legacy_events(self, text: str, ip_id: int) -> tuple[list[KEvent], str]:
        pat = _ip_id_re(ip_id)
        events: list[KEvent] = []
        raw: list[str] = []
        gi = -1
        base: tuple[str, str] | None = None
        hook = ""
        for line in text.splitlines():
            m = _LEGACY_RE.search(line)
            if not m:
                continue
            table, chain, kind, num_s, rest = m.groups()
            if table == "raw" and not self._had_raw:
                continue  # the raw table exists only for our TRACE rules: its policy lines are artifacts
            rest = rest.split("[", 1)[0]  # an ICMP error quotes the offending packet (its ID too) in [...]
            if not pat.search(rest):
                continue
            num = int(num_s)
            if table == "raw" and chain in ("PREROUTING", "OUTPUT") and kind == "rule":
                if num == 1:
                    continue  # our own TRACE rule (seen again on a loopback re-entry)
                num -= 1
            raw.append(line)
            if chain in HOOKS and (table, chain) != base:
                base = (table, chain)
                hook = chain
                gi += 1
            elif gi < 0:
                gi = 0
            rule: int | None = num if kind == "rule" else None
            txt, target = "", None
            if rule is not None:
                lst = self._legacy_rules.get((table, chain), [])
                if 0 < rule <= len(lst):
                    txt = lst[rule - 1]
                    tm = re.search(r"\s-[jg] (\S+)", txt)
                    if tm and (table, tm.group(1)) in self._user_chains:
                        target = tm.group(1)
            events.append(
                KEvent(
                    hook=hook or chain,
                    table=table,
                    chain=chain,
                    kind=kind,
                    rule=rule,
                    verdict="",
                    target=target,
                    text=txt,
                    packet=parse_fields(rest),
                    group=max(gi, 0),
                )
            )
        return events, "\n".join(raw)

    # ---------------------------------------------------------------- after the packet

    def _conntrack(self, pkt: KPacket) -> dict[str, Any] | None:
        p = _run(_ns_argv(self.node, ["conntrack", "-L", "-o", "extended"]), check=False)
        proto = pkt.proto.lower()
        for line in p.stdout.splitlines():
            ct = parse_ct_line(line)
            if ct is None or ct["proto"] != proto:
                continue
            o = ct["orig"]
            if pkt.family == "ipv6":
                if ct["family"] != "ipv6" or not (_addr_eq(o.get("src"), pkt.src) and _addr_eq(o.get("dst"), pkt.dst)):
                    continue
            elif o.get("src") != pkt.src or o.get("dst") != pkt.dst:
                continue
            if proto in ("tcp", "udp") and (o.get("sport"), o.get("dport")) != (pkt.sport, pkt.dport):
                continue
            if proto in ("icmp", "icmpv6") and (o.get("type"), o.get("id")) != (pkt.icmp_type, pkt.sport):
                continue
            return ct
        return None

    def _flush_conntrack(self) -> None:
        _run(_ns_argv(self.node, ["conntrack", "-F"]), check=False)

    def _final(self, pkt: KPacket, events: list[KEvent], ct: dict[str, Any] | None) -> dict[str, Any]:
        final: dict[str, Any] = {"src": pkt.src, "dst": pkt.dst, "sport": pkt.sport, "dport": pkt.dport}
        if pkt.proto.lower() in ("icmp", "icmpv6"):
            final["sport"] = final["dport"] = None
        if ct is not None and ct["reply"]:
            r = ct["reply"]
            final["src"], final["dst"] = r.get("dst", pkt.src), r.get("src", pkt.dst)
            if "sport" in r:
                final["sport"], final["dport"] = r.get("dport"), r.get("sport")
        elif events:
            last = events[-1].packet
            final["src"], final["dst"] = last.get("SRC", pkt.src), last.get("DST", pkt.dst)
            if "SPT" in last:
                final["sport"], final["dport"] = int(last["SPT"]), int(last.get("DPT", 0))
        oif = None
        for ev in events:
            if ev.packet.get("OUT"):
                oif = ev.packet["OUT"]
        final["oif"] = oif
        final["delivered_local"] = self._delivered_local(events)
        return final

    def _terminal_verdict(self, ev: KEvent) -> str:
        """The verdict of a group's last event; on legacy inferred from the dump (the log has none)."""
        if ev.verdict:
            return ev.verdict
        if ev.kind == "policy":
            return self._policies.get((ev.table, ev.chain), "")
        tm = re.search(r"\s-j (\S+)", ev.text)
        target = tm.group(1) if tm else ""
        if target in ("DNAT", "SNAT", "MASQUERADE", "REDIRECT", "NETMAP"):
            return "ACCEPT"
        if target == "REJECT":
            return "DROP"
        return target

    def _delivered_local(self, events: list[KEvent]) -> bool:
        last_of_group: dict[int, KEvent] = {}
        for ev in events:
            if ev.hook == "INPUT":
                last_of_group[ev.group] = ev
        if not last_of_group:
            return False
        return all(self._terminal_verdict(ev) == "ACCEPT" for ev in last_of_group.values())

    # ---------------------------------------------------------------- for tests

    def iptables_save(self) -> str:
        """The node's current IPv4 rules (the legacy TRACE helpers removed)."""
        tool = "iptables-nft-save" if self.backend == "nft" else "iptables-legacy-save"
        text = _run(_ns_argv(self.node, [tool])).stdout
        if self.backend == "legacy":
            lines, table = [], ""
            dropped: set[str] = set()
            for line in text.splitlines():
                if line.startswith("*"):
                    table = line[1:]
                if table == "raw" and line in ("-A PREROUTING -j TRACE", "-A OUTPUT -j TRACE") and line not in dropped:
                    dropped.add(line)
                    continue
                lines.append(line)
            text = "\n".join(lines) + "\n"
        return text

    def run(self, argv: list[str], input: str | None = None, check: bool = True) -> str:
        """Run a command inside the node namespace, return stdout."""
        return _run(_ns_argv(self.node, argv), input=input, check=check).stdout
