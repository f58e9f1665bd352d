"""Matches iptables ships whose outcome nftrace does not model.

Each is parsed and validated as iptables does (options, ranges, required
options, the -p or hook it needs) and prints back as iptables-save prints it;
it evaluates as `unknown`, naming what it depends on.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from nftrace.ruleset.ext.basic import protocol_number, protocol_save_name
from nftrace.ruleset.ext.proto import require_proto
from nftrace.ruleset.model import MatchOutcome, MatchSpec, Option, Unknown
from nftrace.ruleset.registry import FI, OPT, VI, Arg, F, Opts, ParseCtx, V, match
from nftrace.ruleset.values import (
    addr_text,
    parse_addr_mask,
    parse_host,
    port,
    prefix_len,
    range_text,
    save_string,
    uint,
    uint_range,
    word,
)

if TYPE_CHECKING:
    from nftrace.engine.env import Env
    from nftrace.engine.packet import Packet

PRE, INP, FWD, OUT, POST = "PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"


class GenericMatch(MatchSpec):
    exactness = "unknown"
    __slots__ = ("ext", "text", "reason")

    def __init__(
        self,
        ext: str,
        text: str,
        reason: str = "",
        hooks: frozenset[str] | None = None,
        tables: tuple[str, ...] | None = None,
    ) -> None:
        self.ext = ext
        self.text = text
        self.reason = reason or f"the '{ext}' extension is not modelled by nftrace"
        if hooks is not None:
            self.hooks = hooks
        if tables is not None:
            self.tables = tables

    def evaluate(self, pkt: Packet, env: Env) -> MatchOutcome:
        return Unknown(f"{self.text}: {self.reason}")


def _b(neg: bool) -> str:
    return "! " if neg else ""


def _why(what: str) -> str:
    return f"depends on {what}, which nftrace does not model"


@match("cpu", options={"cpu": VI}, exactness="unknown", why="the CPU handling the packet")
def parse_cpu(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    c = Opts(items, ctx, "cpu").get("cpu")
    if c is None:
        raise ctx.error('cpu: option "--cpu" must be specified')
    return GenericMatch("cpu", f"-m cpu {_b(c.negated)}--cpu {uint(ctx, 'cpu', 'cpu', c.values[0])}", _why("the CPU"))


@match("cgroup", options={"cgroup": VI, "path": VI}, exactness="unknown", why="the sending process's cgroup")
def parse_cgroup(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    o = Opts(items, ctx, "cgroup")
    which = o.require_one("path", "cgroup")
    opt = o.get(which)
    assert opt is not None
    v = save_string(opt.values[0]) if which == "path" else str(uint(ctx, "cgroup", "cgroup", opt.values[0]))
    return GenericMatch(
        "cgroup", f"-m cgroup {_b(opt.negated)}--{which} {v}", _why("the socket's cgroup"), frozenset({INP, OUT, POST})
    )


@match(
    "cluster",
    options={"cluster-total-nodes": V, "cluster-local-node": VI, "cluster-local-nodemask": VI,
             "cluster-hash-seed": V},
    exactness="unknown",
    why="the cluster hash of the connection",
    conntrack=True,
)  # fmt: skip
def parse_cluster(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    o = Opts(items, ctx, "cluster")
    total_t, seed_t = o.value("cluster-total-nodes"), o.value("cluster-hash-seed")
    which = o.require_one("cluster-local-node", "cluster-local-nodemask")
    if total_t is None or seed_t is None:
        raise ctx.error(
            "cluster: --cluster-total-nodes, --cluster-local-node(mask) and --cluster-hash-seed are required"
        )
    total = uint(ctx, "cluster", "cluster-total-nodes", total_t, 1, 32)
    opt = o.get(which)
    assert opt is not None
    if which == "cluster-local-node":
        n = uint(ctx, "cluster", which, opt.values[0], 1, 32)
        mask = 1 << (n - 1)
    else:
        mask = uint(ctx, "cluster", which, opt.values[0])
    if mask >= (1 << total):
        raise ctx.error("cluster: the local node is outside --cluster-total-nodes")
    seed = uint(ctx, "cluster", "cluster-hash-seed", seed_t)
    text = (
        f"-m cluster {_b(opt.negated)}--cluster-local-nodemask {mask:#010x} --cluster-total-nodes {total} "
        f"--cluster-hash-seed {seed:#010x}"
    )
    return GenericMatch("cluster", text, _why("the cluster hash"))


def _connlabels() -> dict[str, int]:
    out: dict[str, int] = {}
    for path in ("/etc/xtables/connlabel.conf", "/etc/connlabel.conf"):
        try:
            with open(path) as fh:
                for ln in fh:
                    parts = ln.split()
                    if len(parts) >= 2 and parts[0].isdigit() and not ln.startswith("#"):
                        out[parts[1]] = int(parts[0])
        except OSError:
            continue
        break
    return out


@match("connlabel", options={"label": VI, "set": F}, exactness="unknown", why="the connection's labels", conntrack=True)
def parse_connlabel(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    o = Opts(items, ctx, "connlabel")
    lab = o.get("label")
    if lab is None:
        raise ctx.error('connlabel: option "--label" must be specified')
    v = lab.values[0]
    if v.isdigit():
        uint(ctx, "connlabel", "label", v, 0, 127)
    elif v not in _connlabels():
        raise ctx.error(f"connlabel: label {v!r} is not defined in connlabel.conf")
    text = f'-m connlabel {_b(lab.negated)}--label "{v}"' + (" --set" if o.has("set") else "")
    return GenericMatch("connlabel", text, _why("the connection's labels"))


@match("devgroup", options={"src-group": VI, "dst-group": VI}, exactness="unknown", why="interface groups")
def parse_devgroup(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    o = Opts(items, ctx, "devgroup")
    parts = ["-m devgroup"]
    hooks = {PRE, INP, FWD, OUT, POST}
    for n in ("src-group", "dst-group"):
        opt = o.get(n)
        if opt is None:
            continue
        v, slash, m = opt.values[0].partition("/")
        val = uint(ctx, "devgroup", n, v)
        mask = uint(ctx, "devgroup", n, m) if slash else 0xFFFFFFFF
        parts.append(f"{_b(opt.negated)}--{n} {val:#x}" + (f"/{mask:#x}" if mask != 0xFFFFFFFF else ""))
        hooks &= {PRE, INP, FWD} if n == "src-group" else {FWD, OUT, POST}
    if len(parts) == 1:
        raise ctx.error("devgroup: --src-group or --dst-group is required")
    return GenericMatch("devgroup", " ".join(parts), _why("the interfaces' groups"), frozenset(hooks))


@match(
    "ecn",
    options={"ecn-tcp-cwr": FI, "ecn-tcp-ece": FI, "ecn-ip-ect": VI},
    exactness="unknown",
    why="ECN bits of the packet",
)
def parse_ecn(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    o = Opts(items, ctx, "ecn")
    if not items:
        raise ctx.error("ecn: at least one option is required")
    parts = ["-m ecn"]
    for n in ("ecn-tcp-ece", "ecn-tcp-cwr"):
        opt = o.get(n)
        if opt is not None:
            require_proto(ctx, "ecn", ("tcp",))
            parts.append(f"{_b(opt.negated)}--{n}")
    ect = o.get("ecn-ip-ect")
    if ect is not None:
        parts.append(f"{_b(ect.negated)}--ecn-ip-ect {uint(ctx, 'ecn', 'ecn-ip-ect', ect.values[0], 0, 3)}")
    return GenericMatch("ecn", " ".join(parts), _why("the ECN bits"))


def _addr_mask_text(net: int, mask: int, family: str, host: int | None = None) -> str:
    full = 32 if family == "ipv4" else 128
    a = addr_text(net if host is None else host, family)
    n = prefix_len(mask, family)
    if n == full:
        return a
    return f"{a}/{n}" if n is not None else f"{a}/{addr_text(mask, family)}"


@match(
    "ipvs",
    options={"ipvs": FI, "vproto": VI, "vaddr": VI, "vport": VI, "vdir": V, "vmethod": VI, "vportctl": VI},
    exactness="unknown",
    why="IPVS connection state",
)
def parse_ipvs(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    o = Opts(items, ctx, "ipvs")
    if not items:
        raise ctx.error("ipvs: at least one option is required")
    parts = ["-m ipvs"]
    i = o.get("ipvs")
    if i is not None:
        parts.append(f"{_b(i.negated)}--ipvs")
    p = o.get("vproto")
    if p is not None:
        num = protocol_number(p.values[0].lower())
        if num is None:
            raise ctx.error(f"ipvs: --vproto: unknown protocol {p.values[0]!r}")
        parts.append(f"{_b(p.negated)}--vproto {num}")
    a = o.get("vaddr")
    if a is not None:
        host_t, _, _ = a.values[0].partition("/")
        net, mask = parse_addr_mask(a.values[0], ctx.family, ctx, "ipvs --vaddr")
        host = parse_host(host_t, ctx.family)
        parts.append(f"{_b(a.negated)}--vaddr {_addr_mask_text(net, mask, ctx.family, host)}")
    vp = o.get("vport")
    if vp is not None:
        parts.append(f"{_b(vp.negated)}--vport {port(ctx, 'ipvs', 'vport', vp.values[0])}")
    d = o.value("vdir")
    if d is not None:
        if d.upper() not in ("ORIGINAL", "REPLY"):
            raise ctx.error("ipvs: --vdir takes ORIGINAL or REPLY")
        parts.append(f"--vdir {d.upper()}")
    m = o.get("vmethod")
    if m is not None:
        if m.values[0].upper() not in ("GATE", "IPIP", "MASQ"):
            raise ctx.error("ipvs: --vmethod takes GATE, IPIP or MASQ")
        parts.append(f"{_b(m.negated)}--vmethod {m.values[0].upper()}")
    pc = o.get("vportctl")
    if pc is not None:
        parts.append(f"{_b(pc.negated)}--vportctl {port(ctx, 'ipvs', 'vportctl', pc.values[0])}")
    return GenericMatch("ipvs", " ".join(parts), _why("IPVS connection state"))


class _Nfacct(GenericMatch):
    """-m nfacct: counts the packet in a named accounting object and always matches.  A module-level
    class, so that pickle (the parsed-ruleset cache) can rebuild it."""

    def evaluate(self, pkt: Packet, env: Env) -> MatchOutcome:
        return True  # only counts


@match("nfacct", options={"nfacct-name": V}, why="only counts the packet: always matches")
def parse_nfacct(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    n = Opts(items, ctx, "nfacct").value("nfacct-name")
    if not n:
        raise ctx.error('nfacct: option "--nfacct-name" must be specified')
    if len(n) > 31:
        raise ctx.error("nfacct: --nfacct-name is longer than 31 characters")
    # iptables-save prints two spaces here
    return _Nfacct("nfacct", f"-m nfacct --nfacct-name  {word(n)}", "")


@match(
    "osf",
    options={"genre": VI, "ttl": V, "log": V},
    family="ipv4",
    exactness="unknown",
    why="passive OS fingerprinting of SYNs",
)
def parse_osf(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    o = Opts(items, ctx, "osf")
    g = o.get("genre")
    if g is None:
        raise ctx.error('osf: option "--genre" must be specified')
    require_proto(ctx, "osf", ("tcp",))
    parts = ["-m osf", f"{_b(g.negated)}--genre {word(g.values[0])}"]
    for n in ("ttl", "log"):
        v = o.value(n)
        if v is not None:
            parts.append(f"--{n} {uint(ctx, 'osf', n, v, 0, 2)}")
    return GenericMatch("osf", " ".join(parts), _why("the sender's OS fingerprint"), frozenset({PRE, INP, FWD}))


_POLICY_ELEM = ("reqid", "spi", "proto", "mode", "tunnel-dst", "tunnel-src")
_M = Arg(1, 1, True, True)


@match(
    "policy",
    options={"dir": V, "pol": V, "strict": F, "next": Arg(0, 0, False, True), **{k: _M for k in _POLICY_ELEM}},
    exactness="unknown",
    why="the IPsec policy the packet went through",
)
def parse_policy(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    o = Opts(items, ctx, "policy")
    d, pol = o.value("dir"), o.value("pol")
    if d not in ("in", "out"):
        raise ctx.error("policy: --dir in|out is required")
    if pol not in ("none", "ipsec"):
        raise ctx.error("policy: --pol none|ipsec is required")
    elems: list[dict[str, Option]] = [{}]
    for i in items:
        if i.name == "next":
            if not elems[-1]:
                raise ctx.error("policy: --next needs an element before it")
            elems.append({})
        elif i.name in _POLICY_ELEM:
            if i.name in elems[-1]:
                raise ctx.error(f"policy: --{i.name} given twice in one element (use --next)")
            elems[-1][i.name] = i
    if not elems[-1]:
        elems.pop()
    if len(elems) > 4:
        raise ctx.error("policy: at most 4 elements")
    if pol == "none" and elems:
        raise ctx.error("policy: --pol none takes no element options")
    if o.has("strict") and not elems:
        raise ctx.error("policy: --strict needs at least one element")
    parts = ["-m policy", f"--dir {d}", f"--pol {pol}"]
    if o.has("strict"):
        parts.append("--strict")
    for k, e in enumerate(elems):
        if k:
            parts.append("--next")
        mode = e.get("mode")
        if mode is not None and mode.values[0] not in ("transport", "tunnel"):
            raise ctx.error("policy: --mode transport|tunnel")
        for n in _POLICY_ELEM:
            opt = e.get(n)
            if opt is None:
                continue
            v = opt.values[0]
            if n == "reqid":
                shown = str(uint(ctx, "policy", n, v))
            elif n == "spi":
                shown = f"{uint(ctx, 'policy', n, v):#x}"
            elif n == "proto":
                num = protocol_number(v.lower())
                if num not in (50, 51, 108):
                    raise ctx.error("policy: --proto takes esp, ah or ipcomp")
                shown = protocol_save_name(num)
            elif n == "mode":
                shown = v
            else:
                if mode is None or mode.values[0] != "tunnel":
                    raise ctx.error(f"policy: --{n} is only valid with --mode tunnel")
                net, mask = parse_addr_mask(v, ctx.family, ctx, f"policy --{n}")
                shown = _addr_mask_text(net, mask, ctx.family)
            parts.append(f"{_b(opt.negated)}--{n} {shown}")
    hooks = frozenset({PRE, INP, FWD}) if d == "in" else frozenset({FWD, OUT, POST})
    return GenericMatch("policy", " ".join(parts), _why("the IPsec policy"), hooks)


def _tc_rate(ctx: ParseCtx, opt: str, text: str) -> int:
    """tc rate -> bytes per second."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([a-zA-Z]*)", text)
    units = {"": 1 / 8, "bit": 1 / 8, "kbit": 1000 / 8, "mbit": 1e6 / 8, "gbit": 1e9 / 8, "tbit": 1e12 / 8,
             "kibit": 1024 / 8, "mibit": 1048576 / 8, "bps": 1, "kbps": 1000, "mbps": 1e6, "gbps": 1e9,
             "kibps": 1024, "mibps": 1048576}  # fmt: skip
    if not m or m.group(2).lower() not in units:
        raise ctx.error(f"rateest: --{opt}: bad rate {text!r}")
    return int(float(m.group(1)) * units[m.group(2).lower()])


