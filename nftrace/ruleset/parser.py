"""iptables-save / iptables-restore text -> Ruleset.

The parser accepts exactly what `iptables-restore` loads, file by file, and
refuses the rest with one InputError naming the file, the line and the
reason.  The reference is the kernel's own tool, run in a throwaway network
namespace (tests/test_corpus_parse.py):

- lines as iptables-restore reads them: `*table`, `:CHAIN POLICY [p:b]`,
  `COMMIT` alone on its line, `#` comments in column 0, empty lines; a line
  of blanks, a `COMMIT ` with a trailing blank or a CR (DOS line end) is an
  error there, so it is one here (`strict=False` tolerates CR and trailing
  blanks, with a warning);
- each other line is one iptables command, split as iptables-restore splits
  it (blanks separate words, `"..."` groups with `\\` escapes, `'` is an
  ordinary character) and parsed as getopt_long does: options in any order,
  `--opt=value`, `-pvalue`, unambiguous abbreviations (`--dport` for
  `--destination-port`, `--proto`), `!` before an option;
- commands -A -I -D -R -N -X -F -Z -P -E -C -L -S; `-4`/`-6` lines for the
  other family are skipped; `-t` is refused (the table is the `*table`);
- a chain must be declared (`:NAME` or `-N`) before a rule jumps to it, and a
  second `*table` section of the same table starts from an empty table, as
  both the legacy and the nf_tables backends do;
- `-j NAME` names a user chain whenever one exists at that point, even when
  an extension target has the same name;
- extension options are dispatched to the most recently loaded extension that
  owns them; an option no loaded extension knows loads the match named after
  `-p` once (`-p tcp --dport 22` is `-p tcp -m tcp --dport 22`);
- what the kernel checks when the table is committed: jump loops, and the
  tables and hooks each match/target is valid in, for every hook a chain is
  reachable from (a chain no base chain reaches is not checked, as in the kernel).

Where the two backends disagree, a file loads only if both load it, with two
deliberate exceptions that follow iptables-nft, the default backend: a last
`COMMIT` without a newline after it, and TCPMSS without a SYN-flag match.
Objects outside the dump (ipsets, nfacct objects, conntrack helpers, SELinux
contexts) are assumed to exist on the dump's host.

Every rule keeps its text (as `-A CHAIN ...`) and its line.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Container, Iterator, Sequence
from dataclasses import dataclass, field
from operator import itemgetter

from nftrace.errors import InputError
from nftrace.gcquiet import quiet_gc
from nftrace.ruleset import registry
from nftrace.ruleset.canonical import canonical_text
from nftrace.ruleset.ext.basic import basic_match, protocol_number, protocol_save_name, quick_addr_match
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
from nftrace.ruleset.registry import Arg, ExtDef, ParseCtx, QuickParser

_CMD_LONG = {
    "append": "A", "insert": "I", "delete": "D", "replace": "R", "new-chain": "N", "delete-chain": "X",
    "flush": "F", "zero": "Z", "policy": "P", "rename-chain": "E", "check": "C", "list": "L",
    "list-rules": "S",
}  # fmt: skip
_CMD_NAMES = {v: k for k, v in _CMD_LONG.items()}
_OPT_LONG = {
    "source": "s", "src": "s", "destination": "d", "dst": "d", "protocol": "p", "in-interface": "i",
    "out-interface": "o", "jump": "j", "goto": "g", "match": "m", "fragment": "f", "set-counters": "c",
    "ipv4": "4", "ipv6": "6", "verbose": "v", "numeric": "n", "exact": "x", "line-numbers": "#",
    "wait": "w", "wait-interval": "W", "table": "t", "modprobe": "M", "help": "h", "version": "V",
}  # fmt: skip
_BASE_LONG = {**_CMD_LONG, **_OPT_LONG}
_RULE_CMDS = frozenset("AIDRC")
_FAST_SHORT = frozenset("AIDRNPECspdiojgmcf46")
_VALUE_OPTS = frozenset("mjgpsdio")
_ARG_OPTS = frozenset("sdpiojgmc")  # short options that take an argument
_FLAG_OPTS = frozenset("f46vnx#")
_INVERTIBLE = frozenset("sdpiof")
_CHAIN_MAX = 28
_STANDARD_CHAIN_CLASH = STANDARD_VERDICTS

_SAFE_WORD = re.compile(r"^[^\s\"\\]+$")


# possessive: a quoted word of a million escapes must not keep backtracking state per character
_TOKEN = re.compile(r'([^ \t\n"]*)"((?:[^"\\]++|\\.)*+)("?)|[^ \t\n"]+')
_UNESCAPE = re.compile(r"\\(.)", re.S)
_T_MSG = "the -t option cannot be used in iptables-restore input (the table is the '*table' line)"


def tokenize(line: str, ctx_file: str = "<rules>", lineno: int = 0) -> tuple[list[str], frozenset[int]]:
    """Split a rule line as iptables-restore does; return the words and the indexes of quoted ones.

    Blanks (space, tab) separate words; `"` starts a quoted part that ends at the next
    unescaped `"` and also ends the word; inside quotes `\\x` is x.  An unterminated quote
    runs to the end of the line, as in iptables-restore (which loads such a line: the rest
    of the line becomes one argument); parse_rules adds a warning for it.
    """
    tokens, quoted, _ = _tokenize(line)
    return tokens, quoted


# str.split() also splits at these; iptables-restore splits only at blanks and newlines
_ODD_BLANKS = "\r\x0b\x0c\x1c\x1d\x1e\x1f"
_ODD_BLANK = re.compile(f"[{_ODD_BLANKS}]")


_NOT_QUOTED: frozenset[int] = frozenset()
_QUOTED_AT: dict[int, frozenset[int]] = {}


def _tokenize(line: str, plain: bool = False) -> tuple[list[str], frozenset[int], bool]:
    """tokenize(), plus whether a quote was left open.

    plain: the caller knows the line is ASCII without blanks other than space and tab (for
    those, str.split splits exactly where iptables-restore does)."""
    if not plain:
        plain = line.isascii() and not _ODD_BLANK.search(line)
    i = line.find('"')
    if i < 0:
        if not plain:
            return [w for w in re.split(r"[ \t\n]+", line) if w], _NOT_QUOTED, False
        return line.split(), _NOT_QUOTED, False
    if plain:
        j = line.find('"', i + 1)
        if j > 0 and line.find('"', j + 1) < 0 and line.find("\\", i, j) < 0:
            # one quoted part (a comment): a word right before the quote joins it, the closing
            # quote ends the word
            words = line[:i].split()
            inner = line[i + 1 : j]
            if i and line[i - 1] not in " \t" and words:
                inner = words.pop() + inner
            n = len(words)
            words.append(inner)
            words.extend(line[j + 1 :].split())
            q = _QUOTED_AT.get(n)
            if q is None:
                q = _QUOTED_AT[n] = frozenset((n,))
            return words, q, False
    tokens: list[str] = []
    quoted: set[int] = set()
    parts = line.split('"')
    if len(parts) % 2 and plain and "\\" not in line:
        # balanced quotes, no escapes: split in C.  A word right before a quote joins the quoted
        # part; the closing quote ends the word.
        pending = ""
        for idx, part in enumerate(parts):
            if idx % 2:
                quoted.add(len(tokens))
                tokens.append(pending + part)
                pending = ""
                continue
            words = part.split()
            if idx + 1 < len(parts) and part and part[-1] not in " \t" and words:
                pending = words.pop()
            tokens.extend(words)
        return tokens, frozenset(quoted), False
    unterminated = False
    for m in _TOKEN.finditer(line):
        if m.group(3) is None:
            tokens.append(m.group(0))
            continue
        body = m.group(2)
        if not m.group(3):
            unterminated = True
        if "\\" in body:
            body = _UNESCAPE.sub(r"\1", body)
        quoted.add(len(tokens))
        tokens.append(m.group(1) + body)
    return tokens, frozenset(quoted), unterminated


def _table_word(tok: str) -> bool:
    """iptables-restore refuses any unquoted word that looks like -t (so -t cannot sneak in)."""
    if tok[:1] != "-" or "t" not in tok:
        return False
    if tok[1:2] != "-":
        return True
    return len(tok) > 2 and tok[2] == "t" and "--table".startswith(tok)


def _requote(tok: str) -> str:
    if tok and _SAFE_WORD.match(tok):
        return tok
    return '"' + tok.replace("\\", "\\\\").replace('"', '\\"') + '"'


# ------------------------------------------------------------------ one command line


@dataclass(slots=True)
class _Inst:
    """One loaded extension (a `-m NAME` or the `-j NAME` target) and the options given to it."""

    d: ExtDef
    opts: list[Option] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _Cmd:
    cmd: str = ""
    chain: str | None = None
    num: int | None = None
    arg2: str | None = None
    basics: dict[str, tuple[bool, str]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    matches: list[_Inst] = field(default_factory=list)
    target: _Inst | None = None
    jump: str | None = None
    goto: bool = False
    skip: bool = False
    target_pos: int = 0
    used: list[int] = field(default_factory=list)  # token indexes of the command and its arguments
    dropped: list[int] = field(default_factory=list)  # -4/-6/-c tokens left out of the text


class _Args:
    """getopt_long over a command line, with iptables' option table and its loaded extensions."""

    __slots__ = ("toks", "quoted", "i", "ctx", "family", "chain_exists", "c", "proto_used")

    def __init__(self, toks: list[str], quoted: frozenset[int], ctx: ParseCtx, chain_exists: Container[str]) -> None:
        self.toks = toks
        self.quoted = quoted
        self.i = 0
        self.ctx = ctx
        self.family = ctx.family
        self.chain_exists = chain_exists
        self.c = _Cmd()
        self.proto_used = False

    def err(self, msg: str) -> InputError:
        return self.ctx.error(msg)

    def has_arg(self) -> bool:
        """iptables' xs_has_arg: a next word that does not start with '-' or '!'."""
        return self.i < len(self.toks) and self.toks[self.i][:1] not in ("-", "!")

    def next_word(self, what: str, record: bool = False) -> str:
        if self.i >= len(self.toks):
            raise self.err(f"option {what} requires an argument")
        w = self.toks[self.i]
        if w[:1] == "-" and "t" in w and _table_word(w) and self.i not in self.quoted:
            raise self.err(_T_MSG)
        if record:
            self.c.used.append(self.i)
        self.i += 1
        return w

    def parse(self) -> _Cmd:
        toks = self.toks
        n = len(toks)
        invert = False
        c = self.c
        while self.i < n:
            k = self.i
            tok = toks[k]
            self.i += 1
            if len(tok) == 2 and tok[0] == "-" and tok[1] in _FAST_SHORT:
                self._base(tok[1], None, invert, tok)
                if c.skip:
                    return c
                invert = False
                continue
            if tok[:1] != "-" or tok == "-":
                if tok == "!":
                    if invert:
                        raise self.err("multiple consecutive '!' are not allowed")
                    invert = True
                    continue
                raise self.err(f"bad argument {tok!r}")
            if tok == "--":
                raise self.err("bad argument '--'")
            if tok[1] == "-":
                name, eq, attached = tok[2:].partition("=")
                self._long(name, attached if eq else None, invert, tok)
            else:
                if "t" in tok and k not in self.quoted:
                    raise self.err(_T_MSG)
                self._short(tok, invert)
            if c.skip:
                return c
            invert = False
        if invert:
            raise self.err("'!' at the end of the line: nothing appropriate follows it")
        return c

    # -- short options (-A CHAIN, -ptcp, -f, ...)
    def _short(self, tok: str, invert: bool) -> None:
        pos = 1
        while pos < len(tok):
            ch = tok[pos]
            rest = tok[pos + 1 :]
            if ch in _ARG_OPTS or ch in "AIDRNPEC":
                self._base(ch, rest if rest else None, invert, f"-{ch}")
                return
            if ch in "XFZLS":
                self._base(ch, rest if rest else None, invert, f"-{ch}")
                return
            if ch in _FLAG_OPTS:
                self._base(ch, None, invert, f"-{ch}")
                if self.c.skip:
                    return
                invert = False
                pos += 1
                continue
            if ch == "w" or ch == "W":
                self._base(ch, rest if rest else None, invert, f"-{ch}")
                return
            raise self.err(f"unknown option '-{ch}'")

    # -- long options (--dport 22, --protocol=tcp, --dpor 22)
    def _long(self, name: str, attached: str | None, invert: bool, tok: str) -> None:
        if not name:
            raise self.err(f"bad argument {tok!r}")
        code = _BASE_LONG.get(name)
        if code is not None:
            self._base(code, attached, invert, f"--{name}")
            return
        found = self._ext_exact(name)
        if found is None:
            pre = self._prefix(name, tok)
            if isinstance(pre, str):
                self._base(pre, attached, invert, f"--{name}")
                return
            found = pre
        if found is None and self._load_proto():
            found = self._ext_exact(name) or self._prefix_ext_only(name, tok)
        if found is None:
            raise self.err(f"unknown option {tok}" + self._hint(name))
        inst, canon = found
        self._ext_opt(inst, canon, attached, invert)

    def _hint(self, name: str) -> str:
        c = self.c
        if c.matches or c.target:
            return ""
        p = self.ctx.protocol
        if p and registry.find_match(self._proto_match_name() or "", self.family) is None:
            return f" (no extension handles it, and -p {p} has no match of that name)"
        return " (did you forget -m or -p?)" if name in ("dport", "sport", "dports", "sports") else ""

    def _loaded_newest_first(self) -> list[_Inst]:
        """Loaded extensions, the most recent first (its options shadow older ones, as in iptables)."""
        c = self.c
        if c.target is None:
            return c.matches[::-1]
        seq: list[_Inst] = [*c.matches]
        seq.insert(c.target_pos, c.target)
        return seq[::-1]

    def _ext_exact(self, name: str) -> tuple[_Inst, str] | None:
        for inst in self._loaded_newest_first():
            d = inst.d
            if name in d.options:
                return inst, name
            a = d.aliases.get(name)
            if a is not None:
                return inst, a
        return None

    def _prefix(self, name: str, tok: str) -> tuple[_Inst, str] | str | None:
        cands: dict[object, tuple[_Inst, str] | str] = {}
        for long, code in _BASE_LONG.items():
            if long.startswith(name):
                cands.setdefault(("base", code), code)
        for inst in self._loaded_newest_first():
            d = inst.d
            for o in itertools.chain(d.options, d.aliases):
                if o.startswith(name):
                    canon = d.aliases.get(o, o)
                    # the same extension loaded twice (-p tcp --syn -m tcp --dpor 0): the newest
                    # instance takes the option, as iptables does
                    cands.setdefault((d.name, canon), (inst, canon))
        if len(cands) > 1:
            names = sorted({v if isinstance(v, str) else v[1] for v in cands.values()})
            raise self.err(f"option {tok!r} is ambiguous (it abbreviates {', '.join('--' + x for x in names)})")
        return next(iter(cands.values())) if cands else None

    def _prefix_ext_only(self, name: str, tok: str) -> tuple[_Inst, str] | None:
        r = self._prefix(name, tok)
        return r if isinstance(r, tuple) else None

    def _proto_match_name(self) -> str | None:
        p = self.ctx.protocol
        if p is None:
            return None
        num = protocol_number(p)
        if p[:1].isdigit() and num is not None:
            return protocol_save_name(num)
        return p

    def _load_proto(self) -> bool:
        """iptables' load_proto: an option nobody owns loads the match named after -p, once."""
        if self.proto_used:
            return False
        name = self._proto_match_name()
        if name is None:
            return False
        d = registry.find_match(name, self.family)
        if d is None:
            return False
        self.proto_used = True
        self.c.matches.append(_Inst(d))
        return True

    def _ext_opt(self, inst: _Inst, canon: str, attached: str | None, invert: bool) -> None:
        spec: Arg = inst.d.options[canon]
        ext = inst.d.name
        if ext == "multiport" and self.ctx.protocol is None:
            # libxt_multiport checks the protocol when it reads its option: -p must come first
            raise self.err("multiport needs '-p tcp', '-p udp', '-p udplite', '-p sctp' or '-p dccp' before its option")
        if invert and not spec.inv:
            raise self.err(f"{ext}: --{canon} cannot be negated with '!'")
        if canon in inst.seen and not spec.multi:
            raise self.err(f"{ext}: --{canon} can be given only once")
        inst.seen.add(canon)
        vals: list[str] = []
        if attached is not None:
            if spec.hi == 0:
                raise self.err(f"{ext}: option --{canon} does not take an argument")
            vals.append(attached)
        elif spec.lo >= 1 or spec.hi >= 1 and self.has_arg():
            vals.append(self.next_word(f"--{canon}"))
        if spec.hi == 2 and len(vals) == 1:
            if self.has_arg():
                vals.append(self.next_word(f"--{canon}"))
            elif spec.lo == 2:
                raise self.err(f"{ext}: --{canon} requires two arguments")
        inst.opts.append(Option(canon, invert, tuple(vals)))

    # -- built-in options
    def _base(self, code: str, attached: str | None, invert: bool, spelled: str) -> None:
        c = self.c
        if invert and code not in _INVERTIBLE:
            raise self.err(f"'!' cannot be used with {spelled}")
        if code in _VALUE_OPTS:
            # the common case: -m NAME, -j NAME, -p PROTO, -s/-d ADDR, -i/-o IFACE
            val = attached if attached is not None else self.next_word(spelled)
            if val == "!" and code in _INVERTIBLE:
                nxt = self.toks[self.i] if self.i < len(self.toks) else ""
                raise self.err(
                    f"'{spelled} ! {nxt}': put '!' before the option ('! {spelled} {nxt}'); "
                    "iptables 1.4.3 and later refuse the old form"
                )
            if code == "m":
                d = registry.find_match(val, self.family) if val else None
                if d is None:
                    if not val:
                        raise self.err("-m needs an extension name")
                    raise self.err(f"unknown match extension '-m {val}'" + _family_hint(val, self.family, "match"))
                c.matches.append(_Inst(d))
            elif code == "j" or code == "g":
                self._jump(code, val, spelled)
            else:
                if code == "p":
                    val = val.lower()
                    self.ctx.protocol = val
                    self.ctx.proto_negated = invert
                    self.ctx.proto_num = protocol_number(val)
                if code in c.basics:
                    raise self.err(f"multiple -{code} flags are not allowed")
                c.basics[code] = (invert, val)
                c.order.append(code)
            return
        if code in _CMD_NAMES:
            if c.cmd:
                raise self.err(f"cannot use -{code} with -{c.cmd}: one command per line")
            c.cmd = code
            self._command(code, attached, spelled)
            return
        if code in ("4", "6"):
            c.dropped.append(self.i - 1)
            if (code == "4") != (self.family == "ipv4"):
                c.skip = True  # iptables-restore ignores lines for the other family
            return
        if code in ("v", "n", "x", "#"):
            c.dropped.append(self.i - 1)
            return
        if code in ("w", "W", "M"):
            if code == "M" and attached is None or code != "M" and attached is None and self.has_arg():
                self.next_word(spelled)
            return
        if code in ("h", "V"):
            raise self.err(f"{spelled} is not valid in iptables-restore input")
        if code == "t":
            raise self.err(_T_MSG)
        if code == "f":
            if self.family == "ipv6":
                raise self.err("-f is not an ip6tables option (use -m frag)")
            self._set_basic("f", invert, "", spelled)
            return
        if code == "c":
            self.c.dropped.append(self.i - 1)  # the -c word itself
            self._counters(attached if attached is not None else self.next_word(spelled))
            return
        raise self.err(f"unknown option {spelled!r}")

    def _set_basic(self, code: str, invert: bool, val: str, spelled: str) -> None:
        c = self.c
        if code in c.basics:
            raise self.err(f"multiple -{code} flags are not allowed")
        c.basics[code] = (invert, val)
        c.order.append(code)

    def _jump(self, code: str, name: str, spelled: str) -> None:
        c = self.c
        if c.jump is not None or c.target is not None or "j" in c.basics:
            raise self.err("multiple -j/-g flags are not allowed")
        c.basics["j"] = (False, name)
        if not name:
            raise self.err(f"{spelled}: empty target name")
        if len(name) > _CHAIN_MAX or " " in name or "\t" in name:
            raise self.err(f"{spelled}: invalid target name {name!r} ({_CHAIN_MAX} characters max)")
        if code == "g":
            if name == "DROP" and self.ctx.table == "nat":
                c.jump, c.goto = name, True  # refused once the line is parsed (_run_command)
                return
            if name not in self.chain_exists:
                raise self.err(f"-g {name}: goto needs a user chain declared before this line (no chain {name!r})")
            c.jump, c.goto = name, True
            return
        if name in STANDARD_VERDICTS or name in self.chain_exists:
            c.jump = name
            return
        d = registry.find_target(name, self.family)
        if d is None:
            raise self.err(
                f"-j {name}: unknown target: no chain {name!r} was declared before this line in table "
                f"{self.ctx.table}, and iptables has no target extension of that name"
                + _family_hint(name, self.family, "target")
            )
        c.target = _Inst(d)
        c.target_pos = len(c.matches)

    def _counters(self, val: str) -> None:
        if self.i - 1 not in self.c.dropped:
            self.c.dropped.append(self.i - 1)
        if "," in val:
            a, _, b = val.partition(",")
        else:
            a = val
            if not self.has_arg():
                raise self.err("-c needs a packet and a byte counter")
            b = self.next_word("-c")
            self.c.dropped.append(self.i - 1)
        if not (a.isdigit() and b.isdigit()):
            raise self.err(f"-c: invalid counters {val!r}")

    def _command(self, code: str, attached: str | None, spelled: str) -> None:
        c = self.c
        c.used.append(self.i - 1)
        if code in "AIDRNPEC":
            c.chain = attached if attached is not None else self.next_word(spelled, True)
        elif code in "XFZLS":
            if attached is not None:
                c.chain = attached
            elif self.has_arg():
                c.chain = self.next_word(spelled, True)
        if code in "ID" and self.has_arg():
            c.num = self._rulenum(self.next_word(spelled, True))
        elif code == "R":
            if not self.has_arg():
                raise self.err("-R needs a chain and a rule number")
            c.num = self._rulenum(self.next_word(spelled, True))
        elif code in "ZS" and c.chain is not None and self.has_arg():
            c.num = self._rulenum(self.next_word(spelled, True))
        elif code == "P":
            if not self.has_arg():
                raise self.err("-P needs a chain and a policy")
            c.arg2 = self.next_word(spelled, True)
        elif code == "E":
            if not self.has_arg():
                raise self.err("-E needs the old and the new chain name")
            c.arg2 = self.next_word(spelled, True)

    def _rulenum(self, w: str) -> int:
        if not w.isdigit() or int(w) < 1:
            raise self.err(f"invalid rule number {w!r}")
        return int(w)


