#!/usr/bin/env python3
"""Soak: a randomized mix of concurrent clients against ringnet-echo or ringnet-proxy (in front of
a ringnet-echo) for a given time, checking what a server facing the internet must hold:

  * every byte of a well-behaved client comes back, in order, followed by a clean EOF;
  * connections the server must end (silent after connecting, floods that stall) end in time;
  * afterwards the server's descriptors and threads are back at their baseline and its resident
    memory near it; its counters add up to the connections made;
  * SIGTERM with connections still open: exit 0 within the grace period.

Client kinds (weights in KINDS): normal (a lifecycle of a random size, 1 B to 4 MiB), halfclose
(request, FIN, a pause, then read the whole answer), slow (reads in small pieces with pauses),
idle (quiet for a while below the idle timeout, then a normal exchange), rst (resets mid-stream),
vanish (connects and closes at once), silent (connects and sends nothing: the first-byte timeout
ends it), flood (sends without ever reading: the idle timeout and the drain cap end it).

usage: soak.py --echo PATH [--proxy PATH] [--target echo|proxy|both] [--seconds S]
               [--concurrency N] [--seed N] [--json FILE] [--splice | --paths copy|splice|both]
--seconds is per program: with --paths both the proxy runs half of it on each relay path.
Exit 0 when every check passed, 1 otherwise. Loopback only; every process started here is ended
here, by its own PID; every client and phase is bounded in time.
"""
import argparse
import asyncio
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import time

HOST = "127.0.0.1"
KIB, MIB = 1024, 1024 * 1024

# server limits the soak runs with (seconds)
IDLE_TIMEOUT = 3.0
FIRST_BYTE_TIMEOUT = 1.5
GRACE = 3.0
MAX_CONNECTIONS = 256

KINDS = {"normal": 40, "halfclose": 10, "slow": 8, "idle": 8, "rst": 10, "vanish": 8, "silent": 6,
         "flood": 4}
# kinds whose bytes must all come back, then a clean EOF
WELL_BEHAVED = {"normal", "halfclose", "slow", "idle"}


def note(msg):
    print(msg, flush=True)


def payload(n, seed):
    """n bytes that depend on seed and position (a shifted or lost byte shows)."""
    rnd = random.Random(seed)
    block = rnd.randbytes(min(n, 64 * KIB) or 1)
    reps = n // len(block) + 1
    return (block * reps)[:n]


def random_size(rnd):
    r = rnd.random()
    if r < 0.5:
        return rnd.randint(1, 4 * KIB)
    if r < 0.85:
        return rnd.randint(4 * KIB, 256 * KIB)
    return rnd.randint(256 * KIB, 4 * MIB)


class Stats:
    def __init__(self):
        self.by_kind = {k: {"runs": 0, "ok": 0, "failed": 0} for k in KINDS}
        self.connections = 0   # connects that succeeded
        self.bytes_verified = 0
        self.failures = []     # descriptions, the first few kept

    def fail(self, kind, what):
        self.by_kind[kind]["failed"] += 1
        if len(self.failures) < 20:
            self.failures.append(f"{kind}: {what}")


async def open_conn(port, stats):
    r, w = await asyncio.wait_for(asyncio.open_connection(HOST, port, limit=1 * MIB), 30)
    stats.connections += 1
    return r, w


def reset_on_close(w):
    sock = w.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def read_to_eof(r, limit_s, piece=1 * MIB, pause=0.0):
    """Everything until EOF; raises on a reset or when it takes longer than limit_s."""
    got = bytearray()
    end = time.monotonic() + limit_s
    while True:
        left = end - time.monotonic()
        if left <= 0:
            raise TimeoutError("no EOF in time")
        chunk = await asyncio.wait_for(r.read(piece), left)
        if not chunk:
            return bytes(got)
        got += chunk
        if pause:
            await asyncio.sleep(pause)


