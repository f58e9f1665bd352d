"""Read the legacy (x_tables) iptables rules through python-iptables (`iptc`, the `legacy` extra),
for hosts that have no iptables-legacy-save.

`legacy_save_text(family, netns)` prints what `iptables-legacy-save` / `ip6tables-legacy-save` would
print, built from libiptc's view of each table: the built-in matches in iptables-save's order
(`-s -d -i -o -p -f`), then every match as `-m NAME` followed by what the extension's own `save`
function prints, then `-j/-g TARGET` and the target's `save` output.  `read_legacy(family, netns)`
parses that text with the ordinary parser, so both readers give the same model.

Reading a table with libiptc creates it when it does not exist (the kernel instantiates x_tables
tables on first use), so only the tables `/proc/net/ip_tables_names` (ip6_tables_names) of that
namespace already lists are read; with none listed nothing is touched.

python-iptables is imported only here, inside the functions: a missing or unusable python-iptables
is an InputError naming the reason.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import sys
import tempfile
from typing import TYPE_CHECKING, Any

from nftrace.errors import InputError
from nftrace.host.capture import check_netns, read_proc

if TYPE_CHECKING:
    from nftrace.host.model import Family
    from nftrace.ruleset.model import Ruleset

__all__ = ["legacy_save_text", "legacy_tables", "load_iptc", "read_legacy"]

_STANDARD = frozenset({"ACCEPT", "DROP", "RETURN", "QUEUE"})
# libxtables' xtables_chain_protos, used when /etc/protocols has no name for a number
_CHAIN_PROTOS = {1: "icmp", 6: "tcp", 17: "udp", 58: "ipv6-icmp", 132: "sctp", 136: "udplite", 33: "dccp", 0: "all"}
_IPT_INV_VIA_IN = 0x01
_IPT_INV_VIA_OUT = 0x02
_IPT_INV_SRCIP = 0x08
_IPT_INV_DSTIP = 0x10
_IPT_INV_FRAG = 0x20
_IPT_INV_PROTO = 0x40
_IPT_F_FRAG = 0x01
_IPT_F_GOTO = 0x02
_IP6T_F_PROTO = 0x01
_IP6T_F_GOTO = 0x04


def load_iptc() -> Any:
    """The iptc module, or an InputError saying why python-iptables cannot be used."""
    try:
        import iptc  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError as e:
        raise InputError(
            f"python-iptables is not installed ({e}): pip install 'nftrace[legacy]', or use iptables-legacy-save"
        ) from None
    except Exception as e:  # noqa: BLE001 - iptc raises its own errors when libxtables/libiptc are missing
        raise InputError(f"python-iptables cannot be used here: {type(e).__name__}: {e}") from None
    return iptc


def legacy_tables(family: Family = "ipv4", netns: str | None = None) -> list[str]:
    """The legacy tables the kernel has (reading this file creates nothing)."""
    name = "/proc/net/ip_tables_names" if family == "ipv4" else "/proc/net/ip6_tables_names"
    text = read_proc(netns, [name]).get(name) or ""
    return [t for t in text.split() if t]


def _protocols() -> dict[int, str]:
    """getprotobynumber(): the first name /etc/protocols gives each number."""
    out: dict[int, str] = {}
    try:
        with open("/etc/protocols", encoding="utf-8", errors="replace") as f:
            for line in f:
                words = line.split("#", 1)[0].split()
                if len(words) >= 2 and words[1].isdigit():
                    out.setdefault(int(words[1]), words[0])
    except OSError:
        pass
    return out


def _saved(obj: Any, ip: Any) -> str:
    """What the extension's save() prints for this match/target (all of it: python-iptables' own
    helper reads at most 1024 bytes)."""
    module = getattr(obj, "_module", None)
    if module is None or not module.save:
        return ""
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile() as tmp:
        try:
            os.dup2(tmp.fileno(), 1)
            obj._xt.save(module, ip, obj._ptr)
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        tmp.seek(0)
        return tmp.read().decode("utf-8", "surrogateescape").rstrip("\n")


def _alias(obj: Any, fallback: str) -> str:
    """The name iptables-save prints for a match/target (its alias(), e.g. `state` for conntrack rev. 0)."""
    module = getattr(obj, "_module", None)
    alias = getattr(module, "alias", None) if module is not None else None
    if alias:
        with contextlib.suppress(Exception):
            name = alias(obj._ptr)
            if name:
                return str(name.decode() if isinstance(name, bytes) else name)
    return fallback


def _prefix(text: str, family: Family) -> str:
    """'10.0.0.0/255.0.0.0' -> '10.0.0.0/8'; a mask that is not a prefix stays in address form."""
    addr, _, mask = text.partition("/")
    bits = 32 if family == "ipv4" else 128
    if not mask:
        return f"{addr}/{bits}"
    if mask.isdigit():
        return f"{ipaddress.ip_address(addr)}/{int(mask)}"
    m = int(ipaddress.ip_address(mask))
    plen = bin(m).count("1")
    if m == ((1 << bits) - 1) ^ ((1 << (bits - plen)) - 1):
        return f"{ipaddress.ip_address(addr)}/{plen}"
    return f"{ipaddress.ip_address(addr)}/{ipaddress.ip_address(mask)}"


def _addr_part(letter: str, getter: Any, invert: bool, family: Family) -> str:
    text = getter()
    if text is None:
        return ""
    text = str(text).lstrip("!")
    mask = text.partition("/")[2]
    if mask in ("0", "0.0.0.0", "::"):
        return ""
    return f"{' !' if invert else ''} -{letter} {_prefix(text, family)}"


def _iface_part(letter: str, iface: bytes, mask: Any, invert: bool) -> str:
    """As iptables-save's print_iface(): the name's bytes under the mask, then `+` when the mask ends
    before the name's terminating NUL (a prefix match)."""
    name = bytes(iface).ljust(16, b"\0")
    m = bytes(mask).ljust(16, b"\0")
    if m[0] == 0:
        return ""
    out = bytearray()
    for i in range(16):
        if m[i]:
            if name[i]:
                out.append(name[i])
        else:
            if name[i - 1]:
                out += b"+"
            break
    return f"{' !' if invert else ''} -{letter} {out.decode('utf-8', 'surrogateescape')}"


