#!/usr/bin/env python3
"""Real clients nobody here wrote, through ringnet-proxy, on both data paths (--copy, --splice):

  half-close  nc -N and socat send a request and shut down their write side; the upstream (socat
              running `wc -c; seq`, or a Python server when socat is missing) answers only after
              that EOF; the client must get the whole answer.
  iperf3      iperf3 through the proxy, both directions (-R too), 2 s each.
  curl        curl fetches a 4 MiB file from `python3 -m http.server` through the proxy; SHA-256
              compared.

Then SIGTERM with a connection still open: the proxy must exit 0 within its grace period.

usage: proxy_clients.py PATH/TO/ringnet-proxy
Exit 0 when every case that could run passed, 1 on a failure, 77 (skip) when none of the tools
(socat, nc, iperf3, curl) is installed. Loopback only; every process started here is ended here,
by its own PID (or its own process group).
"""
import hashlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from check_log import check, note, results

HOST = "127.0.0.1"
GRACE = 2.0

started = []  # every Popen we started, ended in cleanup()


def start(argv, **kw):
    # Its own session, so that cleanup can end it together with any child it forks (socat's
    # SYSTEM shells) through its own process group, never anything else.
    p = subprocess.Popen(argv, start_new_session=True, **kw)
    started.append(p)
    return p