def _family_hint(name: str, family: str, kind: str) -> str:
    other = "ipv6" if family == "ipv4" else "ipv4"
    if (registry.find_match if kind == "match" else registry.find_target)(name, other) is not None:
        tool = "ip6tables" if other == "ipv6" else "iptables"
        return f" ({name} exists only in {tool}: are these {other} rules?)"
    return ""


# ------------------------------------------------------------------ building specs

# Cache of parsed sections: kube-proxy-sized dumps repeat the same match text
# thousands of times; specs are immutable so they can be shared.
_SECTION_CACHE: dict[tuple[object, ...], object] = {}


def _build(inst: _Inst, ctx: ParseCtx) -> MatchSpec | TargetSpec:
    d = inst.d
    key: tuple[object, ...] = (d.kind, d.name, ctx.family, ctx.table, ctx.protocol, ctx.proto_negated, *inst.opts)
    cached = _SECTION_CACHE.get(key)
    if cached is not None:
        assert isinstance(cached, (MatchSpec, TargetSpec))
        return cached
    spec = _parse_section(d, inst.opts, ctx)
    if len(_SECTION_CACHE) < 200_000:
        _SECTION_CACHE[key] = spec
    return spec


def _parse_section(d: ExtDef, opts: list[Option], ctx: ParseCtx) -> MatchSpec | TargetSpec:
    spec: MatchSpec | TargetSpec = d.parse(opts, ctx)
    tables = spec.tables
    if tables is not None and ctx.table not in tables:
        what = "target" if d.kind == "target" else "match"
        raise ctx.error(f"{what} {d.name} is only valid in table(s) {', '.join(tables)}, not {ctx.table}")
    return spec