def _raw(field: Any) -> bytes:
    """The bytes of a ctypes char/ubyte array field (c_char arrays read back as NUL-cut bytes)."""
    import ctypes

    try:
        return bytes(ctypes.string_at(ctypes.addressof(field), ctypes.sizeof(field)))
    except TypeError:
        return bytes(field)


def _rule_text(rule: Any, chain: str, family: Family, protos: dict[int, str], chains: set[str]) -> str:
    e = rule.entry
    ip = e.ipv6 if family == "ipv6" else e.ip
    inv = int(ip.invflags)
    parts = [f"-A {chain}"]
    parts.append(_addr_part("s", rule.get_src, bool(inv & _IPT_INV_SRCIP), family))
    parts.append(_addr_part("d", rule.get_dst, bool(inv & _IPT_INV_DSTIP), family))
    parts.append(_iface_part("i", _raw(ip.iniface), _raw(ip.iniface_mask), bool(inv & _IPT_INV_VIA_IN)))
    parts.append(_iface_part("o", _raw(ip.outiface), _raw(ip.outiface_mask), bool(inv & _IPT_INV_VIA_OUT)))
    proto = int(ip.proto)
    if proto and (family == "ipv4" or int(ip.flags) & _IP6T_F_PROTO or proto):
        name = protos.get(proto) or _CHAIN_PROTOS.get(proto) or str(proto)
        parts.append(f"{' !' if inv & _IPT_INV_PROTO else ''} -p {name}")
    if family == "ipv4" and int(ip.flags) & _IPT_F_FRAG:
        parts.append(f"{' !' if inv & _IPT_INV_FRAG else ''} -f")
    ip_ptr = rule.get_ip()
    for m in rule.matches:
        parts.append(f" -m {_alias(m, m.name)}")
        buf = _saved(m, ip_ptr)
        if buf:
            parts.append(buf if buf.startswith(" ") else " " + buf)
    target = rule.target
    tname = target.name if target is not None else ""
    goto = bool(int(ip.flags) & (_IP6T_F_GOTO if family == "ipv6" else _IPT_F_GOTO))
    if tname:
        if tname in _STANDARD or tname in chains:
            parts.append(f" -{'g' if goto else 'j'} {tname}")
        else:
            parts.append(f" -j {_alias(target, tname)}")
            buf = _saved(target, ip_ptr)
            if buf:
                parts.append(buf if buf.startswith(" ") else " " + buf)
    text = "".join(parts)
    return text


