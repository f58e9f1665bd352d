"""iptables-save / iptables-restore text -> Ruleset.

Accepts what iptables-save prints (canonical order, counters `[p:b]`), what
kube-proxy and firewalld feed to iptables-restore (`-N`, `-I`, `-F`, `-X`,
`-P`, `-D` lines, chains declared after use), CRLF line ends and comments.
Every rule keeps its text and line.  Errors are raised as InputError naming the
file and line.
"""

from __future__ import annotations

import re
from collections.abc import Container

from nftrace.errors import InputError
from nftrace.ruleset import registry
from nftrace.ruleset.ext.basic import basic_match
from nftrace.ruleset.model import (
    BUILTIN_CHAINS,
    STANDARD_VERDICTS,
    Chain,
    MatchSpec,
    Option,
    Rule,
    Ruleset,
    Table,
    TargetSpec,
)
from nftrace.ruleset.registry import ParseCtx

_BASIC = {
    "-s": "s",
    "--source": "s",
    "--src": "s",
    "-d": "d",
    "--destination": "d",
    "--dst": "d",
    "-p": "p",
    "--protocol": "p",
    "-i": "i",
    "--in-interface": "i",
    "-o": "o",
    "--out-interface": "o",
    "-f": "f",
    "--fragment": "f",
}
_MATCH = {"-m", "--match"}
_JUMP = {"-j", "--jump"}
_GOTO = {"-g", "--goto"}
_COUNTERS = {"-c", "--set-counters"}
_COUNTER_PREFIX = re.compile(r"^\[(\d+):(\d+)\]\s+")
_CHAIN_NAME = re.compile(r"^[^\s!]{1,28}$")
_POLICIES = {"ACCEPT", "DROP", "-"}

# Names iptables ships extensions for that we parse generically (evaluated as
# unknown) when no module of ours registers them.  Anything else is an error, as
# iptables-restore would refuse it ("Couldn't load match").
KNOWN_EXTENSIONS = frozenset(
    [
        "addrtype",
        "ah",
        "bpf",
        "cgroup",
        "cluster",
        "comment",
        "connbytes",
        "connlabel",
        "connlimit",
        "connmark",
        "conntrack",
        "cpu",
        "dccp",
        "devgroup",
        "dscp",
        "dst",
        "ecn",
        "esp",
        "eui64",
        "frag",
        "hashlimit",
        "hbh",
        "helper",
        "hl",
        "icmp",
        "icmp6",
        "iprange",
        "ipv6header",
        "ipvs",
        "length",
        "limit",
        "mac",
        "mark",
        "mh",
        "multiport",
        "nfacct",
        "osf",
        "owner",
        "physdev",
        "pkttype",
        "policy",
        "quota",
        "rateest",
        "realm",
        "recent",
        "rpfilter",
        "rt",
        "sctp",
        "set",
        "socket",
        "state",
        "statistic",
        "string",
        "tcp",
        "tcpmss",
        "time",
        "tos",
        "ttl",
        "u32",
        "udp",
        "udplite",
        "srh",
        "AUDIT",
        "CHECKSUM",
        "CLASSIFY",
        "CLUSTERIP",
        "CONNMARK",
        "CONNSECMARK",
        "CT",
        "DNAT",
        "DNPT",
        "DSCP",
        "ECN",
        "HL",
        "HMARK",
        "IDLETIMER",
        "LED",
        "LOG",
        "MARK",
        "MASQUERADE",
        "NETMAP",
        "NFLOG",
        "NFQUEUE",
        "NOTRACK",
        "RATEEST",
        "REDIRECT",
        "REJECT",
        "SECMARK",
        "SET",
        "SNAT",
        "SNPT",
        "SYNPROXY",
        "TCPMSS",
        "TCPOPTSTRIP",
        "TEE",
        "TOS",
        "TPROXY",
        "TRACE",
        "TTL",
        "ULOG",
    ]
)


