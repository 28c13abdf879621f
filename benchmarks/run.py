#!/usr/bin/env python3
"""ringnet benchmark runner: one command, every peer, every workload, side by side.

    python3 benchmarks/run.py                 # quick: main workloads and peers, ~2 min with the build
    python3 benchmarks/run.py --full          # every workload and peer, 5 rounds of 5 s (~15-20 min)
    python3 benchmarks/run.py --smoke         # 2 short rounds: a correctness run, not a measurement
    python3 benchmarks/run.py --workloads churn --peers ringnet,liburing --runs 9 --json out.json
    python3 benchmarks/run.py --workloads churn --extra-echo ringnet-prev=/tmp/old/ringnet-echo

Workloads (the lifecycle echo, README "Benchmarks"):
  churn       32 clients loop connect -> send 64 B -> shutdown(SHUT_WR) -> read echo to EOF -> close
  pingpong1   1 persistent connection, one 64-byte message in flight
  pingpong64  64 persistent connections, one 64-byte message in flight on each
  bulk        iperf3 through a TCP proxy (liburing copy proxy, ringnet copy/splice, socat, haproxy,
              and a direct no-proxy baseline)
  relay       the same proxies, verified: 2 load-generator clients loop connect -> send 4 MiB while
              reading the echo -> shutdown(SHUT_WR) -> read to EOF, through the proxy to an echo
              server.  Every byte is checked and half-close must cross the proxy both ways
              (iperf3 checks neither).

Method: the server (or proxy) is pinned to one core, the load generator to the other.  Peers are
alternated A B C ... A B C ... for --runs rounds, all on the same port; each cell starts a fresh
server, runs the load generator for a warm-up plus a measured window, then stops the server with
SIGTERM and requires exit status 0.  Reported per peer: median rate, min-max, server-core CPU time
per operation (busy time of the server's core from /proc/stat, softirq included), the ratio to the
raw-liburing reference (median of per-round ratios), latency, heap allocations per operation
(LD_PRELOAD malloc counter, snapshotted at the start and end of the window), errors.  For bulk,
also each proxy's memory from /proc/PID/status: VmRSS right after start-up, the peak (VmHWM at the
end of the transfer), and VmRSS once every connection through it closed (before it is stopped).

Output: the tables on stdout, and the raw cells with the summaries as JSON (--json, default
BUILD/benchmark.json) with an SVG chart of it beside (same name, .svg; benchmarks/chart.py).
Compare two runs with benchmarks/compare.py OLD.json NEW.json.

Exit status: 0 all cells clean; 1 a protocol error, a failed transfer or a crashed / non-zero
exiting peer in some cell; 2 setup failure (build, missing load generator, nothing to run).
Speed never fails a run.
"""

import argparse
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import chart

REPO = Path(__file__).resolve().parent.parent

# name -> (path relative to the build dir, extra args)
ECHO_PEERS = [
    ("ringnet", "examples/ringnet-echo", []),
    ("liburing", "benchmarks/peers/bench-uring-echo", []),
    ("epoll", "benchmarks/peers/bench-epoll-echo", []),
    ("asio-epoll", "benchmarks/peers/bench-asio-echo", []),
    ("asio-uring", "benchmarks/peers/bench-asio-uring-echo", []),
    # measurement variants, run only when named in --peers
    ("ringnet-shutdown-op", "examples/ringnet-echo", ["--shutdown", "io_uring"]),
    # the reference with one io_uring mechanism more each, to measure what it is worth alone
    ("liburing-direct", "benchmarks/peers/bench-uring-echo", ["--descriptors", "direct"]),
    ("liburing-sqe-teardown", "benchmarks/peers/bench-uring-echo", ["--teardown", "sqes"]),
    ("liburing-min-wait", "benchmarks/peers/bench-uring-echo", ["--min-wait-us", "20"]),
]
ECHO_REF = "liburing"

# name -> (kind, path or program, extra args); kind: build (relative to build dir), tool (on PATH)
PROXIES = [
    ("liburing-proxy", "build", "benchmarks/peers/bench-uring-proxy", []),
    # measurement variants, run only when named in --peers: receiving from a provided-buffer ring
    # (bundles; incrementally consumed buffers) instead of into a circular buffer
    ("liburing-proxy-bundles", "build", "benchmarks/peers/bench-uring-proxy", ["--recv", "bundles"]),
    ("liburing-proxy-incremental", "build", "benchmarks/peers/bench-uring-proxy", ["--recv", "incremental"]),
    ("ringnet-copy", "build", "examples/ringnet-proxy", ["--copy"]),
    ("ringnet-splice", "build", "examples/ringnet-proxy", ["--splice"]),
    ("socat", "tool", "socat", []),
    ("haproxy", "tool", "haproxy", []),
    ("direct", "none", None, []),
]
PROXY_REF = "liburing-proxy"
OPT_IN_PEERS = {"ringnet-shutdown-op", "liburing-direct", "liburing-sqe-teardown", "liburing-min-wait",
                "liburing-proxy-bundles", "liburing-proxy-incremental"}

ECHO_WORKLOADS = {
    "churn": ["--workload", "churn", "--connections", "32", "--size", "64"],
    "pingpong1": ["--workload", "pingpong", "--connections", "1", "--size", "64"],
    "pingpong64": ["--workload", "pingpong", "--connections", "64", "--size", "64"],
    # many mostly idle connections: MANY_IDLE_S silent after connecting (the server's RSS per
    # connection is read then), then one 64-byte message per connection and second
    "many": ["--workload", "pingpong", "--size", "64", "--interval", "1"],
}
MANY_CONNS = 10000  # smoke: MANY_CONNS_SMOKE (a correctness run)
MANY_CONNS_SMOKE = 1000
MANY_IDLE_S = 3.0
ALL_WORKLOADS = ["churn", "pingpong1", "pingpong64", "many", "bulk", "relay"]
# The quick run (the default): the lifecycle workloads against the reference and the main peers.
QUICK_WORKLOADS = ["churn", "pingpong1", "pingpong64"]
QUICK_PEERS = ["ringnet", "liburing", "epoll", "asio-epoll"]
RELAY_SIZE = 4 << 20  # bytes per relay lifecycle
RELAY_CONNS = 2
CHURN_SOURCES = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]

DEFAULT_PORT = 17070  # echo peers and proxies listen here; iperf3 upstream on DEFAULT_PORT + 1
TOOL_EXIT_OK = (0, 143, -signal.SIGTERM)  # socat, haproxy: exit 128+15 or die of the SIGTERM we sent

LOADGEN_OP_TIMEOUT = 5.0


def log(msg=""):
    print(msg, flush=True)


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# ---------------------------------------------------------------- system helpers

def read_sockstat_tw():
    try:
        with open("/proc/net/sockstat") as f:
            for line in f:
                if line.startswith("TCP:"):
                    parts = line.split()
                    return int(parts[parts.index("tw") + 1])
    except (OSError, ValueError):
        pass
    return None


def read_int_file(path, default):
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return default


def port_range_size():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
            return hi - lo + 1
    except (OSError, ValueError):
        return 28232


def count_tw_to_port(port):
    """TIME_WAIT sockets whose remote port is `port` (ours, from an earlier cell or run)."""
    ss = shutil.which("ss")
    if not ss:
        return None
    try:
        out = subprocess.run([ss, "-tanH", "state", "time-wait", "dport", "=", ":%d" % port],
                             capture_output=True, text=True, timeout=20).stdout
        return out.count("\n")
    except (OSError, subprocess.SubprocessError):
        return None


def read_cpu_busy():
    """Per-CPU (busy, total) in clock ticks from /proc/stat."""
    res = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                p = line.split()
                v = [int(x) for x in p[1:11]] + [0] * 10
                busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
                res[int(p[0][3:])] = (busy, busy + v[3] + v[4])
    return res


CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_children(pid):
    kids = []
    try:
        for tid in os.listdir("/proc/%d/task" % pid):
            try:
                with open("/proc/%d/task/%s/children" % (pid, tid)) as f:
                    kids += [int(x) for x in f.read().split()]
            except OSError:
                pass
    except OSError:
        pass
    return kids


