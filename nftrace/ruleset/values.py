"""Value parsers and printers shared by the extension modules.

They follow what iptables' own userspace (libxtables) accepts and what
iptables-save prints, because a rule that iptables would refuse must be
refused here too, and `canonical_text` must print what iptables-save prints:

- numbers are read like C's strtoul with base 0 (`0x1f`, `017` octal, `42`);
- IPv4 addresses are read like `xtables_numeric_to_ipaddr` (1 to 4 dotted
  parts, missing parts are 0: `10.1` is 10.1.0.0, `010.1.1.1` is 8.1.1.1),
  then like inet_aton (`0x01020304`); host names are never resolved;
- ports accept /etc/services names (`ssh`, `ftp-data`) as getservbyname does;
- strings are printed with `xtables_save_string` quoting.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from nftrace.ruleset.registry import ParseCtx

V4_FULL = 0xFFFFFFFF
V6_FULL = (1 << 128) - 1


def c_strtoul(text: str, base: int = 0) -> int | None:
    """The whole of `text` as C strtoul would read it (base 0: 0x hex, 0 octal); None if not a number.

    A leading '-' is refused (strtoul would wrap it; xtables_strtoui refuses it too).
    """
    s = text
    if base == 0 and len(s) < 20 and s.isdigit() and s.isascii() and (s[0] != "0" or len(s) == 1):
        return int(s)  # the common case: plain decimal
    if not s or not s.isascii() or s[0] in "+-" or s != s.strip():  # str.isdigit knows other scripts' digits
        return None
    try:
        if base == 0:
            if s[:2] in ("0x", "0X"):
                return int(s[2:], 16) if s[2:] and s[2:].isalnum() else None
            if len(s) > 1 and s[0] == "0":
                return int(s[1:], 8) if s[1:].isdigit() else None
            return int(s, 10) if s.isdigit() else None
        if base == 16 and s[:2] in ("0x", "0X"):
            s = s[2:]
        if not s.isalnum():
            return None
        return int(s, base)
    except ValueError:
        return None


def uint(ctx: ParseCtx, ext: str, opt: str, text: str, lo: int = 0, hi: int = V4_FULL, base: int = 0) -> int:
    """xtables_strtoui: an unsigned number in [lo, hi] or an error naming the option."""
    v = c_strtoul(text, base)
    if v is None:
        raise ctx.error(f"{ext}: --{opt}: {text!r} is not a valid number")
    if not lo <= v <= hi:
        raise ctx.error(f"{ext}: --{opt}: {text} is out of range {lo}..{hi}")
    return v


def uint_range(
    ctx: ParseCtx, ext: str, opt: str, text: str, hi: int = V4_FULL, lo: int = 0, base: int = 0
) -> tuple[int, int]:
    """`a`, `a:b`, `:b`, `a:`, `:` -> (a, b) with defaults 0 / hi; a <= b (xtables_parse_*_range)."""
    if ":" in text:
        a, _, b = text.partition(":")
        x = uint(ctx, ext, opt, a, lo, hi, base) if a else lo
        y = uint(ctx, ext, opt, b, lo, hi, base) if b else hi
    else:
        x = y = uint(ctx, ext, opt, text, lo, hi, base)
    if x > y:
        raise ctx.error(f"{ext}: --{opt}: invalid range {text!r} (start is greater than end)")
    return x, y


def range_text(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}:{hi}"


# ------------------------------------------------------------------ services

# The few services the iptables test vectors and common dumps use, for hosts
# without /etc/services (netbase).  getservbyname is consulted first.
_SERVICES = {
    "ftp-data": 20, "ftp": 21, "ssh": 22, "telnet": 23, "smtp": 25, "domain": 53, "bootps": 67,
    "bootpc": 68, "tftp": 69, "http": 80, "www": 80, "pop3": 110, "sunrpc": 111, "ntp": 123,
    "imap": 143, "imap2": 143, "snmp": 161, "ldap": 389, "https": 443, "submission": 587,
    "imaps": 993, "pop3s": 995, "mysql": 3306, "echo": 7, "discard": 9, "daytime": 13,
    "netbios-ns": 137, "netbios-dgm": 138, "netbios-ssn": 139, "microsoft-ds": 445, "syslog": 514,
    "rsync": 873, "openvpn": 1194, "domain-s": 853, "isakmp": 500, "ipsec-nat-t": 4500,
    "postgresql": 5432, "x11": 6000, "sip": 5060, "smtps": 465, "auth": 113, "ident": 113,
    "nntp": 119, "bgp": 179, "irc": 194, "ldaps": 636, "kerberos": 88, "rtsp": 554,
    "ms-sql-s": 1433, "squid": 3128, "http-alt": 8080, "webcache": 8080, "git": 9418,
}  # fmt: skip


def service_port(name: str, proto: str | None = None) -> int | None:
    """Port number of a service name, as getservbyname(name, proto) gives it; None when unknown."""
    if not name or name[0].isdigit():
        return None
    for p in (proto, "tcp", "udp") if proto in ("tcp", "udp") else ("tcp", "udp"):
        try:
            return socket.getservbyname(name, p)
        except (OSError, ValueError):  # ValueError: a NUL or an undecodable byte in the name
            continue
    return _SERVICES.get(name)


def port(ctx: ParseCtx, ext: str, opt: str, text: str, proto: str | None = None) -> int:
    """xtables_parse_port: a number 0..65535 or a service name."""
    v = c_strtoul(text, 10) if text.isdigit() else None
    if v is None:
        v = service_port(text, proto)
    if v is None or v > 0xFFFF:
        raise ctx.error(f"{ext}: --{opt}: invalid port/service {text!r}")
    return v


def port_range(ctx: ParseCtx, ext: str, opt: str, text: str, proto: str | None = None) -> tuple[int, int]:
    """`p`, `p:q`, `:q`, `p:` (tcp/udp/sctp/dccp --sport/--dport, conntrack ports)."""
    if ":" not in text:
        v = port(ctx, ext, opt, text, proto)
        return v, v
    a, _, b = text.partition(":")
    lo = port(ctx, ext, opt, a, proto) if a else 0
    hi = port(ctx, ext, opt, b, proto) if b else 0xFFFF
    if lo > hi:
        raise ctx.error(f"{ext}: --{opt}: invalid port range {text!r} (start is greater than end)")
    return lo, hi


# ------------------------------------------------------------------ addresses


def _inet_aton(text: str) -> int | None:
    """glibc inet_aton: 1 to 4 parts, each C-number; the last part fills the remaining bytes."""
    parts = text.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    vals = [c_strtoul(p) for p in parts]
    if any(v is None for v in vals):
        return None
    nums = [v for v in vals if v is not None]
    last_bits = 8 * (5 - len(nums))
    if any(v > 0xFF for v in nums[:-1]) or nums[-1] >= (1 << last_bits):
        return None
    out = 0
    for v in nums[:-1]:
        out = (out << 8) | v
    return (out << last_bits) | nums[-1]


_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_DOTTED_QUAD = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}\Z")


def parse_ipv4(text: str) -> int | None:
    """xtables_numeric_to_ipaddr then inet_aton (what getaddrinfo accepts without DNS)."""
    if _DOTTED_QUAD.match(text):
        return int.from_bytes(socket.inet_aton(text), "big")  # the common case: a.b.c.d, no leading zeros
    return _parse_ipv4_general(text)


def canonical_ipv4(text: str) -> int | None:
    """The address of `a.b.c.d` written exactly as inet_ntoa writes it (no leading zeros, no other
    form), else None: the quick parsers' test for what iptables-save prints."""
    try:
        packed = socket.inet_aton(text)
    except (OSError, ValueError):  # not an address; non-ASCII text, a NUL
        return None
    if socket.inet_ntoa(packed) != text:
        return None
    return int.from_bytes(packed, "big")