def end(p):
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def cleanup():
    for p in reversed(started):
        end(p)


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_listening(port, deadline=10.0):
    """Until something listens on `port` (read from /proc, so no probe connection disturbs it)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < deadline:
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                with open(table) as f:
                    next(f)
                    for row in f:
                        local, state = row.split()[1], row.split()[3]
                        if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                            return True
            except OSError:
                pass
        time.sleep(0.05)
    return False


def read_line(pipe, timeout):
    """The first line a child prints, or '' after `timeout` seconds."""
    ready, _, _ = select.select([pipe], [], [], timeout)
    return pipe.readline().decode(errors="replace") if ready else ""


class Proxy:
    def __init__(self, exe, upstream_port, mode):
        self.mode = mode
        self.p = start([exe, "--listen", f"{HOST}:0", "--upstream", f"{HOST}:{upstream_port}",
                        f"--{mode}", "--grace", str(GRACE), "--idle-timeout", "30"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line = read_line(self.p.stdout, 10)
        if not line.startswith("listening on "):
            raise RuntimeError(f"ringnet-proxy said {line!r}")
        self.port = int(line.rsplit(":", 1)[1])

    def stop(self):
        """SIGTERM; returns (exit code, seconds it took, its stderr)."""
        t0 = time.monotonic()
        self.p.send_signal(signal.SIGTERM)
        try:
            rc = self.p.wait(timeout=GRACE + 10)
        except subprocess.TimeoutExpired:
            rc = None
        took = time.monotonic() - t0
        err = self.p.stderr.read().decode(errors="replace") if rc is not None else ""
        return rc, took, err


# ---- half-close ----------------------------------------------------------------------------

def reply_for(request):
    return f"{len(request)}\n".encode() + "".join(f"{i}\n" for i in range(1, 100001)).encode()


def python_halfclose_upstream(port):
    """Reads to EOF, then answers like `wc -c; seq 1 100000` would, then closes."""
    srv = socket.create_server((HOST, port))
    srv.settimeout(60)

    def serve():
        with srv:
            while True:
                try:
                    c, _ = srv.accept()
                except OSError:
                    return
                with c:
                    c.settimeout(30)
                    data = b""
                    while chunk := c.recv(65536):
                        data += chunk
                    c.sendall(reply_for(data))
    threading.Thread(target=serve, daemon=True).start()
    return srv


def case_halfclose(exe, mode, tools):
    clients = [t for t in ("nc", "socat") if tools[t]]
    if not clients:
        note("note: neither nc nor socat installed: half-close case skipped")
        return
    port = free_port()
    srv = None
    if tools["socat"]:
        # wc reads the request up to the EOF the proxy forwarded, then the answer goes back.
        start(["socat", "-T", "30", f"TCP-LISTEN:{port},bind={HOST},reuseaddr,fork",
               "SYSTEM:wc -c; seq 1 100000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        upstream = "socat SYSTEM:'wc -c; seq 1 100000'"
    else:
        srv = python_halfclose_upstream(port)
        upstream = "a Python upstream"
    if not wait_listening(port):
        check(False, f"[{mode}] half-close: upstream did not come up")
        return
    proxy = Proxy(exe, port, mode)
    request = b"".join(b"line %d of the request\n" % i for i in range(20000))  # ~470 KB
    for client in clients:
        argv = (["nc", "-N", HOST, str(proxy.port)] if client == "nc"
                else ["socat", "-t", "10", "-T", "30", "-", f"TCP:{HOST}:{proxy.port}"])
        t0 = time.monotonic()
        try:
            out = subprocess.run(argv, input=request, capture_output=True, timeout=60).stdout
        except subprocess.TimeoutExpired:
            out = b"(timed out)"
        want = reply_for(request)
        check(out == want, f"[{mode}] half-close: {client} sent {len(request)} bytes + FIN via "
              f"ringnet-proxy to {upstream}, got {len(out)} of {len(want)} answer bytes, "
              f"intact: {out == want} ({time.monotonic() - t0:.2f} s)")
    proxy_stop(proxy, "half-close")
    if srv:
        srv.close()


# ---- iperf3 --------------------------------------------------------------------------------

def case_iperf3(exe, mode, tools):
    if not tools["iperf3"]:
        note("note: iperf3 not installed: iperf3 case skipped")
        return
    port = free_port()
    start(["iperf3", "-s", "-B", HOST, "-p", str(port)],
          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not wait_listening(port):
        check(False, f"[{mode}] iperf3: server did not come up")
        return
    proxy = Proxy(exe, port, mode)
    for reverse in (False, True):
        argv = ["iperf3", "-c", HOST, "-p", str(proxy.port), "-t", "2", "-J"] + (["-R"] if reverse else [])
        label = "iperf3 -R (upstream → client)" if reverse else "iperf3 (client → upstream)"
        try:
            r = subprocess.run(argv, capture_output=True, timeout=60)
            report = json.loads(r.stdout or b"{}")
        except (subprocess.TimeoutExpired, json.JSONDecodeError) as e:
            check(False, f"[{mode}] {label}: {e}")
            continue
        received = report.get("end", {}).get("sum_received", {})
        gbps = received.get("bits_per_second", 0) / 1e9
        ok = r.returncode == 0 and "error" not in report and received.get("bytes", 0) > 0
        check(ok, f"[{mode}] {label}: {gbps:.2f} Gbit/s, {received.get('bytes', 0) / 2**20:.0f} MiB"
              + ("" if ok else f" (exit {r.returncode}, {report.get('error', r.stderr[-300:])})"))
    proxy_stop(proxy, "iperf3")


# ---- curl ----------------------------------------------------------------------------------

def case_curl(exe, mode, tools):
    if not tools["curl"]:
        note("note: curl not installed: curl case skipped")
        return
    with tempfile.TemporaryDirectory() as root:
        blob = os.urandom(4 << 20)
        with open(os.path.join(root, "blob.bin"), "wb") as f:
            f.write(blob)
        http = start([sys.executable, "-u", "-m", "http.server", "0", "--bind", HOST,
                      "--directory", root], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        line = read_line(http.stdout, 10)  # "Serving HTTP on 127.0.0.1 port N (...) ..."
        try:
            port = int(line.split(" port ")[1].split()[0])
        except (IndexError, ValueError):
            check(False, f"[{mode}] curl: http.server said {line!r}")
            return
        proxy = Proxy(exe, port, mode)
        out = os.path.join(root, "got.bin")
        for attempt in range(3):  # three connections in a row through the same proxy
            try:
                r = subprocess.run(["curl", "-sS", "--fail", "--max-time", "30", "-o", out,
                                    f"http://{HOST}:{proxy.port}/blob.bin"],
                                   capture_output=True, timeout=60)
                with open(out, "rb") as f:
                    got = f.read()
                os.unlink(out)
            except (subprocess.TimeoutExpired, OSError) as e:
                check(False, f"[{mode}] curl: {e}")
                continue
            ok = r.returncode == 0 and hashlib.sha256(got).digest() == hashlib.sha256(blob).digest()
            check(ok, f"[{mode}] curl #{attempt + 1}: {len(got)} of {len(blob)} bytes from "
                  f"python3 -m http.server, sha256 {'matches' if ok else 'DIFFERS'}"
                  + ("" if r.returncode == 0 else f" (curl exit {r.returncode}: {r.stderr.decode()[-200:]})"))
        proxy_stop(proxy, "curl", hold_open=True)
        end(http)


# ---- shutdown ------------------------------------------------------------------------------

def proxy_stop(proxy, case, hold_open=False):
    """SIGTERM the proxy; with hold_open, an idle connection stays open through it, so the
    graceful shutdown has to end it within the grace period."""
    held = None
    if hold_open:
        held = socket.create_connection((HOST, proxy.port), timeout=5)
        time.sleep(0.2)  # accepted and relayed
    rc, took, err = proxy.stop()
    summary = err.strip().splitlines()[-1] if err.strip() else "(no summary)"
    check(rc == 0 and took < GRACE + 3,
          f"[{proxy.mode}] {case}: SIGTERM → exit {rc} in {took:.2f} s"
          + (" with an idle connection open" if held else "") + f"; {summary}")
    if held:
        held.close()


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    exe = sys.argv[1]
    tools = {t: shutil.which(t) for t in ("socat", "nc", "iperf3", "curl")}
    if not any(tools.values()):
        note("note: none of socat, nc, iperf3, curl is installed: skipped")
        return 77
    try:
        for mode in ("copy", "splice"):
            case_halfclose(exe, mode, tools)
            case_iperf3(exe, mode, tools)
            case_curl(exe, mode, tools)
    except Exception as e:  # a broken harness is a failure, not a crash that leaks processes
        check(False, f"harness: {type(e).__name__}: {e}")
    finally:
        cleanup()
    print(f"{results['passed']} passed, {results['failed']} failed", flush=True)
    return 0 if results["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
