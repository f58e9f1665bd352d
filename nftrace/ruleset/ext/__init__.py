"""Extension modules; importing this package registers every match and target."""

from nftrace.ruleset.ext import (  # noqa: F401
    basic,
    conntrack,
    generic,
    ipset,
    mark,
    misc,
    nat,
    proto,
    stateful,
    targets,
)