_BASIC_CACHE: dict[tuple[str, bool, str, str], MatchSpec] = {}


def _basic(code: str, neg: bool, val: str, ctx: ParseCtx) -> MatchSpec:
    key = (code, neg, val, ctx.family)
    spec = _BASIC_CACHE.get(key)
    if spec is None:
        spec = basic_match(code, neg, val, ctx)
        if len(_BASIC_CACHE) < 200_000:
            _BASIC_CACHE[key] = spec
    return spec


def _build_rules(c: _Cmd, ctx: ParseCtx, text: str, line: int, table: str, chain: str) -> list[Rule]:
    """The rule(s) of an -A/-I/-R/-D/-C line (several when -s/-d list several addresses)."""
    ctx.matches = []
    basic_specs: list[tuple[str, MatchSpec]] = []
    s_list: list[str | None] = [None]
    d_list: list[str | None] = [None]
    for code in c.order:
        if code == "j":
            continue
        neg, val = c.basics[code]
        if code in ("s", "d") and "," in val:
            parts = [p for p in val.split(",")]
            if any(not p for p in parts):
                raise ctx.error(f"-{code} {val}: empty address in the list")
            if neg:
                raise ctx.error(f"'! -{code} {val}': '!' is not allowed with several addresses")
            if code == "s":
                s_list = list(parts)
            else:
                d_list = list(parts)
            continue
        basic_specs.append((code, _basic(code, neg, val, ctx)))
    ext_matches: list[MatchSpec] = []
    for inst in c.matches:
        spec = _build(inst, ctx)
        assert isinstance(spec, MatchSpec)
        ext_matches.append(spec)
        ctx.matches.append(spec)
    tgt: TargetSpec | None = None
    if c.target is not None:
        t = _build(c.target, ctx)
        assert isinstance(t, TargetSpec)
        tgt = t
    if len(s_list) == 1 and len(d_list) == 1:
        r = Rule(table=table, chain=chain, text=text, line=line, matches=[sp for _, sp in basic_specs] + ext_matches)
        r.target = tgt
        if c.jump is not None:
            r.jump, r.goto = c.jump, c.goto
        if ctx.protocol is not None:
            r.protocol = ctx.protocol
            r.proto_negated = ctx.proto_negated
        return [r]
    rules: list[Rule] = []
    multi = True
    for s, d in itertools.product(s_list, d_list):
        matches: list[MatchSpec] = []
        rtext = text
        for code in c.order:
            if code == "s" and s is not None:
                matches.append(_basic("s", False, s, ctx))
            elif code == "d" and d is not None:
                matches.append(_basic("d", False, d, ctx))
            else:
                for bc, spec in basic_specs:
                    if bc == code:
                        matches.append(spec)
        if multi:
            rtext = _substitute_addr(text, c, s, d)
        matches.extend(ext_matches)
        r = Rule(table=table, chain=chain, text=rtext, line=line, matches=matches, target=tgt)
        if c.jump is not None:
            r.jump, r.goto = c.jump, c.goto
        if ctx.protocol is not None:
            r.protocol = ctx.protocol
            r.proto_negated = ctx.proto_negated
        rules.append(r)
    return rules


