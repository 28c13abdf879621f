#!/usr/bin/env python3
"""Host names in ringnet-proxy and ringnet-echo, against a dnsmasq started here (no other DNS):

  localhost    --upstream localhost:PORT relays (answered without DNS; IPv6 is refused, IPv4
               wins).
  ttl          --upstream up.test:PORT --dns-server 127.0.0.1:P: connections relay; within the
               answer's TTL they cause one lookup (dnsmasq's query log), after it another.
  nxdomain     --upstream nx.test:PORT: each client is reset, stderr names nx.test once per
               client, the exit line counts them, the proxy keeps serving and exits 0 on SIGTERM.
  refused      --upstream up.test:PORT where nothing listens: the client is reset, the failure
               reported (naming the upstream) and counted as unreachable.
  listen       ringnet-echo and ringnet-proxy with --listen localhost:0 print 'listening on' an
               address and serve on it.

Each exchange is verified: 64 KiB of random bytes and a FIN through the proxy to a Python echo
upstream (or to ringnet-echo), every byte back.

usage: proxy_names.py PATH/TO/ringnet-proxy PATH/TO/ringnet-echo
Exit 0 when every check passed, 1 on a failure, 77 (skip) when dnsmasq is not installed.
Loopback only; every process started here is ended here, by its PID.
"""
import os
import random
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

from check_log import check, note, results

HOST = "127.0.0.1"
TTL = 3  # seconds: several connections fit well inside it on a loaded machine

started = []  # every Popen we started, ended in cleanup()


def start(argv, **kw):
    p = subprocess.Popen(argv, **kw)
    started.append(p)
    return p


def end(p):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def cleanup():
    for p in reversed(started):
        end(p)


def free_port(kind=socket.SOCK_STREAM):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def free_dns_port():
    """A port free on HOST for both UDP and TCP (dnsmasq binds both), taken below the kernel's
    ephemeral range: a port from that range is also every outgoing connection's local port, so
    under load dnsmasq's TCP bind can lose the race for it."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rnd = random.Random(os.getpid() ^ int(time.time()))
    for _ in range(200):
        port = rnd.randint(10000, max(low, 11000) - 1)
        try:
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                with socket.socket(socket.AF_INET, kind) as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind((HOST, port))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port for the DNS server")


def read_line(pipe, timeout):
    """The first line a child prints, or '' after `timeout` seconds."""
    ready, _, _ = select.select([pipe], [], [], timeout)
    return pipe.readline().decode(errors="replace") if ready else ""


# ---- dnsmasq -------------------------------------------------------------------------------

def answers(port, name="probe.test"):
    """Whether a DNS server on 127.0.0.1:port answers an A query for `name` within 200 ms."""
    query = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    query += b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"
    query += struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        s.sendto(query, (HOST, port))
        try:
            return len(s.recv(512)) >= 12
        except OSError:
            return False


class Dnsmasq:
    """dnsmasq answering for .test only: up.test is 127.0.0.1 with a TTL of TTL seconds (no AAAA),
    any other .test name is NXDOMAIN. Queries are logged to a file, to count lookups."""

    def __init__(self, binary, logdir):
        self.log = os.path.join(logdir, "dnsmasq.log")
        for _ in range(5):  # the UDP port may be taken between asking and binding
            self.port = free_dns_port()
            self.p = start([binary, "--no-daemon", "--keep-in-foreground", "--conf-file=/dev/null",
                            "--no-resolv", "--no-hosts", "--pid-file=", "--user=root", "--group=root",
                            "--listen-address=" + HOST, "--bind-interfaces", f"--port={self.port}",
                            "--local=/test/", "--host-record=up.test,127.0.0.1", f"--local-ttl={TTL}",
                            "--log-queries", "--log-facility=" + self.log],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(50):
                if answers(self.port) or self.p.poll() is not None:
                    break
            if answers(self.port):
                return
            end(self.p)
        raise RuntimeError("dnsmasq did not start")

    def queries(self, name, qtype="A"):
        """How many queries of `qtype` for `name` dnsmasq logged."""
        try:
            with open(self.log) as f:
                text = f.read()
        except OSError:
            return 0
        return len(re.findall(r"query\[%s\] %s from " % (qtype, re.escape(name)), text))


# ---- peers ---------------------------------------------------------------------------------

def echo_upstream():
    """A Python echo server on 127.0.0.1 (IPv4 only): echoes until EOF, then closes."""
    srv = socket.create_server((HOST, 0))

    def serve_one(c):
        with c:
            c.settimeout(30)
            try:
                while chunk := c.recv(65536):
                    c.sendall(chunk)
            except OSError:
                pass

    def serve():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=serve_one, args=(c,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return srv


class DropsAAAA:
    """A DNS server written here for what dnsmasq cannot do: it answers every A query with
    127.0.0.1 (TTL 60 s) and never answers an AAAA query, as some servers do."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.port = self.sock.getsockname()[1]
        self.aaaa_dropped = 0
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                q, peer = self.sock.recvfrom(512)
            except OSError:
                return
            i = 12
            while i < len(q) and q[i] != 0:
                i += q[i] + 1
            i += 5  # the root label, QTYPE, QCLASS
            if len(q) <= 12 or i > len(q):
                continue
            if q[i - 4:i - 2] == b"\x00\x1c":  # AAAA
                self.aaaa_dropped += 1
                continue
            # the query's ID; QR, RD, RA, NOERROR; one question, one answer
            answer = (q[:2] + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + q[12:i] +
                      b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + socket.inet_aton(HOST))
            self.sock.sendto(answer, peer)

    def close(self):
        self.sock.close()


