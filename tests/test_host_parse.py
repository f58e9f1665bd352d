"""nftrace.host.parse against real `ip` output.

The samples are what iproute2 6.1 printed on a 6.x kernel for a small Kubernetes-like node
built in a network namespace (eth0 with a secondary address, a cni0 bridge with one veth
port, flannel.1 VXLAN, a docker0 bridge that is down, policy routing in table 100). Trailing
blanks were stripped; overlong `ip -d` detail lines were cut at a word boundary.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nftrace.errors import InputError, UsageError
from nftrace.host.model import Route
from nftrace.host.parse import (
    CONF4_READ,
    build_host_context,
    check_sysctl_flags,
    derive_routes,
    parse_addrs,
    parse_ip_rules,
    parse_routes,
    parse_sysctls,
)
from tests.test_fib import Netns, capture, namespaces, wait_for_dad

ROUTES_ALL = """\
default via 192.168.50.2 dev eth0 table 100
blackhole 10.96.0.0/12 table 100
10.100.0.0/16 table 100
	nexthop via 192.168.50.3 dev eth0 weight 1
	nexthop via 192.168.50.4 dev eth0 weight 2
throw 10.250.0.0/16 table 100
default via 192.168.50.1 dev eth0 proto dhcp src 192.168.50.10 metric 100
10.244.0.0/24 via 10.244.0.0 dev flannel.1 onlink
10.244.1.0/24 dev cni0 proto kernel scope link src 10.244.1.1
10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink
192.168.50.0/24 dev eth0 proto kernel scope link src 192.168.50.10
unreachable 198.51.100.0/24
prohibit 203.0.113.0/24
local 10.244.1.0 dev flannel.1 table local proto kernel scope host src 10.244.1.0
local 10.244.1.1 dev cni0 table local proto kernel scope host src 10.244.1.1
broadcast 10.244.1.255 dev cni0 table local proto kernel scope link src 10.244.1.1
local 127.0.0.0/8 dev lo table local proto kernel scope host src 127.0.0.1
local 127.0.0.1 dev lo table local proto kernel scope host src 127.0.0.1
broadcast 127.255.255.255 dev lo table local proto kernel scope link src 127.0.0.1
local 172.17.0.1 dev docker0 table local proto kernel scope host src 172.17.0.1
local 192.168.50.10 dev eth0 table local proto kernel scope host src 192.168.50.10
local 192.168.50.200 dev eth0 table local proto kernel scope host src 192.168.50.10
broadcast 192.168.50.255 dev eth0 table local proto kernel scope link src 192.168.50.10
2001:db8:50::/64 dev eth0 proto kernel metric 256 pref medium
fe80::/64 dev flannel.1 proto kernel metric 256 pref medium
fe80::/64 dev veth1a2b3c4d proto kernel metric 256 pref medium
fe80::/64 dev cni0 proto kernel metric 256 pref medium
fe80::/64 dev eth0 proto kernel metric 256 pref medium
default via fe80::1 dev eth0 proto ra metric 1024 expires 1799sec pref medium
local ::1 dev lo table local proto kernel metric 0 pref medium
local 2001:db8:50::10 dev eth0 table local proto kernel metric 0 pref medium
local fe80::10b8:17ff:fea1:d586 dev flannel.1 table local proto kernel metric 0 pref medium
local fe80::88e7:bdff:fe5a:1dfe dev veth1a2b3c4d table local proto kernel metric 0 pref medium
local fe80::88e7:bdff:fe5a:1dfe dev cni0 table local proto kernel metric 0 pref medium
local fe80::bc1a:5aff:fe76:a336 dev eth0 table local proto kernel metric 0 pref medium
multicast ff00::/8 dev flannel.1 table local proto kernel metric 256 pref medium
multicast ff00::/8 dev veth1a2b3c4d table local proto kernel metric 256 pref medium
multicast ff00::/8 dev cni0 table local proto kernel metric 256 pref medium
multicast ff00::/8 dev eth0 table local proto kernel metric 256 pref medium
"""

# `ip -j -p route show table all` (the same host; -p only adds line breaks)
ROUTES_JSON = """\
[{"dst":"default","gateway":"192.168.50.2","dev":"eth0","table":"100","flags":[]},
{"type":"blackhole","dst":"10.96.0.0/12","table":"100","flags":[]},
{"dst":"10.100.0.0/16","table":"100","flags":[],"nexthops":[{"gateway":"192.168.50.3","dev":"eth0",
  "weight":1,"flags":[]},{"gateway":"192.168.50.4","dev":"eth0","weight":2,"flags":[]}]},
{"type":"throw","dst":"10.250.0.0/16","table":"100","flags":[]},
{"dst":"default","gateway":"192.168.50.1","dev":"eth0","protocol":"dhcp","prefsrc":"192.168.50.10",
  "metric":100,"flags":[]},
{"dst":"10.244.0.0/24","gateway":"10.244.0.0","dev":"flannel.1","flags":["onlink"]},
{"dst":"10.244.1.0/24","dev":"cni0","protocol":"kernel","scope":"link","prefsrc":"10.244.1.1","flags":[]},
{"dst":"10.244.2.0/24","gateway":"10.244.2.0","dev":"flannel.1","flags":["onlink"]},
{"dst":"192.168.50.0/24","dev":"eth0","protocol":"kernel","scope":"link","prefsrc":"192.168.50.10",
  "flags":[]},
{"type":"unreachable","dst":"198.51.100.0/24","flags":[]},
{"type":"prohibit","dst":"203.0.113.0/24","flags":[]},
{"type":"local","dst":"10.244.1.0","dev":"flannel.1","table":"local","protocol":"kernel","scope":"host",
  "prefsrc":"10.244.1.0","flags":[]},
{"type":"local","dst":"10.244.1.1","dev":"cni0","table":"local","protocol":"kernel","scope":"host",
  "prefsrc":"10.244.1.1","flags":[]},
{"type":"broadcast","dst":"10.244.1.255","dev":"cni0","table":"local","protocol":"kernel","scope":"link",
  "prefsrc":"10.244.1.1","flags":[]},
{"type":"local","dst":"127.0.0.0/8","dev":"lo","table":"local","protocol":"kernel","scope":"host",
  "prefsrc":"127.0.0.1","flags":[]},
{"type":"local","dst":"127.0.0.1","dev":"lo","table":"local","protocol":"kernel","scope":"host",
  "prefsrc":"127.0.0.1","flags":[]},
{"type":"broadcast","dst":"127.255.255.255","dev":"lo","table":"local","protocol":"kernel","scope":"link",
  "prefsrc":"127.0.0.1","flags":[]},
{"type":"local","dst":"172.17.0.1","dev":"docker0","table":"local","protocol":"kernel","scope":"host",
  "prefsrc":"172.17.0.1","flags":[]},
{"type":"local","dst":"192.168.50.10","dev":"eth0","table":"local","protocol":"kernel","scope":"host",
  "prefsrc":"192.168.50.10","flags":[]},
{"type":"local","dst":"192.168.50.200","dev":"eth0","table":"local","protocol":"kernel","scope":"host",
  "prefsrc":"192.168.50.10","flags":[]},
{"type":"broadcast","dst":"192.168.50.255","dev":"eth0","table":"local","protocol":"kernel",
  "scope":"link","prefsrc":"192.168.50.10","flags":[]},
{"dst":"2001:db8:50::/64","dev":"eth0","protocol":"kernel","metric":256,"flags":[],"pref":"medium"},
{"dst":"fe80::/64","dev":"flannel.1","protocol":"kernel","metric":256,"flags":[],"pref":"medium"},
{"dst":"fe80::/64","dev":"veth1a2b3c4d","protocol":"kernel","metric":256,"flags":[],"pref":"medium"},
{"dst":"fe80::/64","dev":"cni0","protocol":"kernel","metric":256,"flags":[],"pref":"medium"},
{"dst":"fe80::/64","dev":"eth0","protocol":"kernel","metric":256,"flags":[],"pref":"medium"},
{"dst":"default","gateway":"fe80::1","dev":"eth0","protocol":"ra","metric":1024,"flags":[],"expires":1799,
  "pref":"medium"},
{"type":"local","dst":"::1","dev":"lo","table":"local","protocol":"kernel","metric":0,"flags":[],
  "pref":"medium"},
{"type":"local","dst":"2001:db8:50::10","dev":"eth0","table":"local","protocol":"kernel","metric":0,
  "flags":[],"pref":"medium"},
{"type":"local","dst":"fe80::10b8:17ff:fea1:d586","dev":"flannel.1","table":"local","protocol":"kernel",
  "metric":0,"flags":[],"pref":"medium"},
{"type":"local","dst":"fe80::88e7:bdff:fe5a:1dfe","dev":"veth1a2b3c4d","table":"local",
  "protocol":"kernel","metric":0,"flags":[],"pref":"medium"},
{"type":"local","dst":"fe80::88e7:bdff:fe5a:1dfe","dev":"cni0","table":"local","protocol":"kernel",
  "metric":0,"flags":[],"pref":"medium"},
{"type":"local","dst":"fe80::bc1a:5aff:fe76:a336","dev":"eth0","table":"local","protocol":"kernel",
  "metric":0,"flags":[],"pref":"medium"},
{"type":"multicast","dst":"ff00::/8","dev":"flannel.1","table":"local","protocol":"kernel","metric":256,
  "flags":[],"pref":"medium"},
{"type":"multicast","dst":"ff00::/8","dev":"veth1a2b3c4d","table":"local","protocol":"kernel",
  "metric":256,"flags":[],"pref":"medium"},
{"type":"multicast","dst":"ff00::/8","dev":"cni0","table":"local","protocol":"kernel","metric":256,
  "flags":[],"pref":"medium"},
{"type":"multicast","dst":"ff00::/8","dev":"eth0","table":"local","protocol":"kernel","metric":256,
  "flags":[],"pref":"medium"}]