def _substitute_addr(text: str, c: _Cmd, s: str | None, d: str | None) -> str:
    out = text
    for code, val in (("s", s), ("d", d)):
        if val is None:
            continue
        lst = c.basics[code][1]
        out = out.replace(lst, val, 1)
    return out


# ------------------------------------------------------------------ command lines by shape
#
# A kube-proxy dump has 100,000 `-A` lines but a few dozen shapes: the lines differ only in
# chain names, addresses, ports, comments and probabilities.  getopt's work (which word is an
# option, which extension owns it, how many arguments it takes) depends only on the shape, so
# it is done once per shape and replayed.
#
# The shape of a line is its words, with every word replaced by "" unless it starts with '-'
# or '!' (has_arg, the -t check and option names only look at those) or is the name of an
# extension, a protocol or a standard verdict (-m, -p and -j look those up); plus which words
# are quoted.  Two lines of one shape go through getopt identically: the shape line is parsed
# with placeholders for the replaced words, and a placeholder only ever becomes a value (an
# option argument, the chain, the jump).  The values the placeholders stand for are checked
# per line, by the same code as the full path (-s/-d, extension parsers, chain existence,
# jump to a declared chain).  Whenever the shape path meets anything else (another command
# than -A, a numeric -p, an address list, an error), the line takes the full path, which is
# the reference: tests/test_parser_shapes.py checks both give the same model and errors.


class _Specs:
    """A section's specs by value (the values of its placeholders in a line)."""

    __slots__ = ("specs", "cache", "misses")

    def __init__(self) -> None:
        self.specs: dict[object, MatchSpec | TargetSpec] = {}
        self.cache = True  # specs keeps what was parsed (see tally)
        self.misses = 0

    def tally(self, lines: int) -> None:
        """One more value parsed, of `lines` the shape read: keep no specs when nearly every value is
        new (a comment or an endpoint per rule): looking them up would only cost."""
        self.misses += 1
        if self.misses & 2047 == 0 and self.misses * 8 > lines * 7:
            self.cache = False
            self.specs = {}


class _Section(_Specs):
    """An extension section of a shape: its options with placeholders, and specs by value.

    Every section of a shape (the -s/-d/-i/... matches, the -m sections, the target) answers
    `specs.get(key(vals))` with the spec of a line's values when they were parsed before;
    `build` parses them (None: only the full path can, e.g. an address list)."""

    __slots__ = ("d", "opts", "key", "quick", "qslot")

    def __init__(self, d: ExtDef, opts: list[Option], slot_of: dict[str, int]) -> None:
        super().__init__()
        self.d = d
        # each option as written when it has no placeholder, else (name, negated, [value index or -1,
        # literal value])
        self.opts: list[Option | tuple[str, bool, list[tuple[int, str]]]] = []
        slots: list[int] = []
        for o in opts:
            vals = [(slot_of.get(v, -1), v) for v in o.values]
            if all(k < 0 for k, _ in vals):
                self.opts.append(o)
            else:
                self.opts.append((o.name, o.negated, vals))
                slots.extend(k for k, _ in vals if k >= 0)
        # the values of the slots, as a tuple (or one string); specs are keyed by it
        self.key: Callable[[Sequence[str]], object] = itemgetter(*slots) if slots else _no_key
        # the extension's quick parser, for a section of its one option with one value (ExtDef.quick)
        self.quick: QuickParser | None = None
        self.qslot = -1
        o0 = self.opts[0] if len(self.opts) == 1 else None
        if d.quick is not None and o0 is not None and not isinstance(o0, Option):
            name, negated, vals = o0
            if name == d.quick[0] and not negated and len(vals) == 1 and vals[0][0] >= 0:
                self.quick = d.quick[1]
                self.qslot = vals[0][0]

    def quick_spec(self, vals: Sequence[str], qctx: ParseCtx) -> MatchSpec | TargetSpec | None:
        """The spec of vals by the quick parser (never raises), or None: build must."""
        q = self.quick
        if q is None:
            return None
        spec: MatchSpec | TargetSpec | None = q(vals[self.qslot], qctx)
        if spec is None or spec.tables is not None and qctx.table not in spec.tables:
            return None
        return spec

    def build(self, vals: Sequence[str], ctx: ParseCtx) -> MatchSpec | TargetSpec | None:
        # not through _build's cache: the shape's own (specs) already shares a section by its values
        opts = [
            o if isinstance(o, Option) else Option(o[0], o[1], tuple([vals[k] if k >= 0 else v for k, v in o[2]]))
            for o in self.opts
        ]
        return _parse_section(self.d, opts, ctx)


class _BasicSection(_Specs):
    """A -s/-d/-i/-o/-p/-f option of a shape, as a section (see _Section)."""

    __slots__ = ("code", "neg", "slot", "key")

    def __init__(self, code: str, neg: bool, val: str, slot: int, ctx: ParseCtx) -> None:
        super().__init__()
        self.code = code
        self.neg = neg
        self.slot = slot
        if slot < 0:  # a literal word: parsed now, the same for every line
            self.key: Callable[[Sequence[str]], object] = _no_key
            self.specs[None] = _basic(code, neg, val, ctx)
        else:
            self.key = itemgetter(slot)

    def quick_spec(self, vals: Sequence[str], qctx: ParseCtx) -> MatchSpec | None:
        if self.code == "s" or self.code == "d":
            return quick_addr_match(self.code, self.neg, vals[self.slot], qctx.family)
        return None

    def build(self, vals: Sequence[str], ctx: ParseCtx) -> MatchSpec | None:
        val = vals[self.slot]
        if "," in val and (self.code == "s" or self.code == "d"):
            return None  # an address list: several rules (the full path)
        return _basic(self.code, self.neg, val, ctx)


def _no_key(vals: Sequence[str]) -> None:
    return None


def _one(k: int) -> Callable[[list[str]], Sequence[str]]:
    def pick(toks: list[str]) -> Sequence[str]:
        return (toks[k],)

    return pick


# an unquoted word a placeholder stands for, and a quoted one without escapes (see _Shape.rx)
_RX_WORD = r'([^-! \t"][^ \t"]*)'
_RX_QUOTED = r'"([^-!"\\][^"\\]*)"'


