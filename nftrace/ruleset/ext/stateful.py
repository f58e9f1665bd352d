"""Matches that depend on state nftrace cannot see offline.

limit/hashlimit budgets, recent lists, connection counts, payload contents,
the clock, quotas and byte counters: each is parsed and validated as iptables
does (so the ruleset loads, and prints back as iptables-save prints it) and
evaluated as `unknown` with the reason, except where the outcome is certain
anyway (`recent --set` always matches).
"""

from __future__ import annotations

import calendar
import re
import time as _time
from typing import TYPE_CHECKING

from nftrace.ruleset.model import MatchOutcome, MatchSpec, Option, Unknown
from nftrace.ruleset.registry import FI, VI, F, Opts, ParseCtx, V, match
from nftrace.ruleset.values import addr_text, c_strtoul, parse_host, quote_always, uint, word

if TYPE_CHECKING:
    from nftrace.engine.env import Env
    from nftrace.engine.packet import Packet


def section_text(name: str, items: list[Option], kind: str = "-m") -> str:
    """Options as written (used for extensions without a canonical printer)."""
    from nftrace.ruleset.values import save_string

    parts = [f"{kind} {name}"]
    for i in items:
        vals = " ".join(save_string(v) for v in i.values)
        parts.append(("! " if i.negated else "") + f"--{i.name}" + (f" {vals}" if vals else ""))
    return " ".join(parts)


class StatefulMatch(MatchSpec):
    exactness = "unknown"
    __slots__ = ("text", "reason", "certain")

    def __init__(self, text: str, reason: str, certain: bool | None = None) -> None:
        self.text = text
        self.reason = reason
        self.certain = certain

    def evaluate(self, pkt: Packet, env: Env) -> MatchOutcome:
        if self.certain is not None:
            return self.certain
        return Unknown(f"{self.text}: {self.reason}")


_REASONS = {
    "limit": "depends on the rate-limit budget left when the packet arrives",
    "hashlimit": "depends on the per-flow rate-limit budget left when the packet arrives",
    "recent": "depends on the addresses the recent list holds at that moment",
    "connlimit": "depends on how many connections already exist",
    "string": "depends on the packet's payload",
    "u32": "depends on raw packet bytes nftrace does not model",
    "time": "depends on the time the packet arrives",
    "quota": "depends on how much of the quota is used",
    "connbytes": "depends on the connection's byte/packet counters",
}


def _bang(neg: bool) -> str:
    return "! " if neg else ""


# ------------------------------------------------------------------ limit / hashlimit rates

_UNITS = (("second", 1), ("minute", 60), ("hour", 3600), ("day", 86400))
_PRINT_UNITS = (("day", 86400), ("hour", 3600), ("min", 60), ("sec", 1))


def _rate(ctx: ParseCtx, ext: str, opt: str, text: str, scale: int) -> tuple[int, int]:
    """`N[/second|minute|hour|day]` (any prefix of the unit) -> (period in 1/scale seconds, unit seconds)."""
    num, slash, unit = text.partition("/")
    mult = 1
    if slash:
        u = unit.lower()
        for name, m in _UNITS:
            if u and name.startswith(u):
                mult = m
                break
        else:
            raise ctx.error(f"{ext}: --{opt}: bad rate {text!r} (N/second, N/minute, N/hour or N/day)")
    digits = re.match(r"\d+", num)
    r = int(digits.group()) if digits else 0
    if r == 0:
        raise ctx.error(f"{ext}: --{opt}: bad rate {text!r}")
    if r // mult > scale:
        raise ctx.error(f"{ext}: --{opt}: rate too fast {text!r}")
    period = scale * mult // r
    if period == 0:
        raise ctx.error(f"{ext}: --{opt}: rate too fast {text!r}")
    return period, mult