def proc_cpu_ticks(pid, with_reaped=True):
    """utime+stime of pid (all its threads, io-wq workers included), + cutime+cstime of reaped
    children, + live descendants."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2:].split()
    # fields[0] is state (field 3); utime is field 14 -> index 11
    ticks = int(fields[11]) + int(fields[12])
    if with_reaped:
        ticks += int(fields[13]) + int(fields[14])
    for kid in proc_children(pid):
        t = proc_cpu_ticks(kid, with_reaped)
        if t:
            ticks += t
    return ticks


def proc_tree(pid):
    """pid and its live descendants (socat forks one child per connection)."""
    out = [pid]
    for kid in proc_children(pid):
        out += proc_tree(kid)
    return out


def proc_status_kib(pid, field):
    """A memory field of /proc/PID/status (VmRSS, VmHWM) in KiB; None once the process is gone."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def tree_kib(pid, field):
    """The sum of a /proc/PID/status memory field over pid and its live descendants."""
    vals = [v for v in (proc_status_kib(p, field) for p in proc_tree(pid)) if v is not None]
    return sum(vals) if vals else None


class PeakRss(threading.Thread):
    """Samples the sum of VmHWM over a proxy's process tree every 50 ms until stopped: a forked
    child's high-water mark is gone with the child (socat's exit as the connection closes), so one
    read at the end would see only the parent. For a proxy that does not fork this ends equal to
    its own VmHWM."""

    def __init__(self, pid, interval=0.05):
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.peak = None
        self.halt = threading.Event()

    def sample(self):
        v = tree_kib(self.pid, "VmHWM")
        if v is not None and (self.peak is None or v > self.peak):
            self.peak = v
        return self.peak

    def run(self):
        while not self.halt.wait(self.interval):
            self.sample()

    def finish(self):
        """Stops sampling; one last sample now (the end of the transfer). Returns the peak."""
        self.halt.set()
        self.join()
        return self.sample()


TCP_LISTEN, TCP_TIME_WAIT = "0A", "06"


def tcp_sockets():
    """The fields of every row of /proc/net/tcp and /proc/net/tcp6 (local, remote, state, ...)."""
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                rows = [line.split() for line in f]
        except (OSError, StopIteration):
            continue
        yield from (p for p in rows if len(p) > 9)


def proxy_conns(port, up=None):
    """TCP sockets a process still holds (inode != 0: not an orphan, not TIME_WAIT) on either side
    of a proxy: accepted on the listening port, or connected to the upstream port (a server has
    none: up=None counts only the accepted ones)."""
    lp = ":%04X" % port
    rp = None if up is None else ":%04X" % up
    return sum(1 for p in tcp_sockets()
               if p[3] not in (TCP_LISTEN, TCP_TIME_WAIT) and p[9] != "0"
               and (p[1].endswith(lp) or (rp is not None and p[2].endswith(rp))))


def port_listening(port):
    """True if some socket listens on port for loopback (127.0.0.1, 0.0.0.0, ::, ::ffff:127.0.0.1),
    read from /proc/net/tcp{,6}: probing with connect() would make socat fork and iperf3 count a
    bogus client."""
    want = ":%04X" % port
    addrs = ("0100007F", "00000000", "00000000000000000000000000000000",
             "0000000000000000FFFF00000100007F")
    return any(p[3] == TCP_LISTEN and p[1].endswith(want) and p[1].split(":")[0] in addrs
               for p in tcp_sockets())


def port_free(port):
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def pick_port(preferred, avoid=()):
    if preferred and preferred not in avoid and port_free(preferred):
        return preferred
    for _ in range(100):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        p = s.getsockname()[1]
        s.close()
        if p not in avoid:
            return p
    raise RuntimeError("no free port")


def pinned(cpu):
    """For preexec_fn: pins the child to `cpu` and lifts its descriptor limit to the hard limit
    (10,000 connections need more than the usual soft limit of 1024, for every peer alike)."""
    def fn():
        os.sched_setaffinity(0, {cpu})
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return fn


# ---------------------------------------------------------------- processes we start

class Server:
    """A peer or proxy we started; stopped by SIGTERM to its PID (never by name)."""

    def __init__(self, name, argv, cpu, tmpdir, env=None, announce=True, port=None):
        self.name = name
        self.argv = argv
        self.announce = announce
        self.port = port
        tag = "%s-%d" % (re.sub(r"[^A-Za-z0-9_.-]", "_", name), int(time.monotonic() * 1e6))
        self.out_path = os.path.join(tmpdir, tag + ".out")
        self.err_path = os.path.join(tmpdir, tag + ".err")
        self.out = open(self.out_path, "wb")
        self.err = open(self.err_path, "wb")
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.out, stderr=self.err,
                                     env=full_env, preexec_fn=pinned(cpu), start_new_session=True)
        self.pid = self.proc.pid
        self.rc = None

    def wait_ready(self, timeout=10.0):
        """Until 'listening on HOST:PORT' (or, for tools, a LISTEN socket on the port)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return "exited with status %s before listening" % self.proc.returncode
            if self.announce:
                try:
                    with open(self.out_path, "rb") as f:
                        m = re.search(rb"listening on (\S+):(\d+)", f.read())
                    if m:
                        self.port = int(m.group(2))
                        return None
                except OSError:
                    pass
            elif self.port and port_listening(self.port):
                return None
            time.sleep(0.01)
        return "not listening after %.0f s" % timeout

    def alive(self):
        return self.proc.poll() is None

    def stop(self, timeout=10.0):
        """SIGTERM by PID, wait; SIGKILL if it does not exit. Returns the exit status."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self.rc = "hung (killed after %.0f s)" % timeout
        if self.rc is None:
            self.rc = self.proc.returncode
        self.out.close()
        self.err.close()
        return self.rc

    def tail(self, n=400):
        txt = ""
        for p in (self.err_path, self.out_path):
            try:
                with open(p, "rb") as f:
                    data = f.read()[-n:].decode(errors="replace").strip()
                if data:
                    txt += " [%s: %s]" % (os.path.basename(p).rsplit(".", 1)[-1], data.replace("\n", " | "))
            except OSError:
                pass
        return txt


def rc_ok(rc, allowed=(0,)):
    return isinstance(rc, int) and rc in allowed


def rc_text(rc):
    if isinstance(rc, int) and rc < 0:
        try:
            return "killed by %s" % signal.Signals(-rc).name
        except ValueError:
            return "killed by signal %d" % -rc
    return "exit status %s" % rc


# ---------------------------------------------------------------- the runner

