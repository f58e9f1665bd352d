"""Live mode: confirm a predicted path on the real host with temporary LOG/NFLOG/TRACE probes.

Modules, in the order a run uses them:

* ``system``   running commands (argv lists only) in the host or a named network namespace
* ``snapshot`` the host's current rules and context (iptables-save, ``ip -j``, sysctls)
* ``plan``     predicted trace -> probes (one LOG rule per chain visit) and the expected sequences
* ``state``    the state file under /run/nftrace, written before anything is inserted
* ``probes``   inserting and deleting single rules by exact spec; ``--cleanup``
* ``sources``  where the kernel's log lines come from (rsyslog file, journald, /dev/kmsg,
               NFLOG over netlink, the kernel trace)
* ``nflog``    the NFLOG netlink listener (nfnetlink_log wire format)
* ``inject``   building and sending the packet (raw socket; an Ethernet frame from another netns)
* ``compare``  observed hops vs the predicted branches
* ``session``  one run: preflight, insert, observe, compare, always clean up (signals too)
* ``report``   text presentation of the ``nftrace.live/1`` document

The command is nftrace/commands/live.py; docs/live.md describes the behaviour and its guarantees.
"""
