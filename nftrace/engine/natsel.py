"""Which address of a DNAT/SNAT address range the kernel binds a new connection to.

The choice is no coin toss: net/netfilter/nf_nat_core.c get_unique_tuple() (kernel 6.x) decides it
from the connection's tuple alone, and this module repeats that computation.

1. SNAT only, and only without --random/--random-fully (NF_NAT_RANGE_PROTO_RANDOM_ALL): when the
   original source address is inside the range (and, with a port range, the source port is inside
   it too) and that tuple is not taken by another connection, the source is left as it is.
   Otherwise an existing connection from the same source address, port and protocol that was
   already mapped into the range (find_appropriate_src) lends its mapping: state nftrace cannot see.
2. find_best_ips_proto(): with one address (min == max) that address.  Otherwise

       j = jhash2(tuple.src.u3 as 4 u32 words, 4,
                  0 with --persistent, else tuple.dst.u3.all[max] ^ zone id)

   where ``max`` is the last 32-bit word of the address (0 for IPv4, 3 for IPv6) and the words are the
   address bytes as the CPU loads them (network byte order reinterpreted: little-endian on x86 and
   arm64); the IPv4 tuple's words 1-3 are zero.  Then for each word i = 0..max, in host order:

       while the words chosen so far equal the range's maximum: word = min[i] + reciprocal_scale(j, max[i] - min[i] + 1)
       after the first word below the maximum:                   word = 0 + reciprocal_scale(j, 0xffffffff)
       without --persistent: j ^= tuple.dst.u3.all[i]

   reciprocal_scale(v, n) = (v * n) >> 32 (32-bit arithmetic throughout, as the kernel's u32s wrap).
   For DNAT the word being chosen is written into tuple.dst.u3 itself, so the ``j ^=`` step reads the
   word just chosen, not the original destination's (IPv6 only: IPv4 has one word; measured on 6.18:
   reading the original words, 32 of 32 IPv6 DNAT flows without --persistent disagreed).
   Past a word below the maximum the remaining words are free: an IPv6 range across a 32-bit word
   boundary can yield an address outside the range, and the kernel binds to it (seen).

The tuple is the connection's original-direction tuple with the NAT done before: for DNAT (PREROUTING,
OUTPUT) the packet's addresses as they arrived, for SNAT (POSTROUTING, INPUT) the source as it
arrived and the destination after any DNAT.  --persistent drops the destination (and the zone)
from the hash, so a client maps to the same address whatever it talks to; it keeps no state.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

_M32 = 0xFFFFFFFF
JHASH_INITVAL = 0xDEADBEEF
# How the kernel's CPU loads a big-endian address word into a u32: the hash depends on it.
# Linux hosts running netfilter are little-endian in practice (x86-64, arm64, riscv64, ppc64le).
HOST_BYTEORDER: Literal["little", "big"] = "little"


def _rol32(x: int, r: int) -> int:
    return ((x << r) | (x >> (32 - r))) & _M32


def _mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    a = (a - c) & _M32
    a ^= _rol32(c, 4)
    c = (c + b) & _M32
    b = (b - a) & _M32
    b ^= _rol32(a, 6)
    a = (a + c) & _M32
    c = (c - b) & _M32
    c ^= _rol32(b, 8)
    b = (b + a) & _M32
    a = (a - c) & _M32
    a ^= _rol32(c, 16)
    c = (c + b) & _M32
    b = (b - a) & _M32
    b ^= _rol32(a, 19)
    a = (a + c) & _M32
    c = (c - b) & _M32
    c ^= _rol32(b, 4)
    b = (b + a) & _M32
    return a, b, c


def _final(a: int, b: int, c: int) -> int:
    c ^= b
    c = (c - _rol32(b, 14)) & _M32
    a ^= c
    a = (a - _rol32(c, 11)) & _M32
    b ^= a
    b = (b - _rol32(a, 25)) & _M32
    c ^= b
    c = (c - _rol32(b, 16)) & _M32
    a ^= c
    a = (a - _rol32(c, 4)) & _M32
    b ^= a
    b = (b - _rol32(a, 14)) & _M32
    c ^= b
    c = (c - _rol32(b, 24)) & _M32
    return c


def jhash2(key: Sequence[int], initval: int) -> int:
    """The kernel's jhash2() (include/linux/jhash.h: Bob Jenkins' lookup3 over u32 words)."""
    n = len(key)
    a = b = c = (JHASH_INITVAL + (n << 2) + initval) & _M32
    k = 0
    while n > 3:
        a = (a + key[k]) & _M32
        b = (b + key[k + 1]) & _M32
        c = (c + key[k + 2]) & _M32
        a, b, c = _mix(a, b, c)
        n -= 3
        k += 3
    if n == 0:
        return c
    if n == 3:
        c = (c + key[k + 2]) & _M32
    if n >= 2:
        b = (b + key[k + 1]) & _M32
    a = (a + key[k]) & _M32
    return _final(a, b, c)


def reciprocal_scale(val: int, ep_ro: int) -> int:
    """The kernel's reciprocal_scale(): val scaled into [0, ep_ro) as ((u64)val * ep_ro) >> 32 (not a modulo)."""
    return ((val & _M32) * (ep_ro & _M32)) >> 32