def tokenize(line: str, ctx_file: str, lineno: int) -> tuple[list[str], frozenset[int]]:
    """Split a rule line as iptables-restore does; return tokens and the indexes of quoted ones."""
    if '"' not in line and "\\" not in line:
        return line.split(), frozenset()
    tokens: list[str] = []
    quoted: set[int] = set()
    buf: list[str] = []
    in_quote = False
    was_quoted = False
    escaped = False
    for ch in line:
        if in_quote:
            if escaped:
                buf.append(ch)
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_quote = False
            else:
                buf.append(ch)
            continue
        if ch == '"':
            in_quote = True
            was_quoted = True
        elif ch in " \t":
            if buf or was_quoted:
                if was_quoted:
                    quoted.add(len(tokens))
                tokens.append("".join(buf))
                buf = []
                was_quoted = False
        else:
            buf.append(ch)
    if in_quote:
        raise InputError("unterminated quote", file=ctx_file, line=lineno)
    if buf or was_quoted:
        if was_quoted:
            quoted.add(len(tokens))
        tokens.append("".join(buf))
    return tokens, frozenset(quoted)


class _Section:
    __slots__ = ("kind", "name", "opts")

    def __init__(self, kind: str, name: str) -> None:
        self.kind = kind  # "match" | "target"
        self.name = name
        self.opts: list[Option] = []


# Cache of parsed sections: kube-proxy-sized dumps repeat the same match text
# thousands of times; specs are immutable so they can be shared.
_SECTION_CACHE: dict[tuple[object, ...], object] = {}


def parse_rule_args(
    tokens: list[str],
    quoted: frozenset[int],
    start: int,
    rule: Rule,
    ctx: ParseCtx,
    chains: Container[str] | None,
) -> None:
    """Fill rule.matches / rule.target / rule.jump from tokens[start:]."""
    registry.load_extensions()
    n = len(tokens)
    i = start
    negate = False
    basics: list[MatchSpec] = []
    sections: list[_Section] = []
    current: _Section | None = None
    jump: str | None = None
    goto = False
    seen_basic: set[str] = set()
    while i < n:
        tok = tokens[i]
        if tok == "!" and i not in quoted:
            if negate:
                raise ctx.error("double negation '! !'")
            negate = True
            i += 1
            continue
        if i in quoted:
            raise ctx.error(f"unexpected argument {tok!r}")
        b = _BASIC.get(tok)
        if b is not None:
            if b in seen_basic:
                raise ctx.error(f"option {tok} given twice")
            seen_basic.add(b)
            if b == "f":
                basics.append(basic_match("f", negate, "", ctx))
                i += 1
            else:
                if i + 1 >= n:
                    raise ctx.error(f"option {tok} requires an argument")
                val = tokens[i + 1]
                if val == "!":
                    raise ctx.error(f"'{tok} ! {tokens[i + 2] if i + 2 < n else ''}': put '!' before the option")
                if b == "p":
                    ctx.protocol = val.lower()
                    ctx.proto_negated = negate
                    rule.protocol = ctx.protocol
                    rule.proto_negated = negate
                basics.append(basic_match(b, negate, val, ctx))
                i += 2
            negate = False
            current = None if current is None or current.kind == "match" else current
            continue
        if tok in _MATCH:
            if negate:
                raise ctx.error("'!' cannot negate -m")
            if i + 1 >= n:
                raise ctx.error("-m requires an extension name")
            current = _Section("match", tokens[i + 1])
            sections.append(current)
            i += 2
            continue
        if tok in _JUMP or tok in _GOTO:
            if negate:
                raise ctx.error(f"'!' cannot negate {tok}")
            if i + 1 >= n:
                raise ctx.error(f"{tok} requires a target")
            if jump is not None or any(s.kind == "target" for s in sections):
                raise ctx.error("more than one target")
            name = tokens[i + 1]
            goto = tok in _GOTO
            if goto or name in STANDARD_VERDICTS or (chains is not None and name in chains):
                jump = name
                current = None
            else:
                current = _Section("target", name)
                sections.append(current)
            i += 2
            continue
        if tok in _COUNTERS:
            if i + 2 >= n:
                raise ctx.error(f"{tok} requires two numbers")
            i += 3
            continue
        if tok.startswith("--") and len(tok) > 2:
            vals: list[str] = []
            j = i + 1
            while j < n and (j in quoted or not _is_option(tokens[j])):
                vals.append(tokens[j])
                j += 1
            opt = Option(tok[2:], negate, tuple(vals))
            negate = False
            if current is None:
                current = _implicit_section(opt, ctx, sections)
            current.opts.append(opt)
            i = j
            continue
        if tok.startswith("-") and len(tok) > 1:
            raise ctx.error(f"unknown option {tok!r}")
        raise ctx.error(f"unexpected argument {tok!r}")
    if negate:
        raise ctx.error("'!' at the end of the rule negates nothing")

    matches: list[MatchSpec] = list(basics)
    for sec in sections:
        if sec.kind == "match":
            matches.append(_build_match(sec, ctx))
        else:
            rule.target = _build_target(sec, ctx)
    rule.matches = matches
    if jump is not None:
        if goto and jump in STANDARD_VERDICTS:
            raise ctx.error(f"-g {jump}: goto needs a user chain")
        rule.jump = jump
        rule.goto = goto


