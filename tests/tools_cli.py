#!/usr/bin/env python3
"""The examples behave like Unix tools: --help (usage and every option with its default, on
stdout, exit 0), --version, bad arguments on stderr with exit 2, the 'listening on HOST:PORT'
line, SIGTERM -> exit 0; and their limit flags take effect (--max-connections, --idle-timeout,
--first-byte-timeout).

usage: tools_cli.py PATH/TO/ringnet-echo PATH/TO/ringnet-proxy PROJECT_VERSION
"""
import re
import signal
import socket
import subprocess
import sys
import time

failures = []


def check(ok, what):
    print(("ok    " if ok else "FAIL  ") + what)
    if not ok:
        failures.append(what)


def run(argv, timeout=10):
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def tool(path, name, version, options, required, bad_values):
    h = run([path, "--help"])
    check(h.returncode == 0 and h.stderr == "", "%s --help exits 0, nothing on stderr" % name)
    check(h.stdout.startswith("usage: %s" % name), "%s --help starts with its usage" % name)
    for opt in options + ["--help", "--version"]:
        check(re.search(r"^\s+(-h, )?%s\b" % re.escape(opt), h.stdout, re.M) is not None,
              "%s --help lists %s" % (name, opt))
    check("(default" in h.stdout and "exit status" in h.stdout, "%s --help gives defaults and exit status" % name)
    check(run([path, "-h"]).stdout == h.stdout, "%s -h is --help" % name)
    v = run([path, "--version"])
    check(v.returncode == 0 and v.stdout.startswith("%s (ringnet) %s" % (name, version)),
          "%s --version says %s (got %r)" % (name, version, v.stdout.strip()))
    for argv, why in [(["--bogus"], "unknown argument"), ([], "missing " + required[0])] + bad_values:
        r = run([path] + argv)
        check(r.returncode == 2 and r.stdout == "" and r.stderr.startswith("error: "),
              "%s %s: exit 2, message on stderr (%s; got %d %r)" % (name, " ".join(argv), why, r.returncode,
                                                                    r.stderr.splitlines()[:1]))
    # the interface others depend on: port 0 prints the real one; SIGTERM exits 0
    extra = ["--upstream", "127.0.0.1:9"] if name == "ringnet-proxy" else []
    p = subprocess.Popen([path, "--listen", "127.0.0.1:0"] + extra, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        check(re.fullmatch(r"listening on 127\.0\.0\.1:[1-9][0-9]*\n", line) is not None,
              "%s prints 'listening on 127.0.0.1:PORT' (got %r)" % (name, line))
        p.send_signal(signal.SIGTERM)
        rc = p.wait(timeout=15)
        check(rc == 0, "%s exits 0 on SIGTERM (got %d)" % (name, rc))
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


class Running:
    """A tool started with `argv` on 127.0.0.1:0; `port` is where it says it listens."""

    def __init__(self, argv):
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.p.stdout.readline()
        m = re.fullmatch(r"listening on 127\.0\.0\.1:([0-9]+)\n", line)
        self.port = int(m.group(1)) if m else 0

    def stop(self):
        """SIGTERM; (exit code, stderr)."""
        self.p.send_signal(signal.SIGTERM)
        try:
            _, err = self.p.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.p.kill()
            _, err = self.p.communicate()
        return self.p.returncode, err


def echoed(c, timeout):
    """Sends one byte on c; whether it comes back within `timeout` seconds."""
    c.settimeout(timeout)
    try:
        c.sendall(b"x")
        return c.recv(1) == b"x"
    except OSError:
        return False


def ended_after(c, timeout):
    """Seconds until c reads EOF or a reset (None if neither came within `timeout`)."""
    t0 = time.monotonic()
    c.settimeout(timeout)
    try:
        while c.recv(4096):
            pass
    except socket.timeout:
        return None
    except OSError:
        pass
    return time.monotonic() - t0


def limits(echo, proxy):
    """The limit flags take effect (the server's own tests check the limits in depth)."""
    for name, argv in (("ringnet-echo", [echo]), ("ringnet-proxy", [proxy])):
        upstream = Running([echo, "--listen", "127.0.0.1:0"]) if name == "ringnet-proxy" else None
        extra = ["--upstream", "127.0.0.1:%d" % upstream.port] if upstream else []
        t = Running(argv + ["--listen", "127.0.0.1:0", "--max-connections", "2", "--grace", "1"] + extra)
        conns = [socket.create_connection(("127.0.0.1", t.port), timeout=5) for _ in range(3)]
        first_two = echoed(conns[0], 5) and echoed(conns[1], 5)
        third_waits = not echoed(conns[2], 0.5)
        conns[0].close()
        third_later = conns[2].recv(1) == b"x" if third_waits else False  # its byte was sent above
        for c in conns[1:]:
            c.close()
        rc, err = t.stop()
        check(first_two and third_waits and third_later and rc == 0 and "2 at most at once" in err,
              "%s --max-connections 2: a third client waits until one ends (%s %s %s, exit %d; %s)"
              % (name, first_two, third_waits, third_later, rc, err.strip().splitlines()[-1:]))
        if upstream:
            upstream.stop()
    for flag, active, counted in (("--idle-timeout", True, "1 idle timeout"),
                                  ("--first-byte-timeout", False, "1 first byte timeout")):
        t = Running([echo, "--listen", "127.0.0.1:0", flag, "0.3", "--grace", "1"])
        c = socket.create_connection(("127.0.0.1", t.port), timeout=5)
        ok = echoed(c, 5) if active else True
        took = ended_after(c, 5)
        c.close()
        rc, err = t.stop()
        check(ok and took is not None and 0.2 <= took < 2.0 and rc == 0 and counted in err,
              "ringnet-echo %s 0.3: the connection ends after %s s, counted (exit %d; %s)"
              % (flag, None if took is None else round(took, 2), rc, err.strip().splitlines()[-1:]))


def main():
    if len(sys.argv) != 4:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    echo, proxy, version = sys.argv[1:]
    tool(echo, "ringnet-echo", version,
         ["--listen", "--grace", "--threads", "--shutdown", "--max-connections", "--idle-timeout",
          "--first-byte-timeout"], ["--listen"],
         [(["--listen", "127.0.0.1:0", "--grace", "-1"], "negative grace"),
          (["--listen", "127.0.0.1:0", "--threads", "x"], "not a number"),
          (["--listen", "127.0.0.1:0", "--threads", "nan"], "nan"),
          (["--listen", "127.0.0.1:0", "--threads", "1.5"], "not whole"),
          (["--listen", "127.0.0.1:0", "--grace", "nan"], "nan"),
          (["--listen", "127.0.0.1:0", "--grace", "inf"], "inf"),
          (["--listen", "nowhere"], "bad address"),
          (["--listen", ":0"], "no host"),
          (["--listen", "localhost:65536"], "port out of range"),
          (["--listen", "[::1:0"], "unclosed bracket"),
          (["--listen", "127.0.0.1:0", "--shutdown", "maybe"], "bad choice"),
          (["--listen", "127.0.0.1:0", "--max-connections", "-1"], "negative limit"),
          (["--listen", "127.0.0.1:0", "--max-connections", "2.5"], "not whole"),
          (["--listen", "127.0.0.1:0", "--idle-timeout", "-3"], "negative timeout"),
          (["--listen", "127.0.0.1:0", "--idle-timeout", "inf"], "inf"),
          (["--listen", "127.0.0.1:0", "--first-byte-timeout", "nan"], "nan"),
          (["--listen", "127.0.0.1:0", "--first-byte-timeout"], "missing value")])
    tool(proxy, "ringnet-proxy", version,
         ["--listen", "--upstream", "--copy", "--splice", "--idle-timeout", "--grace", "--buffer",
          "--max-connections", "--first-byte-timeout", "--dns-server"],
         ["--listen"],
         [(["--listen", "127.0.0.1:0"], "missing --upstream"),
          (["--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:1", "--buffer", "0"], "buffer out of range"),
          (["--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:1", "--buffer", "nan"], "nan"),
          (["--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:1", "--buffer", "1.5"], "not whole"),
          (["--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:1", "--idle-timeout", "nan"], "nan"),
          (["--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:1", "--max-connections", "x"], "not a number"),
          (["--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:1", "--first-byte-timeout", "-1"],
           "negative timeout"),
          (["--listen", "127.0.0.1:0", "--upstream", ":80"], "no host"),
          (["--listen", "127.0.0.1:0", "--upstream", "up.test"], "no port"),
          (["--listen", "127.0.0.1:0", "--upstream", "up.test:http"], "port not a number"),
          (["--listen", "127.0.0.1:0", "--upstream", "::1:80"], "IPv6 without brackets"),
          (["--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:1", "--dns-server", "nowhere"], "not numeric"),
          (["--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:1", "--dns-server", "ns.test:53"], "a name"),
          (["--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:1", "--dns-server"], "missing value")])
    limits(echo, proxy)
    print("%d failed" % len(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