def _parse_ipv4_general(text: str) -> int | None:
    parts = text.split(".")
    if 1 <= len(parts) <= 4 and all(parts):
        out = 0
        ok = True
        for p in parts:
            v = c_strtoul(p)
            if v is None or v > 0xFF:
                ok = False
                break
            out = (out << 8) | v
        if ok:
            return out << (8 * (4 - len(parts)))
    return _inet_aton(text)


def parse_ipv6(text: str) -> int | None:
    if ":" not in text or "%" in text:
        return None
    try:
        return int(ipaddress.IPv6Address(text))
    except ValueError:
        return None


def parse_host(text: str, family: str) -> int | None:
    return parse_ipv4(text) if family == "ipv4" else parse_ipv6(text)


def looks_like_hostname(text: str) -> bool:
    return (
        bool(text)
        and any(c.isalpha() for c in text)
        and ":" not in text
        and all(c.isalnum() or c in "-._" for c in text)
    )


def host_error(ctx: ParseCtx, what: str, text: str, family: str) -> Exception:
    if looks_like_hostname(text) and family == "ipv4" and parse_ipv6(text) is None:
        return ctx.error(
            f"{what}: {text!r} is a host name; nftrace does not resolve names (iptables would, "
            "once, when loading the rule): write the address"
        )
    other = "ipv6" if family == "ipv4" else "ipv4"
    if parse_host(text, other) is not None:
        return ctx.error(f"{what}: {text!r} is an {other} address but these are {family} rules")
    return ctx.error(f"{what}: {text!r} is not an address ({family} expected)")


