#!/usr/bin/env python3
"""Compares two benchmark runs (JSON from benchmarks/run.py), to follow a change across commits.

    python3 benchmarks/compare.py OLD.json NEW.json

Per workload and peer present in both: the ratio to the reference (CPU per operation, or per GB
for bulk/relay, and the rate) in each run, and how it moved. Ratios to the reference taken in the
same run cancel most of what differs between two machines or two days; the raw figures do not.
A change whose medians each lie inside the other run's per-round range is marked "~" (noise).
For bulk, the proxies' peak and end RSS too (MiB, raw), when either run measured them.
Exit status 0, or 2 when a file cannot be read, is not a run's JSON, or the runs share no workload.
"""

import json
import sys

# (label, median key, per-round list key) for echo and for proxy workloads
ECHO_KEYS = [("CPU/op x", "cpu_per_op_ratio_to_ref", "cpu_per_op_ratios"),
             ("ops/s x", "ops_per_sec_ratio_to_ref", "ops_per_sec_ratios")]
PROXY_KEYS = [("CPU/GB x", "cpu_per_gb_ratio_to_ref", "cpu_per_gb_ratios"),
              ("GB/s x", "gbytes_per_sec_ratio_to_ref", "gbytes_per_sec_ratios")]
# bulk only, absent from runs before they were measured: (label, summary key prefix) in KiB,
# with _median, _min and _max
RSS_KEYS = [("peak RSS", "rss_peak_kib"), ("end RSS", "rss_end_kib")]


def load(path):
    with open(path) as f:
        return json.load(f)


def spread(s, key):
    rounds = s.get(key) or []
    return (min(rounds), max(rounds)) if rounds else (None, None)


def verdict(old, new, old_range, new_range):
    if old is None or new is None or old == 0:
        return "-"
    change = (new - old) / old * 100
    # within noise: each median lies inside the other run's per-round range
    inside = all(r[0] is not None and r[0] <= v <= r[1] for v, r in ((old, new_range), (new, old_range)))
    return "%+6.1f%%%s" % (change, " ~" if inside else "")


def main(argv):
    if len(argv) != 3:
        print("usage: python3 benchmarks/compare.py OLD.json NEW.json", file=sys.stderr)
        return 2
    try:
        old, new = load(argv[1]), load(argv[2])
    except (OSError, ValueError) as e:
        print("compare: %s" % e, file=sys.stderr)
        return 2
    try:
        return compare(old, new)
    except (AttributeError, TypeError, KeyError) as e:
        print("compare: not the JSON of a benchmarks/run.py run (%s)" % e, file=sys.stderr)
        return 2


def compare(old, new):
    so, sn = old.get("summary") or {}, new.get("summary") or {}
    common = [w for w in sn if w in so]
    if not common:
        print("compare: the runs share no workload (old: %s; new: %s)" % (",".join(so), ",".join(sn)),
              file=sys.stderr)
        return 2
    for label, run in (("old", old), ("new", new)):
        m = run.get("meta", {})
        print("%s: %s, %s rounds x %s s, mode %s, kernel %s" % (
            label, m.get("date", "?"), m.get("runs", "?"), m.get("duration_s", "?"),
            m.get("mode", "smoke" if m.get("smoke") else "full"), m.get("kernel", "?")))
    for wl in common:
        keys = PROXY_KEYS if wl in ("bulk", "relay") else ECHO_KEYS
        peers = [p for p in sn[wl] if p in so[wl]]
        ref = next((s.get("reference") for s in sn[wl].values() if s.get("reference")), "?")
        print("\n%s (x = median of per-round ratios to %s; ~ = inside both runs' per-round ranges)" % (wl, ref))
        head = "%-16s" % "peer" + "".join(" %12s %12s %10s" % ("old " + k, "new " + k, "change") for k, _, _ in keys)
        print(head)
        print("-" * len(head))
        for p in peers:
            o, n = so[wl][p], sn[wl][p]
            line = "%-16s" % p
            for _, key, rounds in keys:
                ov, nv = o.get(key), n.get(key)
                line += " %12s %12s %10s" % ("-" if ov is None else "%.3f" % ov, "-" if nv is None else "%.3f" % nv,
                                            verdict(ov, nv, spread(o, rounds), spread(n, rounds)))
            print(line)
        if wl == "bulk":
            memory(so[wl], sn[wl], peers)
        gone = [p for p in so[wl] if p not in sn[wl]]
        added = [p for p in sn[wl] if p not in so[wl]]
        if gone or added:
            print("(only in old: %s; only in new: %s)" % (",".join(gone) or "-", ",".join(added) or "-"))
    return 0


def memory(so, sn, peers):
    """The proxies' resident memory in MiB (raw figures, not ratios), when either run measured it."""
    peers = [p for p in peers if any(run[p].get(key + "_median") is not None
                                     for run in (so, sn) for _, key in RSS_KEYS)]
    if not peers:
        return  # neither run measured memory (runs before it was), or no proxy process (direct)

    def mib(v):
        return None if v is None else v / 1024

    print("\nbulk memory, MiB (medians; ~ = inside both runs' min-max)")
    head = "%-16s" % "proxy" + "".join(" %12s %12s %10s" % ("old " + k, "new " + k, "change") for k, _ in RSS_KEYS)
    print(head)
    print("-" * len(head))
    for p in peers:
        o, n = so[p], sn[p]
        line = "%-16s" % p
        for _, key in RSS_KEYS:
            ov, nv = mib(o.get(key + "_median")), mib(n.get(key + "_median"))
            orange = (mib(o.get(key + "_min")), mib(o.get(key + "_max")))
            nrange = (mib(n.get(key + "_min")), mib(n.get(key + "_max")))
            line += " %12s %12s %10s" % ("-" if ov is None else "%.1f" % ov, "-" if nv is None else "%.1f" % nv,
                                        verdict(ov, nv, orange, nrange))
        print(line)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