class _Shape:
    """How every line of one shape parses: getopt's result with the values as indexes.

    A line's values are its placeholder words in order (vals[0] is the chain); `rx`, when
    set, reads them straight from a line: it matches exactly the lines whose words (split
    as _tokenize splits a plain ASCII line) have this shape, given that no value is a word
    kept literally (_KEEP), which the caller checks."""

    __slots__ = (
        "pick", "used", "dropped", "matches", "target", "sections", "jump_slot", "jump",
        "goto", "protocol", "proto_negated", "proto_num", "no_chains", "rx", "hooked", "qctx", "lines",
    )  # fmt: skip

    def __init__(
        self, c: _Cmd, slot_of: dict[str, int], ctx: ParseCtx, tokens: list[str], quoted: frozenset[int]
    ) -> None:
        assert c.chain is not None
        order = sorted(slot_of.values())  # token indexes of the values
        val_of = {ph: order.index(k) for ph, k in slot_of.items()}  # placeholder -> value index
        assert val_of[c.chain] == 0  # the chain is the first placeholder (word 1 of `-A CHAIN`)
        # a line's values from its words (a tuple, as itemgetter gives for two or more)
        self.pick: Callable[[list[str]], Sequence[str]] = itemgetter(*order) if len(order) > 1 else _one(order[0])
        self.used = c.used
        self.dropped = c.dropped
        # the matches' sections in the rule's order: -s/-d/-i/-o/... first, then the -m sections
        self.matches: list[_Section | _BasicSection] = []
        for code in c.order:
            if code == "j":
                continue
            neg, val = c.basics[code]
            self.matches.append(_BasicSection(code, neg, val, val_of.get(val, -1), ctx))
        self.matches.extend(_Section(i.d, i.opts, val_of) for i in c.matches)
        self.target = _Section(c.target.d, c.target.opts, val_of) if c.target is not None else None
        # the matches' sections, then the target's
        self.sections: list[_Section | _BasicSection] = [*self.matches, *([self.target] if self.target else [])]
        self.jump_slot = val_of.get(c.jump, -1) if c.jump is not None else -1
        self.jump = c.jump
        self.goto = c.goto
        self.protocol = ctx.protocol
        self.proto_negated = ctx.proto_negated
        self.proto_num = ctx.proto_num
        # the chains -i or -o make the line an error in (the full path says which)
        no: set[str] = set()
        if "o" in c.basics:
            no |= {"PREROUTING", "INPUT"}
        if "i" in c.basics:
            no |= {"POSTROUTING", "OUTPUT"}
        self.no_chains = frozenset(no)
        # a spec of this shape's lines is accepted in some hooks only (set as they are parsed)
        self.hooked = any(spec.hooks is not None for sec in self.matches for spec in sec.specs.values())
        self.rx = _shape_rx(tokens, quoted, set(order), c)
        # what quick parsers see (ExtDef.quick): the shape's table, family and protocol; no line
        self.qctx = ParseCtx("", 0, ctx.table, "", ctx.family, self.protocol, self.proto_negated, self.proto_num)
        self.lines = 0  # lines read by this shape

    def ctx(self, filename: str, lineno: int, table: str, chain: str, family: str) -> ParseCtx:
        return ParseCtx(filename, lineno, table, chain, family, self.protocol, self.proto_negated, self.proto_num)


def _shape_rx(tokens: list[str], quoted: frozenset[int], slots: set[int], c: _Cmd) -> re.Pattern[str] | None:
    """The regular expression of a shape's lines, as iptables-save writes them: one blank between
    words, none at the end, the rule text the line itself; None for other shapes."""
    if c.used != _USED_A or c.dropped or tokens[0] != "-A" or 1 in quoted:
        return None
    parts = []
    for k, t in enumerate(tokens):
        if k in slots:
            parts.append(_RX_QUOTED if k in quoted else _RX_WORD)
        elif k in quoted:
            return None  # a literal word in quotes: rare; such lines take the tokenizer
        else:
            parts.append(re.escape(t))
    return re.compile(" ".join(parts) + r"\Z")


class _WithPlaceholders:
    """The declared chains, plus the placeholders that stand for a declared chain."""

    __slots__ = ("declared", "extra")

    def __init__(self, declared: set[str], extra: set[str]) -> None:
        self.declared = declared
        self.extra = extra

    def __contains__(self, name: object) -> bool:
        return name in self.extra or name in self.declared


_NO_SHAPE = object()  # lines of this shape take the full path
_KEEP: frozenset[str] = frozenset()


def _keep_words() -> frozenset[str]:
    """The words kept literally in a shape: names -m, -p and -j look up."""
    global _KEEP
    if not _KEEP:
        from nftrace.ruleset.ext.basic import PROTO_BY_NAME

        registry.load_extensions()
        names = {n for n, _ in registry.MATCHES} | {n for n, _ in registry.TARGETS}
        _KEEP = frozenset(names | set(registry.MATCH_ALIASES) | set(PROTO_BY_NAME) | STANDARD_VERDICTS)
    return _KEEP


def _make_shape(st: _TableState, tokens: list[str], quoted: frozenset[int], ctx: ParseCtx) -> object:
    """Parse a line's shape once (placeholders for its values); _NO_SHAPE when it must take the full path."""
    keep = _KEEP
    slot_of: dict[str, int] = {}
    stoks: list[str] = []
    extra: set[str] = set()
    for k, t in enumerate(tokens):
        if t[:1] in "-!" or t in keep:
            stoks.append(t)
            continue
        ph = f"\x00{k}"
        slot_of[ph] = k
        stoks.append(ph)
        if t in st.declared:
            extra.add(ph)  # a jump to it is a jump to a declared chain
    try:
        c = _Args(stoks, quoted, ctx, _WithPlaceholders(st.declared, extra)).parse()
        if c.skip or c.cmd != "A" or c.chain not in slot_of or c.jump == "DROP" and ctx.table == "nat":
            return _NO_SHAPE
        if ctx.protocol is not None and ctx.protocol in slot_of:
            return _NO_SHAPE  # -p 6: the protocol decides which match -p loads
        if min(slot_of.values()) != slot_of[c.chain]:
            return _NO_SHAPE  # a value before the chain (`-s 1.2.3.4 -A INPUT`): the full path
        return _Shape(c, slot_of, ctx, tokens, quoted)
    except InputError:
        return _NO_SHAPE


def _shaped_rule(
    shape: _Shape,
    st: _TableState,
    vals: Sequence[str],
    body: str,
    tokens: list[str] | None,
    filename: str,
    lineno: int,
    family: str,
) -> bool:
    """Append the rule of an -A line of a known shape; False when the full path must decide (it raises).

    vals: the line's values (shape.pick of its words, or shape.rx's groups); tokens: its words,
    or None when shape.rx read the line (whose rule text is then the line itself)."""
    cname = vals[0]
    table = st.table
    chain = st.last
    if chain is None or chain.name != cname:  # most lines follow one of the same chain
        chain = table.chains.get(cname)
        if chain is None:
            return False
        st.last = chain
    if cname in shape.no_chains:
        return False
    shape.lines += 1
    jump = shape.jump
    if shape.jump_slot >= 0:
        jump = vals[shape.jump_slot]
        if jump not in st.declared or jump in st.builtins:
            return False  # the full path (a jump to a built-in chain is refused at COMMIT)
    specs: list[MatchSpec | TargetSpec | None] = [sec.specs.get(sec.key(vals)) for sec in shape.sections]
    if None in specs:
        # values not parsed before in this shape: by the quick parsers, else in full
        ctx: ParseCtx | None = None
        try:
            for k, sec in enumerate(shape.sections):
                if specs[k] is not None:
                    continue
                spec = sec.quick_spec(vals, shape.qctx)
                if spec is None:
                    if ctx is None:
                        ctx = shape.ctx(filename, lineno, table.name, cname, family)
                    spec = sec.build(vals, ctx)
                    if spec is None:
                        return False
                specs[k] = spec
                if sec.cache:
                    sec.specs[sec.key(vals)] = spec
                    sec.tally(shape.lines)
                if spec.hooks is not None:
                    shape.hooked = True
        except InputError:
            return False
    tgt = specs.pop() if shape.target is not None else None  # the target's section is the last
    text = body if tokens is None else "-A " + cname + _rule_text_of(body, tokens, shape.used, shape.dropped)
    rules = chain.rules
    r = Rule(
        table.name, cname, text, lineno, specs, tgt, jump, shape.goto, len(rules) + 1,  # type: ignore[arg-type]
        shape.protocol, shape.proto_negated,
    )  # fmt: skip
    rules.append(r)
    if shape.hooked and st.hooked is not None:
        st.hooked.append(r)
    if chain.line == 0 and chain.policy is not None:
        chain.line = lineno  # a rule creates the base chain (iptables-nft)
    return True


# ------------------------------------------------------------------ the file


def _tokenized_rule(st: _TableState, line: str, sig: object, filename: str, lineno: int, family: str) -> bool:
    """Append the rule of an -A line by its words and shape; False when the full path must decide.

    sig: the line's signature when the text is plain (see _parse_text), else None."""
    tokens, quoted, open_quote = _tokenize(line, sig is not None)
    if open_quote:
        return False
    keep = _KEEP
    key = (tuple([t if t[:1] in "-!" or t in keep else "" for t in tokens]), quoted)
    shape = st.shapes.get(key)
    if shape is None:
        ctx = ParseCtx(filename, lineno, st.table.name, "", family, None)
        shape = st.shapes[key] = _make_shape(st, tokens, quoted, ctx)
    if not isinstance(shape, _Shape):
        return False
    if sig is not None and shape.rx is not None:
        # the next lines of this signature try this shape's regular expression first
        known = st.by_sig.setdefault(sig, [])
        if shape not in known and len(known) < _PER_SIG:
            known.append(shape)
    return _shaped_rule(shape, st, shape.pick(tokens), line, tokens, filename, lineno, family)