class Runner:
    def __init__(self, args):
        self.a = args
        self.build = Path(args.build).resolve()
        self.loadgen = self.build / "benchmarks/loadgen/ringnet-loadgen"
        self.shim = self.build / "benchmarks/loadgen/libringnet-malloc-count.so"
        self.cells = []
        self.notes = []
        self.tmp = tempfile.mkdtemp(prefix="ringnet-bench-")
        cpus = sorted(os.sched_getaffinity(0))
        self.client_cpu = args.client_cpu if args.client_cpu is not None else cpus[0]
        self.server_cpu = args.server_cpu if args.server_cpu is not None else cpus[-1]
        if self.client_cpu == self.server_cpu:
            self.note("only one CPU available: client and server share CPU %d" % self.client_cpu)
        self.max_tw = read_int_file("/proc/sys/net/ipv4/tcp_max_tw_buckets", 131072)
        self.live = []  # servers currently running, for cleanup
        self.tw_wait_left = args.tw_wait
        self.noisy_cells = 0

    # ---------------- progress
    def plan(self, a):
        """How many cells the run holds, for the progress shown after each one."""
        echo = sum(1 for w in a.workloads if w in ECHO_WORKLOADS)
        proxied = sum(1 for w in a.workloads if w in ("bulk", "relay"))
        self.planned = a.runs * (echo * len(self.echo_peers(quiet=True)) + proxied * len(self.proxies()))
        self.started = time.monotonic()
        estimate = self.planned * (a.warmup + a.duration + 0.8)
        log("%d cells planned, about %.0f s%s" % (self.planned, estimate,
                                                  " plus TIME_WAIT priming" if "churn" in a.workloads else ""))

    def progress(self):
        done = len(self.cells)
        if not getattr(self, "planned", 0) or done == 0:
            return ""
        left = max(self.planned - done, 0)
        per_cell = (time.monotonic() - self.started) / done
        return "  (%d/%d, ~%.0f s left)" % (done, self.planned, left * per_cell)

    def note(self, msg):
        if msg not in self.notes:
            self.notes.append(msg)
            log("note: " + msg)

    # ---------------- TIME_WAIT management (churn)
    def tw_settle(self, port):
        """Keep the TIME_WAIT table away from overflow: the TIME_WAIT sockets of other ports plus
        everything churn can hold on ours must fit in tcp_max_tw_buckets.  Past that the kernel
        stops creating TIME_WAIT entries and churn gets cheaper, flattering whichever server runs
        then.  On ours, connect() picks from half the port range per source address and reuses
        an entry once it is 1 s old (tcp_tw_reuse), so churn holds about sources x range/2.
        Waits at most --tw-wait seconds in all; returns (tw_total, waited_s)."""
        own_max = len(CHURN_SOURCES) * port_range_size() // 2 + 8192
        limit = max(self.max_tw - own_max, self.max_tw // 8)
        t0 = time.monotonic()
        announced = False
        while True:
            total = read_sockstat_tw()
            if total is None:
                return None, 0.0
            own = count_tw_to_port(port) if total > limit else 0
            other = total - (own or 0)
            if other <= limit:
                return total, time.monotonic() - t0
            if self.tw_wait_left <= 0:
                self.note("TIME_WAIT table holds %d entries for other ports (limit %d): churn may overflow "
                          "tcp_max_tw_buckets=%d" % (other, limit, self.max_tw))
                return total, time.monotonic() - t0
            if not announced:
                log("  waiting up to %.0f s for %d TIME_WAIT sockets (other ports) to drain below %d ..." %
                    (self.tw_wait_left, other, limit))
                announced = True
            time.sleep(1.0)
            self.tw_wait_left -= 1.0

    def background_probe(self, cell, secs=0.1):
        """Busy % of both cores while nothing of ours runs: other load on the machine (another
        benchmark, a compiler) inflates the per-core CPU figures of the cell that follows."""
        s0 = read_cpu_busy()
        time.sleep(secs)
        s1 = read_cpu_busy()

        def pct(cpu):
            b = s1[cpu][0] - s0[cpu][0]
            t = s1[cpu][1] - s0[cpu][1]
            return round(100.0 * b / t, 1) if t else None
        srv, cli = pct(self.server_cpu), pct(self.client_cpu)
        cell["background_busy_pct"] = {"server_core": srv, "client_core": cli}
        if (srv or 0) > 15 or (cli or 0) > 15:
            self.noisy_cells += 1
            cell["noisy"] = True

    # ---------------- echo workloads
    def prime_churn(self, peer, port):
        """Bring the TIME_WAIT table to its churn steady state (every source port of every source
        address in TIME_WAIT, reused after 1 s) before the first measured cell, so that the first
        peer of round 1 does not run on an emptier table than everyone after it."""
        name, argv = peer
        tw = self.tw_settle(port)[0]
        log("  priming TIME_WAIT with %.0f s of unmeasured churn against %s (tw %s)" % (self.a.prime, name, tw))
        srv = Server(name + "-prime", argv + ["--listen", "127.0.0.1:%d" % port], self.server_cpu, self.tmp)
        self.live.append(srv)
        try:
            if srv.wait_ready() is None:
                subprocess.run([str(self.loadgen), "--workload", "churn", "--target", "127.0.0.1:%d" % port,
                                "--sources", ",".join(CHURN_SOURCES), "--duration", str(self.a.prime),
                                "--warmup", "0", "--json"], capture_output=True,
                               timeout=self.a.prime + 2 * LOADGEN_OP_TIMEOUT + 30,
                               preexec_fn=pinned(self.client_cpu))
        except subprocess.TimeoutExpired:
            pass
        finally:
            srv.stop()
            self.live.remove(srv)

    def echo_peers(self, quiet=False):
        peers = []
        for name, rel, extra in ECHO_PEERS:
            if not (name in self.a.peers if self.a.peers else name not in OPT_IN_PEERS):
                continue
            path = self.build / rel
            if not (path.is_file() and os.access(path, os.X_OK)):
                if not quiet:
                    self.note("echo peer %s skipped: %s not built" % (name, path))
                continue
            peers.append((name, [str(path)] + extra))
        for name, path in self.a.extra_echo:
            peers.append((name, [path]))
        return peers

    def run_echo_cell(self, wl, rnd, name, argv, port):
        cell = {"workload": wl, "round": rnd, "peer": name, "ok": False, "problems": []}
        use_mc = self.shim.is_file() and not self.a.no_malloc_count
        env = {}
        mc_file = None
        if use_mc:
            mc_file = os.path.join(self.tmp, "malloc-%s-%s-%d.txt" % (wl, name, rnd))
            env = {"LD_PRELOAD": str(self.shim), "RINGNET_MALLOC_COUNT_FILE": mc_file}
        if wl == "churn":
            tw, waited = self.tw_settle(port)
            cell["tw_before"] = tw
            cell["tw_waited_s"] = round(waited, 1)
        self.background_probe(cell)
        srv = Server(name, argv + ["--listen", "127.0.0.1:%d" % port], self.server_cpu, self.tmp, env=env)
        self.live.append(srv)
        try:
            why = srv.wait_ready()
            if why:
                cell["problems"].append("peer %s%s" % (why, srv.tail()))
                return cell
            warmup = self.a.warmup
            lg = [str(self.loadgen)] + ECHO_WORKLOADS[wl]
            if wl == "many":
                conns = MANY_CONNS_SMOKE if self.a.smoke else MANY_CONNS
                warmup += MANY_IDLE_S + 1.0  # the idle phase, then one interval of messages
                lg += ["--connections", str(conns), "--idle", str(MANY_IDLE_S)]
                cell["rss_base_kib"] = proc_status_kib(srv.pid, "VmRSS")
            lg += ["--target", "127.0.0.1:%d" % port, "--duration", str(self.a.duration),
                   "--warmup", str(warmup), "--timeout", str(LOADGEN_OP_TIMEOUT), "--json"]
            if wl == "churn":
                lg += ["--sources", ",".join(CHURN_SOURCES)]
            if use_mc:
                lg += ["--notify-pid", str(srv.pid)]
            limit = warmup + self.a.duration + 2 * LOADGEN_OP_TIMEOUT + 30
            lg_proc = subprocess.Popen(lg, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                       preexec_fn=pinned(self.client_cpu))
            if wl == "many":  # late in the idle phase: every connection open, none has sent yet
                time.sleep(MANY_IDLE_S * 0.8)
                cell["idle_conns"] = proxy_conns(port)
                cell["rss_idle_kib"] = proc_status_kib(srv.pid, "VmRSS")
            try:
                out, err = lg_proc.communicate(timeout=limit)
            except subprocess.TimeoutExpired:
                lg_proc.kill()
                lg_proc.communicate()
                cell["problems"].append("load generator did not finish within %.0f s" % limit)
                return cell
            r = subprocess.CompletedProcess(lg, lg_proc.returncode, out, err)
            if wl == "many":
                cell["rss_active_kib"] = proc_status_kib(srv.pid, "VmRSS")
            res = None
            for line in r.stdout.splitlines():
                if line.startswith("{"):
                    try:
                        res = json.loads(line)
                    except ValueError:
                        pass
            if r.returncode != 0 or res is None:
                cell["problems"].append("load generator failed (status %d): %s" %
                                        (r.returncode, (r.stderr or r.stdout).strip()[-300:]))
                return cell
            cell["loadgen"] = res
            alive = srv.alive()
        finally:
            rc = srv.stop()
            self.live.remove(srv)
        if wl == "churn":
            cell["tw_after"] = read_sockstat_tw()
            if cell["tw_after"] is not None and cell["tw_after"] >= self.max_tw - 64:
                cell["tw_overflow"] = True
                self.note("TIME_WAIT table reached tcp_max_tw_buckets=%d during churn (%s round %d): "
                          "later churn cells ran without TIME_WAIT entries" % (self.max_tw, name, rnd))
        cell["peer_rc"] = rc if isinstance(rc, int) else str(rc)
        if not alive:
            cell["problems"].append("peer died during the run (%s)%s" % (rc_text(rc), srv.tail()))
        elif not rc_ok(rc):
            cell["problems"].append("peer did not exit cleanly on SIGTERM (%s)%s" %
                                    (rc_text(rc) if isinstance(rc, int) else rc, srv.tail()))
        ops = res["ops"]
        cpu = {c["cpu"]: c for c in res.get("cpu", [])}
        srv_c, cli_c = cpu.get(self.server_cpu), cpu.get(self.client_cpu)
        cell.update({
            "ops": ops,
            "ops_per_sec": res["ops_per_sec"],
            "elapsed_s": res["elapsed_s"],
            "errors": res["errors"],
            "error_total": res["error_total"],
            "p50_us": res["p50_us"], "p99_us": res["p99_us"], "p999_us": res["p999_us"],
            "server_busy_us": srv_c["busy_us"] if srv_c else None,
            "server_busy_pct": 100.0 * srv_c["busy_us"] / srv_c["total_us"] if srv_c and srv_c["total_us"] else None,
            "client_busy_pct": 100.0 * cli_c["busy_us"] / cli_c["total_us"] if cli_c and cli_c["total_us"] else None,
            "server_cpu_us_per_op": srv_c["busy_us"] / ops if srv_c and ops else None,
        })
        if wl == "many":
            want = res["connections"]
            if cell.get("idle_conns") != want:
                cell["problems"].append("%s of %d connections open in the idle phase" %
                                        (cell.get("idle_conns"), want))
            base, idle = cell.get("rss_base_kib"), cell.get("rss_idle_kib")
            cell["rss_per_conn_kib"] = (idle - base) / want if base is not None and idle is not None else None
        if res["error_total"]:
            errs = ", ".join("%s %d" % (k, v) for k, v in res["errors"].items() if v)
            cell["problems"].append("protocol errors: %s %s" % (errs, res.get("other_errno") or ""))
        if ops == 0:
            cell["problems"].append("no operation completed")
        if use_mc:
            cell.update(self.read_mc(mc_file, srv.pid, ops))
        cell["ok"] = not cell["problems"]
        return cell

    def read_mc(self, path, pid, ops):
        snaps = []
        try:
            with open(path) as f:
                for line in f:
                    kv = dict(x.split("=", 1) for x in line.split() if "=" in x)
                    if kv.get("pid") == str(pid) and kv.get("event") == "signal":
                        snaps.append(int(kv["allocs"]))
        except (OSError, ValueError, KeyError):
            pass
        if len(snaps) < 2:
            return {"allocs": None, "allocs_per_op": None}
        d = snaps[1] - snaps[0]
        return {"allocs": d, "allocs_per_op": d / ops if ops else None}

    # ---------------- bulk (proxies)
    def proxies(self):
        out = []
        for name, kind, what, extra in PROXIES:
            if not (name in self.a.peers if self.a.peers else name not in OPT_IN_PEERS):
                continue
            if kind == "build":
                path = self.build / what
                if not (path.is_file() and os.access(path, os.X_OK)):
                    self.note("proxy %s skipped: %s not built" % (name, path))
                    continue
                out.append((name, kind, str(path), extra))
            elif kind == "tool":
                path = shutil.which(what)
                if not path:
                    self.note("proxy %s skipped: %s not installed" % (name, what))
                    continue
                out.append((name, kind, path, extra))
            else:
                out.append((name, kind, None, extra))
        for name, path, extra in self.a.extra_proxy:
            out.append((name, "build", path, extra))
        return out

    def proxy_argv(self, name, kind, path, extra, port, up):
        if kind == "build":
            return [path] + extra + ["--listen", "127.0.0.1:%d" % port, "--upstream", "127.0.0.1:%d" % up], True
        if name == "socat":
            return [path, "-b", "262144", "TCP-LISTEN:%d,bind=127.0.0.1,reuseaddr,fork" % port,
                    "TCP:127.0.0.1:%d" % up], False
        if name == "haproxy":
            cfg = os.path.join(self.tmp, "haproxy.cfg")
            with open(cfg, "w") as f:
                f.write("global\n    maxconn 1000\n"
                        "defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 60s\n"
                        "    timeout server 60s\n"
                        "listen bench\n    bind 127.0.0.1:%d\n    server upstream 127.0.0.1:%d\n" % (port, up))
            return [path, "-db", "-f", cfg], False
        raise ValueError(name)

    def start_proxy(self, name, kind, path, extra, port, up):
        """Returns (Server or None for 'direct', problem or None)."""
        if kind == "none":
            return None, None
        argv, announce = self.proxy_argv(name, kind, path, extra, port, up)
        srv = Server(name, argv, self.server_cpu, self.tmp, announce=announce, port=port)
        self.live.append(srv)
        why = srv.wait_ready()
        if why:
            srv.stop()
            self.live.remove(srv)
            return None, "proxy %s%s" % (why, srv.tail())
        return srv, None

    def stop_proxy(self, srv, kind, alive, cell):
        rc = srv.stop()
        self.live.remove(srv)
        cell["peer_rc"] = rc if isinstance(rc, int) else str(rc)
        allowed = TOOL_EXIT_OK if kind == "tool" else (0,)
        if not alive:
            cell["problems"].append("proxy died during the run (%s)%s" % (rc_text(rc), srv.tail()))
        elif not rc_ok(rc, allowed):
            cell["problems"].append("proxy did not exit cleanly on SIGTERM (%s)%s" %
                                    (rc_text(rc) if isinstance(rc, int) else rc, srv.tail()))

    def run_relay_cell(self, rnd, name, kind, path, extra, port, up):
        cell = {"workload": "relay", "round": rnd, "peer": name, "ok": False, "problems": []}
        self.background_probe(cell)
        srv, why = self.start_proxy(name, kind, path, extra, port, up)
        if why:
            cell["problems"].append(why)
            return cell
        target = port if srv else up
        lg = [str(self.loadgen), "--workload", "churn", "--connections", str(RELAY_CONNS),
              "--size", str(RELAY_SIZE), "--sources", "none", "--target", "127.0.0.1:%d" % target,
              "--duration", str(self.a.duration), "--warmup", str(self.a.warmup),
              "--timeout", str(LOADGEN_OP_TIMEOUT), "--json"]
        limit = self.a.warmup + self.a.duration + 2 * LOADGEN_OP_TIMEOUT + 30
        res = None
        alive = True
        try:
            c0 = proc_cpu_ticks(srv.pid) if srv else None
            try:
                r = subprocess.run(lg, capture_output=True, text=True, timeout=limit,
                                   preexec_fn=pinned(self.client_cpu))
                for line in r.stdout.splitlines():
                    if line.startswith("{"):
                        res = json.loads(line)
                if r.returncode != 0 or res is None:
                    cell["problems"].append("load generator failed (status %d): %s" %
                                            (r.returncode, (r.stderr or r.stdout).strip()[-300:]))
            except subprocess.TimeoutExpired:
                cell["problems"].append("load generator did not finish within %.0f s" % limit)
            except ValueError:
                cell["problems"].append("load generator printed bad JSON")
            c1 = proc_cpu_ticks(srv.pid) if srv else None
            alive = srv.alive() if srv else True
        finally:
            if srv:
                self.stop_proxy(srv, kind, alive, cell)
        if res is None:
            return cell
        cell["loadgen"] = res
        ops = res["ops"]
        gb = ops * RELAY_SIZE / 1e9
        cpu = {c["cpu"]: c for c in res.get("cpu", [])}
        srv_c, cli_c = cpu.get(self.server_cpu), cpu.get(self.client_cpu)
        all_ops = ops + res.get("warmup_ops", 0) + res.get("drain_ops", 0)
        cell.update({
            "ops": ops, "elapsed_s": res["elapsed_s"], "errors": res["errors"],
            "error_total": res["error_total"],
            "gbytes_per_sec": gb / res["elapsed_s"] if res["elapsed_s"] else None,
            "p50_us": res["p50_us"], "p99_us": res["p99_us"],
            "proxy_core_s_per_gb": srv_c["busy_us"] / 1e6 / gb if srv and srv_c and gb else None,
            "server_busy_pct": 100.0 * srv_c["busy_us"] / srv_c["total_us"] if srv_c and srv_c["total_us"] else None,
            "client_busy_pct": 100.0 * cli_c["busy_us"] / cli_c["total_us"] if cli_c and cli_c["total_us"] else None,
        })
        # process CPU is sampled around the whole load-generator run, so divide by every byte of it
        if c0 is not None and c1 is not None and all_ops:
            cell["proxy_cpu_s_per_gb"] = (c1 - c0) / CLK_TCK / (all_ops * RELAY_SIZE / 1e9)
        if res["error_total"]:
            errs = ", ".join("%s %d" % (k, v) for k, v in res["errors"].items() if v)
            cell["problems"].append("protocol errors: %s %s" % (errs, res.get("other_errno") or ""))
        if ops == 0:
            cell["problems"].append("no transfer completed")
        cell["ok"] = not cell["problems"]
        return cell

    def run_relay(self, port, summaries):
        proxies = self.proxies()
        if not proxies:
            self.note("relay: no proxy to run")
            return False
        echo = None
        for name, rel, extra in ECHO_PEERS:
            if name in ("liburing", "epoll"):
                path = self.build / rel
                if path.is_file() and os.access(path, os.X_OK):
                    echo = (name, [str(path)] + extra)
                    break
        if not echo:
            self.note("relay skipped: needs bench-uring-echo or bench-epoll-echo as the upstream")
            return False
        up = pick_port(self.a.port + 1 if self.a.port else 0, avoid=(port,))
        log("\n== relay: %d clients x %d MiB lifecycles through each proxy to %s echo on 127.0.0.1:%d "
            "(CPU %d), every byte verified" % (RELAY_CONNS, RELAY_SIZE >> 20, echo[0], up, self.client_cpu))
        usrv = Server("upstream-echo", echo[1] + ["--listen", "127.0.0.1:%d" % up], self.client_cpu, self.tmp)
        self.live.append(usrv)
        try:
            why = usrv.wait_ready()
            if why:
                self.cells.append({"workload": "relay", "round": 0, "peer": "upstream-echo", "ok": False,
                                   "problems": ["upstream echo %s%s" % (why, usrv.tail())]})
                return True
            for rnd in range(1, self.a.runs + 1):
                for name, kind, path, extra in proxies:
                    cell = self.run_relay_cell(rnd, name, kind, path, extra, port, up)
                    self.cells.append(cell)
                    log("  [relay %d/%d] %-22s %s%s" % (rnd, self.a.runs, name, self.cell_line(cell),
                                                        self.progress()))
                    if not usrv.alive():
                        break
        finally:
            rc = usrv.stop()
            self.live.remove(usrv)
            if not rc_ok(rc):
                self.cells.append({"workload": "relay", "round": 0, "peer": "upstream-echo", "ok": False,
                                   "problems": ["upstream echo server ended with %s%s" % (rc_text(rc), usrv.tail())]})
        summaries["relay"] = self.summarize_bulk([p[0] for p in proxies], "relay")
        return True

    def run_bulk_cell(self, rnd, name, kind, path, extra, port, up, iperf):
        cell = {"workload": "bulk", "round": rnd, "peer": name, "ok": False, "problems": []}
        self.background_probe(cell)
        srv, why = self.start_proxy(name, kind, path, extra, port, up)
        if why:
            cell["problems"].append(why)
            return cell
        target = port if srv else up
        secs = max(1, int(round(self.a.duration)))
        cmd = [iperf, "-c", "127.0.0.1", "-p", str(target), "-t", str(secs), "-J", "--connect-timeout", "3000"]
        limit = secs + (5 if self.a.smoke else 20)
        if self.a.bulk_streams > 1:
            cmd += ["-P", str(self.a.bulk_streams)]
        alive = True
        peak = None
        try:
            if srv:
                # memory: the resident set right after start-up (the baseline), its high-water mark
                # over the transfer, and what stays resident once every connection has closed
                cell["rss_start_kib"] = tree_kib(srv.pid, "VmRSS")
                peak = PeakRss(srv.pid)
                peak.start()
            c0 = proc_cpu_ticks(srv.pid) if srv else None
            s0 = read_cpu_busy()
            try:
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=limit,
                                   preexec_fn=pinned(self.client_cpu))
                out = r.stdout
            except subprocess.TimeoutExpired as e:
                r, out = None, e.stdout or ""
                if isinstance(out, bytes):
                    out = out.decode(errors="replace")
                cell["problems"].append("iperf3 did not finish within %d s (a %d s test)" % (limit, secs))
            s1 = read_cpu_busy()
            c1 = None
            alive = True
            if srv:
                cell["rss_peak_kib"] = peak.finish()
                peak = None
                # socat forks one child per connection: wait until they are gone (reaped, so their
                # time lands in the parent's cutime/cstime)
                deadline = time.monotonic() + 3.0
                while proc_children(srv.pid) and time.monotonic() < deadline:
                    time.sleep(0.02)
                c1 = proc_cpu_ticks(srv.pid)
                # then until the proxy holds no connection on either side (bounded), and read what
                # stays resident
                deadline = time.monotonic() + 2.0
                conns = proxy_conns(port, up)
                while conns and time.monotonic() < deadline:
                    time.sleep(0.02)
                    conns = proxy_conns(port, up)
                cell["rss_end_kib"] = tree_kib(srv.pid, "VmRSS")
                cell["proxy_conns_at_rss_end"] = conns
                alive = srv.alive()
        finally:
            if peak is not None:
                peak.finish()
            if srv:
                self.stop_proxy(srv, kind, alive, cell)
        try:
            res = json.loads(out) if out.strip() else {}
        except ValueError:
            res = {}
        if res.get("error"):
            cell["problems"].append("iperf3: %s" % res["error"])
        elif r is not None and r.returncode != 0:
            cell["problems"].append("iperf3 exited with status %d: %s" % (r.returncode, (r.stderr or "").strip()[-200:]))
        end = res.get("end", {})
        recv = end.get("sum_received", {})
        sent = end.get("sum_sent", {})
        nbytes = recv.get("bytes") or 0
        secs_m = recv.get("seconds") or 0
        if nbytes and secs_m:
            gb = nbytes / 1e9
            cell.update({"bytes": nbytes, "bytes_sent": sent.get("bytes"), "seconds": secs_m,
                         "gbytes_per_sec": gb / secs_m})
            if c0 is not None and c1 is not None:
                cell["proxy_cpu_s"] = (c1 - c0) / CLK_TCK
                cell["proxy_cpu_s_per_gb"] = cell["proxy_cpu_s"] / gb
            b_srv = (s1[self.server_cpu][0] - s0[self.server_cpu][0]) / CLK_TCK
            t_srv = (s1[self.server_cpu][1] - s0[self.server_cpu][1]) / CLK_TCK
            b_cli = (s1[self.client_cpu][0] - s0[self.client_cpu][0]) / CLK_TCK
            t_cli = (s1[self.client_cpu][1] - s0[self.client_cpu][1]) / CLK_TCK
            cell["proxy_core_s_per_gb"] = b_srv / gb if srv else None
            cell["server_busy_pct"] = 100.0 * b_srv / t_srv if t_srv else None
            cell["client_busy_pct"] = 100.0 * b_cli / t_cli if t_cli else None
        elif not cell["problems"]:
            cell["problems"].append("iperf3 reported no transfer")
        cell["ok"] = not cell["problems"]
        return cell

    # ---------------- orchestration
    def run(self):
        a = self.a
        os.sched_setaffinity(0, {self.client_cpu})  # keep the runner itself off the server core
        meta = {
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "kernel": os.uname().release,
            "cpus": os.cpu_count(),
            "client_cpu": self.client_cpu,
            "server_cpu": self.server_cpu,
            "runs": a.runs, "duration_s": a.duration, "warmup_s": a.warmup, "smoke": a.smoke,
            "mode": a.mode,
            "tcp_max_tw_buckets": self.max_tw,
            "tcp_tw_reuse": read_int_file("/proc/sys/net/ipv4/tcp_tw_reuse", None),
            "build": str(self.build),
        }
        log("ringnet benchmarks: %d round(s) x %s s (+%s s warm-up), server on CPU %d, load on CPU %d%s" %
            (a.runs, a.duration, a.warmup, self.server_cpu, self.client_cpu,
             {"smoke": ", SMOKE", "full": "",
              "quick": ", QUICK (fewer rounds, shorter cells, main workloads and peers; --full for "
                       "the full run)"}[a.mode]))
        self.plan(a)
        port = pick_port(a.port)
        if port != a.port:
            self.note("port %d busy, using %d" % (a.port, port))
        meta["port"] = port
        summaries = {}
        ran_any = False
        for wl in a.workloads:
            if wl == "bulk":
                ran_any |= self.run_bulk(port, summaries)
                continue
            if wl == "relay":
                ran_any |= self.run_relay(port, summaries)
                continue
            peers = self.echo_peers()
            if not peers:
                self.note("%s: no echo peer to run" % wl)
                continue
            ran_any = True
            log("\n== %s: %s" % (wl, " ".join(ECHO_WORKLOADS[wl][1:])))
            if wl == "churn" and a.prime > 0:
                self.prime_churn(peers[0], port)
            for rnd in range(1, a.runs + 1):
                for name, argv in peers:
                    cell = self.run_echo_cell(wl, rnd, name, argv, port)
                    self.cells.append(cell)
                    log("  [%s %d/%d] %-11s %s%s" % (wl, rnd, a.runs, name, self.cell_line(cell), self.progress()))
            summaries[wl] = self.summarize_echo(wl, [p for p, _ in peers])
        if not ran_any:
            log("nothing ran (no peer binaries?)")
        self.print_tables(summaries)
        if self.noisy_cells:
            self.note("%d cell(s) started while something else kept a core >15%% busy (see "
                      "background_busy_pct in --json): their CPU-per-operation figures include that load; "
                      "rerun on a quiet machine" % self.noisy_cells)
        failed = [c for c in self.cells if not c["ok"]]
        if failed:
            log("\nFAILED cells (%d):" % len(failed))
            for c in failed:
                log("  %s round %d %s: %s" % (c["workload"], c["round"], c["peer"], "; ".join(c["problems"])))
        else:
            log("\nall %d cells clean (every echo verified, every peer exited 0)" % len(self.cells))
        if a.json:
            results = {"meta": meta, "notes": self.notes, "cells": self.cells, "summary": summaries}
            Path(a.json).parent.mkdir(parents=True, exist_ok=True)
            with open(a.json, "w") as f:
                json.dump(results, f, indent=1)
            svg = Path(a.json).with_suffix(".svg")
            chart.write_svg(results, svg)
            log("raw and summary numbers written to %s, the chart to %s" % (a.json, svg))
        if failed:
            return 1
        return 0 if ran_any else 2

    def run_bulk(self, port, summaries):
        a = self.a
        iperf = shutil.which("iperf3")
        if not iperf:
            self.note("bulk skipped: iperf3 not installed")
            return False
        proxies = self.proxies()
        if not proxies:
            self.note("bulk: no proxy to run")
            return False
        up = pick_port(a.port + 1 if a.port else 0, avoid=(port,))
        log("\n== bulk: iperf3 through each proxy (upstream iperf3 -s on 127.0.0.1:%d, %d stream%s)" %
            (up, a.bulk_streams, "s" if a.bulk_streams > 1 else ""))
        isrv = Server("iperf3-server", [iperf, "-s", "-B", "127.0.0.1", "-p", str(up)], self.client_cpu, self.tmp,
                      announce=False, port=up)
        self.live.append(isrv)
        try:
            why = isrv.wait_ready()
            if why:
                cell = {"workload": "bulk", "round": 0, "peer": "iperf3-server", "ok": False,
                        "problems": ["iperf3 server %s%s" % (why, isrv.tail())]}
                self.cells.append(cell)
                return True
            for rnd in range(1, a.runs + 1):
                for name, kind, path, extra in proxies:
                    cell = self.run_bulk_cell(rnd, name, kind, path, extra, port, up, iperf)
                    self.cells.append(cell)
                    log("  [bulk %d/%d] %-22s %s%s" % (rnd, a.runs, name, self.cell_line(cell), self.progress()))
                    if not isrv.alive():
                        break
        finally:
            isrv.stop()
            self.live.remove(isrv)
        summaries["bulk"] = self.summarize_bulk([p[0] for p in proxies])
        return True

    @staticmethod
    def cell_line(c):
        if c["workload"] in ("bulk", "relay"):
            if c.get("gbytes_per_sec") is None:
                return "FAILED: " + "; ".join(c["problems"])
            s = "%6.2f GB/s" % c["gbytes_per_sec"]
            if c.get("proxy_cpu_s_per_gb") is not None:
                s += "  proxy %.2f CPU s/GB (core %s)" % (
                    c["proxy_cpu_s_per_gb"],
                    "-" if c.get("proxy_core_s_per_gb") is None else "%.2f" % c["proxy_core_s_per_gb"])
            if c.get("rss_peak_kib") is not None:
                s += "  RSS peak %.1f end %s MiB" % (
                    c["rss_peak_kib"] / 1024, "-" if c.get("rss_end_kib") is None else "%.1f" % (c["rss_end_kib"] / 1024))
        else:
            if "ops" not in c:
                return "FAILED: " + "; ".join(c["problems"])
            s = "%9.0f ops/s  srv %6.2f us/op  cli %3.0f%%  p50 %7.1f p99 %7.1f us" % (
                c["ops_per_sec"], c["server_cpu_us_per_op"] or 0, c["client_busy_pct"] or 0,
                c["p50_us"], c["p99_us"])
            if c.get("allocs_per_op") is not None:
                s += "  allocs/op %.2f" % c["allocs_per_op"]
        if not c["ok"]:
            s += "  FAILED: " + "; ".join(c["problems"])
        return s

    # ---------------- summaries
    def per_round_ratio(self, wl, peer, ref, key):
        by_round = {}
        for c in self.cells:
            if c["workload"] == wl and c.get(key) is not None:
                by_round.setdefault(c["round"], {})[c["peer"]] = c[key]
        ratios = []
        for rnd, vals in sorted(by_round.items()):
            if peer in vals and ref in vals and vals[ref]:
                ratios.append(vals[peer] / vals[ref])
        return median(ratios), ratios

    def summarize_echo(self, wl, peers):
        out = {}
        for p in peers:
            cs = [c for c in self.cells if c["workload"] == wl and c["peer"] == p]
            rates = [c["ops_per_sec"] for c in cs if "ops_per_sec" in c]
            cpu_ratio, cpu_ratios = self.per_round_ratio(wl, p, ECHO_REF, "server_cpu_us_per_op")
            rate_ratio, rate_ratios = self.per_round_ratio(wl, p, ECHO_REF, "ops_per_sec")
            out[p] = {
                "cells": len(cs),
                "failed_cells": sum(1 for c in cs if not c["ok"]),
                "ops_total": sum(c.get("ops", 0) for c in cs),
                "ops_per_sec_median": median(rates),
                "ops_per_sec_min": min(rates) if rates else None,
                "ops_per_sec_max": max(rates) if rates else None,
                "server_cpu_us_per_op_median": median([c.get("server_cpu_us_per_op") for c in cs]),
                "cpu_per_op_ratio_to_ref": cpu_ratio, "cpu_per_op_ratios": cpu_ratios,
                "ops_per_sec_ratio_to_ref": rate_ratio, "ops_per_sec_ratios": rate_ratios,
                "p50_us_median": median([c.get("p50_us") for c in cs]),
                "p99_us_median": median([c.get("p99_us") for c in cs]),
                "p999_us_median": median([c.get("p999_us") for c in cs]),
                "allocs_per_op_median": median([c.get("allocs_per_op") for c in cs]),
                "client_busy_pct_median": median([c.get("client_busy_pct") for c in cs]),
                "server_busy_pct_median": median([c.get("server_busy_pct") for c in cs]),
                "errors": sum(c.get("error_total", 0) for c in cs),
                "reference": ECHO_REF,
            }
            if wl == "many":
                rss_ratio, rss_ratios = self.per_round_ratio(wl, p, ECHO_REF, "rss_per_conn_kib")
                out[p].update({
                    "connections": median([c.get("loadgen", {}).get("connections") for c in cs]),
                    "rss_per_conn_kib_median": median([c.get("rss_per_conn_kib") for c in cs]),
                    "rss_per_conn_ratio_to_ref": rss_ratio, "rss_per_conn_ratios": rss_ratios,
                    "rss_active_kib_median": median([c.get("rss_active_kib") for c in cs]),
                })
        return out

    def summarize_bulk(self, peers, wl="bulk"):
        out = {}
        for p in peers:
            cs = [c for c in self.cells if c["workload"] == wl and c["peer"] == p]
            rates = [c["gbytes_per_sec"] for c in cs if c.get("gbytes_per_sec") is not None]
            rate_ratio, rate_ratios = self.per_round_ratio(wl, p, PROXY_REF, "gbytes_per_sec")
            cpu_ratio, cpu_ratios = self.per_round_ratio(wl, p, PROXY_REF, "proxy_cpu_s_per_gb")
            out[p] = {
                "cells": len(cs),
                "failed_cells": sum(1 for c in cs if not c["ok"]),
                "gbytes_per_sec_median": median(rates),
                "gbytes_per_sec_min": min(rates) if rates else None,
                "gbytes_per_sec_max": max(rates) if rates else None,
                "proxy_cpu_s_per_gb_median": median([c.get("proxy_cpu_s_per_gb") for c in cs]),
                "proxy_core_s_per_gb_median": median([c.get("proxy_core_s_per_gb") for c in cs]),
                "gbytes_per_sec_ratio_to_ref": rate_ratio, "gbytes_per_sec_ratios": rate_ratios,
                "cpu_per_gb_ratio_to_ref": cpu_ratio, "cpu_per_gb_ratios": cpu_ratios,
                "client_busy_pct_median": median([c.get("client_busy_pct") for c in cs]),
                "server_busy_pct_median": median([c.get("server_busy_pct") for c in cs]),
                "errors": sum(c.get("error_total", 0) for c in cs),
                "reference": PROXY_REF,
            }
            if wl == "bulk":
                peaks = [c["rss_peak_kib"] for c in cs if c.get("rss_peak_kib") is not None]
                ends = [c["rss_end_kib"] for c in cs if c.get("rss_end_kib") is not None]
                out[p].update({
                    "rss_start_kib_median": median([c.get("rss_start_kib") for c in cs]),
                    "rss_peak_kib_median": median(peaks),
                    "rss_peak_kib_min": min(peaks) if peaks else None,
                    "rss_peak_kib_max": max(peaks) if peaks else None,
                    "rss_end_kib_median": median(ends),
                    "rss_end_kib_min": min(ends) if ends else None,
                    "rss_end_kib_max": max(ends) if ends else None,
                    # per cell, then the median: what a transfer left resident beyond start-up
                    "rss_growth_kib_median": median([c["rss_end_kib"] - c["rss_start_kib"] for c in cs
                                                     if c.get("rss_end_kib") is not None
                                                     and c.get("rss_start_kib") is not None]),
                })
        return out

    def print_tables(self, summaries):
        def f(v, fmt):
            return "-" if v is None else fmt % v

        def table(rows, cols):
            """cols: (header, width, left-aligned?); rows: lists of strings. A column is widened to
            its longest cell."""
            cols = [(h, max([w] + [len(r[i]) for r in rows]), left) for i, (h, w, left) in enumerate(cols)]
            line = " ".join((h.ljust(w) if left else h.rjust(w)) for h, w, left in cols)
            log(line)
            log("-" * len(line))
            for r in rows:
                log(" ".join((v.ljust(w) if left else v.rjust(w)) for v, (_, w, left) in zip(r, cols)))

        for wl, s in summaries.items():
            log("")
            if wl in ("bulk", "relay"):
                if wl == "bulk":
                    log("bulk  (iperf3 -t %d through each proxy; proxy on CPU %d; x = median of per-round "
                        "ratios to %s)" % (max(1, int(round(self.a.duration))), self.server_cpu, PROXY_REF))
                else:
                    log("relay  (%d clients x %d MiB echoed through each proxy, verified; GB/s each way; "
                        "proxy on CPU %d; x = median of per-round ratios to %s)" % (
                            RELAY_CONNS, RELAY_SIZE >> 20, self.server_cpu, PROXY_REF))
                cols = [("proxy", 15, True), ("GB/s", 6, False), ("min-max", 11, False),
                        ("CPU s/GB", 8, False), ("core s/GB", 9, False), ("GB/s x", 6, False),
                        ("CPU/GB x", 8, False), ("srv%", 4, False), ("cli%", 4, False),
                        ("errors", 6, False), ("failed", 6, False)]
                rss = wl == "bulk"
                if rss:
                    cols[-2:-2] = [("peak RSS MiB", 12, False), ("end RSS MiB", 11, False), ("end-start", 9, False)]

                def mib(v, signed=False):
                    return f(None if v is None else v / 1024, "%+.1f" if signed else "%.1f")
                rows = []
                for p, r in s.items():
                    row = [p, f(r["gbytes_per_sec_median"], "%.2f"),
                           "%s-%s" % (f(r["gbytes_per_sec_min"], "%.2f"), f(r["gbytes_per_sec_max"], "%.2f")),
                           f(r["proxy_cpu_s_per_gb_median"], "%.3f"), f(r["proxy_core_s_per_gb_median"], "%.3f"),
                           f(r["gbytes_per_sec_ratio_to_ref"], "%.2f"), f(r["cpu_per_gb_ratio_to_ref"], "%.2f"),
                           f(r["server_busy_pct_median"], "%.0f"), f(r["client_busy_pct_median"], "%.0f")]
                    if rss:
                        row += [mib(r.get("rss_peak_kib_median")), mib(r.get("rss_end_kib_median")),
                                mib(r.get("rss_growth_kib_median"), signed=True)]
                    rows.append(row + [str(r["errors"]), "%d/%d" % (r["failed_cells"], r["cells"])])
                table(rows, cols)
                log("CPU s/GB = utime+stime of the proxy process (threads, io-wq workers and forked "
                    "children included) per GB; core s/GB = busy time of the proxy's core (softirq included)%s." % (
                    "; relay GB are counted each way, the proxy carries twice that" if wl == "relay" else ""))
                if rss:
                    log("peak RSS = the proxy's VmHWM at the end of the transfer (socat: the highest sum over "
                        "it and its per-connection children, sampled every 50 ms); end RSS = its VmRSS once "
                        "every connection closed; end-start = end RSS minus the RSS right after start-up "
                        "(per cell, then the median).")
                continue
            log("%s  (%s; server on CPU %d; x = median of per-round ratios to %s)" % (
                wl, " ".join(ECHO_WORKLOADS[wl][1:]), self.server_cpu, ECHO_REF))
            cols = [("peer", 11, True), ("ops/s", 8, False), ("min-max", 15, False), ("srv us/op", 9, False),
                    ("CPU/op x", 8, False), ("ops/s x", 7, False), ("p50 us", 7, False), ("p99 us", 7, False),
                    ("allocs/op", 9, False), ("srv%", 4, False), ("cli%", 4, False), ("errors", 6, False),
                    ("failed", 6, False)]
            rows = []
            for p, r in s.items():
                rows.append([p, f(r["ops_per_sec_median"], "%.0f"),
                             "%s-%s" % (f(r["ops_per_sec_min"], "%.0f"), f(r["ops_per_sec_max"], "%.0f")),
                             f(r["server_cpu_us_per_op_median"], "%.2f"), f(r["cpu_per_op_ratio_to_ref"], "%.2f"),
                             f(r["ops_per_sec_ratio_to_ref"], "%.2f"), f(r["p50_us_median"], "%.1f"),
                             f(r["p99_us_median"], "%.1f"), f(r["allocs_per_op_median"], "%.3f"),
                             f(r["server_busy_pct_median"], "%.0f"), f(r["client_busy_pct_median"], "%.0f"),
                             str(r["errors"]), "%d/%d" % (r["failed_cells"], r["cells"])])
            table(rows, cols)
            log("srv us/op = busy time of the server core (softirq included) per operation; cli% near 100 "
                "means the load generator's core saturated and ops/s no longer separates the servers.")
            if wl == "many":
                log("")
                log("many: server memory with %s connections" % f(next(iter(s.values()), {}).get("connections"), "%d"))
                cols = [("peer", 11, True), ("KiB/conn", 8, False), ("KiB/conn x", 10, False),
                        ("RSS active MiB", 14, False)]
                table([[p, f(r.get("rss_per_conn_kib_median"), "%.2f"), f(r.get("rss_per_conn_ratio_to_ref"), "%.2f"),
                        f(None if r.get("rss_active_kib_median") is None else r["rss_active_kib_median"] / 1024, "%.1f")]
                       for p, r in s.items()], cols)
                log("KiB/conn = (the server's VmRSS late in the idle phase - its VmRSS before the first "
                    "connection) / connections; RSS active = VmRSS at the end of the measured window.")

    def cleanup(self):
        for srv in list(self.live):
            try:
                srv.stop(timeout=3)
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)


