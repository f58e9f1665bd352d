"""Walking one table's built-in chain for one hook, as the kernel does.

Jumps push a return point, gotos replace the current frame, RETURN and the end
of a user chain pop it, the end of a built-in chain applies its policy.  A
match that holds only by chance (statistic) or whose outcome is unknown forks
the branch: both continuations are explored, each carrying its condition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nftrace.engine.env import Env
from nftrace.engine.packet import Packet
from nftrace.ruleset.model import Chain, Chance, Rule, Table, Unknown

if TYPE_CHECKING:
    from nftrace.engine.index import ChainIndex, RulesetIndex

MAX_DEPTH = 64  # nested jumps; the kernel refuses loops at load time
_SET_FIELDS = ("mark", "ct_mark", "tos", "ttl", "ct_state")


class ChainLoopError(Exception):
    pass


@dataclass(slots=True)
class Branch:
    pkt: Packet
    steps: list[dict[str, Any]] = field(default_factory=list)
    conditions: list[str] = field(default_factory=list)
    prob: float = 1.0
    unknown: bool = False
    stage: str = "start"
    result: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)

    def fork(self) -> Branch:
        return Branch(
            pkt=self.pkt.clone(),
            steps=list(self.steps),
            conditions=list(self.conditions),
            prob=self.prob,
            unknown=self.unknown,
            stage=self.stage,
            result=None,
            warnings=list(self.warnings),
        )


@dataclass(slots=True)
class WalkOptions:
    all_rules: bool = False
    max_branches: int = 256


@dataclass(slots=True)
class _Frame:
    br: Branch
    stack: list[tuple[str, int]]
    chain: str
    idx: int


def rule_step(env: Env, rule: Rule, verdict: str, target: str | None) -> dict[str, Any]:
    return {
        "kind": "rule",
        "hook": env.hook,
        "table": env.table,
        "chain": rule.chain,
        "rule": rule.index,
        "matched": True,
        "verdict": verdict,
        "target": target,
        "text": rule.text,
    }


def walk_table(
    br: Branch,
    table: Table,
    hook: str,
    env: Env,
    opts: WalkOptions,
    budget: list[int],
    index: RulesetIndex | None = None,
) -> list[tuple[Branch, str]]:
    """Run `table`'s built-in chain `hook` for branch br.

    Returns (branch, verdict) pairs, verdict one of ACCEPT DROP QUEUE.
    `budget` is a one-element list counting how many more forks may be made.
    `index` (nftrace.engine.index) skips the rules of long chains that certainly do not
    match; it is not used with all_rules, which shows every evaluated rule.
    """
    if opts.all_rules:
        index = None
    env.hook = hook
    env.table = table.name
    out: list[tuple[Branch, str]] = []
    work: list[_Frame] = [_Frame(br, [], hook, 0)]
    while work:
        fr = work.pop()
        b, stack, cname, i = fr.br, fr.stack, fr.chain, fr.idx
        chain: Chain = table.chains[cname]
        rules = chain.rules
        pkt = b.pkt
        ix_chain: Chain | None = None
        ix: ChainIndex | None = None
        while True:
            if index is not None:
                if chain is not ix_chain:
                    ix_chain, ix = chain, index.get(chain)
                if ix is not None:
                    i = ix.next(pkt, i)
            if i >= len(rules):
                if stack:
                    if not opts.all_rules:
                        pass
                    b.steps.append({"kind": "return", "hook": hook, "table": table.name, "chain": cname})
                    cname, i = stack.pop()
                    chain = table.chains[cname]
                    rules = chain.rules
                    continue
                base = table.chains[hook]
                policy = base.policy or "ACCEPT"
                b.steps.append({"kind": "policy", "hook": hook, "table": table.name, "chain": hook, "verdict": policy})
                out.append((b, policy))
                break
            rule = rules[i]
            env.chain = cname
            matched = True
            for m in rule.matches:
                r = m.evaluate(pkt, env)
                if r is True:
                    continue
                if r is False:
                    matched = False
                    if opts.all_rules:
                        b.steps.append(_miss(env, rule, m.why_not(pkt, env)))
                    break
                # A fork: explore "does not match" as a separate branch.
                if budget[0] <= 0:
                    b.warnings.append(
                        f"branch limit reached: {table.name} {cname} rule {rule.index} "
                        f"({m.text}) assumed not to match; other outcomes not explored"
                    )
                    b.unknown = True
                    # an unknown branch carries its assumption in its conditions (once, not per rule)
                    if not b.conditions or "branch limit reached" not in b.conditions[-1]:
                        b.conditions.append(
                            f"{table.name} {cname} rule {rule.index}: assumed NOT to match: {m.text}: branch "
                            "limit reached; this and every later match that cannot be decided offline are "
                            "assumed not to match, other outcomes not explored"
                        )
                    matched = False
                    break
                budget[0] -= 1
                other = b.fork()
                where = f"{table.name} {cname} rule {rule.index}"
                if isinstance(r, Chance):
                    other.prob *= 1.0 - r.p
                    b.prob *= r.p
                    lbl = "statistic" if r.label == "random" else r.label
                    other.conditions.append(f"{where}: {lbl} {_pct(1.0 - r.p)} -> no")
                    b.conditions.append(f"{where}: {lbl} {_pct(r.p)} -> yes")
                else:
                    assert isinstance(r, Unknown)
                    other.unknown = b.unknown = True
                    other.conditions.append(f"{where}: assumed NOT to match: {r.reason}")
                    b.conditions.append(f"{where}: assumed to match: {r.reason}")
                if opts.all_rules:
                    other.steps.append(_miss(env, rule, f"{m.text} (assumed not to match)"))
                work.append(_Frame(other, list(stack), cname, i + 1))
            if not matched:
                i += 1
                continue
            # All matches held: apply the target.
            if rule.jump is not None:
                j = rule.jump
                if j in ("ACCEPT", "DROP", "QUEUE"):
                    b.steps.append(rule_step(env, rule, j, j))
                    out.append((b, j))
                    break
                if j == "RETURN":
                    b.steps.append(rule_step(env, rule, "RETURN", "RETURN"))
                    if stack:
                        cname, i = stack.pop()
                        chain = table.chains[cname]
                        rules = chain.rules
                        continue
                    base = table.chains[hook]
                    policy = base.policy or "ACCEPT"
                    b.steps.append(
                        {"kind": "policy", "hook": hook, "table": table.name, "chain": hook, "verdict": policy}
                    )
                    out.append((b, policy))
                    break
                b.steps.append(rule_step(env, rule, "GOTO" if rule.goto else "JUMP", j))
                if not rule.goto:
                    stack.append((cname, i + 1))
                    if len(stack) > MAX_DEPTH:
                        raise ChainLoopError(f"jumps nest deeper than {MAX_DEPTH} from {table.name} {hook}: a loop?")
                elif len(stack) > MAX_DEPTH:
                    raise ChainLoopError(f"gotos nest deeper than {MAX_DEPTH}: a loop?")
                cname, i = j, 0
                chain = table.chains[cname]
                rules = chain.rules
                continue
            if rule.target is None:
                b.steps.append(rule_step(env, rule, "CONTINUE", None))
                i += 1
                continue
            other_way = _otherwise(rule)
            if other_way is not None:
                # the target's verdict hangs on a socket or program nftrace cannot see: the
                # outcome without it is a branch of its own (forked before the target acts)
                where = f"{table.name} {cname} rule {rule.index}"
                if budget[0] > 0:
                    budget[0] -= 1
                    other = b.fork()
                    other.unknown = True
                    other.conditions.append(f"{where}: {other_way[2]}")
                    other.steps.append(rule_step(env, rule, other_way[0], rule.target.name))
                    out.append((other, other_way[1]))
                else:
                    b.warnings.append(f"branch limit reached: {where}: not explored: {other_way[2]}")
            before = (pkt.mark, pkt.ct_mark, pkt.tos, pkt.ttl, pkt.ct_state)
            res = rule.target.apply(pkt, env)
            step = rule_step(env, rule, res.verdict, rule.target.name)
            after = (pkt.mark, pkt.ct_mark, pkt.tos, pkt.ttl, pkt.ct_state)
            if after != before:
                # what this rule changed in the packet, for presenters that show packet state
                step["set"] = {k: v for k, v, old in zip(_SET_FIELDS, after, before, strict=True) if v != old}
            if res.note:
                step["note"] = res.note
            if res.nat is not None:
                pkt.pending_nat = res.nat
                pkt.pending_nat_rule = {"table": table.name, "chain": cname, "rule": rule.index}
            if res.unknown:
                step["unknown"] = res.unknown
                b.unknown = True
                b.conditions.append(f"{table.name} {cname} rule {rule.index}: {res.unknown}")
            b.steps.append(step)
            if res.verdict == "CONTINUE":
                i += 1
                continue
            if res.verdict == "RETURN":
                if stack:
                    cname, i = stack.pop()
                    chain = table.chains[cname]
                    rules = chain.rules
                    continue
                out.append((b, table.chains[hook].policy or "ACCEPT"))
                break
            out.append((b, res.verdict))
            break
    return out


def _otherwise(rule: Rule) -> tuple[str, str, str] | None:
    """The outcome of `rule`'s target when what it needs on this host is missing, for a target whose
    verdict hangs on that (None for the others): (the rule's verdict in the kernel's trace, the
    verdict for the table, the assumption).  Seen in the kernel's trace: TPROXY with no transparent
    socket is DROP; NFQUEUE --queue-bypass with no program on the queue shows QUEUE and the packet
    goes on with the next table (the rest of the chain is skipped).  NFQUEUE without
    --queue-bypass is dropped then: its single branch, `queued`, already says a program decides."""
    t = rule.target
    if t is None:
        return None
    if t.name == "TPROXY":
        return ("DROP", "DROP",
                f"assumed NO transparent socket: {t.canonical()}: no socket with IP_TRANSPARENT listens on "
                "its --on-port and none belongs to this flow, so the kernel drops the packet")  # fmt: skip
    if t.name == "NFQUEUE" and "--queue-bypass" in t.canonical().split():
        return ("QUEUE", "ACCEPT",
                f"assumed NO program listens on the queue: {t.canonical()}: --queue-bypass passes the "
                "packet on to the next table (the rest of this chain is skipped)")  # fmt: skip
    return None


def _miss(env: Env, rule: Rule, why: str) -> dict[str, Any]:
    return {
        "kind": "rule",
        "hook": env.hook,
        "table": env.table,
        "chain": rule.chain,
        "rule": rule.index,
        "matched": False,
        "why": why,
        "text": rule.text,
    }


def _pct(p: float) -> str:
    return f"p={p:.10g}"
