#!/usr/bin/env python3
"""ringnet-proxy's memory follows the data in flight, on both data paths (--copy, --splice):

  idle    N connections relayed through the proxy to ringnet-echo, each after one small
          exchange each way (verified), then left idle: the proxy's resident memory per relayed
          connection stays under 8 KiB (VmRSS of the proxy process, from /proc/PID/status).
  burst   after a warm-up connection, K connections at once move M MiB each way (every echoed byte
          verified) and close: the proxy's VmRSS comes back within 16 MiB of its warm-up level.

usage: proxy_memory.py PATH/TO/ringnet-proxy PATH/TO/ringnet-echo [--idle N] [--burst K] [--mib M]
Exit 0 when every check passed, 1 otherwise. Loopback only; every process started here is ended
here, by its own PID. Bounded: each phase has a deadline, and the whole run is a few seconds.
"""
import argparse
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time

from check_log import check, note, results

HOST = "127.0.0.1"
KIB = 1024
MIB = 1024 * 1024

started = []


def start(argv):
    # stderr is read at exit only: the tools print their counters there when they stop
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started.append(p)
    line = p.stdout.readline().strip()  # "listening on HOST:PORT"
    if not line.startswith("listening on "):
        raise RuntimeError(f"{argv[0]}: unexpected first line {line!r}")
    return p, int(line.rsplit(":", 1)[1])


def stop(p):
    """Ends p (SIGTERM, then SIGKILL after 10 s); its exit status and what it printed on stderr."""
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    try:
        _, err = p.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
    return p.returncode, err or ""


def relays_failed(stderr):
    """The proxy's count of relays that ended in an error ('relays: N, ..., F failed;')."""
    m = re.search(r"relays: \d+,.* (\d+) failed;", stderr)
    return int(m.group(1)) if m else None


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def sockets_of(pid):
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return n


def wait_sockets(pid, at_most, deadline=10.0):
    """Until the process holds at most `at_most` sockets (its connections are gone)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if sockets_of(pid) <= at_most:
            return True
        time.sleep(0.02)
    return False


def pattern(n, seed):
    block = bytes((seed * 131 + i * 7) & 0xFF for i in range(65536))
    return (block * (n // len(block) + 1))[:n]


def exchange(port, total, seed):
    """Sends `total` bytes and reads the echo back concurrently; True when every byte matched."""
    data = pattern(total, seed)
    with socket.create_connection((HOST, port), timeout=30) as s:
        sender = threading.Thread(target=s.sendall, args=(data,))
        sender.start()
        got = bytearray()
        while len(got) < total:
            chunk = s.recv(min(1 << 20, total - len(got)))
            if not chunk:
                break
            got += chunk
        sender.join()
        s.shutdown(socket.SHUT_WR)
        tail = s.recv(1)  # the proxy forwards our FIN, the echo server answers with its own
        return bytes(got) == data and tail == b""


def idle_case(proxy_argv, echo_port, n):
    proxy, port = start(proxy_argv)
    try:
        base_sockets = sockets_of(proxy.pid)
        for i in range(8):  # warm-up: the pools, the ring's lazy state
            exchange(port, 4 * KIB, i)
        wait_sockets(proxy.pid, base_sockets)
        before = rss_kib(proxy.pid)
        conns = []
        ok = True
        for i in range(n):
            s = socket.create_connection((HOST, port), timeout=30)
            conns.append(s)
            msg = b"hello %d\n" % i
            s.sendall(msg)
            got = b""
            while len(got) < len(msg):
                chunk = s.recv(len(msg) - len(got))
                if not chunk:
                    break
                got += chunk
            ok &= got == msg
        time.sleep(0.2)  # every relay back to waiting
        during = rss_kib(proxy.pid)
        per = (during - before) * KIB / n
        check(ok, f"{n} connections each echoed a line through the proxy")
        check(per <= 8 * KIB,
              f"{n} idle relayed connections: {per / KIB:.1f} KiB of proxy RSS each "
              f"({before} KiB before, {during} KiB with them; bound 8 KiB)")
        for s in conns:
            s.close()
        check(wait_sockets(proxy.pid, base_sockets), "the proxy closed every relayed connection")
        time.sleep(0.2)
        after = rss_kib(proxy.pid)
        check(after - before <= 16 * KIB,
              f"after the {n} connections closed: proxy RSS {after} KiB, {before} KiB before them "
              f"(bound: + 16 MiB)")
        rc, err = stop(proxy)
        check(rc == 0, "SIGTERM: the proxy exits 0")
        check(relays_failed(err) == 0, f"no relay failed (closing {n} at once needs no pipe each): "
              f"{relays_failed(err)} failed")
    finally:
        stop(proxy)


def burst_case(proxy_argv, echo_port, k, mib):
    proxy, port = start(proxy_argv)
    try:
        base_sockets = sockets_of(proxy.pid)
        check(exchange(port, mib * MIB, 99), f"warm-up: {mib} MiB each way, every byte verified")
        wait_sockets(proxy.pid, base_sockets)
        warm = rss_kib(proxy.pid)
        verdicts = [False] * k
        peak = [warm]

        def one(i):
            verdicts[i] = exchange(port, mib * MIB, i)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(k)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            peak[0] = max(peak[0], rss_kib(proxy.pid))
            time.sleep(0.01)
        for t in threads:
            t.join()
        check(all(verdicts), f"burst: {k} connections at once, {mib} MiB each way, every byte verified")
        check(wait_sockets(proxy.pid, base_sockets), "the proxy closed every relayed connection")
        time.sleep(0.1)
        after = rss_kib(proxy.pid)
        check(after - warm <= 16 * KIB,
              f"after the burst: proxy RSS {after} KiB, warm-up {warm} KiB, peak seen {peak[0]} KiB "
              f"(bound: warm-up + 16 MiB)")
        check(stop(proxy)[0] == 0, "SIGTERM: the proxy exits 0")
    finally:
        stop(proxy)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("proxy")
    ap.add_argument("echo")
    ap.add_argument("--idle", type=int, default=4000)
    ap.add_argument("--burst", type=int, default=16)
    ap.add_argument("--mib", type=int, default=16)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 3 * args.idle + 256
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(need, soft)), hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < need:
        args.idle = max(100, (resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 256) // 3)
        note(f"descriptor limit: {args.idle} idle connections")
    echo, echo_port = start([args.echo, "--listen", f"{HOST}:0", "--grace", "1"])
    try:
        for path in ("--copy", "--splice"):
            note(f"--- ringnet-proxy {path}")
            argv = [args.proxy, "--listen", f"{HOST}:0", "--upstream", f"{HOST}:{echo_port}",
                    path, "--grace", "1"]
            idle_case(argv, echo_port, args.idle)
            burst_case(argv, echo_port, args.burst, args.mib)
    finally:
        for p in reversed(started):
            stop(p)
    note(f"{results['passed']} passed, {results['failed']} failed")
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