async def exchange(port, stats, kind, rnd, piece=1 * MIB, pause=0.0, quiet_first=0.0):
    n = random_size(rnd)
    if kind == "slow":
        n = min(n, 256 * KIB)
    data = payload(n, rnd.random())
    r, w = await open_conn(port, stats)
    try:
        if quiet_first:  # a first exchange in time, then quiet (below the idle timeout)
            w.write(b"hi")
            if await asyncio.wait_for(r.readexactly(2), 30) != b"hi":
                stats.fail(kind, "the first exchange came back wrong")
                return False
            await asyncio.sleep(quiet_first)
        read_task = asyncio.ensure_future(read_to_eof(r, 60, piece, pause))
        w.write(data)
        await asyncio.wait_for(w.drain(), 60)
        w.write_eof()
        back = await read_task
        if back != data:
            stats.fail(kind, f"{n} bytes sent, {len(back)} back, "
                             f"{'same' if data.startswith(back) else 'different'} prefix")
            return False
        stats.bytes_verified += n
        return True
    finally:
        w.close()


async def run_kind(kind, port, stats, rnd):
    if kind == "normal":
        return await exchange(port, stats, kind, rnd)
    if kind == "halfclose":
        # the whole request and our FIN first, then a pause before reading the answer
        n = random_size(rnd)
        data = payload(n, rnd.random())
        r, w = await open_conn(port, stats)
        try:
            w.write(data)
            w.write_eof()
            if n <= 256 * KIB:  # both directions' buffers hold it: the answer waits for us
                await asyncio.wait_for(w.drain(), 60)
                await asyncio.sleep(rnd.uniform(0.05, 0.5))
                back = await read_to_eof(r, 60)
            else:
                back = await read_to_eof(r, 60)
                await asyncio.wait_for(w.drain(), 60)
            if back != data:
                stats.fail(kind, f"{n} bytes sent, {len(back)} back")
                return False
            stats.bytes_verified += n
            return True
        finally:
            w.close()
    if kind == "slow":
        return await exchange(port, stats, kind, rnd, piece=rnd.choice([512, 2048, 8192]), pause=0.002)
    if kind == "idle":
        return await exchange(port, stats, kind, rnd, quiet_first=rnd.uniform(0.2, IDLE_TIMEOUT * 0.6))
    if kind == "rst":
        n = rnd.randint(64 * KIB, 2 * MIB)
        r, w = await open_conn(port, stats)
        try:
            w.write(payload(n, rnd.random()))
            try:
                await asyncio.wait_for(r.read(rnd.randint(1, 64 * KIB)), 5)
            except (asyncio.TimeoutError, ConnectionError):
                pass
            reset_on_close(w)
        finally:
            w.close()
        return True
    if kind == "vanish":
        r, w = await open_conn(port, stats)
        w.close()
        return True
    if kind == "silent":
        r, w = await open_conn(port, stats)
        t0 = time.monotonic()
        try:
            await read_to_eof(r, FIRST_BYTE_TIMEOUT + 5)
        except ConnectionError:
            pass  # through the proxy the relay is stopped: a reset
        except (TimeoutError, asyncio.TimeoutError):
            stats.fail(kind, "a silent connection was not ended by the first-byte timeout")
            return False
        finally:
            w.close()
        waited = time.monotonic() - t0
        if waited < FIRST_BYTE_TIMEOUT * 0.8:
            stats.fail(kind, f"ended after {waited:.2f} s, before the first-byte timeout")
            return False
        return True
    if kind == "flood":
        # never reads: the echo stalls on us, no byte moves, the idle timeout ends it (the drain
        # then meets more data than its cap, or our FIN never comes: a reset)
        r, w = await open_conn(port, stats)
        chunk = b"f" * (256 * KIB)
        t0 = time.monotonic()
        try:
            while time.monotonic() - t0 < IDLE_TIMEOUT + 20:
                w.write(chunk)
                await asyncio.wait_for(w.drain(), IDLE_TIMEOUT + 20)
        except (ConnectionError, asyncio.TimeoutError, OSError):
            pass
        finally:
            reset_on_close(w)
            w.close()
        if time.monotonic() - t0 >= IDLE_TIMEOUT + 20:
            stats.fail(kind, "a stalled flood was never ended")
            return False
        return True
    raise ValueError(kind)