def rate_text(period: int, scale: int) -> str:
    """libxt_limit/libxt_hashlimit print_rate: the largest unit that shows the rate without loss."""
    rates = [(n, scale * s) for n, s in _PRINT_UNITS]
    i = 1
    while i < len(rates):
        mult = rates[i][1]
        if period > mult or mult // period < mult % period:
            break
        i += 1
    name, mult = rates[i - 1]
    return f"{mult // period}/{name}"


_LIMIT_SCALE = 10000


@match("limit", options={"limit": V, "limit-burst": V}, exactness="unknown", why=_REASONS["limit"])
def parse_limit(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    o = Opts(items, ctx, "limit")
    rate = o.value("limit")
    period = _rate(ctx, "limit", "limit", rate, _LIMIT_SCALE)[0] if rate is not None else _LIMIT_SCALE * 3600 // 3
    b = o.value("limit-burst")
    burst = uint(ctx, "limit", "limit-burst", b, 1, 10000) if b is not None else 5
    text = f"-m limit --limit {rate_text(period, _LIMIT_SCALE)}" + (f" --limit-burst {burst}" if burst != 5 else "")
    return StatefulMatch(text, _REASONS["limit"])


_HL_SCALE = 1000000
_BYTE_UNITS = (("m", 1 << 20), ("k", 1 << 10), ("", 1))


def _bytes(ctx: ParseCtx, opt: str, text: str, suffix: str) -> int | None:
    m = (
        re.fullmatch(r"(\d+)([kKmM]?)[bB]" + re.escape(suffix), text)
        if suffix
        else re.fullmatch(r"(\d+)([kKmM]?)[bB]?", text)
    )
    if not m:
        return None
    n = int(m.group(1))
    factor = {"": 1, "k": 1 << 10, "m": 1 << 20}[m.group(2).lower()]
    if n == 0:
        raise ctx.error(f"hashlimit: --{opt}: bad value {text!r}")
    return n * factor


_U32 = 0xFFFFFFFF


def _bytes_to_cost(n: int) -> int:
    return _U32 // ((n >> 4) + 1)


def _cost_to_bytes(cost: int) -> int:
    r = _U32 // cost if cost else _U32
    return (r - 1) << 4


def _rate_bytes_text(cost: int) -> str:
    """libxt_hashlimit print_bytes: bytes/s as the kernel's cost gives them back, in the largest exact unit."""
    r = _cost_to_bytes(cost)
    for name, f in _BYTE_UNITS[:-1]:
        if r >= f and _bytes_to_cost(r & ~(f - 1)) == cost:
            return f"{r // f}{name}b/s"
    return f"{r}b/s"


def _burst_bytes_text(n: int) -> str:
    for name, f in _BYTE_UNITS:
        if n >= f:
            return f"{n // f}{name}b"
    return f"{n}b"


_HL_MODES = ("srcip", "srcport", "dstip", "dstport")


@match(
    "hashlimit",
    options={
        "hashlimit-upto": VI, "hashlimit-above": VI, "hashlimit": V, "hashlimit-burst": V, "hashlimit-mode": V,
        "hashlimit-srcmask": V, "hashlimit-dstmask": V, "hashlimit-name": V, "hashlimit-htable-size": V,
        "hashlimit-htable-max": V, "hashlimit-htable-expire": V, "hashlimit-htable-gcinterval": V,
        "hashlimit-rate-match": F, "hashlimit-rate-interval": V,
    },
    exactness="unknown",
    why=_REASONS["hashlimit"],
)  # fmt: skip
def parse_hashlimit(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    o = Opts(items, ctx, "hashlimit")
    which = [n for n in ("hashlimit-upto", "hashlimit-above", "hashlimit") if o.has(n)]
    if not which:
        raise ctx.error('hashlimit: option "--hashlimit-upto" or "--hashlimit-above" must be specified')
    if len(which) > 1:
        raise ctx.error(f"hashlimit: --{which[0]} and --{which[1]} cannot be used together")
    ropt = o.get(which[0])
    assert ropt is not None
    above = (which[0] == "hashlimit-above") != ropt.negated
    name = o.value("hashlimit-name")
    if name is None:
        raise ctx.error('hashlimit: option "--hashlimit-name" must be specified')
    if len(name) > 15:
        raise ctx.error("hashlimit: --hashlimit-name is longer than 15 characters")
    parts = ["-m hashlimit", "--hashlimit-above" if above else "--hashlimit-upto"]
    nbytes = _bytes(ctx, which[0], ropt.values[0], "/s")
    burst_o = o.value("hashlimit-burst")
    if nbytes is not None:
        quantum = 1000
        if nbytes > _U32:
            raise ctx.error(f"hashlimit: rate value too large {ropt.values[0]!r}")
        cost = _bytes_to_cost(nbytes)
        rate = _cost_to_bytes(cost)
        parts.append(_rate_bytes_text(cost))
        if burst_o is not None:
            bb = _bytes(ctx, "hashlimit-burst", burst_o, "")
            if bb is None:
                raise ctx.error(f"hashlimit: --hashlimit-burst: bad value {burst_o!r}")
            if bb < rate:
                raise ctx.error(f"hashlimit: burst cannot be smaller than {rate}b")
            burst = -(-bb // rate)
            parts.append(f"--hashlimit-burst {_burst_bytes_text(rate * burst)}")
    else:
        period, mult = _rate(ctx, "hashlimit", which[0], ropt.values[0], _HL_SCALE)
        parts.append(rate_text(period, _HL_SCALE))
        quantum = mult * 1000
        burst = uint(ctx, "hashlimit", "hashlimit-burst", burst_o, 1) if burst_o is not None else 5
        parts.append(f"--hashlimit-burst {burst}")
    mode = o.value("hashlimit-mode")
    if mode is not None:
        got = set()
        for m in mode.split(","):
            if m not in _HL_MODES:
                raise ctx.error(f"hashlimit: bad --hashlimit-mode {m!r}")
            got.add(m)
        parts.append("--hashlimit-mode " + ",".join(m for m in _HL_MODES if m in got))
    parts.append(f"--hashlimit-name {word(name)}")
    nums = {}
    for k in ("size", "max", "gcinterval", "expire"):
        v = o.value(f"hashlimit-htable-{k}")
        nums[k] = uint(ctx, "hashlimit", f"hashlimit-htable-{k}", v) if v is not None else None
    if nums["size"]:
        parts.append(f"--hashlimit-htable-size {nums['size']}")
    if nums["max"]:
        parts.append(f"--hashlimit-htable-max {nums['max']}")
    if nums["gcinterval"] is not None and nums["gcinterval"] != 1000:
        parts.append(f"--hashlimit-htable-gcinterval {nums['gcinterval']}")
    if nums["expire"] is not None and nums["expire"] != quantum:
        parts.append(f"--hashlimit-htable-expire {nums['expire']}")
    full = 32 if ctx.family == "ipv4" else 128
    for k in ("srcmask", "dstmask"):
        v = o.value(f"hashlimit-{k}")
        if v is not None:
            n = uint(ctx, "hashlimit", f"hashlimit-{k}", v, 0, full)
            if n != full:
                parts.append(f"--hashlimit-{k} {n}")
    if o.has("hashlimit-rate-match"):
        parts.append("--hashlimit-rate-match")
        iv = o.value("hashlimit-rate-interval")
        if iv is not None:
            n = uint(ctx, "hashlimit", "hashlimit-rate-interval", iv, 1)
            if n != 1:
                parts.append(f"--hashlimit-rate-interval {n}")
    elif o.has("hashlimit-rate-interval"):
        raise ctx.error("hashlimit: --hashlimit-rate-interval goes with --hashlimit-rate-match")
    return StatefulMatch(" ".join(parts), _REASONS["hashlimit"])


# ------------------------------------------------------------------ recent, connlimit


@match(
    "recent",
    options={"set": FI, "rcheck": FI, "update": FI, "remove": FI, "seconds": V, "reap": F, "hitcount": V,
             "rttl": F, "name": V, "rsource": F, "rdest": F, "mask": V},
    exactness="unknown",
    why=_REASONS["recent"] + "; --set always matches",
)  # fmt: skip
def parse_recent(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    o = Opts(items, ctx, "recent")
    act = o.require_one("set", "rcheck", "update", "remove")
    ao = o.get(act)
    assert ao is not None
    neg = ao.negated
    parts = ["-m recent", f"{_bang(neg)}--{act}"]
    secs = o.value("seconds")
    if act in ("set", "remove") and (o.has("seconds") or o.has("hitcount") or o.has("reap")):
        raise ctx.error(f"recent: --seconds/--hitcount/--reap go with --rcheck or --update, not --{act}")
    if secs is not None:
        n = uint(ctx, "recent", "seconds", secs)
        if n:
            parts.append(f"--seconds {n}")
    if o.has("reap"):
        if secs is None:
            raise ctx.error("recent: --reap needs --seconds")
        parts.append("--reap")
    hc = o.value("hitcount")
    if hc is not None:
        n = uint(ctx, "recent", "hitcount", hc)
        if n > 65535:
            raise ctx.error("recent: --hitcount is larger than the kernel's maximum (65535)")
        if n:
            parts.append(f"--hitcount {n}")
    if o.has("rttl"):
        if act not in ("rcheck", "update"):
            raise ctx.error("recent: --rttl goes with --rcheck or --update")
        parts.append("--rttl")
    name = o.value("name") or "DEFAULT"
    if len(name) > 200:
        raise ctx.error("recent: --name is longer than 200 characters")
    parts.append(f"--name {word(name)}")
    full = (1 << (32 if ctx.family == "ipv4" else 128)) - 1
    mask_t = o.value("mask")
    mask = parse_host(mask_t, ctx.family) if mask_t is not None else full
    if mask is None:
        raise ctx.error(f"recent: --mask: {mask_t!r} is not an {ctx.family} address")
    parts.append(f"--mask {addr_text(mask, ctx.family)}")
    o.exclusive("rsource", "rdest")
    parts.append("--rdest" if o.has("rdest") else "--rsource")
    # --set always adds the address and matches; the others depend on the list
    certain = (not neg) if act == "set" else None
    return StatefulMatch(" ".join(parts), _REASONS["recent"], certain)


@match(
    "connlimit",
    options={"connlimit-upto": VI, "connlimit-above": VI, "connlimit-mask": V, "connlimit-saddr": F,
             "connlimit-daddr": F},
    exactness="unknown",
    why=_REASONS["connlimit"],
    conntrack=True,
)  # fmt: skip
def parse_connlimit(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    o = Opts(items, ctx, "connlimit")
    which = o.require_one("connlimit-upto", "connlimit-above")
    opt = o.get(which)
    assert opt is not None
    limit = uint(ctx, "connlimit", which, opt.values[0])
    upto = (which == "connlimit-upto") != opt.negated
    o.exclusive("connlimit-saddr", "connlimit-daddr")
    full = 32 if ctx.family == "ipv4" else 128
    m = o.value("connlimit-mask")
    mask = uint(ctx, "connlimit", "connlimit-mask", m, 0, full) if m is not None else full
    parts = ["-m connlimit", f"--connlimit-{'upto' if upto else 'above'} {limit}", f"--connlimit-mask {mask}"]
    parts.append("--connlimit-daddr" if o.has("connlimit-daddr") else "--connlimit-saddr")
    return StatefulMatch(" ".join(parts), _REASONS["connlimit"])


# ------------------------------------------------------------------ string, u32


def _hex_string(ctx: ParseCtx, text: str) -> bytes:
    out = bytearray()
    hexmode = False
    i = 0
    s = text
    while i < len(s):
        ch = s[i]
        if ch == "|":
            hexmode = not hexmode
            i += 1
            continue
        if hexmode:
            if ch == " ":
                i += 1
                continue
            pair = s[i : i + 2]
            if len(pair) < 2 or any(c not in "0123456789abcdefABCDEF" for c in pair):
                raise ctx.error(f"string: invalid hex string {text!r}")
            out.append(int(pair, 16))
            i += 2
            continue
        if ch == "\\" and i + 1 < len(s):
            i += 1
            ch = s[i]
        out.extend(ch.encode("utf-8", "surrogateescape"))
        i += 1
    if hexmode:
        raise ctx.error(f"string: invalid hex string {text!r} (unbalanced '|')")
    return bytes(out)


@match(
    "string",
    options={"algo": V, "from": V, "to": V, "string": VI, "hex-string": VI, "icase": F},
    exactness="unknown",
    why=_REASONS["string"],
)
def parse_string(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    o = Opts(items, ctx, "string")
    which = o.require_one("string", "hex-string")
    opt = o.get(which)
    assert opt is not None
    algo = o.value("algo")
    if algo is None:
        raise ctx.error("string: you must specify --algo (bm or kmp)")
    if algo not in ("bm", "kmp"):
        raise ctx.error(f"string: unknown --algo {algo!r} (the kernel has bm and kmp)")
    raw = opt.values[0].encode("utf-8", "surrogateescape")  # the file's own bytes
    pat = raw if which == "string" else _hex_string(ctx, opt.values[0])
    if not pat:
        raise ctx.error("string: empty pattern")
    if len(pat) > 128:
        raise ctx.error("string: the pattern is longer than 128 bytes")
    fr = uint(ctx, "string", "from", o.value("from") or "0", 0, 0xFFFF)
    to = uint(ctx, "string", "to", o.value("to") or "65535", 0, 0xFFFF)
    if fr > to:
        raise ctx.error("string: --from is greater than --to")
    if all(0x20 <= b < 0x7F for b in pat):
        shown = f"--string {quote_always(pat.decode())}"
    else:
        shown = '--hex-string "|' + pat.hex() + '|"'
    parts = ["-m string", f"{_bang(opt.negated)}{shown}", f"--algo {algo}"]
    if fr:
        parts.append(f"--from {fr}")
    if to != 0xFFFF:
        parts.append(f"--to {to}")
    if o.has("icase"):
        parts.append("--icase")
    return StatefulMatch(" ".join(parts), _REASONS["string"])


_U32_TOKEN = re.compile(r"\s*(0[xX][0-9a-fA-F]+|\d+|&&|<<|>>|[&@=,:])")


def _u32(ctx: ParseCtx, text: str) -> str:
    """Parse a u32 test expression and print it back as libxt_u32 does."""
    toks: list[str] = []
    pos = 0
    s = text.rstrip()
    while pos < len(s):
        m = _U32_TOKEN.match(s, pos)
        if not m:
            raise ctx.error(f"u32: syntax error in {text!r} at {s[pos : pos + 10]!r}")
        toks.append(m.group(1))
        pos = m.end()

    def num(t: str) -> int:
        v = c_strtoul(t)
        if v is None or v > 0xFFFFFFFF:
            raise ctx.error(f"u32: bad number {t!r}")
        return v

    out = []
    i = 0
    ntests = 0
    while True:
        ntests += 1
        if ntests > 10:
            raise ctx.error("u32: too many tests (10 max)")
        if i >= len(toks):
            raise ctx.error(f"u32: syntax error in {text!r}")
        loc = [f"{num(toks[i]):#x}"]
        i += 1
        while i < len(toks) and toks[i] in ("&", "<<", ">>", "@"):
            if i + 1 >= len(toks):
                raise ctx.error(f"u32: syntax error in {text!r}")
            loc.append(toks[i] + f"{num(toks[i + 1]):#x}")
            i += 2
        if len(loc) > 10:
            raise ctx.error("u32: too many location operations")
        if i >= len(toks) or toks[i] != "=":
            raise ctx.error(f"u32: '=' expected in {text!r}")
        i += 1
        vals = []
        while True:
            if i >= len(toks):
                raise ctx.error(f"u32: value expected in {text!r}")
            lo = num(toks[i])
            i += 1
            hi = lo
            if i < len(toks) and toks[i] == ":":
                hi = num(toks[i + 1]) if i + 1 < len(toks) else lo
                i += 2
            vals.append(f"{lo:#x}" if lo == hi else f"{lo:#x}:{hi:#x}")
            if i < len(toks) and toks[i] == ",":
                i += 1
                continue
            break
        if len(vals) > 10:
            raise ctx.error("u32: too many values")
        out.append("".join(loc) + "=" + ",".join(vals))
        if i < len(toks) and toks[i] == "&&":
            i += 1
            continue
        if i < len(toks):
            raise ctx.error(f"u32: syntax error in {text!r}")
        break
    return "&&".join(out)


@match("u32", options={"u32": VI}, exactness="unknown", why=_REASONS["u32"])
def parse_u32(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    o = Opts(items, ctx, "u32")
    opt = o.get("u32")
    if opt is None:
        raise ctx.error('u32: option "--u32" must be specified')
    return StatefulMatch(f'-m u32 {_bang(opt.negated)}--u32 "{_u32(ctx, opt.values[0])}"', _REASONS["u32"])


# ------------------------------------------------------------------ time

_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_DATE_MAX = 2**31 - 1


def _date(ctx: ParseCtx, opt: str, text: str) -> int:
    m = re.fullmatch(r"(\d{4})(?:-(\d{1,2})(?:-(\d{1,2})(?:T(\d{1,2})(?::(\d{1,2})(?::(\d{1,2}))?)?)?)?)?", text)
    if not m:
        raise ctx.error(f"time: --{opt}: invalid date {text!r} (YYYY[-MM[-DD[Thh[:mm[:ss]]]]])")
    y, mo, d, h, mi, s = (int(g) if g else dflt for g, dflt in zip(m.groups(), (1970, 1, 1, 0, 0, 0), strict=True))
    if not (1970 <= y <= 2038 and 1 <= mo <= 12 and 1 <= d <= 31 and h < 24 and mi < 60 and s < 60):
        raise ctx.error(f"time: --{opt}: date out of range {text!r}")
    t = calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0))
    if t > _DATE_MAX:
        raise ctx.error(f"time: --{opt}: date out of range {text!r}")
    return t


def _date_text(t: int) -> str:
    g = _time.gmtime(t)
    return f"{g.tm_year:04d}-{g.tm_mon:02d}-{g.tm_mday:02d}T{g.tm_hour:02d}:{g.tm_min:02d}:{g.tm_sec:02d}"


def _daytime(ctx: ParseCtx, opt: str, text: str) -> int:
    m = re.fullmatch(r"(\d{1,2}):(\d{1,2})(?::(\d{1,2}))?", text)
    if not m:
        raise ctx.error(f"time: --{opt}: invalid time {text!r} (hh:mm[:ss])")
    h, mi, s = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
    if h > 23 or mi > 59 or s > 59:
        raise ctx.error(f"time: --{opt}: invalid time {text!r}")
    return h * 3600 + mi * 60 + s


def _hms(t: int) -> str:
    return f"{t // 3600:02d}:{t // 60 % 60:02d}:{t % 60:02d}"


@match(
    "time",
    options={"datestart": V, "datestop": V, "timestart": V, "timestop": V, "monthdays": VI, "weekdays": VI,
             "contiguous": F, "kerneltz": F, "utc": F, "localtz": F},
    exactness="unknown",
    why=_REASONS["time"],
)  # fmt: skip
def parse_time(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    o = Opts(items, ctx, "time")
    o.exclusive("kerneltz", "utc")
    ds = _date(ctx, "datestart", o.value("datestart") or "1970") if o.has("datestart") else 0
    de = _date(ctx, "datestop", o.value("datestop") or "") if o.has("datestop") else _DATE_MAX
    ts = _daytime(ctx, "timestart", o.value("timestart") or "") if o.has("timestart") else 0
    te = _daytime(ctx, "timestop", o.value("timestop") or "") if o.has("timestop") else 86399
    parts = ["-m time"]
    if ts != 0 or te != 86399:
        parts.append(f"--timestart {_hms(ts)} --timestop {_hms(te)}")
    md = o.get("monthdays")
    if md is not None:
        days = set()
        for d in md.values[0].split(","):
            n = c_strtoul(d, 10) if d.isdigit() else None
            if n is None or not 1 <= n <= 31:
                raise ctx.error(f"time: --monthdays: bad day {d!r} (1-31)")
            days.add(n)
        if md.negated:
            days = set(range(1, 32)) - days
        if days != set(range(1, 32)):
            parts.append("--monthdays " + ",".join(str(d) for d in sorted(days)))
    wd = o.get("weekdays")
    if wd is not None:
        wdays = set()
        for d in wd.values[0].split(","):
            if d.isdigit() and 1 <= int(d) <= 7:
                wdays.add(int(d) - 1)
                continue
            for k, name in enumerate(_WEEKDAYS):
                # libxt_time compares the first two letters of the name
                if len(d) >= 2 and d[:2].lower() == name[:2].lower():
                    wdays.add(k)
                    break
            else:
                raise ctx.error(f"time: --weekdays: bad day {d!r} (Mon,Tue,...,Sun or 1-7)")
        if wd.negated:
            wdays = set(range(7)) - wdays
        if wdays != set(range(7)):
            parts.append("--weekdays " + ",".join(_WEEKDAYS[k] for k in sorted(wdays)))
    if ds:
        parts.append(f"--datestart {_date_text(ds)}")
    parts.append(f"--datestop {_date_text(de)}")  # iptables 1.8.9 prints it even when it is the default
    if o.has("kerneltz"):
        parts.append("--kerneltz")
    if o.has("contiguous"):
        parts.append("--contiguous")
    return StatefulMatch(" ".join(parts), _REASONS["time"])


# ------------------------------------------------------------------ quota, connbytes


@match("quota", options={"quota": VI}, exactness="unknown", why=_REASONS["quota"])
def parse_quota(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    o = Opts(items, ctx, "quota")
    q = o.get("quota")
    if q is None:
        raise ctx.error('quota: option "--quota" must be specified')
    n = uint(ctx, "quota", "quota", q.values[0], 0, 2**64 - 1)
    return StatefulMatch(f"-m quota {_bang(q.negated)}--quota {n}", _REASONS["quota"])


@match(
    "connbytes",
    options={"connbytes": VI, "connbytes-dir": V, "connbytes-mode": V},
    exactness="unknown",
    why=_REASONS["connbytes"],
    conntrack=True,
)
def parse_connbytes(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    o = Opts(items, ctx, "connbytes")
    cb = o.get("connbytes")
    d = o.value("connbytes-dir")
    mode = o.value("connbytes-mode")
    if cb is None or d is None or mode is None:
        raise ctx.error("connbytes: --connbytes, --connbytes-dir and --connbytes-mode are all required")
    top = 2**64 - 1
    a, colon, b = cb.values[0].partition(":")
    lo = uint(ctx, "connbytes", "connbytes", a, 0, top) if a else 0
    hi = (uint(ctx, "connbytes", "connbytes", b, 0, top) if b else top) if colon else top
    if lo > hi:
        raise ctx.error(f"connbytes: invalid range {cb.values[0]!r}")
    if d not in ("original", "reply", "both"):
        raise ctx.error(f"connbytes: bad --connbytes-dir {d!r} (original, reply or both)")
    if mode not in ("packets", "bytes", "avgpkt"):
        raise ctx.error(f"connbytes: bad --connbytes-mode {mode!r} (packets, bytes or avgpkt)")
    shown = str(lo) + (f":{hi}" if 0 < hi < top else "")
    text = f"-m connbytes {_bang(cb.negated)}--connbytes {shown} --connbytes-mode {mode} --connbytes-dir {d}"
    return StatefulMatch(text, _REASONS["connbytes"])
