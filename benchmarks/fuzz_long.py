"""The long fuzz run: the CI fuzz targets (tests/test_fuzz_*.py) in rounds with fresh seeds until a
number of inputs (default 1,000,000) or a time limit; any failure stops it with the seed to
reproduce it.  See docs/robustness.md.

    python3 benchmarks/fuzz_long.py                       # 1,000,000 inputs (hours on 2 cores)
    python3 benchmarks/fuzz_long.py --inputs 50000 --seed 7
    python3 benchmarks/fuzz_long.py --minutes 30 --report fuzz.json
    python3 benchmarks/fuzz_long.py --atheris --inputs 200000   # coverage-guided bytes -> parser

A round runs every target once with seed = SEED + round, so `--seed S --rounds-from R` resumes or
reproduces round R.  Progress goes to stderr, one line per round; the summary (JSON) to stdout or
--report FILE.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hypothesis import strategies as st  # noqa: E402

from tests import test_fuzz_common as fz  # noqa: E402


def _trace_generated(x: tuple[fz.GenRuleset, list[dict[str, Any]], bool]) -> None:
    g, packets, empty = x
    rs = fz.fuzz_parse(g.text, "<generated>", g.family)
    if rs is None:
        raise fz.FuzzFailure(f"a valid ruleset is refused:\n{g.text}")
    engine = fz.fuzz_engine(rs, fz.gen_host(empty))
    if engine is not None:
        for d in packets:
            fz.fuzz_trace(engine, d, g.specs)


def _mutated_any(x: tuple[str, str]) -> None:
    name, text = x
    if fz.fuzz_parse(text, name) is None:
        fz.fuzz_parse(text, name, strict=False)


def _mutated_traced(x: tuple[tuple[str, str], list[dict[str, Any]]]) -> None:
    (name, text), packets = x
    rs = fz.fuzz_parse(text, name)
    if rs is None:
        return
    scen = name.split("/", 1)[1] if name.startswith("rulesets/") else None
    host = fz.scenario_host(scen) if scen else fz.gen_host()
    engine = fz.fuzz_engine(rs, host, fz.scenario_ipsets(scen) if scen else None)
    if engine is not None:
        for d in packets:
            if d["origin"] == "ingress" and host.links:
                d = {**d, "iif": host.links[min(1, len(host.links) - 1)].name}
            fz.fuzz_trace(engine, d)


def targets() -> list[tuple[str, Any, Callable[[Any], None], int]]:
    """(name, strategy, check, examples per round): the CI targets, in CI's proportions."""
    all_dumps = fz.seed_dumps(None)
    scen = tuple((f"rulesets/{s.name}", s.text) for s in fz.scenarios())
    return [
        (
            "bytes",
            st.binary(max_size=4000),
            lambda b: fz.fuzz_parse(b.decode("utf-8", "surrogateescape"), "<bytes>"),
            2500,
        ),  # fmt: skip
        ("text in a rule", st.text(max_size=300), lambda t: fz.fuzz_parse(fz.RULE_PREFIX + t + "\nCOMMIT\n"), 2000),
        ("token soup", fz.token_soup(), lambda t: fz.fuzz_parse(t, "<soup>"), 1500),
        ("mutated dumps", fz.mutated_dump(all_dumps), _mutated_any, 2500),
        (
            "mutated scenarios, traced",
            st.tuples(fz.mutated_dump(scen), st.lists(fz.packet_dicts("ipv4"), max_size=3)),
            _mutated_traced,
            400,
        ),  # fmt: skip
        ("generated ipv4, traced", fz.traced_rulesets("ipv4"), _trace_generated, 650),
        ("generated ipv6, traced", fz.traced_rulesets("ipv6"), _trace_generated, 250),
    ]


def run_hypothesis(args: argparse.Namespace) -> dict[str, Any]:
    done: dict[str, int] = {}
    t0 = time.monotonic()
    total = 0
    rnd = args.rounds_from
    tg = targets()
    while total < args.inputs and (args.minutes is None or time.monotonic() - t0 < args.minutes * 60):
        seed = args.seed + rnd
        for name, strategy, check, n in tg:
            try:
                ran = fz.run_fuzz(strategy, check, n, seed=seed)
            except fz.FuzzFailure as e:
                print(f"FAILURE in {name}, round {rnd} (--seed {args.seed} --rounds-from {rnd}):\n{e}", file=sys.stderr)
                return {"result": "failure", "target": name, "seed": seed, "round": rnd, "error": str(e)[:4000],
                        "inputs": total, "seconds": round(time.monotonic() - t0, 1), "per_target": done}  # fmt: skip
            done[name] = done.get(name, 0) + ran
            total += ran
        el = time.monotonic() - t0
        print(f"round {rnd} seed {seed}: {total} inputs in {el:.0f} s ({total / el:.0f}/s)", file=sys.stderr)
        rnd += 1
    el = time.monotonic() - t0
    return {"result": "ok", "inputs": total, "seconds": round(el, 1), "rate_per_s": round(total / el, 1),
            "rounds": rnd - args.rounds_from, "first_seed": args.seed + args.rounds_from,
            "per_target": done, "checked": dict(fz.STATS)}  # fmt: skip


def run_atheris(args: argparse.Namespace) -> None:
    """Coverage-guided: atheris mutates bytes, starting from the real dumps, into parse_rules."""
    import tempfile

    import atheris  # type: ignore[import-not-found]

    with atheris.instrument_imports():
        import nftrace.ruleset.canonical  # noqa: F401
        import nftrace.ruleset.parser  # noqa: F401

    seeds = Path(tempfile.mkdtemp(prefix="nftrace-atheris-"))
    for i, (_, text) in enumerate(fz.seed_dumps()):
        (seeds / f"seed{i}").write_bytes(text.encode("utf-8", "surrogateescape"))
    count = [0]

    def one(data: bytes) -> None:
        count[0] += 1
        fz.fuzz_parse(data.decode("utf-8", "surrogateescape"), "<atheris>")

    argv = [sys.argv[0], f"-runs={args.inputs}", f"-seed={args.seed}", "-max_len=20000", str(seeds)]
    if args.minutes is not None:
        argv.insert(1, f"-max_total_time={int(args.minutes * 60)}")
    atheris.Setup(argv, one)
    atheris.Fuzz()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs", type=int, default=1_000_000, help="stop after this many inputs")
    ap.add_argument("--minutes", type=float, help="stop after this many minutes")
    ap.add_argument("--seed", type=int, default=random.SystemRandom().randrange(1 << 30))
    ap.add_argument("--rounds-from", type=int, default=0, help="first round (seed = SEED + round)")
    ap.add_argument("--atheris", action="store_true", help="coverage-guided byte fuzzing of the parser")
    ap.add_argument("--report", help="write the JSON summary here too")
    args = ap.parse_args()
    print(f"fuzz_long: seed {args.seed}", file=sys.stderr)
    if args.atheris:
        run_atheris(args)
        return 0
    summary = run_hypothesis(args)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.report:
        Path(args.report).write_text(text + "\n")
    return 0 if summary["result"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