def build(args):
    d = Path(args.build)
    if not (d / "build.ninja").is_file():
        cmd = ["meson", "setup", str(d), "-Dbuildtype=release", "-Db_ndebug=true", "-Dtests=disabled"]
        log("$ " + " ".join(cmd))
        if subprocess.run(cmd, cwd=REPO).returncode != 0:
            return False
    else:
        try:
            opts = json.loads(subprocess.run(["meson", "introspect", "--buildoptions", str(d)],
                                             capture_output=True, text=True).stdout)
            bt = next((o["value"] for o in opts if o["name"] == "buildtype"), None)
            if bt and bt != "release":
                log("note: %s is configured with buildtype=%s, not release" % (d, bt))
        except (ValueError, OSError):
            pass
    cmd = ["ninja", "-C", str(d)]
    log("$ " + " ".join(cmd))
    return subprocess.run(cmd).returncode == 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__[__doc__.index("Workloads"):])
    ap.add_argument("--build", default=str(REPO / "build-bench"),
                    help="meson build dir (default: build-bench/; set up as release if missing)")
    ap.add_argument("--no-build", action="store_true", help="do not run meson/ninja, use the build dir as is")
    ap.add_argument("--full", action="store_true",
                    help="the full run: every workload and peer, 5 rounds of 5 s cells (default: a "
                    "quick run of %s with %s, 3 rounds of 1.5 s)" % (",".join(QUICK_WORKLOADS),
                                                                    ",".join(QUICK_PEERS)))
    ap.add_argument("--smoke", action="store_true",
                    help="short correctness run: 2 rounds of 1 s cells, fails on any error")
    ap.add_argument("--runs", type=int, help="rounds per workload (default: quick 3, full 5, smoke 2)")
    ap.add_argument("--duration", type=float, help="measured seconds per cell (default: quick 1.5, full 5, smoke 1)")
    ap.add_argument("--warmup", type=float, help="warm-up seconds per cell (default: quick 0.3, full 1, smoke 0.2)")
    ap.add_argument("--workloads", default=None,
                    help="comma list of %s (default: quick %s; full and smoke all; every workload when "
                    "only --peers is given)" % (",".join(ALL_WORKLOADS), ",".join(QUICK_WORKLOADS)))
    ap.add_argument("--peers", default="",
                    help="comma list of peers/proxies to run (default: quick %s unless --workloads is given; "
                    "else all built): %%s" % ",".join(QUICK_PEERS) %
                    ",".join([p[0] for p in ECHO_PEERS] + [p[0] for p in PROXIES]))
    ap.add_argument("--extra-echo", metavar="NAME=PATH", action="append", default=[],
                    help="one more echo server binary to run beside the others (e.g. an earlier "
                    "build of ringnet-echo); may be repeated")
    ap.add_argument("--extra-proxy", metavar="NAME=PATH[,ARG...]", action="append", default=[],
                    help="one more ringnet-proxy-like binary (takes --listen and --upstream) for bulk, "
                    "with its own arguments (e.g. an earlier build: prev-copy=/tmp/old/ringnet-proxy,--copy); "
                    "may be repeated")
    ap.add_argument("--json", metavar="FILE",
                    help="where to write every raw cell and the summaries as JSON, with an SVG chart "
                    "beside it (default BUILD/benchmark.json)")
    ap.add_argument("--port", type=int, default=DEFAULT_PORT,
                    help="port for every server (default %d; iperf3 upstream uses the next one)" % DEFAULT_PORT)
    ap.add_argument("--bulk-streams", type=int, default=1, help="parallel iperf3 streams (-P) in bulk")
    ap.add_argument("--tw-wait", type=float,
                    help="max seconds in all to wait for TIME_WAIT of other ports to drain before churn "
                    "(default: full 65, quick and smoke 5)")
    ap.add_argument("--prime", type=float,
                    help="seconds of unmeasured churn before the first churn round, to bring TIME_WAIT "
                    "to steady state (default: full 4, quick 1, smoke 0)")
    ap.add_argument("--no-malloc-count", action="store_true", help="do not LD_PRELOAD the malloc counter")
    ap.add_argument("--server-cpu", type=int, help="CPU for servers/proxies (default: the last allowed)")
    ap.add_argument("--client-cpu", type=int, help="CPU for load generators (default: the first allowed)")
    a = ap.parse_args()

    if a.full and a.smoke:
        ap.error("--full and --smoke exclude each other")
    a.mode = "smoke" if a.smoke else "full" if a.full else "quick"
    # (rounds, seconds, warm-up, TIME_WAIT priming, TIME_WAIT wait) per mode
    defaults = {"smoke": (2, 1.0, 0.2, 0.0, 5.0), "quick": (3, 1.5, 0.3, 1.0, 5.0),
                "full": (5, 5.0, 1.0, 4.0, 65.0)}[a.mode]
    a.runs = a.runs if a.runs is not None else defaults[0]
    a.duration = a.duration if a.duration is not None else defaults[1]
    a.warmup = a.warmup if a.warmup is not None else defaults[2]
    a.prime = a.prime if a.prime is not None else defaults[3]
    a.tw_wait = a.tw_wait if a.tw_wait is not None else defaults[4]
    # quick: the main workloads and peers, unless the caller named either (named peers get every
    # workload, so that a proxy named alone still runs)
    if a.workloads is None:
        quick = a.mode == "quick" and not a.peers
        a.workloads = ",".join(QUICK_WORKLOADS if quick else ALL_WORKLOADS)
        if quick:
            a.peers = ",".join(QUICK_PEERS)
    a.json = a.json or str(Path(a.build) / "benchmark.json")
    if Path(a.json).suffix == ".svg":
        ap.error("--json names the JSON file; the chart goes beside it with .svg")
    if a.runs < 1 or a.duration <= 0 or a.warmup < 0:
        ap.error("--runs >= 1, --duration > 0, --warmup >= 0")
    a.workloads = [w for w in a.workloads.split(",") if w]
    for w in a.workloads:
        if w not in ALL_WORKLOADS:
            ap.error("unknown workload %s (known: %s)" % (w, ",".join(ALL_WORKLOADS)))
    extra = []
    for e in a.extra_echo:
        name, sep, path = e.partition("=")
        if not sep or not name or not os.access(path, os.X_OK):
            ap.error("--extra-echo takes NAME=PATH of an executable (got %s)" % e)
        extra.append((name, os.path.abspath(path)))
    a.extra_echo = extra
    extra = []
    for e in a.extra_proxy:
        name, sep, rest = e.partition("=")
        path, *args = rest.split(",")
        if not sep or not name or not os.access(path, os.X_OK):
            ap.error("--extra-proxy takes NAME=PATH[,ARG...] of an executable (got %s)" % e)
        extra.append((name, os.path.abspath(path), args))
    a.extra_proxy = extra
    a.peers = [p for p in a.peers.split(",") if p]
    known = [p[0] for p in ECHO_PEERS] + [p[0] for p in PROXIES]
    for p in a.peers:
        if p not in known:
            ap.error("unknown peer %s (known: %s)" % (p, ",".join(known)))

    if not a.no_build and not build(a):
        log("build failed")
        return 2
    r = Runner(a)
    if not (r.loadgen.is_file() and os.access(r.loadgen, os.X_OK)):
        log("load generator not found: %s (build the 'benchmarks' option)" % r.loadgen)
        return 2
    if not r.shim.is_file() and not a.no_malloc_count:
        r.note("malloc counter %s not built: allocs/op not measured" % r.shim)
    t0 = time.monotonic()
    try:
        rc = r.run()
    except KeyboardInterrupt:
        log("\ninterrupted")
        rc = 130
    finally:
        r.cleanup()
    log("(%.0f s)" % (time.monotonic() - t0))
    return rc


if __name__ == "__main__":
    sys.exit(main())
