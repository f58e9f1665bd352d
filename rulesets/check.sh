#!/usr/bin/env bash
# Re-checks the scenarios under rulesets/ against the running kernel, each in a
# throwaway network namespace (the initial namespace is never touched).
#
#   rulesets/check.sh [--host] [SCENARIO...]     (root; default: every scenario)
#
# For each scenario: create its ipsets (ipsets.txt) and nfacct objects, then
# `iptables-restore --test`, a real `iptables-restore`, and compare
# `iptables-save` with iptables.rules (comment lines ignored): the file must be
# byte-for-byte what iptables-save prints.
# --host also builds the links, addresses, routes and ip rules of addrs.txt,
# routes.txt and ip-rules.txt (veths whose peers live in a second namespace,
# bridges for every "master", a VXLAN device for flannel.N) and compares the
# IPv4 routes of all tables, the ip rules and the IPv4 addresses the kernel
# then reports with the files.
# Exit status: 0 all good, 1 a difference or failure, 2 usage, 77 cannot run here.
set -euo pipefail
umask 077

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
host=0
scenarios=()
for arg in "$@"; do
    case $arg in
        --host) host=1 ;;
        -h|--help) sed -n '2,16p' -- "${BASH_SOURCE[0]}"; exit 0 ;;
        -*) echo "check.sh: unknown option: $arg" >&2; exit 2 ;;
        *) scenarios+=("${arg%/}") ;;
    esac