def _is_option(tok: str) -> bool:
    return tok == "!" or (tok.startswith("-") and len(tok) > 1 and not tok[1].isdigit())


def _implicit_section(opt: Option, ctx: ParseCtx, sections: list[_Section]) -> _Section:
    proto = ctx.protocol
    if proto is not None:
        names = {"ipv6-icmp": "icmp6", "icmpv6": "icmp6"}
        ext = names.get(proto, proto)
        allowed = registry.IMPLICIT_OPTIONS.get(ext)
        if allowed is not None and opt.name in allowed:
            for s in sections:
                if s.kind == "match" and s.name == ext:
                    return s
            sec = _Section("match", ext)
            sections.append(sec)
            return sec
    raise ctx.error(f"unknown option --{opt.name}")


def _build_match(sec: _Section, ctx: ParseCtx) -> MatchSpec:
    key = ("m", sec.name, ctx.protocol, ctx.family, ctx.table, tuple(sec.opts))
    cached = _SECTION_CACHE.get(key)
    if isinstance(cached, MatchSpec):
        return cached
    parser = registry.MATCHES.get(sec.name)
    if parser is None:
        if sec.name not in KNOWN_EXTENSIONS:
            raise ctx.error(f"unknown match extension '-m {sec.name}'")
        from nftrace.ruleset.ext.generic import generic_match

        spec = generic_match(sec.name, sec.opts, ctx)
    else:
        spec = parser(sec.opts, ctx)
    if len(_SECTION_CACHE) < 200_000:
        _SECTION_CACHE[key] = spec
    return spec


def _build_target(sec: _Section, ctx: ParseCtx) -> TargetSpec:
    key = ("j", sec.name, ctx.protocol, ctx.family, ctx.table, ctx.chain, tuple(sec.opts))
    cached = _SECTION_CACHE.get(key)
    if isinstance(cached, TargetSpec):
        return cached
    parser = registry.TARGETS.get(sec.name)
    if parser is None:
        if sec.name not in KNOWN_EXTENSIONS:
            raise ctx.error(f"unknown target '{sec.name}': no chain of that name in table {ctx.table}")
        from nftrace.ruleset.ext.generic import generic_target

        spec = generic_target(sec.name, sec.opts, ctx)
    else:
        spec = parser(sec.opts, ctx)
    if len(_SECTION_CACHE) < 200_000:
        _SECTION_CACHE[key] = spec
    return spec


def _declared_chains_ahead(lines: list[str], start: int) -> set[str]:
    """Chains declared (`:NAME` or `-N NAME`) in the table starting at line index start."""
    names: set[str] = set()
    for raw in lines[start:]:
        s = raw.strip()
        if s.startswith(":"):
            names.add(s[1:].split(None, 1)[0] if len(s) > 1 else "")
        elif s.startswith("-N ") or s.startswith("--new-chain "):
            parts = s.split()
            if len(parts) > 1:
                names.add(parts[1])
        elif s == "COMMIT" or s.startswith("*"):
            break
    return names


