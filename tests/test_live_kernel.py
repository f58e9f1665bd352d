"""Live mode against the real kernel, in network namespaces built from rulesets/.

Each scenario host is rebuilt with tests/kernelhost.py (node namespace + one peer namespace per
link) without its trace machinery, so the node holds exactly the scenario's rules.  Packets are
injected as the live command does it (--local: raw socket in the node; ingress: an Ethernet frame
from the peer namespace of the input interface, --from-netns).  After every run the node's
`iptables-save` (counters and comment lines aside) must be byte-identical to before.

* every injectable flow of flows.txt is confirmed, on both backends, with the log sources in turn
  (the full matrix, every flow with every source, is the `slow` test);
* rsyslog: the tests start their own rsyslogd (imklog, kern.* to a file in a temp dir) and stop it
  by pid; journald is used when it runs here, else skipped;
* a deliberately wrong prediction (--rules with a changed dump) is detected: exit 3;
* runs are killed at random moments (SIGINT, SIGTERM, SIGHUP, SIGKILL + --cleanup): nothing stays;
* refusals (nf_log_all_netns=0 in a namespace, legacy trace without a raw table), a probe removed
  by someone else (reported, never re-inserted), --cleanup by tag touching only our rules,
  --dry-run changing nothing.

Setting the host-wide net.netfilter.nf_log_all_netns goes through tests/kernelhost.py's refcounted
helpers, which restore the old value.  Nothing touches the initial namespace's rules.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nftrace.engine.packet import parse_flow
from nftrace.errors import NftraceError
from nftrace.live.inject import Datagram, ingress_path, send_frame
from nftrace.live.session import LiveOptions, run_live
from nftrace.live.system import Target
from tests.kernelhost import (
    KernelHost,
    KernelHostUnavailable,
    _log_all_netns_acquire,
    _log_all_netns_release,
    unavailable_reason,
)
from tests.test_kernel_rulesets import _host

pytestmark = pytest.mark.kernel

ROOT = Path(__file__).resolve().parent.parent / "rulesets"
SCENARIOS = sorted(p.name for p in ROOT.iterdir() if (p / "iptables.rules").is_file() and (p / "addrs.txt").is_file())
REPO = Path(__file__).resolve().parent.parent


class LiveHost(KernelHost):
    """A scenario host whose node holds only the scenario's rules (no harness trace rules/tables)."""

    def _start_nft_trace(self) -> None:
        pass

    def _start_legacy_trace(self) -> None:
        pass

    def save(self) -> str:
        return normalise(self.run(["iptables-nft-save" if self.backend == "nft" else "iptables-legacy-save"]))

    def nft_tables(self) -> str:
        return self.run(["nft", "list", "tables"], check=False) if self.backend == "nft" else ""


def normalise(save: str) -> str:
    """iptables-save without its comment lines and with every counter zeroed."""
    lines = [ln for ln in save.splitlines() if not ln.startswith("#")]
    return "\n".join(re.sub(r"\[\d+:\d+\]", "[0:0]", ln) for ln in lines) + "\n"


def flows_of(scenario: str) -> list[str]:
    out = []
    for line in (ROOT / scenario / "flows.txt").read_text().splitlines():
        flow = line.split("#", 1)[0].strip()
        if flow and " state " not in f" {flow} ":  # --inject sends NEW packets only
            out.append(flow)
    return out


def _skip_unless_kernel(backend: str) -> None:
    reason = unavailable_reason(backend)
    if reason:
        pytest.skip(reason)


@contextlib.contextmanager
def live_host(scenario: str, backend: str = "nft") -> Iterator[LiveHost]:
    _skip_unless_kernel(backend)
    d = ROOT / scenario
    ipsets = (d / "ipsets.txt").read_text() if (d / "ipsets.txt").is_file() else None
    try:
        kh = LiveHost(_host(d), (d / "iptables.rules").read_text(), backend=backend, ipsets=ipsets)
    except KernelHostUnavailable as e:
        pytest.skip(str(e))
    with kh:
        yield kh