"""

ROUTES_MAIN = """\
default via 192.168.50.1 dev eth0 proto dhcp src 192.168.50.10 metric 100
10.244.0.0/24 via 10.244.0.0 dev flannel.1 onlink
10.244.1.0/24 dev cni0 proto kernel scope link src 10.244.1.1
10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink
192.168.50.0/24 dev eth0 proto kernel scope link src 192.168.50.10
unreachable 198.51.100.0/24
prohibit 203.0.113.0/24
"""

ROUTES_LOCAL = """\
local 10.244.1.0 dev flannel.1 proto kernel scope host src 10.244.1.0
local 10.244.1.1 dev cni0 proto kernel scope host src 10.244.1.1
broadcast 10.244.1.255 dev cni0 proto kernel scope link src 10.244.1.1
local 127.0.0.0/8 dev lo proto kernel scope host src 127.0.0.1
local 127.0.0.1 dev lo proto kernel scope host src 127.0.0.1
broadcast 127.255.255.255 dev lo proto kernel scope link src 127.0.0.1
local 172.17.0.1 dev docker0 proto kernel scope host src 172.17.0.1
local 192.168.50.10 dev eth0 proto kernel scope host src 192.168.50.10
local 192.168.50.200 dev eth0 proto kernel scope host src 192.168.50.10
broadcast 192.168.50.255 dev eth0 proto kernel scope link src 192.168.50.10
"""

ADDR = """\
1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN group default qlen 1000
    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00
    inet 127.0.0.1/8 scope host lo
       valid_lft forever preferred_lft forever
    inet6 ::1/128 scope host
       valid_lft forever preferred_lft forever
2: eth0@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP group default qlen 1000
    link/ether 52:54:00:12:34:56 brd ff:ff:ff:ff:ff:ff link-netns nft-h-d2a633d4-p
    inet 192.168.50.10/24 scope global eth0
       valid_lft forever preferred_lft forever
    inet 192.168.50.200/24 scope global secondary eth0
       valid_lft forever preferred_lft forever
    inet6 2001:db8:50::10/64 scope global
       valid_lft forever preferred_lft forever
    inet6 fe80::bc1a:5aff:fe76:a336/64 scope link
       valid_lft forever preferred_lft forever
3: cni0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP group default qlen 1000
    link/ether 8a:e7:bd:5a:1d:fe brd ff:ff:ff:ff:ff:ff
    inet 10.244.1.1/24 scope global cni0
       valid_lft forever preferred_lft forever
    inet6 fe80::88e7:bdff:fe5a:1dfe/64 scope link
       valid_lft forever preferred_lft forever
4: flannel.1: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1450 qdisc noqueue state UNKNOWN group default qlen 1000
    link/ether 12:b8:17:a1:d5:86 brd ff:ff:ff:ff:ff:ff
    inet 10.244.1.0/32 scope global flannel.1
       valid_lft forever preferred_lft forever
    inet6 fe80::10b8:17ff:fea1:d586/64 scope link
       valid_lft forever preferred_lft forever
5: veth1a2b3c4d@if3: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue master cni0 state UP group default qlen 1000
    link/ether 8a:e7:bd:5a:1d:fe brd ff:ff:ff:ff:ff:ff link-netns nft-h-d2a633d4-p
    inet6 fe80::88e7:bdff:fe5a:1dfe/64 scope link
       valid_lft forever preferred_lft forever
6: docker0: <BROADCAST,MULTICAST> mtu 1500 qdisc noop state DOWN group default qlen 1000
    link/ether a2:8c:ad:5c:b7:c8 brd ff:ff:ff:ff:ff:ff
    inet 172.17.0.1/16 scope global docker0
       valid_lft forever preferred_lft forever
"""

ADDR_DETAILS = """\
1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN group default qlen 1000
    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00 promiscuity 0  allmulti 0 minmtu 0 maxmtu 0
    inet 127.0.0.1/8 scope host lo
       valid_lft forever preferred_lft forever