done
if [ ${#scenarios[@]} -eq 0 ]; then
    for d in "$here"/*/; do
        [ -f "$d/iptables.rules" ] && scenarios+=("$(basename -- "$d")")
    done
fi
if [ "$(id -u)" -ne 0 ] || ! command -v iptables-restore >/dev/null || ! ip netns list >/dev/null 2>&1; then
    echo "check.sh: needs root, iproute2 and iptables (nf_tables); skipped" >&2
    exit 77
fi

tmp=$(mktemp -d)
ns=""
cleanup() {
    if [ -n "$ns" ]; then
        ip netns del "$ns" 2>/dev/null || true
        ip netns del "$ns-peer" 2>/dev/null || true
    fi
    rm -rf -- "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cat >"$tmp/nfacct_add.py" <<'PYEOF'
import socket, struct, sys, os
NETLINK_NETFILTER = 12
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 1, 4, 0x200, 0x400
NFNL_SUBSYS_ACCT, NFNL_MSG_ACCT_NEW, NFACCT_NAME = 7, 0, 1
def attr(t, data):
    l = 4 + len(data)
    return struct.pack("HH", l, t) + data + b"\0" * ((4 - l % 4) % 4)
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
s.bind((0, 0))
for seq, name in enumerate(sys.argv[1:], 1):
    payload = struct.pack("BBH", socket.AF_UNSPEC, 0, 0) + attr(NFACCT_NAME, name.encode() + b"\0")
    hdr = struct.pack("IHHII", 16 + len(payload), (NFNL_SUBSYS_ACCT << 8) | NFNL_MSG_ACCT_NEW,
                      NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE, seq, 0)
    s.send(hdr + payload)
    resp = s.recv(4096)
    err = struct.unpack_from("i", resp, 16)[0]
    if err not in (0, -17):
        sys.exit(f"nfacct {name}: {os.strerror(-err)}")
PYEOF
cat >"$tmp/hostcheck.py" <<'PYEOF'
"""Build a scenario's links, addresses, routes and ip rules in a network namespace
and compare what the kernel then prints with the scenario's text files.

usage: hostcheck.py NETNS SCENARIO_DIR   (NETNS and NETNS-peer must exist, empty)
"""
import re, subprocess, sys, os

ns, d = sys.argv[1], sys.argv[2]
peer = ns + "-peer"

def run(*args, netns=ns, check=True):
    cmd = ["ip", "netns", "exec", netns] + list(args)
    r = subprocess.run(cmd, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise SystemExit(f"{' '.join(args)}: {r.stderr.strip()}")
    return r.stdout

links = []  # dicts: name, index, mac, master, addrs, veth, mtu
cur = None
for line in open(os.path.join(d, "addrs.txt")):
    m = re.match(r"^(\d+): ([^:@]+)(@\S+)?: <([^>]*)> mtu (\d+)(.*)$", line)
    if m:
        cur = dict(index=int(m[1]), name=m[2], peer=m[3], flags=m[4], mtu=m[5], rest=m[6], addrs=[], mac=None)
        mm = re.search(r"master (\S+)", m[6])
        cur["master"] = mm[1] if mm else None
        links.append(cur)
        continue
    m = re.match(r"^\s+link/(ether|loopback|none) (\S+)?", line)
    if m and cur:
        cur["mac"] = m[2] if m[1] == "ether" else None
    m = re.match(r"^\s+inet (\S+)(?: peer (\S+))?(?: brd (\S+))? scope (\S+)", line)
    if m and cur:
        cur["addrs"].append((m[1], m[3], m[4]))

masters = {l["master"] for l in links if l["master"]}
vx = {}
if os.path.exists(os.path.join(d, "vxlan.txt")):
    pass
for l in links:
    n = l["name"]
    if n == "lo":
        run("ip", "link", "set", "lo", "up")
        continue
    mac = ["address", l["mac"]] if l["mac"] else []
    if n in masters:
        run("ip", "link", "add", n, *mac, "mtu", l["mtu"], "type", "bridge")
    elif n.startswith("flannel."):
        # the VXLAN device of flannel: VNI 1, UDP 8472, bound to the node address
        local = [a for x in links if x["name"] == "eth0" for a in x["addrs"]][0][0].split("/")[0]
        run("ip", "link", "add", n, *mac, "mtu", l["mtu"], "type", "vxlan", "id", n.split(".")[1],
            "local", local, "dstport", "8472", "nolearning")
    else:
        p = "p%d" % l["index"]
        run("ip", "link", "add", n, *mac, "mtu", l["mtu"], "type", "veth", "peer", "name", p, "netns", peer)
        run("ip", "link", "set", p, "up", netns=peer)
    for a, brd, scope in l["addrs"]:
        run("ip", "addr", "add", a, *(["brd", brd] if brd else []), "scope", scope, "dev", n)
for l in links:
    if l["master"]:
        run("ip", "link", "set", l["name"], "master", l["master"])
for l in links:
    if l["name"] != "lo" and "UP" in l["flags"].split(","):
        run("ip", "link", "set", l["name"], "up")

want_routes = [r.rstrip() for r in open(os.path.join(d, "routes.txt"))]
for r in want_routes:
    if ":" in r.split()[0] or ":" in r.split()[1] or "proto kernel" in r:
        continue  # IPv6 and kernel-made routes come by themselves
    run("ip", "route", "add", *r.split())
rules_file = os.path.join(d, "ip-rules.txt")
if os.path.exists(rules_file):
    for r in open(rules_file):
        pri, spec = r.split(":", 1)
        spec = spec.split()
        if spec[-2:] in (["lookup", "local"], ["lookup", "main"], ["lookup", "default"]) and spec[:2] == ["from", "all"] and len(spec) == 4:
            continue
        run("ip", "rule", "add", "priority", pri, *spec)

import time; time.sleep(2.5)
bad = 0
def cmp(what, want, got):
    global bad
    w = [x.rstrip() for x in want]; g = [x.rstrip() for x in got]
    if w != g:
        bad += 1
        import difflib
        print(f"--- {what}: file vs kernel")
        for x in difflib.unified_diff(w, g, "file", "kernel", lineterm="", n=1):
            print(x)

v4 = lambda lines: [x for x in lines if not re.match(r"^(\S+ )?[0-9a-f]*:[0-9a-f:]*[ /]", x) and "fe80::" not in x and "ff00::" not in x and not x.startswith(("local ::1", "::1", "unreachable ::", "anycast"))]
got_routes = run("ip", "-4", "route", "show", "table", "all").splitlines()
cmp("IPv4 routes", v4(want_routes), got_routes)
if os.path.exists(rules_file):
    cmp("ip rule", open(rules_file).read().splitlines(), run("ip", "rule").splitlines())
got_addr = run("ip", "-4", "-o", "addr").splitlines()
want_addr = []
for l in links:
    for a, brd, scope in l["addrs"]:
        want_addr.append((l["name"], a, brd, scope))
got_parsed = []
for x in got_addr:
    m = re.match(r"^\d+: (\S+)\s+inet (\S+)(?: brd (\S+))? scope (\S+)", x)
    got_parsed.append((m[1], m[2], m[3], m[4]))
cmp("IPv4 addresses", [" ".join(map(str, a)) for a in want_addr], [" ".join(map(str, a)) for a in got_parsed])
print("host:", "OK" if not bad else f"{bad} difference(s)")
sys.exit(1 if bad else 0)
PYEOF

failed=0
for name in "${scenarios[@]}"; do
    dir="$here/$name"
    if [ ! -f "$dir/iptables.rules" ]; then
        echo "$name: no iptables.rules" >&2; failed=1; continue
    fi
    ns="nft-rs-$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')"
    ip netns add "$ns"
    ok=1
    if [ -f "$dir/ipsets.txt" ]; then
        ip netns exec "$ns" ipset restore <"$dir/ipsets.txt" || { echo "$name: ipset restore failed"; ok=0; }
        ip netns exec "$ns" ipset save >"$tmp/ipsets.got"
        if ! diff -u -- "$dir/ipsets.txt" "$tmp/ipsets.got" >"$tmp/ipsets.diff"; then
            echo "$name: ipset save differs from ipsets.txt"; cat -- "$tmp/ipsets.diff"; ok=0
        fi
    fi
    mapfile -t accts < <(grep -o -- '--nfacct-name  *[^ ]*' "$dir/iptables.rules" | awk '{print $2}' | sort -u)
    if [ ${#accts[@]} -gt 0 ]; then
        ip netns exec "$ns" python3 "$tmp/nfacct_add.py" "${accts[@]}" || { echo "$name: cannot create nfacct objects"; ok=0; }
    fi
    if ! ip netns exec "$ns" iptables-restore --test <"$dir/iptables.rules"; then
        echo "$name: iptables-restore --test failed"; ok=0
    elif ! ip netns exec "$ns" iptables-restore <"$dir/iptables.rules"; then
        echo "$name: iptables-restore failed"; ok=0
    else
        ip netns exec "$ns" iptables-save >"$tmp/saved.rules"
        norm() { grep -v '^#' -- "$1" | sed -E 's/\[[0-9]+:[0-9]+\]$/[0:0]/'; }
        if ! diff -u --label "$name/iptables.rules" --label "iptables-save" \
                <(norm "$dir/iptables.rules") <(norm "$tmp/saved.rules") >"$tmp/rules.diff"; then
            echo "$name: iptables-save differs from iptables.rules"; cat -- "$tmp/rules.diff"; ok=0
        fi
    fi
    if [ "$host" -eq 1 ]; then
        ip netns add "$ns-peer"
        python3 "$tmp/hostcheck.py" "$ns" "$dir" >"$tmp/host.out" 2>&1 || ok=0
        sed "s/^/$name: /" "$tmp/host.out"
        ip netns del "$ns-peer"
    fi
    ip netns del "$ns"
    ns=""
    if [ "$ok" -eq 1 ]; then echo "$name: OK"; else echo "$name: FAILED"; failed=1; fi
done
exit "$failed"