def parse_rules(text: str, filename: str = "<rules>", family: str | None = None) -> Ruleset:
    """Parse iptables-save/restore text.  family: ipv4/ipv6, guessed from addresses when None."""
    registry.load_extensions()
    if family is None:
        family = _guess_family(text)
    rs = Ruleset(family=family, source=filename)
    lines = text.split("\n")
    table: Table | None = None
    table_chains: dict[str, Chain] = {}
    pending_jumps: list[tuple[Rule, str]] = []
    lineno = 0
    table_declared: set[str] = set()
    for idx, raw in enumerate(lines):
        lineno = idx + 1
        line = raw.rstrip("\r")
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if s[0] == "*":
            if table is not None:
                raise InputError(f"table {table.name} is not closed by COMMIT before *", filename, lineno)
            name = s[1:].split()[0] if len(s) > 1 else ""
            if name not in BUILTIN_CHAINS:
                raise InputError(f"unknown table '*{name}'", filename, lineno)
            if name in rs.tables:
                table = rs.tables[name]
            else:
                table = Table(name=name, line=lineno)
            table_chains = table.chains
            # chains that will be declared later in this table may be jumped to
            table_declared = _declared_chains_ahead(lines, idx + 1) | set(table_chains)
            continue
        if table is None:
            raise InputError(f"{s.split()[0]!r} outside a table (missing '*table' line)", filename, lineno)
        if s == "COMMIT":
            _finish_table(table, pending_jumps, filename)
            rs.tables[table.name] = table
            table = None
            pending_jumps = []
            continue
        if s[0] == ":":
            parts = s[1:].split()
            if len(parts) < 2:
                raise InputError("chain declaration needs a policy (':NAME POLICY [p:b]')", filename, lineno)
            cname, policy = parts[0], parts[1]
            if not _CHAIN_NAME.match(cname):
                raise InputError(f"invalid chain name {cname!r}", filename, lineno)
            builtin = cname in BUILTIN_CHAINS[table.name]
            if policy not in _POLICIES:
                raise InputError(f"invalid policy {policy!r} for chain {cname}", filename, lineno)
            if builtin and policy == "-":
                raise InputError(f"built-in chain {cname} needs a policy (ACCEPT or DROP)", filename, lineno)
            if not builtin and policy != "-":
                raise InputError(f"user chain {cname} cannot have policy {policy}", filename, lineno)
            existing = table_chains.get(cname)
            if existing is None:
                table_chains[cname] = Chain(
                    name=cname,
                    policy=policy if builtin else None,
                    line=lineno,
                    counters=parts[2] if len(parts) > 2 else None,
                )
            else:
                # iptables-restore without --noflush flushes a re-declared chain
                existing.rules.clear()
                if builtin:
                    existing.policy = policy
            continue
        m = _COUNTER_PREFIX.match(s)
        if m:
            s = s[m.end() :]
        tokens, quoted = tokenize(s, filename, lineno)
        cmd = tokens[0]
        if cmd in ("-A", "--append", "-I", "--insert"):
            if len(tokens) < 2:
                raise InputError(f"{cmd} needs a chain name", filename, lineno)
            cname = tokens[1]
            chain = _get_chain(table, cname)
            if chain is None:
                raise InputError(f"chain '{cname}' does not exist in table {table.name}", filename, lineno)
            start = 2
            pos: int | None = None
            if cmd in ("-I", "--insert"):
                pos = 1
                if len(tokens) > 2 and tokens[2].isdigit():
                    pos = int(tokens[2])
                    start = 3
                if pos < 1 or pos > len(chain.rules) + 1:
                    raise InputError(f"-I {cname} {pos}: index of insertion too big", filename, lineno)
            text = "-A " + cname + _rest_text(s, tokens, start)
            rule = Rule(table=table.name, chain=cname, text=text, line=lineno)
            ctx = ParseCtx(filename, lineno, table.name, cname, family, None)
            # `-j NAME` names a user chain whenever one exists in this table, even
            # when an extension target has the same name.
            parse_rule_args(tokens, quoted, start, rule, ctx, table_declared)
            if rule.target is not None and rule.target.tables is not None and table.name not in rule.target.tables:
                raise InputError(
                    f"target {rule.target.name} is only valid in table(s) {', '.join(rule.target.tables)}",
                    filename,
                    lineno,
                )
            if rule.jump is not None and rule.jump not in STANDARD_VERDICTS:
                pending_jumps.append((rule, rule.jump))
            if pos is None:
                chain.rules.append(rule)
            else:
                chain.rules.insert(pos - 1, rule)
            continue
        if cmd in ("-N", "--new-chain"):
            if len(tokens) != 2:
                raise InputError("-N takes one chain name", filename, lineno)
            cname = tokens[1]
            if cname in table_chains:
                raise InputError(f"chain '{cname}' already exists", filename, lineno)
            if not _CHAIN_NAME.match(cname):
                raise InputError(f"invalid chain name {cname!r}", filename, lineno)
            table_chains[cname] = Chain(name=cname, policy=None, line=lineno)
            table_declared.add(cname)
            continue
        if cmd in ("-X", "--delete-chain"):
            if len(tokens) == 1:
                for cname in [c for c, ch in table_chains.items() if not ch.builtin]:
                    del table_chains[cname]
            else:
                cname = tokens[1]
                ch = table_chains.get(cname)
                if ch is None:
                    raise InputError(f"-X {cname}: no such chain", filename, lineno)
                if ch.builtin:
                    raise InputError(f"-X {cname}: cannot delete a built-in chain", filename, lineno)
                del table_chains[cname]
            continue
        if cmd in ("-F", "--flush"):
            if len(tokens) == 1:
                for ch in table_chains.values():
                    ch.rules.clear()
            else:
                ch = table_chains.get(tokens[1])
                if ch is None:
                    raise InputError(f"-F {tokens[1]}: no such chain", filename, lineno)
                ch.rules.clear()
            continue
        if cmd in ("-P", "--policy"):
            if len(tokens) < 3:
                raise InputError("-P needs a chain and a policy", filename, lineno)
            ch = _get_chain(table, tokens[1])
            if ch is None or not ch.builtin:
                raise InputError(f"-P {tokens[1]}: not a built-in chain of {table.name}", filename, lineno)
            if tokens[2] not in ("ACCEPT", "DROP"):
                raise InputError(f"-P: invalid policy {tokens[2]!r}", filename, lineno)
            ch.policy = tokens[2]
            continue
        if cmd in ("-D", "--delete"):
            if len(tokens) < 3:
                raise InputError("-D needs a chain and a rule", filename, lineno)
            ch = table_chains.get(tokens[1])
            if ch is None:
                raise InputError(f"-D {tokens[1]}: no such chain", filename, lineno)
            if len(tokens) == 3 and tokens[2].isdigit():
                k = int(tokens[2])
                if not 1 <= k <= len(ch.rules):
                    raise InputError(f"-D {tokens[1]} {k}: no such rule", filename, lineno)
                del ch.rules[k - 1]
            else:
                want = "-A " + tokens[1] + _rest_text(s, tokens, 2)
                for k, r in enumerate(ch.rules):
                    if r.text == want:
                        del ch.rules[k]
                        break
                else:
                    raise InputError(f"-D: no rule matching {want!r}", filename, lineno)
            continue
        raise InputError(f"unknown command {cmd!r}", filename, lineno)
    if table is not None:
        raise InputError(f"table {table.name} has no COMMIT: the dump is truncated", filename, max(lineno, 1))
    return rs