@pytest.fixture
def slow_requested(request: pytest.FixtureRequest) -> None:
    """The `slow` tests run with `-m slow` (or NFTRACE_SLOW=1), not in a plain `pytest` run: the
    project's pytest configuration does not deselect them by itself."""
    if "slow" not in (request.config.getoption("markexpr") or "") and not os.environ.get("NFTRACE_SLOW"):
        pytest.skip("slow: run with -m slow (or NFTRACE_SLOW=1)")


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "state"
    monkeypatch.setenv("NFTRACE_STATE_DIR", str(d))
    return d


@pytest.fixture(scope="module")
def log_all_netns() -> Iterator[None]:
    """net.netfilter.nf_log_all_netns=1 while the module runs; the old value comes back afterwards."""
    if not Path("/proc/sys/net/netfilter/nf_log_all_netns").exists() or os.geteuid() != 0:
        pytest.skip("no net.netfilter.nf_log_all_netns (not root, or not the initial namespace)")
    _log_all_netns_acquire()
    try:
        yield
    finally:
        _log_all_netns_release()


def keep_log_all_netns() -> None:
    """Inside the log_all_netns fixture: put the knob back to 1 if another process on this machine
    (a concurrent test run restoring its own saved value) set it to 0 meanwhile."""
    knob = Path("/proc/sys/net/netfilter/nf_log_all_netns")
    with contextlib.suppress(OSError):
        if knob.read_text().strip() != "1":
            knob.write_text("1")


def _kmsg_readers() -> list[str]:
    out = []
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        with contextlib.suppress(OSError):
            for fd in fd_dir.iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) == "/proc/kmsg":
                        out.append(fd_dir.parent.name)
                        break
    return out


RSYSLOG_WHY: list[str] = []