# Lines of a plain text are sorted by a signature (the first word after the chain, the number
# of words starting with a dash, the start of the last such word) before their words are split:
# the shapes met for it are tried first, by their regular expressions.  The signature only
# picks which to try: a line no regular expression matches is split into words as before.
_PER_SIG = 8


@dataclass(slots=True)
class _TableState:
    table: Table
    declared: set[str]  # chains that exist at this point (built-in and user)
    builtins: frozenset[str]  # the table's built-in chains
    #: shape of a command line -> _Shape or _NO_SHAPE (see _make_shape)
    shapes: dict[tuple[tuple[str, ...], frozenset[int]], object] = field(default_factory=dict)
    #: a line's signature -> the shapes with a regular expression (_Shape.rx) met for it
    by_sig: dict[object, list[_Shape]] = field(default_factory=dict)
    #: chains a command of the full path changed: their rules are numbered again at COMMIT (the
    #: shape path numbers each rule as it appends it)
    renumber: set[str] = field(default_factory=set)
    #: the rules with a match or target the kernel accepts in some hooks only (spec.hooks), which
    #: COMMIT checks; None once a command of the full path ran: COMMIT then checks every rule
    hooked: list[Rule] | None = field(default_factory=list)
    #: the chain of the last rule the shape path appended (None after a command of the full path)
    last: Chain | None = None

    def chains_changed(self, name: str) -> None:
        """A chain was declared or removed: shapes that name it literally may parse otherwise now."""
        if name in _KEEP:
            self.shapes.clear()
            self.by_sig.clear()


def parse_rules(text: str, filename: str = "<rules>", family: str | None = None, *, strict: bool = True) -> Ruleset:
    """Parse iptables-save/restore text.

    family: "ipv4" | "ipv6"; guessed from the rules when None (addresses first, then
    family-specific matches; comments and chain names are ignored).  strict=False
    tolerates CR line ends and trailing blanks (which iptables-restore refuses), adding
    a warning instead.  NFTRACE_CACHE turns on a cache of parsed dumps (nftrace.ruleset.cache).
    """
    from nftrace.ruleset.cache import cached_parse

    return cached_parse(_parse_rules, text, filename, family, strict)


def _parse_rules(text: str, filename: str, family: str | None, *, strict: bool, shapes: bool = True) -> Ruleset:
    """parse_rules without the cache; shapes=False parses every line in full (the reference)."""
    # the section caches share parsed sections within one dump; emptied after it, so they hold
    # nothing of a dump once its Ruleset is gone
    try:
        with quiet_gc():  # a million objects, none of them garbage
            return _parse_text(text, filename, family, strict, shapes)
    finally:
        _SECTION_CACHE.clear()
        _BASIC_CACHE.clear()


def _parse_text(text: str, filename: str, family: str | None, strict: bool, shapes: bool) -> Ruleset:
    registry.load_extensions()
    keep = _keep_words()
    shapes_on = shapes
    plain_text = text.isascii() and not any(c in text for c in _ODD_BLANKS)  # `in`: memchr, 7x faster here
    if family is None:
        family = guess_family(text)
    if family not in ("ipv4", "ipv6"):
        raise InputError(f"unknown family {family!r} (ipv4 or ipv6)", filename)
    rs = Ruleset(family=family, source=filename)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    st: _TableState | None = None
    lineno = 0
    tolerated: set[str] = set()
    for idx, raw in enumerate(lines):
        lineno = idx + 1
        line = raw
        if not strict:
            stripped = line.rstrip("\r")
            if stripped != line:
                tolerated.add("CR line ends")
            s2 = stripped.rstrip(" \t")
            if s2 != stripped:
                tolerated.add("trailing blanks")
            line = s2
        if st is not None and shapes_on and line.startswith("-A "):
            # the hot path: a rule line of a known shape (see _make_shape), read by the regular
            # expression of a shape met for its signature, else split into words
            if plain_text:
                sp = line.find(" ", 3)
                last = line.rfind(" -")
                sig = (line[sp : sp + 3], line.count(" -"), line[last : last + 5])
                for shape in st.by_sig.get(sig, ()):
                    m = shape.rx.match(line)  # type: ignore[union-attr]
                    if m is not None:
                        vals = m.groups()
                        if keep.isdisjoint(vals):
                            done = _shaped_rule(shape, st, vals, line, None, filename, lineno, family)
                            break
                else:
                    done = _tokenized_rule(st, line, sig, filename, lineno, family)
            else:
                done = _tokenized_rule(st, line, None, filename, lineno, family)
            if done:
                continue
        if not line or line[0] == "#":
            continue
        if st is not None and line == "COMMIT":
            _finish_table(st.table, filename, st.renumber, st.hooked)
            rs.tables[st.table.name] = st.table
            st = None
            continue
        c0 = line[0]
        if c0 == "*" and st is None:
            # strtok(" \t\n"): `* filter` names filter too; a CR stays part of the name
            name = line[1:].lstrip(" \t").split(" ", 1)[0].split("\t", 1)[0]
            if not name:
                raise InputError("table name missing after '*'", filename, lineno)
            if name not in BUILTIN_CHAINS:
                hint = (
                    " (the line ends in CR: the file has DOS line ends; convert it with dos2unix)"
                    if name.endswith("\r")
                    else ""
                )
                raise InputError(f"unknown table '*{name.rstrip(chr(13))}'{hint}", filename, lineno)
            st = _start_table(rs, name, lineno)
            continue
        if st is None:
            word = line.split()[0] if line.split() else repr(line)
            what = "a line of blanks" if not line.strip() else f"{word!r}"
            raise InputError(
                f"{what} outside a table (a line must be '*table', a comment or empty here)", filename, lineno
            )
        table = st.table
        if c0 == ":":
            _declare_chain(st, line, filename, lineno)
            continue
        # a command line
        body = line
        if c0 == "[":
            end = body.find("]")
            if end < 0 or ":" not in body[1:end]:
                raise InputError("bad counters prefix (expected '[packets:bytes] ')", filename, lineno)
            body = body[end + 1 :]
        tokens, quoted, open_quote = _tokenize(body, plain_text)
        if open_quote:
            rs.warnings.append(
                f"{filename}:{lineno}: unterminated quote: the rest of the line is one argument "
                "(iptables-restore loads it that way)"
            )
        if not tokens:
            raise InputError("no command specified (a line of blanks inside a table)", filename, lineno)
        if tokens[0] == "COMMIT":
            why = "has trailing blanks" if body.startswith("COMMIT") else "is indented"
            if body.endswith("\r"):
                why = "ends in CR (DOS line ends: convert the file with dos2unix)"
            raise InputError(f"'COMMIT' must be alone on its line; this one {why}", filename, lineno)
        if c0 == "*":
            raise InputError(
                f"{tokens[0]!r} inside table {table.name}: the table is not closed by COMMIT", filename, lineno
            )
        ctx = ParseCtx(filename, lineno, table.name, "", family, None)
        args = _Args(tokens, quoted, ctx, st.declared)
        c = args.parse()
        if c.skip:
            continue
        if not c.cmd:
            raise InputError(f"no command specified (bad argument {tokens[0]!r})", filename, lineno)
        _run_command(rs, st, c, ctx, body, tokens, filename, lineno)
    if st is not None:
        raise InputError(f"table {st.table.name} has no COMMIT: the dump is truncated", filename, max(lineno, 1))
    if tolerated:
        rs.warnings.append(f"{filename}: tolerated {' and '.join(sorted(tolerated))}, which iptables-restore refuses")
    return rs


def _start_table(rs: Ruleset, name: str, lineno: int) -> _TableState:
    """A `*table` line: without --noflush, iptables-restore starts this table from scratch."""
    old = rs.tables.get(name)
    table = Table(name=name, line=lineno)
    for b in BUILTIN_CHAINS[name]:
        prev = old.chains.get(b) if old is not None else None
        # flushing keeps the built-in chains' policies
        table.chains[b] = Chain(name=b, policy=prev.policy if prev else "ACCEPT", line=prev.line if prev else 0)
    return _TableState(table, set(table.chains), frozenset(table.chains))