def _get_chain(table: Table, name: str) -> Chain | None:
    """A chain of the table; built-in chains exist once used, even when not declared."""
    ch = table.chains.get(name)
    if ch is None and name in BUILTIN_CHAINS[table.name]:
        ch = table.chains[name] = Chain(name=name, policy="ACCEPT")
    return ch


def _rest_text(line: str, tokens: list[str], start: int) -> str:
    """The original text from token index `start` on (preserves quoting), with a leading space."""
    # Find the position after the first `start` tokens in the raw line.
    pos = 0
    for k in range(start):
        t = tokens[k]
        pos = line.find(t, pos) + len(t) if t else pos
    rest = line[pos:].strip()
    return (" " + rest) if rest else ""


def _finish_table(table: Table, pending: list[tuple[Rule, str]], filename: str) -> None:
    for rule, target in pending:
        if target not in table.chains:
            raise InputError(
                f"rule jumps to chain '{target}' which does not exist in table {table.name}", filename, rule.line
            )
    for chain in table.chains.values():
        for k, r in enumerate(chain.rules, 1):
            r.index = k
            if r.text.startswith("-A ") and r.chain != chain.name:
                r.chain = chain.name


_V6 = re.compile(r"(^|\s)-[sd]\s+[0-9a-fA-F:]*:[0-9a-fA-F:]*(/\d+)?(\s|$)")


def _guess_family(text: str) -> str:
    if _V6.search(text) or "icmpv6" in text or "ipv6-icmp" in text or "icmp6" in text:
        return "ipv6"
    return "ipv4"