2: eth0@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP group default qlen 1000
    link/ether 52:54:00:12:34:56 brd ff:ff:ff:ff:ff:ff link-netns nft-h-d2a633d4-p promiscuity 0
    veth numtxqueues 2 numrxqueues 2 gso_max_size 65536 gso_max_segs 65535 tso_max_size 524280
    inet 192.168.50.10/24 scope global eth0
       valid_lft forever preferred_lft forever
3: cni0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP group default qlen 1000
    link/ether 8a:e7:bd:5a:1d:fe brd ff:ff:ff:ff:ff:ff promiscuity 0  allmulti 0 minmtu 68 maxmtu 65535
    bridge forward_delay 1500 hello_time 200 max_age 2000 ageing_time 30000 stp_state 0 priority 32768
    inet 10.244.1.1/24 scope global cni0
       valid_lft forever preferred_lft forever
4: flannel.1: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1450 qdisc noqueue state UNKNOWN group default qlen 1000
    link/ether 12:b8:17:a1:d5:86 brd ff:ff:ff:ff:ff:ff promiscuity 0  allmulti 0 minmtu 68 maxmtu 65535
    vxlan id 1 local 192.168.50.10 dev eth0 srcport 0 0 dstport 8472 nolearning ttl auto ageing 300
    inet 10.244.1.0/32 scope global flannel.1
       valid_lft forever preferred_lft forever
5: veth1a2b3c4d@if3: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue master cni0 state UP group default qlen 1000
    link/ether 8a:e7:bd:5a:1d:fe brd ff:ff:ff:ff:ff:ff link-netns nft-h-d2a633d4-p promiscuity 1
    veth
    bridge_slave state forwarding priority 32 cost 2 hairpin off guard off root_block off fastleave off
    inet6 fe80::88e7:bdff:fe5a:1dfe/64 scope link
       valid_lft forever preferred_lft forever
6: docker0: <BROADCAST,MULTICAST> mtu 1500 qdisc noop state DOWN group default qlen 1000
    link/ether a2:8c:ad:5c:b7:c8 brd ff:ff:ff:ff:ff:ff promiscuity 0  allmulti 0 minmtu 68 maxmtu 65535
    bridge forward_delay 1500 hello_time 200 max_age 2000 ageing_time 30000 stp_state 0 priority 32768
    inet 172.17.0.1/16 scope global docker0
       valid_lft forever preferred_lft forever
"""

ADDR_BRIEF = """\
lo               UNKNOWN        127.0.0.1/8 ::1/128
eth0@if2         UP             192.168.50.10/24 192.168.50.200/24 2001:db8:50::10/64 fe80::bc1a:5aff:fe76:a336/64
cni0             UP             10.244.1.1/24 fe80::88e7:bdff:fe5a:1dfe/64
flannel.1        UNKNOWN        10.244.1.0/32 fe80::10b8:17ff:fea1:d586/64
veth1a2b3c4d@if3 UP             fe80::88e7:bdff:fe5a:1dfe/64
docker0          DOWN           172.17.0.1/16
"""

ADDR_ONELINE = r"""1: lo    inet 127.0.0.1/8 scope host lo\       valid_lft forever preferred_lft forever
2: eth0    inet 192.168.50.10/24 scope global eth0\       valid_lft forever preferred_lft forever
2: eth0    inet 192.168.50.200/24 scope global secondary eth0\       valid_lft forever preferred_lft forever
3: cni0    inet 10.244.1.1/24 scope global cni0\       valid_lft forever preferred_lft forever
4: flannel.1    inet 10.244.1.0/32 scope global flannel.1\       valid_lft forever preferred_lft forever
6: docker0    inet 172.17.0.1/16 scope global docker0\       valid_lft forever preferred_lft forever
"""

# `ip -j -p addr` (life times left out; cni0 as `ip -j -d addr` shows it, with linkinfo)
ADDR_JSON = """\
[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"mtu":65536,"qdisc":"noqueue",
  "operstate":"UNKNOWN","group":"default","txqlen":1000,"link_type":"loopback",
  "address":"00:00:00:00:00:00","broadcast":"00:00:00:00:00:00","addr_info":[{"family":"inet",
  "local":"127.0.0.1","prefixlen":8,"scope":"host","label":"lo"},{"family":"inet6","local":"::1",
  "prefixlen":128,"scope":"host"}]},
{"ifindex":2,"link_index":2,"ifname":"eth0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],
  "mtu":1500,"qdisc":"noqueue","operstate":"UP","group":"default","txqlen":1000,"link_type":"ether",
  "address":"52:54:00:12:34:56","broadcast":"ff:ff:ff:ff:ff:ff","link_netnsid":0,
  "addr_info":[{"family":"inet","local":"192.168.50.10","prefixlen":24,"scope":"global","label":"eth0"},
  {"family":"inet","local":"192.168.50.200","prefixlen":24,"scope":"global","secondary":true,
  "label":"eth0"},{"family":"inet6","local":"2001:db8:50::10","prefixlen":64,"scope":"global"},
  {"family":"inet6","local":"fe80::bc1a:5aff:fe76:a336","prefixlen":64,"scope":"link"}]},
{"ifindex":3,"ifname":"cni0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1500,
  "qdisc":"noqueue","operstate":"UP","group":"default","txqlen":1000,"link_type":"ether",
  "address":"8a:e7:bd:5a:1d:fe","broadcast":"ff:ff:ff:ff:ff:ff","addr_info":[{"family":"inet",
  "local":"10.244.1.1","prefixlen":24,"scope":"global","label":"cni0"},{"family":"inet6",
  "local":"fe80::88e7:bdff:fe5a:1dfe","prefixlen":64,"scope":"link"}],"linkinfo":{"info_kind":"bridge",
  "info_data":{"forward_delay":1500,"stp_state":0}}},
{"ifindex":4,"ifname":"flannel.1","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1450,
  "qdisc":"noqueue","operstate":"UNKNOWN","group":"default","txqlen":1000,"link_type":"ether",
  "address":"12:b8:17:a1:d5:86","broadcast":"ff:ff:ff:ff:ff:ff","addr_info":[{"family":"inet",
  "local":"10.244.1.0","prefixlen":32,"scope":"global","label":"flannel.1"},{"family":"inet6",
  "local":"fe80::10b8:17ff:fea1:d586","prefixlen":64,"scope":"link"}]},
{"ifindex":5,"link_index":3,"ifname":"veth1a2b3c4d","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],
  "mtu":1500,"qdisc":"noqueue","master":"cni0","operstate":"UP","group":"default","txqlen":1000,
  "link_type":"ether","address":"8a:e7:bd:5a:1d:fe","broadcast":"ff:ff:ff:ff:ff:ff","link_netnsid":0,
  "addr_info":[{"family":"inet6","local":"fe80::88e7:bdff:fe5a:1dfe","prefixlen":64,"scope":"link"}]},
{"ifindex":6,"ifname":"docker0","flags":["BROADCAST","MULTICAST"],"mtu":1500,"qdisc":"noop",
  "operstate":"DOWN","group":"default","txqlen":1000,"link_type":"ether","address":"a2:8c:ad:5c:b7:c8",
  "broadcast":"ff:ff:ff:ff:ff:ff","addr_info":[{"family":"inet","local":"172.17.0.1","prefixlen":16,
  "scope":"global","label":"docker0"}]}]
