"""What a match or target may consult besides the packet: where it runs and the host."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nftrace.host.fib import Fib
    from nftrace.host.model import HostContext
    from nftrace.ruleset.ipsets import IpSets


@dataclass(slots=True)
class Env:
    host: HostContext
    fib: Fib
    ipsets: IpSets | None = None
    backend: str = "nft"  # nft | legacy: a few corner cases differ (e.g. -i in OUTPUT)
    origin: str = "ingress"  # ingress | local
    hook: str = "PREROUTING"
    table: str = "raw"
    chain: str = "PREROUTING"
    #: notes the current rule wants shown (e.g. assumptions), drained by the walker
    notes: list[str] = field(default_factory=list)
    #: True when the host context is empty (addrtype etc. can only guess)
    no_host: bool = False