def parse_addr_mask(text: str, family: str, ctx: ParseCtx, what: str) -> tuple[int, int]:
    """`addr`, `addr/len`, `addr/mask` -> (network, mask) as iptables stores them (addr & mask)."""
    bits = 32 if family == "ipv4" else 128
    full = (1 << bits) - 1
    addr, slash, mtext = text.partition("/")
    a = parse_host(addr, family)
    if a is None:
        raise host_error(ctx, what, addr if slash else text, family)
    if not slash:
        return a, full
    if "/" in mtext:
        raise ctx.error(f"{what}: {text!r} is not a valid {family} address/mask")
    m: int | None
    if family == "ipv4" and "." in mtext or family == "ipv6" and ":" in mtext:
        m = parse_host(mtext, family)
        if m is None:
            raise ctx.error(f"{what}: invalid mask {mtext!r}")
    else:
        n = c_strtoul(mtext)
        if n is None or n > bits:
            raise ctx.error(f"{what}: invalid mask {mtext!r}")
        m = (full << (bits - n)) & full
    return a & m, m


def prefix_len(mask: int, family: str) -> int | None:
    """The prefix length of a contiguous mask, None when the mask is not contiguous."""
    bits = 32 if family == "ipv4" else 128
    full = (1 << bits) - 1
    n = bin(mask).count("1")
    return n if mask == (full << (bits - n)) & full else None


def addr_text(a: int, family: str) -> str:
    """inet_ntop: IPv4 dotted quad; IPv6 compressed, with an embedded IPv4 address written dotted
    (::ffff:1.2.3.4 and ::1.2.3.4, as glibc prints them)."""
    if family == "ipv4":
        return socket.inet_ntoa(a.to_bytes(4, "big"))
    hi96 = a >> 32
    low = a & 0xFFFFFFFF
    if (hi96 == 0xFFFF or (hi96 == 0 and low > 0xFFFF)) and a >> 48 == 0:
        return ("::ffff:" if hi96 else "::") + str(ipaddress.IPv4Address(low))
    return str(ipaddress.IPv6Address(a))


def net_text(net: int, mask: int, family: str) -> str:
    """iptables-save's form: `a.b.c.d/len`, or `a.b.c.d/m.m.m.m` for non-contiguous masks."""
    n = prefix_len(mask, family)
    if n is not None:
        return f"{addr_text(net, family)}/{n}"
    return f"{addr_text(net, family)}/{addr_text(mask, family)}"


# ------------------------------------------------------------------ strings


_BARE: Final = re.compile(r"[_0-9a-zA-Z-]+\Z")


def save_string(value: str) -> str:
    """xtables_save_string: bare when made only of [A-Za-z0-9_-], else quoted with \\ before " ' \\."""
    if _BARE.match(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("'", "\\'") + '"'


def word(value: str) -> str:
    """A name iptables-save prints bare (%s): bare, unless it could not be read back that way."""
    if value and not any(c in value for c in ' \t"\\'):
        return value
    return quote_always(value)


def quote_always(value: str) -> str:
    """Quoted as iptables-save prints --log-prefix, --string: always in quotes, \\ before " and \\."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def hex_mark(value: int, mask: int | None = None, full: int = V4_FULL) -> str:
    """`0x1` or `0x1/0xff` (mask omitted when it is `full`)."""
    if mask is None or mask == full:
        return f"{value:#x}"
    return f"{value:#x}/{mask:#x}"
