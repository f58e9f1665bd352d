"""README's extension table is the registry's own (nftrace.ruleset.registry.exactness_table)."""

from __future__ import annotations

from pathlib import Path

from nftrace.ruleset.registry import exactness_table


def test_readme_extension_table_is_the_registrys() -> None:
    lines = (Path(__file__).resolve().parents[1] / "README.md").read_text().split("\n")
    start = next(i for i, ln in enumerate(lines) if ln.startswith("| extension | family |"))
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    assert "\n".join(lines[start:end]) + "\n" == exactness_table(), (
        "README's table is stale: paste nftrace.ruleset.registry.exactness_table() in its place"
    )
