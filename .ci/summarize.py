#!/usr/bin/env python3
"""Prints one honest line, 'N passed, N failed', from meson test logs (testlog JSON lines).

Counting unit: doctest test cases where a binary printed doctest's summary, otherwise the meson
test itself. A test that crashed or timed out after its summary counts as one more failure. A run
with --no-exitcode (the fault-injection suite, where injected errors fail ordinary checks by
design and only its invariants, which end the process with an error, count) is one test, judged
by its exit.
Usage: summarize.py LOG.json [LOG.json ...]   (exit 1 if anything failed or no result exists)
"""
import json
import re
import sys

SUMMARY = re.compile(r"\[doctest\] test cases:\s*(\d+)\s*\|\s*(\d+) passed\s*\|\s*(\d+) failed\s*\|\s*(\d+) skipped")
GOOD = {"OK", "EXPECTEDFAIL"}

passed = failed = skipped = 0
records = 0
for path in sys.argv[1:]:
    try:
        lines = open(path).read().splitlines()
    except OSError:
        print(f"ci: missing test log {path} (counted as 1 failure)")
        failed += 1
        continue
    for line in lines:
        if not line.strip():
            continue
        r = json.loads(line)
        records += 1
        res = r.get("result", "ERROR")
        if res == "SKIP":
            skipped += 1
            continue
        last = None
        for last in SUMMARY.finditer(r.get("stdout") or ""):
            pass
        if any(a.startswith("--no-exitcode") for a in r.get("command") or []):
            last = None
        if last:
            p, f = int(last.group(2)), int(last.group(3))
            if res not in GOOD and f == 0:  # crashed after doctest's summary (e.g. a leak report)
                f = 1
            passed, failed = passed + p, failed + f
        elif res in GOOD:
            passed += 1
        else:
            failed += 1
        if res not in GOOD:
            print(f"ci: {path}: {r.get('name')}: {res} (exit {r.get('returncode')})")
if records == 0:
    print("ci: no test results at all (counted as 1 failure)")
    failed += 1
if skipped:
    print(f"ci: {skipped} tests skipped")
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