@pytest.fixture(scope="module")
def rsyslog_file() -> Iterator[str | None]:
    """Our own rsyslogd: imklog (reads /proc/kmsg: one reader at a time) and kern.* to a temp file.
    None (the reason in RSYSLOG_WHY) when it cannot run here."""
    RSYSLOG_WHY.clear()
    if os.geteuid() != 0 or not _which("rsyslogd"):
        RSYSLOG_WHY.append("rsyslogd not installed or not root")
        yield None
        return
    readers = _kmsg_readers()
    if readers:
        RSYSLOG_WHY.append(f"/proc/kmsg already has a reader (pid {', '.join(readers)}): imklog would compete")
        yield None
        return
    tmp = Path(tempfile.mkdtemp(prefix="nft-live-rsyslog-"))
    conf = tmp / "rsyslog.conf"
    log = tmp / "kern.log"
    pidfile = tmp / "rsyslogd.pid"
    log.write_text("")  # omfile creates its file with the first message: let the source find it now
    conf.write_text(
        f'global(workDirectory="{tmp}")\n'
        'module(load="imklog" permitnonkernelfacility="on")\n'
        f'kern.* action(type="omfile" file="{log}")\n'
    )
    proc = subprocess.Popen(["rsyslogd", "-n", "-f", str(conf), "-i", str(pidfile)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 5
        while not pidfile.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        if not pidfile.exists():
            RSYSLOG_WHY.append(f"rsyslogd did not start (status {proc.poll()})")
            yield None
        else:
            yield str(log)
    finally:
        with contextlib.suppress(Exception):
            pid = int(pidfile.read_text().strip())
            os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(Exception):
            proc.wait(timeout=5)
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        for p in tmp.iterdir():
            p.unlink()
        tmp.rmdir()


def _which(tool: str) -> str | None:
    import shutil

    return shutil.which(tool)


def journald_running() -> bool:
    return bool(_which("journalctl")) and Path("/run/systemd/journal/socket").exists()


# ---------------------------------------------------------------------------- running live


def options(kh: LiveHost, flow: str, source: str, **kw: Any) -> LiveOptions:
    d = parse_flow(flow)
    peer = kh.peers.get(str(d.get("iif"))) if d["origin"] == "ingress" else None
    return LiveOptions(packet=d, inject=True, from_netns=peer, source=source, netns=kh.node, backend=kh.backend, **kw)


def confirm(kh: LiveHost, flow: str, source: str, state: Path) -> dict[str, Any]:
    """One live run; the kernel must confirm the prediction and the rules be as before."""
    before = kh.save()
    kh.run(["conntrack", "-F"], check=False)  # a flow of an earlier run must not be ESTABLISHED now
    res = run_live(options(kh, flow, source))
    doc = res.doc
    assert kh.save() == before, f"{flow}: the rules changed"
    assert "nftrace_" not in kh.nft_tables()
    assert not state.exists() or not list(state.iterdir()), list(state.iterdir())
    assert doc["inserted"] == doc["removed"], doc
    assert res.status == 0 and doc["confirmed"], (
        f"{flow} [{source}, {kh.backend}]: {doc['verdict']}: {json.dumps(doc['first_difference'], indent=1)}\n"
        f"observed: {json.dumps(doc['observed'], indent=1)[:3000]}"
    )
    return doc


def has_raw(scenario: str) -> bool:
    return "*raw" in (ROOT / scenario / "iptables.rules").read_text()


def run_flow(kh: LiveHost, scenario: str, flow: str, source: str, state: Path) -> None:
    refusal = "needs a raw" if source == "trace" and kh.backend == "legacy" and not has_raw(scenario) else None
    if source.split(":")[0] in ("kmsg", "rsyslog", "journald") or (source == "trace" and kh.backend == "legacy"):
        keep_log_all_netns()
    if refusal:
        with pytest.raises(NftraceError, match=refusal):
            run_live(options(kh, flow, source))
        return
    try:
        confirm(kh, flow, source, state)
    except NftraceError as e:
        # a flow dropped by routing before any chain: nothing for a LOG probe to see; the trace
        # source shows the packet arriving (nft), so that is asserted instead
        if "crosses no chain" not in e.message:
            raise
        assert "unroutable" in flow_result(scenario, flow), f"{flow}: {e.message}"
        if kh.backend == "nft":
            confirm(kh, flow, "trace", state)


def flow_result(scenario: str, flow: str) -> str:
    """The `Result:` a flows.txt line states by hand for this flow."""
    for line in (ROOT / scenario / "flows.txt").read_text().splitlines():
        if line.split("#", 1)[0].strip() == flow:
            return line.rsplit("Result:", 1)[-1]
    return ""


def sources_here(rsyslog: str | None) -> list[str]:
    """The log sources to take in turn (nflog, kmsg, trace; our rsyslog and journald when here)."""
    out = ["nflog", "kmsg", "trace"]
    if rsyslog:
        out.append(f"rsyslog:{rsyslog}")
    if journald_running():
        out.append("journald")
    return out


@pytest.mark.parametrize("backend", ["nft", "legacy"])
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_flows_confirmed(
    scenario: str, backend: str, log_all_netns: None, rsyslog_file: str | None, state_dir: Path
) -> None:
    """Every injectable flow confirmed, sources taken in turn (legacy: every other flow)."""
    flows = flows_of(scenario)
    sources = sources_here(rsyslog_file)
    with live_host(scenario, backend) as kh:
        for i, flow in enumerate(flows):
            if backend == "legacy" and i % 2:
                continue
            run_flow(kh, scenario, flow, sources[i % len(sources)], state_dir)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["nft", "legacy"])
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_flows_confirmed_every_source(
    scenario: str, backend: str, slow_requested: None, log_all_netns: None, rsyslog_file: str | None, state_dir: Path
) -> None:
    """The whole matrix: every flow, every log source, both backends."""
    with live_host(scenario, backend) as kh:
        for flow in flows_of(scenario):
            for source in sources_here(rsyslog_file):
                run_flow(kh, scenario, flow, source, state_dir)


@pytest.mark.parametrize("source", ["nflog", "kmsg", "rsyslog", "journald", "trace", "auto"])
def test_each_source_kube_node(source: str, log_all_netns: None, rsyslog_file: str | None, state_dir: Path) -> None:
    """Each source on its own, on a DNAT path with 50/50 endpoints and on a local flow."""
    if source == "journald" and not journald_running():
        pytest.skip("systemd-journald is not running here (no /run/systemd/journal/socket)")
    if source == "rsyslog" and rsyslog_file is None:
        pytest.skip(RSYSLOG_WHY[0] if RSYSLOG_WHY else "no rsyslogd")
    keep_log_all_netns()
    spec = f"rsyslog:{rsyslog_file}" if source == "rsyslog" else source
    with live_host("kube-node") as kh:
        for flow in ("udp 10.244.1.3:5353 > 10.96.0.10:53 iif cni0", "tcp 127.0.0.1:50004 > 127.0.0.1:30080 local"):
            doc = confirm(kh, flow, spec, state_dir)
            if source == "auto":
                assert doc["source"].startswith("nflog")  # the first that works here
            elif source != "trace":
                assert doc["source"].startswith(source)


def test_own_host_reader_agrees_with_the_capture(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the snapshot capture (no pyroute2): iptables-save and `ip -j` read the same host; the
    prediction is the same and the kernel confirms it."""
    from nftrace.engine.packet import packet_from_dict
    from nftrace.engine.pipeline import Engine
    from nftrace.live.snapshot import snapshot_host

    flows = ["tcp 10.244.1.3:40000 > 10.96.0.1:443 iif cni0", "tcp 127.0.0.1:50004 > 127.0.0.1:30080 local"]
    with live_host("kube-node") as kh:
        target = Target(kh.node)
        captured = snapshot_host(target, "nft")
        monkeypatch.setenv("NFTRACE_LIVE_SNAPSHOT", "own")
        own = snapshot_host(target, "nft")
        for flow in flows:
            docs = []
            for snap in (captured, own):
                pkt, origin = packet_from_dict(parse_flow(flow))
                docs.append(Engine(snap.ruleset, snap.host, snap.ipsets).trace(pkt, origin).to_json())
            assert [b["steps"] for b in docs[0]["branches"]] == [b["steps"] for b in docs[1]["branches"]]
            confirm(kh, flow, "nflog", state_dir)


def test_wait_for_real_traffic(state_dir: Path) -> None:
    """Without --inject: the run waits, the first packet of the flow is the observation."""
    with live_host("kube-node") as kh:
        before = kh.save()
        flow = "tcp 10.244.1.3 > 10.96.0.1:443 iif cni0"  # no source port: the probes match any
        opts = LiveOptions(packet=parse_flow(flow), source="nflog", netns=kh.node, backend="nft", timeout=20)
        box: dict[str, Any] = {}
        t = threading.Thread(target=lambda: box.update(res=run_live(opts)), daemon=True)
        t.start()
        _wait_for_probes(kh, 14)
        time.sleep(0.2)
        d = Datagram("tcp", "10.244.1.3", "10.96.0.1", 43210, 443, ip_id=5151)
        peer = Target(kh.peers["cni0"])
        send_frame(peer, ingress_path(Target(kh.node), "cni0", peer, d.dst), d)
        t.join(30)
        res = box["res"]
        assert res.status == 0 and res.doc["confirmed"] and res.doc["observed_ip_id"] == 5151
        assert any("no source port" in w for w in res.doc["warnings"])
        assert kh.save() == before


def _wait_for_probes(kh: LiveHost, n: int, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = kh.run(["iptables-nft-save" if kh.backend == "nft" else "iptables-legacy-save"])
        if text.count("--comment nftrace:") + text.count('--comment "nftrace:') >= n:
            return text
        time.sleep(0.05)
    raise AssertionError(f"fewer than {n} probes appeared")


# ---------------------------------------------------------------------------- wrong prediction


def test_wrong_prediction_is_detected(tmp_path: Path, state_dir: Path) -> None:
    """Predicted from a dump without ufw's ban on 198.51.100.0/24, the packet would go on past
    ufw-user-input to ufw-after-input and the INPUT policy; the live host drops it at
    ufw-user-input rule 1.  LOG probes: the next predicted chain stays silent; trace: the kernel's
    DROP at ufw-user-input 1 is a rule the prediction does not have.  Exit 3 either way."""
    live_rules = (ROOT / "host-firewall" / "iptables.rules").read_text()
    ban = "-A ufw-user-input -s 198.51.100.0/24 -j DROP\n"
    assert ban in live_rules
    wrong = tmp_path / "wrong.rules"
    wrong.write_text(live_rules.replace(ban, ""))
    flow = "tcp 198.51.100.7:50004 > 203.0.113.40:9100 iif eth0"
    with live_host("host-firewall") as kh:
        before = kh.save()
        for source in ("nflog", "trace"):
            res = run_live(options(kh, flow, source, rules_file=str(wrong)))
            doc = res.doc
            assert res.status == 3 and doc["verdict"] == "differs" and not doc["confirmed"], doc["verdict"]
            fd = doc["first_difference"]
            if source == "nflog":
                assert fd["observed"] is None
                assert (fd["predicted"]["table"], fd["predicted"]["chain"]) == ("filter", "ufw-after-input")
                assert (doc["observed"][-1]["chain"]) == "ufw-user-input"
            else:
                assert fd["observed"]["chain"] == "ufw-user-input" and fd["observed"]["rule"] == 1
                assert fd["observed"]["verdict"] == "DROP"
            assert any("predicted from" in w for w in doc["warnings"])
            assert kh.save() == before
        # the same runs predicted from the live rules confirm
        assert run_live(options(kh, flow, "nflog")).status == 0
        assert run_live(options(kh, flow, "trace")).status == 0
        # and the command line says so too
        p = _cli(["--netns", kh.node, flow, "--inject", "--from-netns", kh.peers["eth0"], "--rules", str(wrong)])
        assert p.returncode == 3 and "DIFFERS at hop" in p.stdout, p.stdout + p.stderr
        assert kh.save() == before


def _cli(args: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nftrace", "live", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=120, **kw)  # fmt: skip


def test_existing_connection_is_warned_and_seen(state_dir: Path) -> None:
    """The same 5-tuple twice: the second packet belongs to the first one's (unreplied) connection, so
    nat is not consulted (the existing DNAT still applies).  The prediction assumes a new connection:
    the kernel contradicts it at the first nat chain, and the run says why."""
    with live_host("kube-node") as kh:
        kh.run(["conntrack", "-F"], check=False)
        flow = "tcp 10.244.1.3:40000 > 10.96.0.1:443 iif cni0"
        first = run_live(options(kh, flow, "nflog"))
        assert first.status == 0 and not any("conntrack already" in w for w in first.doc["warnings"])
        again = run_live(options(kh, flow, "nflog"))
        assert any("conntrack already tracks this flow" in w for w in again.doc["warnings"])
        assert again.status == 3
        fd = again.doc["first_difference"]
        assert (fd["predicted"]["table"], fd["predicted"]["chain"]) == ("nat", "PREROUTING")
        assert (fd["observed"]["hook"], fd["observed"]["table"]) == ("FORWARD", "mangle")
        assert fd["observed"]["packet"]["DST"] == "192.168.50.10"  # the connection's DNAT, without nat
        kh.run(["conntrack", "-F"], check=False)


# ---------------------------------------------------------------------------- refusals and --dry-run


def test_refuses_kernel_log_without_nf_log_all_netns(state_dir: Path) -> None:
    knob = Path("/proc/sys/net/netfilter/nf_log_all_netns")
    if not knob.exists():
        pytest.skip("no nf_log_all_netns here")
    with live_host("kube-node") as kh:
        before = kh.save()
        old = knob.read_text().strip()
        knob.write_text("0")
        try:
            fake_log = state_dir.parent / "kern.log"
            fake_log.write_text("")
            for source in ("kmsg", f"rsyslog:{fake_log}"):
                with pytest.raises(NftraceError) as e:
                    run_live(options(kh, "icmp 10.244.1.3 > 10.96.0.10 iif cni0", source))
                assert "nf_log_all_netns=0" in e.value.message and "--source nflog" in e.value.message
            doc = run_live(options(kh, "icmp 10.244.1.3 > 10.96.0.10 iif cni0", "auto")).doc
            assert doc["confirmed"] and doc["source"].startswith("nflog")  # needs no sysctl
        finally:
            knob.write_text(old)
        assert kh.save() == before


def test_refuses_legacy_trace_without_raw_table(state_dir: Path) -> None:
    with live_host("kube-node", "legacy") as kh:
        before = kh.save()
        with pytest.raises(NftraceError, match="raw table would leave it behind"):
            run_live(options(kh, "icmp 10.244.1.3 > 10.96.0.10 iif cni0", "trace"))
        assert kh.save() == before
        assert "raw" not in kh.run(["cat", "/proc/net/ip_tables_names"])


def test_dry_run_changes_nothing(state_dir: Path) -> None:
    with live_host("docker-host") as kh:
        before = kh.save()
        flow = "tcp 203.0.113.50:51000 > 192.168.1.10:8080 iif eth0"
        p = _cli(["--netns", kh.node, flow, "--dry-run", "--source", "nflog", "--format", "json"])
        assert p.returncode == 0, p.stderr
        doc = json.loads(p.stdout)
        inserts = [c for c in doc["commands"] if " -I " in c]
        deletes = [c for c in doc["commands"] if " -D " in c]
        assert len(inserts) == len(deletes) == len(doc["probes"]) + 1  # + the canary
        assert all(c.startswith(f"nsenter --net=/run/netns/{kh.node} -- iptables-nft -w 20 -t ") for c in inserts)
        assert any("-t nat -I DOCKER 1 -s 203.0.113.50/32 -d 192.168.1.10/32 -i eth0 -p tcp" in c for c in inserts)
        assert "'nft:" in inserts[0]  # the prefix's trailing space is quoted for the shell
        assert kh.save() == before and not state_dir.exists()
        text = _cli(["--netns", kh.node, flow, "--dry-run", "--source", "trace"])
        assert "nothing was changed" in text.stdout and "xtables-monitor --trace" in text.stdout
        assert kh.save() == before and "nftrace_" not in kh.nft_tables()


# ---------------------------------------------------------------------------- other programs


def test_probe_removed_by_someone_else_is_reported_not_reinserted(state_dir: Path) -> None:
    with live_host("kube-node") as kh:
        before = kh.save()
        flow = "tcp 10.244.1.3 > 10.96.0.1:443 iif cni0"
        proc = subprocess.Popen([sys.executable, "-m", "nftrace", "live", "--netns", kh.node, flow, "--source",
                                 "nflog", "--timeout", "12", "--format", "json"],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ})  # fmt: skip
        try:
            text = _wait_for_probes(kh, 14)
            # "kube-proxy" rewrites KUBE-SERVICES: our probe there goes
            victim = next(ln for ln in text.splitlines() if ln.startswith("-A KUBE-SVC-") and "nftrace:" in ln)
            import shlex

            tok = shlex.split(victim)
            kh.run(["iptables-nft", "-t", "nat", "-D", *tok[1:]])
            time.sleep(2.5)  # the run checks its probes every 2 s
            d = Datagram("tcp", "10.244.1.3", "10.96.0.1", 43211, 443, ip_id=6262)
            peer = Target(kh.peers["cni0"])
            send_frame(peer, ingress_path(Target(kh.node), "cni0", peer, d.dst), d)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        doc = json.loads(out)
        assert proc.returncode == 4 and doc["verdict"] == "inconclusive", (doc["verdict"], err)
        assert len(doc["disappeared"]) == 1
        assert any("disappeared" in w and "not re-inserted" in w for w in doc["warnings"])
        assert doc["removed"] == doc["inserted"] - 1
        assert kh.save() == before


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_cleanup_by_tag_touches_only_our_rules(backend: str, state_dir: Path) -> None:
    """No state file (lost): --cleanup finds our rule by its tag and shape, and only it."""
    with live_host("kube-node", backend) as kh:
        before = kh.save()
        ipt = f"iptables-{backend}"
        ours = ["-s", "10.1.1.1/32", "-d", "10.2.2.2/32", "-i", "cni0", "-p", "udp", "-m", "udp", "--dport", "53",
                "-m", "comment", "--comment", "nftrace:0badc0", "-m", "limit", "--limit", "10/sec",
                "--limit-burst", "20", "-j", "LOG", "--log-prefix", "nft:0badc0:3 "]  # fmt: skip
        decoys = [
            ["-m", "comment", "--comment", "nftrace:0badc0", "-j", "ACCEPT"],  # our tag, not our shape
            ["-p", "udp", "-m", "comment", "--comment", "nftrace:0badc0", "-j", "LOG", "--log-prefix", "nft:0badc0:4 "],
            ["-p", "tcp", "-j", "LOG", "--log-prefix", "nft:0badc0:5 "],  # no tag
        ]
        kh.run([ipt, "-t", "nat", "-I", "KUBE-SERVICES", "1", *ours])
        for dec in decoys:
            kh.run([ipt, "-t", "filter", "-I", "FORWARD", "1", *dec])
        if backend == "nft":
            kh.run(["nft", "add", "table", "inet", "nftrace_0badc0"])
            kh.run(["nft", "add", "table", "inet", "nftrace_keepme"])  # not a run id: not ours
        p = _cli(["--cleanup", "--netns", kh.node])
        assert p.returncode == 0, p.stdout + p.stderr
        assert "found by its tag" in p.stdout, p.stdout
        after = kh.run([f"{ipt}-save"])
        assert "nft:0badc0:3" not in after
        assert after.count("nftrace:0badc0") == 2 and "nft:0badc0:5" in after  # the decoys stay
        if backend == "nft":
            assert "nft table inet nftrace_0badc0" in p.stdout
            tables = kh.nft_tables()
            assert "nftrace_0badc0" not in tables and "nftrace_keepme" in tables
            kh.run(["nft", "delete", "table", "inet", "nftrace_keepme"])
        for dec in decoys:
            kh.run([ipt, "-t", "filter", "-D", "FORWARD", *dec])
        assert kh.save() == before


def test_cleanup_leaves_a_running_run_alone(state_dir: Path) -> None:
    with live_host("kube-node") as kh:
        before = kh.save()
        proc = subprocess.Popen([sys.executable, "-m", "nftrace", "live", "--netns", kh.node,
                                 "icmp 10.244.1.3 > 10.96.0.10 iif cni0", "--source", "nflog", "--timeout", "30"],
                                cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            _wait_for_probes(kh, 12)
            p = _cli(["--cleanup", "--netns", kh.node])
            assert p.returncode == 0 and "still running" in p.stdout, p.stdout
            assert _wait_for_probes(kh, 12, timeout=1)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) in (-signal.SIGTERM, 128 + signal.SIGTERM)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert kh.save() == before
        assert not list(state_dir.glob("*.json"))


# ---------------------------------------------------------------------------- killed at random moments

KILL_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGKILL)


def _our_processes(kh: LiveHost) -> list[int]:
    """Processes (a reader of ours) living in the node namespace."""
    ino = os.stat(f"/run/netns/{kh.node}").st_ino
    out = []
    for p in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if os.stat(p / "ns" / "net").st_ino == ino and (p / "stat").read_text().split(")")[1].split()[0] != "Z":
                out.append(int(p.name))
    return out


def kill_runs(n: int, seed: int, state_dir: Path) -> None:
    rng = random.Random(seed)
    setups = [("kube-node", "nft"), ("docker-host", "legacy")]
    for scenario, backend in setups:
        flows = [f for f in flows_of(scenario) if "local" not in f][:4]
        with live_host(scenario, backend) as kh:
            before = kh.save()
            for i in range(n // len(setups)):
                flow = rng.choice(flows)
                flow = re.sub(r"(\d+\.\d+\.\d+\.\d+):\d+ >", r"\1 >", flow)  # any source port: wait mode
                sig = rng.choice(KILL_SIGNALS)
                source = rng.choice(["nflog", "trace"] if backend == "nft" else ["nflog", "kmsg", "trace"])
                if source == "trace" and backend == "legacy" and not has_raw(scenario):
                    source = "nflog"
                how = rng.choice(["time", "time", "partial"])
                what = f"run {i} (NFTRACE_SEED={seed}): {sig.name} {how} {source} {backend} {flow}"
                keep_log_all_netns()
                proc = subprocess.Popen([sys.executable, "-m", "nftrace", "live", "--netns", kh.node, flow,
                                         "--source", source, "--backend", backend, "--timeout", "20"],
                                        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
                try:
                    if how == "partial":  # in the middle of the insertion: some probes in, others not yet
                        _kill_when_partial(kh, proc, sig, rng)
                    else:
                        time.sleep(rng.uniform(0.0, 2.5))
                        proc.send_signal(sig)
                    rc = proc.wait(timeout=60)
                finally:
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
                err = proc.stderr.read().decode() if proc.stderr else ""
                if sig == signal.SIGKILL:
                    p = _cli(["--cleanup", "--netns", kh.node])
                    assert p.returncode == 0, f"{what}: cleanup failed: {p.stdout}{p.stderr}"
                else:
                    # dies by the signal after cleaning up (or had already finished / been refused)
                    assert rc in (-sig, 128 + sig, 0, 3, 4), f"{what}: exit {rc}: {err}"
                    # SIGINT before the live command installed its handlers (Python still importing):
                    # Python's own KeyboardInterrupt; nothing had been inserted then
                    assert "Traceback" not in err or err.rstrip().endswith("KeyboardInterrupt"), f"{what}: {err}"
                assert kh.save() == before, f"{what}: the rules changed"
                assert "nftrace_" not in kh.nft_tables(), what
                assert not list(state_dir.glob("*.json")) and not list(state_dir.glob("*.lock")), what
                deadline = time.monotonic() + 3
                while _our_processes(kh) and time.monotonic() < deadline:
                    time.sleep(0.05)  # a reader gets SIGTERM from the kernel when we die (PDEATHSIG)
                assert not _our_processes(kh), f"{what}: a reader process survived"
                kh.run(["conntrack", "-F"], check=False)


def _kill_when_partial(kh: LiveHost, proc: subprocess.Popen[bytes], sig: signal.Signals, rng: random.Random) -> None:
    tool = "iptables-nft-save" if kh.backend == "nft" else "iptables-legacy-save"
    want = rng.randint(1, 6)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and proc.poll() is None:
        text = kh.run([tool], check=False)
        if text.count("nftrace:") >= want or "nftrace_" in kh.nft_tables():
            break
        time.sleep(0.005)
    proc.send_signal(sig)


def test_killed_runs_leave_nothing(state_dir: Path, log_all_netns: None) -> None:
    seed = int(os.environ.get("NFTRACE_SEED", random.randrange(1 << 30)))
    kill_runs(10, seed, state_dir)


@pytest.mark.slow
def test_killed_runs_leave_nothing_100(slow_requested: None, state_dir: Path, log_all_netns: None) -> None:
    seed = int(os.environ.get("NFTRACE_SEED", random.randrange(1 << 30)))
    kill_runs(100, seed, state_dir)
