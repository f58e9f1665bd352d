"""kube-proxy and Docker awareness.

`catalog.build_catalog(ruleset, host)` reads the Service catalogue that
kube-proxy's chains imply (and Docker's published ports); `annotate.annotate`
names the hashed chains of a trace; `findings.findings` turns a trace into
plain-language diagnoses; `flows` builds the packet for `explain --to-service`
and friends.  Nothing here changes how the engine walks a packet.
"""