def _table_text(iptc: Any, name: str, family: Family, protos: dict[int, str]) -> str:
    table = (iptc.Table6 if family == "ipv6" else iptc.Table)(name, autocommit=False)
    table.refresh()
    lines = [f"*{name}"]
    chains = list(table.chains)
    names = {c.name for c in chains}
    rules: list[str] = []
    for chain in chains:
        if chain.is_builtin():
            policy = chain.get_policy()
            pkts, nbytes = chain.get_counters() if hasattr(chain, "get_counters") else (0, 0)
            lines.append(f":{chain.name} {policy.name if policy else 'ACCEPT'} [{pkts}:{nbytes}]")
        else:
            lines.append(f":{chain.name} - [0:0]")
        for rule in chain.rules:
            rules.append(_rule_text(rule, chain.name, family, protos, names))
    lines += rules
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def _read_here(family: Family, tables: list[str]) -> str:
    """The save text of these tables of the current network namespace."""
    iptc = load_iptc()
    protos = _protocols()
    # python-iptables asks, for every rule's target, whether it names a chain of *any* table, and
    # finds out which tables exist by opening each of filter/mangle/raw/nat/security -- which makes
    # the kernel create the missing ones.  Tell it which exist, so that it opens no other.
    cls = iptc.Table6 if family == "ipv6" else iptc.Table
    known = getattr(cls, "existing_table_names", None)
    if not isinstance(known, dict):
        raise InputError("this python-iptables has no Table.existing_table_names: it would create tables; not used")
    for name in [*getattr(cls, "ALL", []), *tables]:
        known[name] = name in tables
    out = [f"# Generated by nftrace (python-iptables {getattr(iptc, '__version__', '?')}, legacy tables)\n"]
    for name in tables:
        try:
            out.append(_table_text(iptc, name, family, protos))
        except Exception as e:  # noqa: BLE001 - iptc.IPTCError and ctypes errors
            raise InputError(f"python-iptables cannot read legacy table {name}: {type(e).__name__}: {e}") from None
    return "".join(out)


def legacy_save_text(family: Family = "ipv4", netns: str | None = None) -> str:
    """iptables-legacy-save's text for the legacy tables that exist ('' when there are none).

    The reading runs in a child process (in the namespace, through `ip netns exec`): python-iptables
    keeps per-process extension state that a second read in one process can trip over ("can't find
    target SNAT"), and it borrows file descriptor 1 to collect the extensions' save() output."""
    tables = legacy_tables(family, netns)
    if not tables:
        return ""
    load_iptc()
    import subprocess

    pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    argv = [sys.executable, "-m", "nftrace.host.legacy_reader", family, *tables]
    if netns is not None:
        check_netns(netns)
        argv = ["ip", "netns", "exec", netns, *argv]
    try:
        p = subprocess.run(argv, capture_output=True, text=True, errors="surrogateescape", env=env, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise InputError(f"cannot run the python-iptables reader: {e}") from None
    if p.returncode != 0:
        msg = " ".join(p.stderr.split()) or f"exit status {p.returncode}"
        raise InputError(msg.removeprefix("nftrace: "))
    return p.stdout


def read_legacy(family: Family = "ipv4", netns: str | None = None) -> Ruleset:
    """The legacy rules as the text parser's model (an empty ruleset when there are no legacy tables)."""
    from nftrace.ruleset.parser import parse_rules

    where = f"<python-iptables {family}{' netns ' + netns if netns else ''}>"
    return parse_rules(legacy_save_text(family, netns), where, family=family)


def _main(argv: list[str]) -> int:
    """`python -m nftrace.host.legacy_reader FAMILY TABLE...`: print the tables' save text."""
    family: Family = "ipv6" if argv[:1] == ["ipv6"] else "ipv4"
    try:
        text = _read_here(family, argv[1:])
    except InputError as e:
        sys.stderr.write(e.one_line() + "\n")
        return 2
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
