"""What the Python test drivers print: one line per check, and the tally behind their last line."""

results = {"passed": 0, "failed": 0}


def note(msg):
    print(msg, flush=True)


def check(ok, what):
    results["passed" if ok else "failed"] += 1
    note(("ok:   " if ok else "FAIL: ") + what)
    return ok