"""

# point-to-point addresses (`ip addr add A peer B/P`), `ip addr show br0` and `ip -br addr show br0`
ADDR_PEER = """\
6: br0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1450 qdisc noqueue state UP group default qlen 1000
    link/ether 0a:2d:15:7b:c3:bc brd ff:ff:ff:ff:ff:ff
    inet 10.0.2.0/31 scope global br0
       valid_lft forever preferred_lft forever
    inet 10.0.3.1/32 scope global br0
       valid_lft forever preferred_lft forever
    inet 192.168.9.1 peer 192.168.9.2/32 scope global br0
       valid_lft forever preferred_lft forever
    inet 192.168.10.1 peer 192.168.11.0/24 scope global br0
       valid_lft forever preferred_lft forever
"""
ADDR_PEER_BRIEF = " ".join(
    [
        "br0              UP            ",
        "10.0.2.0/31 10.0.3.1/32 192.168.9.1 peer 192.168.9.2/32",
        "192.168.10.1 peer 192.168.11.0/24\n",
    ],
)
# what the kernel installed for them (`ip route show table all`, trimmed to br0)
ROUTES_PEER = """\
10.0.2.0/31 dev br0 proto kernel scope link src 10.0.2.0
192.168.9.2 dev br0 proto kernel scope link src 192.168.9.1
192.168.11.0/24 dev br0 proto kernel scope link src 192.168.10.1
local 10.0.2.0 dev br0 table local proto kernel scope host src 10.0.2.0
local 10.0.3.1 dev br0 table local proto kernel scope host src 10.0.3.1
local 192.168.9.1 dev br0 table local proto kernel scope host src 192.168.9.1
local 192.168.10.1 dev br0 table local proto kernel scope host src 192.168.10.1
broadcast 192.168.11.255 dev br0 table local proto kernel scope link src 192.168.10.1
"""

RULES = """\
0:	from all lookup local
100:	from all fwmark 0x4000/0x4000 lookup 100
110:	from 10.244.1.0/24 to 10.96.0.0/12 iif cni0 lookup main
120:	not from 10.244.0.0/16 lookup main suppress_prefixlength 0
130:	from all uidrange 1000-1000 ipproto tcp dport 1000-2000 lookup 100
140:	from all to 1.1.1.1 prohibit
150:	from 192.168.50.200 goto 200
200:	from all nop
32766:	from all lookup main
32767:	from all lookup default
"""
RULES6 = """\
0:	from all lookup local
100:	from 2001:db8:50::/64 lookup 100
32766:	from all lookup main
"""
RULES_JSON = """\
[{"priority":0,"src":"all","table":"local"},
{"priority":100,"src":"all","fwmark":"0x4000","fwmask":"0x4000","table":"100"},
{"priority":110,"src":"10.244.1.0","srclen":24,"dst":"10.96.0.0","dstlen":12,"iif":"cni0","table":"main"},
{"priority":120,"not":null,"src":"10.244.0.0","srclen":16,"table":"main","suppress_prefixlen":0},
{"priority":130,"src":"all","uid_start":1000,"uid_end":1000,"ipproto":"tcp","dport_start":1000,
  "dport_end":2000,"table":"100"},
{"priority":140,"src":"all","dst":"1.1.1.1","action":"prohibit"},
{"priority":150,"src":"192.168.50.200","goto":200},
{"priority":200,"src":"all","nop":null},
{"priority":32766,"src":"all","table":"main"},
{"priority":32767,"src":"all","table":"default"}]
"""
# other rule shapes iproute2 prints (a 6.x kernel, iproute2 6.1)
RULES_MORE = """\
0:	from all lookup local
500:	from 10.0.0.0/8 tos 0x10 lookup main
501:	from all ipproto udp sport 80 lookup main
502:	from all lookup [l3mdev-table]
504:	not from all fwmark 0x10/0x10 iif eth0 oif eth1 unreachable
505:	from all iif veth9 [detached] lookup 42
506:	from all to 8.8.8.8 goto 600 [unresolved]
507:	from all lookup mytable
508:	from all fwmark 0x1 blackhole
32766:	from all lookup main
"""


# --------------------------------------------------------------------------- routes


def test_routes_text() -> None:
    routes = parse_routes(ROUTES_ALL, "ip-route.txt")
    assert len(routes) == 37
    assert routes[0] == Route(table="100", dst="default", gateway="192.168.50.2", oif="eth0")
    assert (routes[1].type, routes[1].dst, routes[1].table) == ("blackhole", "10.96.0.0/12", "100")
    mp = routes[2]
    assert mp.nexthops == [("192.168.50.3", "eth0", 1), ("192.168.50.4", "eth0", 2)]
    assert (mp.gateway, mp.oif, mp.table) == ("192.168.50.3", "eth0", "100")  # the first hop
    assert routes[3].type == "throw"
    default = routes[4]
    assert (default.table, default.gateway, default.proto, default.prefsrc, default.metric) == (
        "main",
        "192.168.50.1",
        "dhcp",
        "192.168.50.10",
        100,
    )
    assert routes[5].flags == ["onlink"]
    connected = routes[6]
    assert (connected.dst, connected.scope, connected.proto, connected.prefsrc) == (
        "10.244.1.0/24",
        "link",
        "kernel",
        "10.244.1.1",
    )
    assert [r.type for r in routes[9:11]] == ["unreachable", "prohibit"]
    local = routes[11]
    assert (local.type, local.dst, local.table, local.scope) == ("local", "10.244.1.0/32", "local", "host")
    assert routes[14] == Route(
        table="local",
        type="local",
        dst="127.0.0.0/8",
        oif="lo",
        prefsrc="127.0.0.1",
        scope="host",
        proto="kernel",
    )
    v6 = [r for r in routes if r.family == "ipv6"]
    assert len(v6) == 16
    assert v6[0] == Route(dst="2001:db8:50::/64", oif="eth0", metric=256, proto="kernel", family="ipv6")
    ra = next(r for r in v6 if r.proto == "ra")
    assert (ra.dst, ra.gateway, ra.metric, ra.family) == ("default", "fe80::1", 1024, "ipv6")
    assert v6[6].dst == "::1/128" and v6[6].table == "local"
    assert {r.oif for r in v6 if r.type == "multicast"} == {"flannel.1", "veth1a2b3c4d", "cni0", "eth0"}


def test_routes_json_equals_text() -> None:
    assert parse_routes(ROUTES_JSON, "ip-route.json") == parse_routes(ROUTES_ALL, "ip-route.txt")
    # `ip -j route; ip -6 -j route` pasted together: two arrays
    two = json.dumps(json.loads(ROUTES_JSON)[:5]) + "\n" + json.dumps(json.loads(ROUTES_JSON)[5:])
    assert parse_routes(two, "x") == parse_routes(ROUTES_ALL, "y")


def test_routes_without_table_keyword() -> None:
    # `ip route show table local` prints no `table`: local/broadcast routes belong to table local ...
    local = parse_routes(ROUTES_LOCAL, "t")
    assert {r.table for r in local} == {"local"}
    assert [r.dst for r in local if r.type == "broadcast"] == [
        "10.244.1.255/32",
        "127.255.255.255/32",
        "192.168.50.255/32",
    ]
    # ... also pasted after plain `ip route` (table main)
    both = parse_routes(ROUTES_MAIN + ROUTES_LOCAL, "t")
    assert [r.table for r in both] == ["main"] * 7 + ["local"] * 10
    # while in `show table all` output a local route without `table` is a route of table main
    mixed = parse_routes("local 10.9.0.0/16 dev lo scope host\nlocal 10.0.0.1 dev eth0 table local\n", "t")
    assert [r.table for r in mixed] == ["main", "local"]
    # `ip -6 route show table local`
    v6 = parse_routes("multicast ff00::/8 dev eth0 proto kernel metric 256 pref medium\n", "t")
    assert (v6[0].table, v6[0].family) == ("local", "ipv6")


def test_route_keywords() -> None:
    text = "\n".join(
        [
            # (`ip route` ends its lines with a blank)
            "10.0.1.4/30 dev eth1 proto kernel scope link src 10.0.1.5 linkdown ",
            "10.77.0.0/16 nhid 7 via 10.0.0.254 dev eth0 ",
            "10.81.0.0/16 tos 0x10 via 10.0.0.2 dev eth0 ",
            "anycast 10.0.0.128 dev eth0 table local scope link ",
            "10.5.0.0/16 via 10.0.0.1 dev eth0 proto static metric 20 mtu lock 1400 advmss 1360 realm 5 ",
            "10.6.0.0/16 encap mpls 100/200 via 10.0.0.1 dev eth0 ",
            "10.7.0.0/16 via 10.0.0.1 dev eth0 frobnicate 3 proto bird ",
            "10.8.0.0/16 via inet6 fe80::1 dev eth0 ",
            "2001:db8:9::/48 via fe80::1 dev eth0 metric 1024 expires 299sec pref medium",
            "unreachable 2001:db8:67::/48 dev lo metric 1024 error -113 pref medium",
            "default dev wg0 table 51820 scope link ",
            "8.8.8.8 via 10.0.0.254 dev eth0 src 10.0.0.1 uid 0 ",  # `ip route get` output
            "    cache ",
        ]
    )
    r = parse_routes(text, "t")
    assert r[0].flags == ["linkdown"]
    assert r[1].nhid == 7 and r[1].gateway == "10.0.0.254"
    assert r[2].tos == 0x10
    assert (r[3].type, r[3].table, r[3].scope, r[3].dst) == ("anycast", "local", "link", "10.0.0.128/32")
    assert (r[4].proto, r[4].metric, r[4].gateway) == ("static", 20, "10.0.0.1")
    assert (r[5].gateway, r[5].oif) == ("10.0.0.1", "eth0")
    assert (r[6].proto, r[6].oif) == ("bird", "eth0")
    assert (r[7].gateway, r[7].family) == ("fe80::1", "ipv4")
    assert r[8].family == "ipv6" and r[8].metric == 1024
    assert (r[9].type, r[9].family) == ("unreachable", "ipv6")
    assert (r[10].table, r[10].family) == ("51820", "ipv4")
    assert parse_routes("default dev wg0 table 51820 scope link\n", "t", family="ipv6")[0].family == "ipv6"
    assert (r[11].dst, r[11].prefsrc) == ("8.8.8.8/32", "10.0.0.1")
    assert len(r) == 12


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("default via 10.0.0.1 dev eth0\nRTNETLINK answers: Operation not permitted\n", 2, "not a route"),
        ("10.0.0.0/8 via 10.0.0.1\nvia 10.0.0.1 dev eth0\n", 2, "not a route"),
        ("local\n", 1, "no destination"),
        ("10.0.0.0/8 via 10.0.0.300 dev eth0\n", 1, "bad gateway"),
        ("10.0.0.0/33 dev eth0\n", 1, "not a route"),
        ("\tnexthop via 10.0.0.1 dev eth0 weight 1\n", 1, "continuation"),
        ("10.0.0.0/8 dev eth0 metric x\n", 1, "bad metric"),
        ("10.0.0.0/8 dev\n", 1, "needs a value"),
    ],
)
def test_route_errors(text: str, line: int, words: str) -> None:
    with pytest.raises(InputError) as e:
        parse_routes(text, "routes.txt")
    assert (e.value.file, e.value.line) == ("routes.txt", line)
    assert words in e.value.message
    assert e.value.one_line().startswith(f"nftrace: routes.txt:{line}: ")
    assert "\n" not in e.value.one_line()


def test_route_json_errors() -> None:
    with pytest.raises(InputError) as e:
        parse_routes('[{"dst": "default",\n "dev": "eth0"\n', "r.json")
    assert e.value.file == "r.json" and e.value.line is not None
    with pytest.raises(InputError, match='no "dst"'):
        parse_routes('[{"dev": "eth0"}]', "r.json")
    with pytest.raises(InputError, match="bad gateway"):
        parse_routes('[{"dst": "default", "gateway": "fe80::zz"}]', "r.json")


# --------------------------------------------------------------------------- addresses


def test_addrs_text() -> None:
    links = parse_addrs(ADDR, "ip-addr.txt")
    assert [(lk.index, lk.name) for lk in links] == [
        (1, "lo"),
        (2, "eth0"),
        (3, "cni0"),
        (4, "flannel.1"),
        (5, "veth1a2b3c4d"),
        (6, "docker0"),
    ]
    lo, eth0, cni0, flannel, veth, docker0 = links
    assert (lo.kind, lo.up, lo.mtu, lo.addresses) == ("loopback", True, 65536, ["127.0.0.1/8", "::1/128"])
    assert eth0.addresses == [
        "192.168.50.10/24",
        "192.168.50.200/24",
        "2001:db8:50::10/64",
        "fe80::bc1a:5aff:fe76:a336/64",
    ]
    assert (eth0.mac, eth0.mtu, eth0.kind, eth0.master) == ("52:54:00:12:34:56", 1500, None, None)
    assert flannel.addresses[0] == "10.244.1.0/32" and flannel.mtu == 1450
    assert (veth.master, veth.up) == ("cni0", True)
    assert (docker0.up, docker0.addresses) == (False, ["172.17.0.1/16"])
    assert cni0.addresses == ["10.244.1.1/24", "fe80::88e7:bdff:fe5a:1dfe/64"]


def test_addrs_all_forms_agree() -> None:
    text = parse_addrs(ADDR, "a")
    js = parse_addrs(ADDR_JSON, "a.json")
    brief = parse_addrs(ADDR_BRIEF, "br")
    details = parse_addrs(ADDR_DETAILS, "d")
    oneline = parse_addrs(ADDR_ONELINE, "o")
    assert [(lk.name, lk.index, lk.up, lk.master, lk.mac, lk.addresses) for lk in js] == [
        (lk.name, lk.index, lk.up, lk.master, lk.mac, lk.addresses) for lk in text
    ]
    assert [(lk.name, lk.up, lk.addresses) for lk in brief] == [(lk.name, lk.up, lk.addresses) for lk in text]
    assert [(lk.name, lk.kind) for lk in details] == [
        ("lo", "loopback"),
        ("eth0", "veth"),
        ("cni0", "bridge"),
        ("flannel.1", "vxlan"),
        ("veth1a2b3c4d", "veth"),
        ("docker0", "bridge"),
    ]
    assert js[2].kind == "bridge"  # linkinfo in `ip -j -d`
    v4 = {lk.name: [a for a in lk.addresses if ":" not in a] for lk in text}
    assert {lk.name: lk.addresses for lk in oneline} == {k: v for k, v in v4.items() if v}


def test_addrs_peer() -> None:
    (br0,) = parse_addrs(ADDR_PEER, "a")
    assert br0.addresses == ["10.0.2.0/31", "10.0.3.1/32", "192.168.9.1/32", "192.168.10.1/24"]
    assert br0.peers == {"192.168.9.1/32": "192.168.9.2/32", "192.168.10.1/24": "192.168.11.0/24"}
    (brief,) = parse_addrs(ADDR_PEER_BRIEF, "b")
    assert (brief.addresses, brief.peers) == (br0.addresses, br0.peers)
    js = [
        {
            "ifindex": 6,
            "ifname": "br0",
            "flags": ["UP"],
            "addr_info": [
                {"family": "inet", "local": "192.168.9.1", "address": "192.168.9.2", "prefixlen": 32},
            ],
        }
    ]
    (jl,) = parse_addrs(json.dumps(js), "j")
    assert (jl.addresses, jl.peers) == (["192.168.9.1/32"], {"192.168.9.1/32": "192.168.9.2/32"})


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("1: lo: <LOOPBACK,UP> mtu 65536\n    inet 127.0.0.1/8 scope host lo\nthis is not ip addr\n", 3),
        ("1: lo: <LOOPBACK,UP> mtu 65536\n    inet 127.0.0.300/8 scope host lo\n", 2),
        ("    inet 10.0.0.1/24 scope global eth0\n", 1),
        ("eth0 SIDEWAYS 10.0.0.1/24\n", 1),
        ("eth0 UP 10.0.0.1/40\n", 1),
    ],
)
def test_addr_errors(text: str, line: int) -> None:
    with pytest.raises(InputError) as e:
        parse_addrs(text, "addrs.txt")
    assert (e.value.file, e.value.line) == ("addrs.txt", line)


# --------------------------------------------------------------------------- ip rules


def test_rules_text() -> None:
    rules = parse_ip_rules(RULES, "ip-rule.txt")
    assert [r.priority for r in rules] == [0, 100, 110, 120, 130, 140, 150, 200, 32766, 32767]
    r = {x.priority: x for x in rules}
    assert (r[0].table, r[0].action, r[0].src) == ("local", "lookup", None)
    assert (r[100].fwmark, r[100].fwmask, r[100].table) == (0x4000, 0x4000, "100")
    assert (r[110].src, r[110].dst) == ("10.244.1.0/24", "10.96.0.0/12")
    assert (r[110].iif, r[110].table) == ("cni0", "main")
    assert (r[120].invert, r[120].suppress_prefixlength, r[120].src) == (True, 0, "10.244.0.0/16")
    assert (r[130].uidrange, r[130].ipproto) == ((1000, 1000), "tcp")
    assert (r[130].dport, r[130].sport) == ((1000, 2000), None)
    assert (r[140].action, r[140].dst, r[140].table) == ("prohibit", "1.1.1.1/32", None)
    assert (r[150].action, r[150].goto, r[150].src) == ("goto", 200, "192.168.50.200/32")
    assert r[200].action == "nop"
    assert r[32767].table == "default"
    assert {x.family for x in rules} == {"ipv4"}


def test_rules_json_equals_text_and_families() -> None:
    assert parse_ip_rules(RULES_JSON, "j") == parse_ip_rules(RULES, "t")
    both = parse_ip_rules(RULES + RULES6, "t")
    assert [r.family for r in both] == ["ipv4"] * 10 + ["ipv6"] * 3
    assert both[11].src == "2001:db8:50::/64"
    # a listing of `ip -6 rule` alone: the addresses tell; without them the caller's family does
    assert {r.family for r in parse_ip_rules(RULES6, "t")} == {"ipv6"}
    assert {r.family for r in parse_ip_rules("0:\tfrom all lookup local\n", "t", family="ipv6")} == {"ipv6"}


def test_rules_more_shapes() -> None:
    r = {x.priority: x for x in parse_ip_rules(RULES_MORE, "t")}
    assert (r[500].tos, r[500].src) == (0x10, "10.0.0.0/8")
    assert (r[501].ipproto, r[501].sport) == ("udp", (80, 80))
    assert (r[502].l3mdev, r[502].table) == (True, None)
    x = r[504]
    assert (x.invert, x.fwmark, x.fwmask) == (True, 0x10, 0x10)
    assert (x.iif, x.oif, x.action) == ("eth0", "eth1", "unreachable")
    assert (r[505].iif, r[505].table) == ("veth9", "42")
    assert (r[506].action, r[506].goto, r[506].dst) == ("goto", 600, "8.8.8.8/32")
    assert r[507].table == "mytable"
    assert (r[508].fwmark, r[508].fwmask, r[508].action) == (1, None, "blackhole")


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("0:\tfrom all lookup local\nfrom all lookup main\n", 2, "PRIORITY"),
        ("0:\tfrom all lookup local\n100:\tfrom all\n", 2, "without an action"),
        ("100:\tfrom 10.0.0.0/33 lookup main\n", 1, "bad from prefix"),
        ("100:\tfrom 10.0.0.0/8 to 2001:db8::/32 lookup main\n", 1, "mixes"),
        ("100:\tfrom all fwmark 0xZZ lookup 5\n", 1, "bad fwmark"),
    ],
)
def test_rule_errors(text: str, line: int, words: str) -> None:
    with pytest.raises(InputError) as e:
        parse_ip_rules(text, "rules.txt")
    assert (e.value.file, e.value.line) == ("rules.txt", line)
    assert words in e.value.message


# --------------------------------------------------------------------------- sysctls


def test_sysctls() -> None:
    out = parse_sysctls(
        [
            "net.ipv4.ip_forward = 1\nnet.ipv4.conf.all.rp_filter = 2\n# comment\n\n; also a comment",
            "net/ipv4/conf/eth0/rp_filter=1",
            "net.ipv4.conf.eth0/100.rp_filter = 0",  # sysctl -a spells the interface eth0.100 so
            "/proc/sys/net/ipv4/conf/eth0.100/route_localnet=1",
            "-net.ipv4.conf.docker0.forwarding = 1",
            "net.ipv4.ip_local_port_range = 32768\t60999",
        ]
    )
    assert out == {
        "net.ipv4.ip_forward": "1",
        "net.ipv4.conf.all.rp_filter": "2",
        "net.ipv4.conf.eth0.rp_filter": "1",
        "net.ipv4.conf.eth0.100.rp_filter": "0",
        "net.ipv4.conf.eth0.100.route_localnet": "1",
        "net.ipv4.conf.docker0.forwarding": "1",
        "net.ipv4.ip_local_port_range": "32768 60999",
    }


def test_sysctl_errors() -> None:
    with pytest.raises(InputError) as e:
        parse_sysctls(["net.ipv4.ip_forward = 1\n# ok\nnet.ipv4.conf.all.rp_filter 1\n"], "sysctl.txt")
    assert (e.value.file, e.value.line) == ("sysctl.txt", 3)
    with pytest.raises(InputError) as e:
        parse_sysctls(["net.ipv4.ip_forward=1", "= 1"])
    assert e.value.line == 2


def test_sysctl_values_are_checked_as_the_kernel_checks_them() -> None:
    out = parse_sysctls(
        [
            "net.ipv4.ip_forward = 0x1\nnet.ipv4.conf.all.rp_filter = 010\nnet.ipv4.conf.eth0.rp_filter = -1",
            "net.bridge.bridge-nf-call-iptables = 7",  # stored as 1 (a bool to the kernel)
            "net.ipv6.conf.all.forwarding = 2 3",  # the first number; the rest is ignored
            "net.ipv4.tcp_rmem = 4096\t131072  6291456",  # not read by nftrace: kept as it is
        ]
    )
    assert out == {
        "net.ipv4.ip_forward": "1",
        "net.ipv4.conf.all.rp_filter": "8",
        "net.ipv4.conf.eth0.rp_filter": "-1",
        "net.bridge.bridge-nf-call-iptables": "1",
        "net.ipv6.conf.all.forwarding": "2",
        "net.ipv4.tcp_rmem": "4096 131072 6291456",
    }
    with pytest.raises(InputError) as e:
        parse_sysctls(["# x\nnet.ipv4.conf.eth1.route_localnet = on\n"], "sysctl.txt")
    assert (e.value.file, e.value.line) == ("sysctl.txt", 2)
    assert "the kernel refuses 'on' for net.ipv4.conf.eth1.route_localnet" in e.value.message
    # sysctl.conf's "-KEY = VALUE": sysctl(8) ignores a failed write, so the key stays unknown
    assert parse_sysctls(["-net.ipv4.ip_forward = yes\nnet.ipv4.conf.all.rp_filter = 2"]) == {
        "net.ipv4.conf.all.rp_filter": "2"
    }
    with pytest.raises(UsageError) as u:
        parse_sysctls(["net.ipv4.ip_forward=abc"], "--sysctl")
    assert u.value.one_line().startswith("nftrace: --sysctl net.ipv4.ip_forward=abc: the kernel refuses 'abc'")


def test_sysctl_flags_name_only_what_nftrace_reads() -> None:
    check_sysctl_flags(["net.ipv4.ip_forward=1", "net.ipv4.conf.eth0.100.rp_filter=2", "/a/file/of/sysctls"])
    for item, said in [
        ("ip_forward=abc", "did you mean net.ipv4.ip_forward?"),
        ("net.ipv4.tcp_syncookies=1", "nftrace does not read net.ipv4.tcp_syncookies"),
        ("net.ipv4.ip_forward=yes", "the kernel refuses 'yes'"),
    ]:
        with pytest.raises(UsageError) as u:
            check_sysctl_flags([item])
        assert f"--sysctl {item}: " in u.value.one_line() and said in u.value.message


# Raw values written to the sysctls nftrace reads, in a namespace: what the kernel stores, or EINVAL.
SYSCTL_WRITES = (
    "0", "1", "2", "3", "10", "-1", "-0", "0x1", "0X1F", "-0x1", "010", "00", "08", "0x", "0xG", " 1", "\t1",
    "\n1", "1 ", "1\n", "1 2", "1\t2", "1 abc", "1,2", "1x", "1.0", "+1", "- 1", "--1", "abc", " ", "1\r", "1\v",
    "2147483647", "2147483648", "-2147483648", "-2147483649", "4294967295", "0x7fffffff", "0x80000000",
    "017777777777", "020000000000", "0" * 19 + "1", "0" * 20 + "1", "-" + "0" * 18 + "1", "-" + "0" * 19 + "1",
)  # fmt: skip


@pytest.mark.kernel
def test_sysctl_values_match_what_the_kernel_stores() -> None:
    """Each value written to each sysctl nftrace reads: the kernel stores what kernel_int() says (the
    bridge ones as 0/1) or refuses it with EINVAL, where sysctl_value() raises."""
    import os

    from nftrace.host.parse import sysctl_value
    from tests.kernelhost import in_netns

    keys = [
        "net.ipv4.ip_forward",
        "net.ipv6.conf.all.forwarding",
        *(f"net.ipv4.conf.{dev}.{name}" for dev in ("all", "default", "lo") for name in CONF4_READ),
        "net.bridge.bridge-nf-call-iptables",
        "net.bridge.bridge-nf-call-ip6tables",
    ]
    with namespaces("sysctlvals") as (node,):

        def probe() -> dict[str, list[str | None]]:
            out: dict[str, list[str | None]] = {}
            for key in keys:
                path = "/proc/sys/" + key.replace(".", "/")
                if not os.path.exists(path):
                    continue  # the bridge sysctls exist only with br_netfilter loaded
                with open(path) as f:
                    orig = f.read()
                got: list[str | None] = []
                for raw in SYSCTL_WRITES:
                    fd = os.open(path, os.O_WRONLY)
                    try:
                        os.write(fd, raw.encode())
                        ok = True
                    except OSError:
                        ok = False
                    finally:
                        os.close(fd)
                    with open(path) as f:
                        got.append(f.read().strip() if ok else None)
                    with open(path, "w") as f:
                        f.write(orig)
                out[key] = got
            return out

        stored = in_netns(node.name, probe)
    assert {"net.ipv4.ip_forward", "net.ipv4.conf.lo.rp_filter"} <= stored.keys()
    wrong = []
    for key, got in stored.items():
        for raw, kernel in zip(SYSCTL_WRITES, got, strict=True):
            try:
                ours: str | None = sysctl_value(key, raw)
            except ValueError:
                ours = None
            if ours != kernel:
                wrong.append(f"{key} <- {raw!r}: kernel {kernel}, nftrace {ours}")
    assert not wrong, "\n".join(wrong)


# --------------------------------------------------------------------------- derived routes and context


def test_derive_routes_matches_what_the_kernel_installed() -> None:
    links = parse_addrs(ADDR, "a")
    kernel = [r for r in parse_routes(ROUTES_ALL, "r") if r.proto == "kernel"]
    derived = derive_routes(links)

    def key(r: Route) -> tuple[str, str, str, str | None, str | None, str, int, str]:
        return (r.table, r.type, r.dst, r.oif, r.prefsrc, r.scope, r.metric, r.family)

    assert sorted(map(key, derived)) == sorted(map(key, kernel))
    # docker0 is down: its address has a local route, nothing else
    assert [r.type for r in derived if r.oif == "docker0"] == ["local"]
    # the secondary address's local route has the primary as source, and no routes of its own
    assert [(r.dst, r.prefsrc) for r in derived if r.oif == "eth0" and r.family == "ipv4"] == [
        ("192.168.50.0/24", "192.168.50.10"),
        ("192.168.50.10/32", "192.168.50.10"),
        ("192.168.50.200/32", "192.168.50.10"),
        ("192.168.50.255/32", "192.168.50.10"),
    ]


def test_derive_routes_peer_31_32() -> None:
    derived = derive_routes(parse_addrs(ADDR_PEER, "a"))
    kernel = parse_routes(ROUTES_PEER, "r")
    assert sorted((r.table, r.type, r.dst, r.prefsrc) for r in derived) == sorted(
        (r.table, r.type, r.dst, r.prefsrc) for r in kernel
    )


def _write(tmp: Path, name: str, text: str) -> str:
    p = tmp / name
    p.write_text(text)
    return str(p)


def test_build_host_context(tmp_path: Path) -> None:
    empty = build_host_context()
    assert empty.empty and not empty.routes and len(empty.rules) == 5

    ctx = build_host_context(addrs_file=_write(tmp_path, "a", ADDR), sysctls=["net.ipv4.ip_forward=1"])
    assert not ctx.empty
    assert "routes derived from addresses (local and connected only; no default route)" in ctx.provenance
    assert ctx.sysctls == {"net.ipv4.ip_forward": "1"}
    assert [r.priority for r in ctx.rules if r.family == "ipv4"] == [0, 32766, 32767]
    assert [r.priority for r in ctx.rules if r.family == "ipv6"] == [0, 32766]
    assert not any(r.dst == "default" for r in ctx.routes)

    ctx = build_host_context(
        routes_file=_write(tmp_path, "r", ROUTES_ALL),
        addrs_file=_write(tmp_path, "a", ADDR),
        rules_file=_write(tmp_path, "u", RULES + RULES6),
        sysctls=[_write(tmp_path, "s", "net.ipv4.ip_forward = 0\n")],
    )
    assert len(ctx.routes) == 37 and len(ctx.links) == 6 and len(ctx.rules) == 13
    assert ctx.sysctls == {"net.ipv4.ip_forward": "0"}
    assert not ctx.provenance

    # only `ip route` output: the links and their addresses are read off the local routes
    ctx = build_host_context(routes_file=_write(tmp_path, "r", ROUTES_ALL))
    eth0 = ctx.link("eth0")
    assert eth0 is not None
    assert eth0.addresses == [
        "192.168.50.10/24",
        "192.168.50.200/24",
        "2001:db8:50::10/64",
        "fe80::bc1a:5aff:fe76:a336/64",
    ]
    docker0 = ctx.link("docker0")
    assert docker0 is not None and docker0.addresses == ["172.17.0.1/32"]  # down: no connected route to tell
    assert any("inferred" in p for p in ctx.provenance)

    ctx = build_host_context(local_addrs=["10.0.0.5", "2001:db8::5"])
    star = ctx.link("*")
    assert star is not None and star.addresses == ["10.0.0.5/32", "2001:db8::5/128"]
    assert [(r.type, r.table, r.dst) for r in ctx.routes] == [
        ("local", "local", "10.0.0.5/32"),
        ("local", "local", "2001:db8::5/128"),
    ]
    assert not ctx.empty and any("--local-addr" in p for p in ctx.provenance)


def test_build_host_context_errors(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.txt")
    with pytest.raises(InputError) as e:
        build_host_context(routes_file=missing)
    assert e.value.file == missing and "cannot read" in e.value.message
    with pytest.raises(InputError) as e:
        build_host_context(rules_file=_write(tmp_path, "u", "0: from all lookup local\nbogus\n"))
    assert e.value.line == 2
    with pytest.raises(InputError):
        build_host_context(local_addrs=["10.0.0.256"])


# --------------------------------------------------------------------------- the kernel's own routes


@pytest.mark.kernel
def test_derive_routes_against_kernel() -> None:
    """Configure addresses of every shape in a namespace; derive_routes must list exactly the kernel's routes.

    (The IPv6 address of the down link stays tentative, so it gets no route; link-local addresses
    appear once DAD is done, so the namespace is read back after waiting for them.)
    """
    with namespaces("hparse", "hparsepeer") as (node, peer):
        script = f"""
        link add eth0 type veth peer name p0 netns {peer.name}
        link add eth1 type veth peer name p1 netns {peer.name}
        link add br0 type bridge
        link add down0 type veth peer name p2 netns {peer.name}
        link set eth0 up
        link set eth1 up
        link set br0 up
        addr add 10.1.0.1/24 dev eth0
        addr add 10.1.0.9/24 dev eth0
        addr add 10.2.0.1/16 dev eth0
        addr add 10.3.0.0/31 dev eth1
        addr add 10.4.0.1/32 dev eth1
        addr add 10.5.0.1 peer 10.5.0.2/32 dev eth1
        addr add 10.6.0.1 peer 10.7.0.0/24 dev br0
        addr add 10.8.0.1/30 dev br0
        addr add 10.9.0.1/24 dev down0
        addr add 10.255.0.1/32 dev lo
        addr add 2001:db8:1::1/64 dev eth0 nodad
        addr add 2001:db8:2::1/128 dev eth1 nodad
        addr add 2001:db8:3::1/64 dev down0
        """
        node.script(script)
        peer.ip("link", "set", "p0", "up")
        peer.ip("link", "set", "p1", "up")
        wait_for_dad(node)
        _assert_derived_equals_kernel(node)


def _assert_derived_equals_kernel(node: Netns) -> None:
    ctx = capture(node)
    kernel = [r for r in ctx.routes if r.proto == "kernel"]
    derived = derive_routes(ctx.links)

    def key(r: Route) -> tuple[str, str, str, str | None, str | None, str, int, str]:
        return (r.table, r.type, r.dst, r.oif, r.prefsrc, r.scope, r.metric, r.family)

    missing = sorted(set(map(key, kernel)) - set(map(key, derived)))
    extra = sorted(set(map(key, derived)) - set(map(key, kernel)))
    why = f"kernel has, derive_routes lacks: {missing}\nderive_routes invents: {extra}"
    assert not missing and not extra, why