def exchange(address):
    """64 KiB and a FIN to `address` (host, port); whether every byte came back, and how it went."""
    payload = os.urandom(64 << 10)
    try:
        with socket.create_connection(address, timeout=15) as c:
            c.sendall(payload)
            c.shutdown(socket.SHUT_WR)
            got = bytearray()
            while chunk := c.recv(65536):
                got += chunk
    except OSError as e:
        return False, f"{type(e).__name__}: {e}"
    return bytes(got) == payload, f"{len(got)} of {len(payload)} bytes back"


def reset_by_peer(address):
    """Whether a client that connects and sends a request is reset."""
    try:
        with socket.create_connection(address, timeout=15) as c:
            c.sendall(b"hello\n")
            c.recv(1)
    except ConnectionResetError:
        return True
    except OSError:
        return False
    return False


class Tool:
    """ringnet-proxy or ringnet-echo with `args`; `address` is where it says it listens."""

    def __init__(self, argv):
        self.name = os.path.basename(argv[0])
        self.p = start(argv + ["--grace", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.line = read_line(self.p.stdout, 10)
        m = re.fullmatch(r"listening on (?:\[(.+)\]|([0-9.]+)):([0-9]+)\n", self.line)
        if not m:
            raise RuntimeError(f"{self.name} said {self.line!r}")
        self.address = (m.group(1) or m.group(2), int(m.group(3)))

    def stop(self):
        """SIGTERM; (exit code, stderr)."""
        self.p.send_signal(signal.SIGTERM)
        try:
            _, err = self.p.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            return None, ""
        return self.p.returncode, err.decode(errors="replace")


def last_line(text):
    lines = text.strip().splitlines()
    return lines[-1] if lines else "(nothing on stderr)"


# ---- cases ---------------------------------------------------------------------------------

def case_localhost(proxy_exe, upstream_port):
    proxy = Tool([proxy_exe, "--listen", f"{HOST}:0", "--upstream", f"localhost:{upstream_port}"])
    ok, how = exchange(proxy.address)
    check(ok, f"localhost: --upstream localhost:{upstream_port} relays a verified exchange ({how})")
    rc, err = proxy.stop()
    check(rc == 0 and "0 upstream unreachable, 0 resolve failed" in err and "ringnet-proxy: upstream" not in err,
          f"localhost: exit {rc} on SIGTERM, no failure reported; {last_line(err)}")


def case_ttl(proxy_exe, dns, upstream_port):
    proxy = Tool([proxy_exe, "--listen", f"{HOST}:0", "--upstream", f"up.test:{upstream_port}",
                  "--dns-server", f"{HOST}:{dns.port}"])
    before = dns.queries("up.test")
    t0 = time.monotonic()
    outcomes = [exchange(proxy.address) for _ in range(4)]
    took = time.monotonic() - t0
    check(all(ok for ok, _ in outcomes),
          f"ttl: 4 connections via up.test relay verified exchanges ({'; '.join(h for _, h in outcomes)})")
    time.sleep(0.3)  # dnsmasq writes its log as it goes; anything late would show here
    within = dns.queries("up.test") - before
    check(within == 1 and took < TTL,
          f"ttl: 4 connections in {took:.2f} s, within the {TTL} s TTL, caused {within} lookup(s) of up.test "
          f"(want 1; AAAA queries: {dns.queries('up.test', 'AAAA')})")
    time.sleep(TTL + 0.5 - (time.monotonic() - t0))
    ok, how = exchange(proxy.address)
    after = dns.queries("up.test") - before
    check(ok and after == 2, f"ttl: past the TTL a connection relays ({how}) after a new lookup "
          f"({after} in all, want 2)")
    rc, err = proxy.stop()
    check(rc == 0 and "0 resolve failed" in err and "ringnet-proxy: upstream" not in err,
          f"ttl: exit {rc} on SIGTERM, no failure reported; {last_line(err)}")


def case_nxdomain(proxy_exe, dns, upstream_port):
    proxy = Tool([proxy_exe, "--listen", f"{HOST}:0", "--upstream", f"nx.test:{upstream_port}",
                  "--dns-server", f"{HOST}:{dns.port}"])
    clients = 3
    resets = [reset_by_peer(proxy.address) for _ in range(clients)]
    check(all(resets), f"nxdomain: each of {clients} clients reset ({resets})")
    check(proxy.p.poll() is None, "nxdomain: the proxy keeps serving after the failures")
    rc, err = proxy.stop()
    reports = [line for line in err.splitlines() if line.startswith("ringnet-proxy: upstream")]
    check(len(reports) == clients and all("nx.test" in line for line in reports),
          f"nxdomain: one report per client on stderr, each naming nx.test ({len(reports)}: "
          f"{reports[:1]})")
    check(rc == 0 and f"{clients} resolve failed" in err and f"connections: {clients} accepted" in err,
          f"nxdomain: exit {rc} on SIGTERM, {clients} resolve failures counted; {last_line(err)}")
    check(dns.queries("nx.test") == clients, f"nxdomain: a failed answer is not kept: "
          f"{dns.queries('nx.test')} lookups for {clients} clients")


def case_refused(proxy_exe, dns):
    refusing = free_port()  # nothing listens there
    proxy = Tool([proxy_exe, "--listen", f"{HOST}:0", "--upstream", f"up.test:{refusing}",
                  "--dns-server", f"{HOST}:{dns.port}"])
    check(reset_by_peer(proxy.address), "refused: a client whose named upstream refuses is reset")
    rc, err = proxy.stop()
    reports = [line for line in err.splitlines() if line.startswith("ringnet-proxy: upstream")]
    check(len(reports) == 1 and f"up.test:{refusing}" in reports[0] and "refused" in reports[0],
          f"refused: reported once, naming the upstream and the attempt ({reports[:1]})")
    check(rc == 0 and "1 upstream unreachable, 0 resolve failed" in err,
          f"refused: exit {rc} on SIGTERM, counted as unreachable; {last_line(err)}")


def case_aaaa_dropped(proxy_exe, upstream_port):
    dns = DropsAAAA()
    try:
        proxy = Tool([proxy_exe, "--listen", f"{HOST}:0", "--upstream", f"any.name:{upstream_port}",
                      "--dns-server", f"{HOST}:{dns.port}"])
        took = []
        for _ in range(3):
            t0 = time.monotonic()
            ok, how = exchange(proxy.address)
            took.append(time.monotonic() - t0)
            check(ok, f"aaaa dropped: a client through --upstream any.name relays a verified exchange ({how})")
        # Happy Eyeballs waits 50 ms for AAAA after A, not the lookup's 5 s timeout; later clients
        # use the cached answer.
        check(took[0] < 2.0 and max(took[1:]) < 2.0,
              f"aaaa dropped: clients served after {', '.join(f'{t:.2f}' for t in took)} s "
              f"({dns.aaaa_dropped} AAAA queries dropped)")
        rc, err = proxy.stop()
        check(rc == 0 and "0 upstream unreachable, 0 resolve failed" in err,
              f"aaaa dropped: exit {rc} on SIGTERM, nothing failed; {last_line(err)}")
    finally:
        dns.close()


def case_listen(proxy_exe, echo_exe, dns, upstream_port):
    proxy = [proxy_exe, "--upstream", f"{HOST}:{upstream_port}"]
    # localhost is answered without DNS; up.test only by the --dns-server given
    for argv, name in (([echo_exe], "localhost"), (proxy, "localhost"),
                       (proxy + ["--dns-server", f"{HOST}:{dns.port}"], "up.test")):
        tool = Tool(argv[:1] + ["--listen", f"{name}:0"] + argv[1:])
        loopback = tool.address[0] in ("::1", HOST)
        ok, how = exchange(tool.address)
        check(loopback and ok, f"listen: {tool.name} --listen {name}:0 said {tool.line.strip()!r} and "
              f"serves there ({how})")
        rc, err = tool.stop()
        check(rc == 0, f"listen: {tool.name} exits {rc} on SIGTERM; {last_line(err)}")


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    proxy_exe, echo_exe = sys.argv[1:]
    dnsmasq = shutil.which("dnsmasq", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if not dnsmasq:
        note("note: dnsmasq is not installed: skipped")
        return 77
    upstream = echo_upstream()
    try:
        with tempfile.TemporaryDirectory() as logdir:
            dns = Dnsmasq(dnsmasq, logdir)
            port = upstream.getsockname()[1]
            case_localhost(proxy_exe, port)
            case_ttl(proxy_exe, dns, port)
            case_nxdomain(proxy_exe, dns, port)
            case_refused(proxy_exe, dns)
            case_aaaa_dropped(proxy_exe, port)
            case_listen(proxy_exe, echo_exe, dns, port)
            cleanup()
    except Exception as e:  # a broken harness is a failure, not a crash that leaks processes
        check(False, f"harness: {type(e).__name__}: {e}")
    finally:
        cleanup()
        upstream.close()
    print(f"{results['passed']} passed, {results['failed']} failed", flush=True)
    return 0 if results["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