@match(
    "rateest",
    options={"rateest-delta": F, "rateest-lt": F, "rateest-gt": F, "rateest-eq": F, "rateest": V, "rateest1": V,
             "rateest2": V, "rateest-bps": OPT, "rateest-pps": OPT, "rateest-bps1": OPT, "rateest-bps2": OPT,
             "rateest-pps1": OPT, "rateest-pps2": OPT},
    exactness="unknown",
    why="a rate estimator's current value",
)  # fmt: skip
def parse_rateest(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    o = Opts(items, ctx, "rateest")
    mode = o.require_one("rateest-lt", "rateest-gt", "rateest-eq")
    delta = o.has("rateest-delta")
    rel = o.has("rateest1") or o.has("rateest2")

    def val(n: str) -> str:
        opt = o.get(n)
        assert opt is not None
        if not opt.values:
            return f"--{n}"
        if "bps" in n:
            return f"--{n} {_tc_rate(ctx, n, opt.values[0]) * 8}bit"
        return f"--{n} {uint(ctx, 'rateest', n, opt.values[0])}"

    parts = ["-m rateest"]
    if delta:
        parts.append("--rateest-delta")
    if rel:
        n1, n2 = o.value("rateest1"), o.value("rateest2")
        if n1 is None or n2 is None:
            raise ctx.error("rateest: --rateest1 and --rateest2 go together")
        parts.append(f"--rateest1 {word(n1)}")
    else:
        n1 = o.value("rateest")
        if n1 is None:
            raise ctx.error("rateest: --rateest NAME (or --rateest1/--rateest2) is required")
        parts.append(f"--rateest {word(n1)}")
    first = [n for n in ("rateest-bps1", "rateest-pps1") if o.has(n)]
    second = [n for n in ("rateest-bps2", "rateest-pps2", "rateest-bps", "rateest-pps") if o.has(n)]
    if delta:
        parts.extend(val(n) for n in first)
    parts.append(f"--{mode}")
    parts.extend(val(n) for n in second)
    if rel:
        parts.append(f"--rateest2 {word(o.value('rateest2') or '')}")
    return GenericMatch("rateest", " ".join(parts), _why("a rate estimator"))


@match("realm", options={"realm": VI}, family="ipv4", exactness="unknown", why="the route's realm")
def parse_realm(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    r = Opts(items, ctx, "realm").get("realm")
    if r is None:
        raise ctx.error('realm: option "--realm" must be specified')
    v, slash, m = r.values[0].partition("/")
    val = uint(ctx, "realm", "realm", v)
    mask = uint(ctx, "realm", "realm", m) if slash else 0xFFFFFFFF
    text = f"-m realm {_b(r.negated)}--realm {val:#x}" + (f"/{mask:#x}" if mask != 0xFFFFFFFF else "")
    return GenericMatch("realm", text, _why("the route's realm"), frozenset({INP, FWD, OUT, POST}))


@match(
    "rpfilter",
    options={"loose": F, "validmark": F, "accept-local": F, "invert": F},
    exactness="unknown",
    why="a reverse-path route lookup",
)
def parse_rpfilter(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    o = Opts(items, ctx, "rpfilter")
    parts = ["-m rpfilter", *(f"--{n}" for n in ("loose", "validmark", "accept-local", "invert") if o.has(n))]
    return GenericMatch(
        "rpfilter", " ".join(parts), _why("the reverse-path route lookup"), frozenset({PRE}), ("raw", "mangle")
    )


@match(
    "socket",
    options={"transparent": F, "nowildcard": F, "restore-skmark": F},
    exactness="unknown",
    why="whether a local socket matches the packet",
)
def parse_socket(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    o = Opts(items, ctx, "socket")
    parts = ["-m socket", *(f"--{n}" for n in ("transparent", "nowildcard", "restore-skmark") if o.has(n))]
    return GenericMatch("socket", " ".join(parts), _why("the local sockets"), frozenset({PRE, INP}))


# ------------------------------------------------------------------ IPv6 extension headers

_V6HDRS = (("hop-by-hop", ("hop-by-hop", "hop", "0")), ("ipv6-opts", ("ipv6-opts", "dst", "60")),
           ("ipv6-route", ("ipv6-route", "route", "43")), ("ipv6-frag", ("ipv6-frag", "frag", "44")),
           ("ah", ("ah", "auth", "51")), ("esp", ("esp", "50")), ("ipv6-nonxt", ("ipv6-nonxt", "none", "59")),
           ("protocol", ("protocol", "prot", "255")))  # fmt: skip


@match("ipv6header", options={"header": VI, "soft": F}, family="ipv6", exactness="unknown", why="extension headers")
def parse_ipv6header(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    o = Opts(items, ctx, "ipv6header")
    h = o.get("header")
    if h is None:
        raise ctx.error('ipv6header: option "--header" must be specified')
    got = set()
    for item in h.values[0].split(","):
        for name, names in _V6HDRS:
            if item.lower() in names:
                got.add(name)
                break
        else:
            raise ctx.error(f"ipv6header: unknown header {item!r}")
    text = f"-m ipv6header {_b(h.negated)}--header {','.join(n for n, _ in _V6HDRS if n in got)}"
    if o.has("soft"):
        text += " --soft"
    return GenericMatch("ipv6header", text, _why("the IPv6 extension headers"))


def _opts_match(name: str, items: list[Option], ctx: ParseCtx) -> MatchSpec:
    o = Opts(items, ctx, name)
    parts = [f"-m {name}"]
    ln = o.get(f"{name}-len")
    if ln is not None:
        parts.append(f"{_b(ln.negated)}--{name}-len {uint(ctx, name, f'{name}-len', ln.values[0])}")
    opts = o.value(f"{name}-opts")
    if opts is not None:
        shown = []
        for item in opts.split(","):
            t, colon, ll = item.partition(":")
            s = str(uint(ctx, name, f"{name}-opts", t, 0, 255))
            if colon:
                s += f":{uint(ctx, name, f'{name}-opts', ll, 0, 255)}"
            shown.append(s)
        if len(shown) > 16:
            raise ctx.error(f"{name}: at most 16 options")
        parts.append(f"--{name}-opts {','.join(shown)}")
    return GenericMatch(name, " ".join(parts), _why("the IPv6 extension headers"))


@match("dst", options={"dst-len": VI, "dst-opts": V}, family="ipv6", exactness="unknown", why="extension headers")
def parse_dst(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    return _opts_match("dst", items, ctx)


@match("hbh", options={"hbh-len": VI, "hbh-opts": V}, family="ipv6", exactness="unknown", why="extension headers")
def parse_hbh(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    return _opts_match("hbh", items, ctx)


@match("eui64", family="ipv6", exactness="unknown", why="the sender's MAC against its EUI-64 address")
def parse_eui64(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    return GenericMatch("eui64", "-m eui64", _why("the sender's MAC address"), frozenset({PRE, INP, FWD}))


@match(
    "frag",
    options={"fragid": VI, "fraglen": VI, "fragres": F, "fragfirst": F, "fragmore": F, "fraglast": F},
    family="ipv6",
    exactness="unknown",
    why="the fragment header",
)
def parse_frag(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    o = Opts(items, ctx, "frag")
    o.exclusive("fragmore", "fraglast")
    parts = ["-m frag"]
    fid = o.get("fragid")
    if fid is not None:
        lo, hi = uint_range(ctx, "frag", "fragid", fid.values[0])
        if (lo, hi) != (0, 0xFFFFFFFF) or fid.negated:
            parts.append(f"{_b(fid.negated)}--fragid {range_text(lo, hi)}")
    fl = o.get("fraglen")
    if fl is not None:
        parts.append(f"{_b(fl.negated)}--fraglen {uint(ctx, 'frag', 'fraglen', fl.values[0])}")
    parts.extend(f"--{n}" for n in ("fragres", "fragfirst", "fragmore", "fraglast") if o.has(n))
    return GenericMatch("frag", " ".join(parts), _why("the fragment header"))


@match(
    "rt",
    options={"rt-type": VI, "rt-segsleft": VI, "rt-len": VI, "rt-0-res": F, "rt-0-addrs": V, "rt-0-not-strict": F},
    family="ipv6",
    exactness="unknown",
    why="the routing header",
)
def parse_rt(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    o = Opts(items, ctx, "rt")
    parts = ["-m rt"]
    t = o.get("rt-type")
    if t is not None:
        parts.append(f"{_b(t.negated)}--rt-type {uint(ctx, 'rt', 'rt-type', t.values[0], 0, 255)}")
    s = o.get("rt-segsleft")
    if s is not None:
        lo, hi = uint_range(ctx, "rt", "rt-segsleft", s.values[0])
        if (lo, hi) != (0, 0xFFFFFFFF) or s.negated:
            parts.append(f"{_b(s.negated)}--rt-segsleft {range_text(lo, hi)}")
    ln = o.get("rt-len")
    if ln is not None:
        parts.append(f"{_b(ln.negated)}--rt-len {uint(ctx, 'rt', 'rt-len', ln.values[0])}")
    if o.has("rt-0-res"):
        parts.append("--rt-0-res")
    a = o.value("rt-0-addrs")
    if a is not None:
        addrs = []
        for x in a.split(","):
            v = parse_host(x, "ipv6")
            if v is None:
                raise ctx.error(f"rt: --rt-0-addrs: {x!r} is not an IPv6 address")
            addrs.append(addr_text(v, "ipv6"))
        parts.append("--rt-0-addrs " + ",".join(addrs))
    if o.has("rt-0-not-strict"):
        parts.append("--rt-0-not-strict")
    return GenericMatch("rt", " ".join(parts), _why("the routing header"))


_SRH_NUM = ("srh-next-hdr", "srh-hdr-len-eq", "srh-hdr-len-gt", "srh-hdr-len-lt", "srh-segs-left-eq",
            "srh-segs-left-gt", "srh-segs-left-lt", "srh-last-entry-eq", "srh-last-entry-gt", "srh-last-entry-lt",
            "srh-tag")  # fmt: skip
_SRH_ADDR = ("srh-psid", "srh-nsid", "srh-lsid")


@match(
    "srh",
    options={k: VI for k in (*_SRH_NUM, *_SRH_ADDR)},
    family="ipv6",
    exactness="unknown",
    why="the segment routing header",
)
def parse_srh(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    o = Opts(items, ctx, "srh")
    parts = ["-m srh"]
    for n in _SRH_NUM:
        opt = o.get(n)
        if opt is not None:
            hi = 0xFFFF if n == "srh-tag" else 0xFF
            parts.append(f"{_b(opt.negated)}--{n} {uint(ctx, 'srh', n, opt.values[0], 0, hi)}")
    for n in _SRH_ADDR:
        opt = o.get(n)
        if opt is not None:
            net, mask = parse_addr_mask(opt.values[0], "ipv6", ctx, f"srh --{n}")
            host = parse_host(opt.values[0].partition("/")[0], "ipv6") or 0
            plen = prefix_len(mask, "ipv6")
            shown = f"{addr_text(host, 'ipv6')}/{plen if plen is not None else addr_text(mask, 'ipv6')}"
            parts.append(f"{_b(opt.negated)}--{n} {shown}")
    return GenericMatch("srh", " ".join(parts), _why("the segment routing header"))


@match("bpf", options={"bytecode": V, "object-pinned": V}, exactness="unknown", why="a BPF program")
def parse_bpf(items: list[Option], ctx: ParseCtx) -> MatchSpec:
    o = Opts(items, ctx, "bpf")
    which = o.require_one("bytecode", "object-pinned")
    v = o.value(which) or ""
    if which == "object-pinned":
        return GenericMatch("bpf", f"-m bpf --object-pinned {word(v)}", _why("a BPF program"))
    ops = [x.strip() for x in v.split(",")]
    if not ops or not ops[0].isdigit() or int(ops[0]) != len(ops) - 1 or int(ops[0]) == 0:
        raise ctx.error("bpf: --bytecode: the first number must count the instructions that follow")
    shown = [ops[0]]
    for op in ops[1:]:
        nums = op.split()
        if len(nums) != 4 or any(c_ is None for c_ in (x if x.isdigit() else None for x in nums)):
            raise ctx.error(f"bpf: --bytecode: bad instruction {op!r} (four numbers)")
        shown.append(" ".join(nums))
    return GenericMatch("bpf", f'-m bpf --bytecode "{",".join(shown)}"', _why("a BPF program"))