def _declare_chain(st: _TableState, line: str, filename: str, lineno: int) -> None:
    parts = line[1:].split()  # at blanks and tabs (and the rarer blanks iptables-restore refuses anyway)
    if not parts:
        raise InputError("chain name missing after ':'", filename, lineno)
    cname = parts[0]
    table = st.table
    _check_chain_name(cname, filename, lineno)
    if len(parts) < 2:
        raise InputError(f"chain {cname}: policy missing (':NAME POLICY [packets:bytes]')", filename, lineno)
    policy = parts[1]
    builtin = cname in BUILTIN_CHAINS[table.name]
    if builtin:
        ch = table.chains[cname]
        if policy in ("ACCEPT", "DROP"):
            ch.policy = policy
        elif policy != "-":
            raise InputError(f"invalid policy {policy!r} for built-in chain {cname} (ACCEPT or DROP)", filename, lineno)
        ch.line = lineno
        ch.counters = parts[2] if len(parts) > 2 else None
        return
    if policy != "-":
        other = [t for t, chains in BUILTIN_CHAINS.items() if cname in chains]
        why = f" ({cname} is a built-in chain of {', '.join(other)}, not of {table.name})" if other else ""
        raise InputError(f"user chain {cname} cannot have a policy ({policy!r}); write '-'{why}", filename, lineno)
    if cname in table.chains:
        raise InputError(f"chain {cname} is declared twice in table {table.name}", filename, lineno)
    table.chains[cname] = Chain(cname, None, [], lineno, parts[2] if len(parts) > 2 else None)
    st.declared.add(cname)
    if cname in _KEEP:
        st.chains_changed(cname)


def _check_chain_name(cname: str, filename: str, lineno: int) -> None:
    if len(cname) > _CHAIN_MAX:
        raise InputError(f"chain name {cname!r} is longer than {_CHAIN_MAX} characters", filename, lineno)
    if cname[0] in "-!":
        raise InputError(f"chain name {cname!r} may not start with '{cname[0]}'", filename, lineno)
    if cname in _STANDARD_CHAIN_CLASH:
        raise InputError(f"chain name {cname!r} clashes with the standard target of that name", filename, lineno)


_NAT_DROP = 'the "nat" table is not intended for filtering: iptables refuses DROP there (a DROP policy is loaded)'


def _run_command(
    rs: Ruleset, st: _TableState, c: _Cmd, ctx: ParseCtx, body: str, tokens: list[str], filename: str, lineno: int
) -> None:
    table = st.table
    cmd = c.cmd
    st.hooked = None  # rules may go or move: COMMIT checks them all
    st.last = None  # and chains may go or change names
    if table.name == "nat" and (c.jump == "DROP" or cmd == "P" and c.arg2 == "DROP"):
        raise InputError(_NAT_DROP, filename, lineno)
    has_rule_opts = bool(c.basics or c.matches or c.target is not None)
    if cmd not in _RULE_CMDS and has_rule_opts:
        raise InputError(f"rule options are not allowed with -{cmd} (--{_CMD_NAMES[cmd]})", filename, lineno)
    if cmd in _RULE_CMDS:
        cname = c.chain or ""
        if "o" in c.basics and cname in ("PREROUTING", "INPUT"):
            raise InputError(f"-o cannot be used in {cname} (no output interface there)", filename, lineno)
        if "i" in c.basics and cname in ("POSTROUTING", "OUTPUT"):
            raise InputError(f"-i cannot be used in {cname} (no input interface there)", filename, lineno)
        chain = table.chains.get(cname)
        if chain is None:
            raise InputError(
                f"chain '{cname}' does not exist in table {table.name} (declare it first)", filename, lineno
            )
        ctx.chain = cname
        st.renumber.add(cname)
        if cmd == "D" and c.num is not None and has_rule_opts:
            raise InputError("-D takes a rule number or a rule, not both", filename, lineno)
        if cmd == "D" and c.num is not None:
            if c.num > len(chain.rules):
                raise InputError(f"-D {cname} {c.num}: no such rule", filename, lineno)
            del chain.rules[c.num - 1]
            return
        text = "-A " + cname + _rule_text(body, tokens, c)
        rules = _build_rules(c, ctx, text, lineno, table.name, cname)
        if chain.builtin and chain.line == 0 and cmd in "AIR":
            chain.line = lineno  # a rule creates the base chain (iptables-nft), like a declaration
        if cmd == "A":
            chain.rules.extend(rules)
        elif cmd == "I":
            pos = c.num or 1
            if pos > len(chain.rules) + 1:
                raise InputError(f"-I {cname} {pos}: index of insertion too big", filename, lineno)
            chain.rules[pos - 1 : pos - 1] = rules
        elif cmd == "R":
            assert c.num is not None
            if len(rules) != 1:
                raise InputError("-R: a replacement must be a single rule (one address each)", filename, lineno)
            if c.num > len(chain.rules):
                raise InputError(f"-R {cname} {c.num}: no such rule", filename, lineno)
            chain.rules[c.num - 1] = rules[0]
        elif cmd in ("D", "C"):
            for r in rules:
                want = canonical_text(r)
                for k, existing in enumerate(chain.rules):
                    if canonical_text(existing) == want:
                        if cmd == "D":
                            del chain.rules[k]
                        break
                else:
                    raise InputError(f"-{cmd}: no rule in {cname} matches {want!r}", filename, lineno)
        return
    name = c.chain
    if cmd == "N":
        assert name is not None
        _check_chain_name(name, filename, lineno)
        if name in table.chains:
            raise InputError(f"-N {name}: chain already exists", filename, lineno)
        table.chains[name] = Chain(name=name, policy=None, line=lineno)
        st.declared.add(name)
        st.chains_changed(name)
    elif cmd == "X":
        victims = [name] if name is not None else [n for n, ch in table.chains.items() if not ch.builtin]
        for v in victims:
            ch = table.chains.get(v)
            if ch is None:
                raise InputError(f"-X {v}: no such chain", filename, lineno)
            if ch.builtin:
                raise InputError(f"-X {v}: a built-in chain cannot be deleted", filename, lineno)
            if ch.rules and name is not None:
                raise InputError(f"-X {v}: the chain is not empty (flush it first with -F)", filename, lineno)
        gone = set(victims)
        for n, ch in table.chains.items():
            if n in gone:
                continue
            for r in ch.rules:
                if r.jump in gone:
                    raise InputError(f"-X {r.jump}: chain is still referenced by {n} rule {r.text!r}", filename, lineno)
        for v in victims:
            del table.chains[v]
            st.declared.discard(v)
            st.chains_changed(v)
    elif cmd == "F":
        if name is None:
            for ch in table.chains.values():
                ch.rules.clear()
        else:
            ch = table.chains.get(name)
            if ch is None:
                raise InputError(f"-F {name}: no such chain", filename, lineno)
            ch.rules.clear()
    elif cmd in ("Z", "L", "S"):
        if name is not None and name not in table.chains:
            raise InputError(f"-{cmd} {name}: no such chain", filename, lineno)
        if name is not None and c.num is not None and c.num > len(table.chains[name].rules):
            raise InputError(f"-{cmd} {name} {c.num}: no such rule", filename, lineno)
    elif cmd == "P":
        assert name is not None
        ch = table.chains.get(name)
        if ch is None or not ch.builtin:
            raise InputError(f"-P {name}: not a built-in chain of table {table.name}", filename, lineno)
        if c.arg2 not in ("ACCEPT", "DROP"):
            raise InputError(f"-P {name}: invalid policy {c.arg2!r} (ACCEPT or DROP)", filename, lineno)
        ch.policy = c.arg2
        ch.line = ch.line or lineno  # -P creates the base chain (iptables-nft), like a declaration
    elif cmd == "E":
        assert name is not None and c.arg2 is not None
        ch = table.chains.get(name)
        if ch is None or ch.builtin:
            raise InputError(f"-E {name}: no such user chain", filename, lineno)
        new = c.arg2
        _check_chain_name(new, filename, lineno)
        if new in table.chains:
            raise InputError(f"-E {name} {new}: chain {new} already exists", filename, lineno)
        chains = list(table.chains.items())
        table.chains.clear()
        for n, chn in chains:
            table.chains[new if n == name else n] = chn
        ch.name = new
        st.renumber.discard(name)
        st.renumber.add(new)
        st.declared.discard(name)
        st.declared.add(new)
        st.chains_changed(name)
        st.chains_changed(new)
        for chn in table.chains.values():
            for r in chn.rules:
                if r.chain == name:
                    r.chain = new
                    r.text = "-A " + new + r.text[3 + len(name) :]
                if r.jump == name:
                    r.jump = new
                    flag = "-g " if r.goto else "-j "
                    r.text = r.text.replace(flag + name, flag + new)


_USED_A = [0, 1]


def _rule_text(body: str, tokens: list[str], c: _Cmd) -> str:
    """The rule as written, without the command, chain, rule number, -4/-6 and counters (leading space)."""
    return _rule_text_of(body, tokens, c.used, c.dropped)