def _raw_words(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[int]:
    """union nf_inet_addr.all[0..3] as the CPU reads them (IPv4: the address in word 0, the rest 0)."""
    data = addr.packed.ljust(16, b"\0")
    return [int.from_bytes(data[i : i + 4], HOST_BYTEORDER) for i in range(0, 16, 4)]


def _host_words(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[int]:
    """ntohl() of each word: the address's 32-bit groups as numbers."""
    data = addr.packed.ljust(16, b"\0")
    return [int.from_bytes(data[i : i + 4], "big") for i in range(0, 16, 4)]


def _from_host_words(words: list[int], version: int) -> str:
    data = b"".join(w.to_bytes(4, "big") for w in words)
    return str(ipaddress.IPv4Address(data[:4]) if version == 4 else ipaddress.IPv6Address(data))


def best_ip(lo: str, hi: str, src: str, dst: str, manip: str, persistent: bool = False, zone: int = 0) -> str:
    """find_best_ips_proto(): the address of [lo, hi] for the tuple (src, dst) and manip 'src' or 'dst'.
    src/dst are the tuple's addresses before this manip (see the module docstring)."""
    a_lo, a_hi = ipaddress.ip_address(lo), ipaddress.ip_address(hi)
    if a_lo == a_hi:
        return str(a_lo)
    t_src, t_dst = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    last = 0 if a_lo.version == 4 else 3
    dst_raw = _raw_words(t_dst)
    j = jhash2(_raw_words(t_src), 0 if persistent else (dst_raw[last] ^ zone) & _M32)
    mins, maxs = _host_words(a_lo), _host_words(a_hi)
    out = [0, 0, 0, 0]
    full_range = False
    for i in range(last + 1):
        if not full_range:
            minip = mins[i]
            dist = (maxs[i] - minip + 1) & _M32
        else:
            minip, dist = 0, _M32
        out[i] = (minip + reciprocal_scale(j, dist)) & _M32
        if out[i] != maxs[i]:
            full_range = True
        if manip == "dst":  # var_ipp is tuple.dst.u3: the word just chosen replaced the original
            dst_raw[i] = int.from_bytes(out[i].to_bytes(4, "big"), HOST_BYTEORDER)
        if not persistent:
            j ^= dst_raw[i]
    return _from_host_words(out, a_lo.version)


@dataclass(frozen=True, slots=True)
class RangeChoice:
    addr: str
    how: str  # "hash" (find_best_ips_proto), "kept" (SNAT: the source already in the range), "single"


def choose(
    lo: str,
    hi: str,
    *,
    manip: str,
    src: str,
    dst: str,
    sport: int | None = None,
    port_lo: int | None = None,
    port_hi: int | None = None,
    random: bool = False,
    persistent: bool = False,
    zone: int = 0,
) -> RangeChoice:
    """The address get_unique_tuple() binds a new connection to, for a range lo-hi (no other
    connection holding the tuples involved).  sport: the packet's source port (None without ports);
    port_lo/port_hi: the NAT's port range (None without one); random: --random or --random-fully."""
    a_lo, a_hi = ipaddress.ip_address(lo), ipaddress.ip_address(hi)
    if manip == "src" and not random:
        cur = ipaddress.ip_address(src)
        port_ok = port_lo is None or sport is None or port_lo <= sport <= (port_hi if port_hi is not None else port_lo)
        if a_lo <= cur <= a_hi and port_ok:  # type: ignore[operator]
            return RangeChoice(str(cur), "kept")
    if a_lo == a_hi:
        return RangeChoice(str(a_lo), "single")
    return RangeChoice(best_ip(lo, hi, src, dst, manip, persistent, zone), "hash")


# `-j CT --zone N` as iptables-save prints it (decimal; --zone 0 is not printed); `mark` takes the id from
# the packet's mark when the template is attached.
_CT_ZONE = re.compile(r"\s--zone(?:-orig|-reply)?\s+(\S+)")


def ct_zone(steps: Sequence[dict[str, Any]]) -> tuple[int, str | None]:
    """The conntrack zone id of the connection, from the CT rules the packet met: the first CT (or NOTRACK)
    target in raw attaches its template and any later one is ignored (xt_CT.c: skb already has a
    conntrack).  Returns (zone id, a problem when it cannot be known)."""
    for s in steps:
        if s.get("kind") != "rule" or not s.get("matched") or s.get("table") != "raw":
            continue
        if s.get("target") not in ("CT", "NOTRACK"):
            continue
        m = _CT_ZONE.search(str(s.get("text", "")))
        if m is None:
            return 0, None
        if m.group(1).isdigit():
            return int(m.group(1)) & 0xFFFF, None
        return 0, f"the conntrack zone comes from the packet mark ({m.group(0).strip()}): zone 0 assumed"
    return 0, None


def range_note(choice: RangeChoice, lo: str, hi: str, manip: str, zone: int, persistent: bool) -> str:
    """What the nat step says about how the address was chosen."""
    what = "source" if manip == "src" else "destination"
    if choice.how == "kept":
        return f"the source {choice.addr} is already in {lo}-{hi}: kept (SNAT without --random)"
    by = "source address" if persistent else f"source and destination addresses{f', zone {zone}' if zone else ''}"
    return f"{what} {choice.addr} of {lo}-{hi}: the kernel's jhash2 of the {by}"
