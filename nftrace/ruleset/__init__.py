"""iptables-save text -> typed model; `canonical_text` prints a rule back as iptables-save does."""

from nftrace.ruleset.canonical import canonical_dump, canonical_text

__all__ = ["canonical_dump", "canonical_text"]