def _rule_text_of(body: str, tokens: list[str], used: list[int], dropped: list[int]) -> str:
    # the usual case: the command is first (`-A CHAIN ...`, as iptables-save writes every rule);
    # keep the original text of the rest (and its quoting), unless a word of the command was quoted
    if used == _USED_A and not dropped and body.startswith("-A "):
        t = tokens[1]
        pos = body.find(t, 3) + len(t)
        if body[pos : pos + 1] in ("", " ", "\t"):
            rest = body[pos:].strip()
            return (" " + rest) if rest else ""
    k = len(used)
    if not dropped and used == list(range(k)):
        pos = 0
        for j in range(k):
            t = tokens[j]
            pos = body.find(t, pos) + len(t)
        if body[pos : pos + 1] in ("", " ", "\t"):
            rest = body[pos:].strip()
            return (" " + rest) if rest else ""
    skip = set(used) | set(dropped)
    rest_toks = [_requote(t) for j, t in enumerate(tokens) if j not in skip]
    return (" " + " ".join(rest_toks)) if rest_toks else ""


# ------------------------------------------------------------------ commit-time checks

_HOOKS = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")


def _finish_table(
    table: Table, filename: str, renumber: set[str] | None = None, hooked: list[Rule] | None = None
) -> None:
    """What the kernel checks when the table is committed: loops, and hook restrictions.

    renumber: the chains whose rules' index and chain must be set again (None: all); hooked: None,
    or every rule with a spec restricted to some hooks when all rules came by the shape path (which
    leaves jumps to built-in chains to the full path)."""
    builtins = BUILTIN_CHAINS[table.name]
    for cname, chain in table.chains.items() if renumber is None else _chains_of(table, renumber):
        for k, r in enumerate(chain.rules, 1):
            r.index = k
            r.chain = cname
    reach = _reach(table, filename)
    nohooks: frozenset[str] = frozenset()
    if hooked is not None:
        # only the hooked rules can be wrong; when one is, the loop below finds the first wrong rule
        # in the order the kernel reports it
        fine: set[tuple[frozenset[str], frozenset[str]]] = set()
        try:
            for r in hooked:
                hooks = reach.get(r.chain)
                if hooks:
                    _check_rule_hooks(table, r.chain, r, hooks, filename, fine)
            return
        except InputError:
            pass
    allowed_in: set[tuple[frozenset[str], frozenset[str]]] = set()  # (spec's hooks, chain's hooks) found fine
    for cname, chain in table.chains.items():
        hooks = reach.get(cname, nohooks)
        for r in chain.rules:
            if r.jump in builtins:
                raise InputError(f"-j {r.jump}: a rule cannot jump to a built-in chain", filename, r.line)
            if hooks:
                _check_rule_hooks(table, cname, r, hooks, filename, allowed_in)


def _chains_of(table: Table, names: set[str]) -> list[tuple[str, Chain]]:
    return [(n, c) for n, c in table.chains.items() if n in names]


def _check_rule_hooks(
    table: Table,
    cname: str,
    r: Rule,
    hooks: frozenset[str],
    filename: str,
    allowed_in: set[tuple[frozenset[str], frozenset[str]]],
) -> None:
    for spec in r.matches:
        if spec.hooks is not None and (spec.hooks, hooks) not in allowed_in:
            _check_hooks(table, cname, r, spec, hooks, filename)
            allowed_in.add((spec.hooks, hooks))
    tgt = r.target
    if tgt is not None and tgt.hooks is not None and (tgt.hooks, hooks) not in allowed_in:
        _check_hooks(table, cname, r, tgt, hooks, filename)
        allowed_in.add((tgt.hooks, hooks))


def _check_hooks(
    table: Table, cname: str, r: Rule, spec: MatchSpec | TargetSpec, hooks: frozenset[str], filename: str
) -> None:
    allowed = spec.hooks
    assert allowed is not None
    bad = sorted(hooks - allowed, key=_HOOKS.index)
    if not bad:
        return
    what = spec.canonical().split(" --")[0]
    via = "" if cname in BUILTIN_CHAINS[table.name] else f" (chain {cname} is reached from {', '.join(bad)})"
    raise InputError(
        f"{what} is only valid in {', '.join(h for h in _HOOKS if h in allowed)}, not in {', '.join(bad)}{via}",
        filename,
        r.line,
    )


def _reach(table: Table, filename: str) -> dict[str, frozenset[str]]:
    """The base chains each chain is reachable from; a chain met again on the current path is a loop.

    One depth-first walk from the base chains in order, following each chain's jumps in rule order
    (a chain already finished holds no loop and is not entered again, so a second jump to a chain
    adds nothing, and the first loop found is the one a walk per base chain finds first), then the
    hooks flow down the chains in topological order."""
    done: set[str] = set()
    post: list[tuple[str, list[str]]] = []  # finished chains, children first, with the chains they jump to
    chains = table.chains
    verdicts = STANDARD_VERDICTS
    for hook in BUILTIN_CHAINS[table.name]:
        if hook in done:
            continue
        path: list[str] = [hook]
        onpath: set[str] = {hook}
        # per chain on the path: its rules not yet read, and the chains they jumped to so far
        stack: list[tuple[Iterator[Rule], list[str]]] = [(iter(chains[hook].rules), [])]
        while stack:
            rules, edges = stack[-1]
            for r in rules:
                j = r.jump
                if j is None or j in verdicts:
                    continue
                edges.append(j)
                if j in done:
                    continue
                nxt = chains.get(j)
                if nxt is None:
                    raise InputError(f"rule jumps to chain '{j}', which does not exist", filename, r.line)
                if j in onpath:
                    cycle = " -> ".join([*path[path.index(j) :], j])
                    raise InputError(f"jump loop in table {table.name}: {cycle}", filename, r.line)
                path.append(j)
                onpath.add(j)
                stack.append((iter(nxt.rules), []))
                break
            else:
                stack.pop()
                name = path.pop()
                onpath.discard(name)
                done.add(name)
                post.append((name, edges))
    reach: dict[str, frozenset[str]] = {h: frozenset({h}) for h in BUILTIN_CHAINS[table.name] if h in done}
    for name, edges in reversed(post):
        mine = reach.get(name)
        if mine is None:
            continue
        for j in edges:
            theirs = reach.get(j)
            if theirs is not mine:
                reach[j] = mine if theirs is None else theirs | mine
    return reach


# ------------------------------------------------------------------ family guess

_ADDR_OPTS = (
    r"-[sd]|--source|--destination|--src|--dst|--to-destination|--to-source|--to|--src-range|--dst-range|"
    r"--ctorigsrc|--ctorigdst|--ctreplsrc|--ctrepldst|--tunnel-src|--tunnel-dst|--on-ip|--gateway|--vaddr"
)
_QUOTED = re.compile(r'"[^"\\\n]*(?:\\.[^"\\\n]*)*"')  # unrolled: no backtracking state per character
_ADDR_RE = re.compile(r"(?:^|[ \t])(?:!\s+)?(?:" + _ADDR_OPTS + r")[ \t=]+(?:!\s+)?\[?([0-9A-Fa-fx.:]+)")
_V6_WORDS = re.compile(
    r"(?:^|[ \t])(?:-p\s+(?:icmpv6|ipv6-icmp|58)\b|-m\s+(?:icmp6|ipv6header|frag|rt|hbh|dst|mh|eui64|hl|srh)\b|"
    r"--icmpv6-type\b|--reject-with\s+icmp6-|-j\s+(?:HL|DNPT|SNPT)\b)",
    re.M,
)
_V4_WORDS = re.compile(
    r"(?:^|[ \t])(?:-p\s+(?:icmp|1)\b|-m\s+(?:icmp|ttl|realm)\b|--icmp-type\b|-f\b|"
    r"--reject-with\s+icmp-(?:net|host|port|proto|admin)|-j\s+(?:TTL|ECN|ULOG|CLUSTERIP)\b)",
    re.M,
)


def guess_family(text: str) -> str:
    """ipv6 when the rules' addresses are IPv6 (or, without addresses, only IPv6 matches appear)."""
    # the first 201 addresses decide: read a growing start of the text (cut after a newline, which
    # no address or quoted string spans) until they are in it, else the whole text
    size = 1 << 18
    while size < len(text):
        cut = text.rfind("\n", 0, size)
        if cut > 0:
            v4, v6, enough = _count_addresses(text[: cut + 1])
            if enough:
                return "ipv6" if v6 > v4 else "ipv4"
        size <<= 2
    v4, v6, _ = _count_addresses(text)
    if v4 or v6:
        return "ipv6" if v6 > v4 else "ipv4"
    if _V6_WORDS.search(text) and not _V4_WORDS.search(text):
        return "ipv6"
    return "ipv4"


def _count_addresses(text: str) -> tuple[int, int, bool]:
    """IPv4 and IPv6 addresses among the first 201 of text; whether there were 201."""
    v4 = v6 = 0
    if '"' in text:
        text = _QUOTED.sub('""', text)  # comments and log prefixes say nothing about the family
    for m in _ADDR_RE.finditer(text):
        a = m.group(1)
        if "." in a or a.isdigit():
            v4 += 1  # a.b.c.d, a.b.c.d:port
        elif ":" in a:
            v6 += 1
        if v4 + v6 > 200:
            return v4, v6, True
    return v4, v6, False