async def worker(port, stats, rnd, until):
    kinds, weights = zip(*KINDS.items())
    while time.monotonic() < until:
        kind = rnd.choices(kinds, weights)[0]
        stats.by_kind[kind]["runs"] += 1
        try:
            ok = await run_kind(kind, port, stats, rnd)
        except (ConnectionError, OSError, asyncio.TimeoutError, TimeoutError, asyncio.IncompleteReadError) as e:
            ok = kind not in WELL_BEHAVED
            if not ok:
                stats.fail(kind, f"{type(e).__name__}: {e}")
        if ok:
            stats.by_kind[kind]["ok"] += 1


# ---------------------------------------------------------------------------------- the server
class Server:
    def __init__(self, argv):
        self.argv = argv
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.p.stdout.readline().strip()
        if not line.startswith("listening on "):
            self.p.kill()
            raise RuntimeError(f"{argv[0]}: unexpected first line {line!r}")
        self.port = int(line.rsplit(":", 1)[1])
        self.stderr = ""

    def fds(self):
        return len(os.listdir(f"/proc/{self.p.pid}/fd"))

    def threads(self):
        return len(os.listdir(f"/proc/{self.p.pid}/task"))

    def rss_kib(self):
        with open(f"/proc/{self.p.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def terminate(self, timeout):
        t0 = time.monotonic()
        self.p.send_signal(signal.SIGTERM)
        try:
            _, self.stderr = self.p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            _, self.stderr = self.p.communicate()
        return self.p.returncode, time.monotonic() - t0

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.communicate()


def counters_of(stderr, prefix):
    """The counters the tool prints at exit: {"accepted": N, "clean": N, ...}."""
    for line in stderr.splitlines():
        if line.startswith(prefix):
            out = {}
            for part in line.split("connections:", 1)[1].split(";")[0].split(","):
                num, _, name = part.strip().partition(" ")
                out[name.strip().replace(" ", "_")] = int(num)
            return out
    return None


async def wait_until(pred, limit):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if pred():
            return True
        await asyncio.sleep(0.05)
    return pred()


async def soak(args, target, path, seconds, checks):
    limits = ["--idle-timeout", str(IDLE_TIMEOUT), "--first-byte-timeout", str(FIRST_BYTE_TIMEOUT),
              "--max-connections", str(MAX_CONNECTIONS), "--grace", str(GRACE)]
    echo = Server([args.echo, "--listen", f"{HOST}:0"] +
                  (limits if target == "echo" else ["--grace", str(GRACE)]))
    servers = [echo]
    front = echo
    if target == "proxy":
        front = Server([args.proxy, "--listen", f"{HOST}:0", "--upstream", f"{HOST}:{echo.port}",
                        "--" + path, "--idle-timeout", str(IDLE_TIMEOUT)] +
                       limits[2:])
        servers.append(front)
    name = f"ringnet-proxy ({path})" if target == "proxy" else "ringnet-echo"
    stats = Stats()
    result = {"target": name, "seconds": seconds, "concurrency": args.concurrency}
    try:
        # warm-up, then the baseline
        rnd = random.Random(args.seed)
        for _ in range(20):
            await exchange(front.port, stats, "normal", rnd)
        warm_connections = stats.connections
        stats = Stats()
        await asyncio.sleep(0.5)
        base = {"fds": front.fds(), "threads": front.threads(), "rss_kib": front.rss_kib()}
        note(f"--- {name}: {args.concurrency} clients for {seconds} s; baseline {base}")
        t0 = time.monotonic()
        until = t0 + seconds
        rss_peak = base["rss_kib"]

        async def sample():
            nonlocal rss_peak
            while time.monotonic() < until:
                rss_peak = max(rss_peak, front.rss_kib())
                await asyncio.sleep(0.25)

        await asyncio.gather(sample(), *(worker(front.port, stats, random.Random(args.seed * 1000 + i), until)
                                         for i in range(args.concurrency)))
        elapsed = time.monotonic() - t0
        # afterwards: everything back
        fds_back = await wait_until(lambda: front.fds() <= base["fds"], 15)
        threads_back = await wait_until(lambda: front.threads() <= base["threads"], 15)
        await asyncio.sleep(0.2)
        end = {"fds": front.fds(), "threads": front.threads(), "rss_kib": front.rss_kib()}
        checks.append((not stats.failures, f"{name}: every well-behaved client got every byte back, "
                       "every connection the server had to end was ended in time"
                       + ("" if not stats.failures else " — " + "; ".join(stats.failures[:5]))))
        checks.append((fds_back, f"{name}: descriptors back to the baseline ({base['fds']} → {end['fds']})"))
        checks.append((threads_back, f"{name}: threads back to the baseline ({base['threads']} → {end['threads']})"))
        checks.append((end["rss_kib"] <= base["rss_kib"] + 16 * KIB,
                       f"{name}: RSS {base['rss_kib']} KiB → peak {rss_peak} → {end['rss_kib']} KiB "
                       "(bound: baseline + 16 MiB)"))
        # SIGTERM with connections still open: exit 0 within the grace period
        held = []
        for _ in range(8):
            held.append(await open_conn(front.port, stats))
        for r, w in held[:4]:
            w.write(b"x")
        await asyncio.sleep(0.2)
        rc, took = await asyncio.get_running_loop().run_in_executor(None, front.terminate, GRACE + 10)
        checks.append((rc == 0 and took <= GRACE + 1.0,
                       f"{name}: SIGTERM with 8 connections open: exit {rc} after {took:.2f} s (grace {GRACE} s)"))
        for r, w in held:
            w.close()
        counters = None
        counters = counters_of(front.stderr, name.split(" ")[0] + ":")  # the program's name
        made = warm_connections + stats.connections
        if counters is None:
            checks.append((False, f"{name}: no counters on stderr: {front.stderr.strip()[-300:]}"))
        else:
            parts = sum(v for k, v in counters.items() if k != "accepted")
            checks.append((counters.get("accepted") == made and parts == counters.get("accepted"),
                           f"{name}: counters add up: {made} connections made, {counters}"))
        result.update({
            "elapsed_s": round(elapsed, 1),
            "connections": stats.connections,
            "bytes_verified": stats.bytes_verified,
            "by_kind": stats.by_kind,
            "baseline": base, "end": end, "rss_peak_kib": rss_peak,
            "sigterm_exit": rc, "sigterm_s": round(took, 2),
            "counters": counters,
        })
        note(f"{name}: {stats.connections} connections in {elapsed:.0f} s, "
             f"{stats.bytes_verified / MIB:.1f} MiB verified; by kind: " +
             ", ".join(f"{k} {v['ok']}/{v['runs']}" for k, v in stats.by_kind.items()))
    finally:
        for s in servers:
            if s.p.poll() is None:
                s.terminate(GRACE + 5)
            s.kill()
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--echo", required=True, help="ringnet-echo binary")
    ap.add_argument("--proxy", help="ringnet-proxy binary (for --target proxy or both)")
    ap.add_argument("--target", choices=["echo", "proxy", "both"], default="both")
    ap.add_argument("--splice", action="store_true", help="the proxy relays with splice (--paths splice)")
    ap.add_argument("--paths", choices=["copy", "splice", "both"], default=None,
                    help="the proxy's relay paths (default copy); both: half of --seconds each")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--concurrency", type=int, default=48)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    if args.seconds <= 0 or args.concurrency < 1:
        ap.error("--seconds > 0 and --concurrency >= 1")
    if args.splice and args.paths not in (None, "splice"):
        ap.error("--splice and --paths " + args.paths + " contradict each other")
    paths = {"copy": ["copy"], "splice": ["splice"], "both": ["copy", "splice"]}[
        args.paths or ("splice" if args.splice else "copy")]
    targets = ["echo", "proxy"] if args.target == "both" else [args.target]
    if "proxy" in targets and not args.proxy:
        ap.error("--proxy is required for the proxy target")
    runs = [(t, p, args.seconds / (len(paths) if t == "proxy" else 1))
            for t in targets for p in (paths if t == "proxy" else ["copy"])]
    checks, results = [], []
    for t, p, seconds in runs:
        results.append(asyncio.run(soak(args, t, p, seconds, checks)))
    for ok, what in checks:
        note(("ok:   " if ok else "FAIL: ") + what)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "checks": [{"ok": ok, "what": w} for ok, w in checks]}, f, indent=1)
    failed = sum(1 for ok, _ in checks if not ok)
    note(f"{len(checks) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
