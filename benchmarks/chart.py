#!/usr/bin/env python3
"""Draws a benchmark run (the JSON benchmarks/run.py writes) as one SVG, with no dependency
beyond the standard library:

  left panel   the CPU cost ratio to the reference per workload and peer (CPU per operation for
               the echo workloads, CPU per GB for bulk and relay): the median of the per-round
               ratios as a dot, the range of the per-round ratios as an error bar, 1.0 = the
               reference (below 1: cheaper than it)
  right panel  latency percentiles (p50, p99, p99.9) per echo workload and peer, log scale

    python3 benchmarks/chart.py RESULTS.json [OUT.svg]   # default: RESULTS with .svg
"""

import json
import math
import sys
from pathlib import Path
from xml.sax.saxutils import escape

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
           "#7f7f7f", "#17becf", "#bcbd22"]
ROW = 16          # height of one peer's row
GROUP_GAP = 14    # between workloads
LABEL_W = 150     # workload/peer labels
PANEL_W = 330     # plotting width of a panel
TOP = 58


def cost_ratios(summary):
    """[(workload, [(peer, median, lo, hi, reference)])] of the CPU cost ratios."""
    out = []
    for wl, peers in summary.items():
        rows = []
        for peer, s in peers.items():
            med = s.get("cpu_per_op_ratio_to_ref", s.get("cpu_per_gb_ratio_to_ref"))
            per_round = s.get("cpu_per_op_ratios", s.get("cpu_per_gb_ratios")) or []
            if med is None:
                continue
            rows.append((peer, med, min(per_round, default=med), max(per_round, default=med),
                         s.get("reference")))
        if rows:
            out.append((wl, rows))
    return out


def latencies(summary):
    """[(workload, [(peer, p50, p99, p999)])] of the echo workloads."""
    out = []
    for wl, peers in summary.items():
        # 0 is what an empty histogram reports (a peer whose cells all failed): no latency at all
        rows = [(p, s.get("p50_us_median"), s.get("p99_us_median"), s.get("p999_us_median"))
                for p, s in peers.items() if (s.get("p50_us_median") or 0) > 0]
        rows = [tuple([r[0]] + [v if v and v > 0 else None for v in r[1:]]) for r in rows]
        if rows:
            out.append((wl, rows))
    return out


def nice_ticks(lo, hi, n=5):
    step = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(step)) if step > 0 else 1
    for m in (1, 2, 2.5, 5, 10):
        if step <= m * mag:
            step = m * mag
            break
    t = math.floor(lo / step) * step
    ticks = []
    while t <= hi + 1e-9:
        ticks.append(round(t, 10))
        t += step
    return ticks


def render(data):
    summary = data.get("summary", {})
    meta = data.get("meta", {})
    cost = cost_ratios(summary)
    lat = latencies(summary)
    peers = []
    for _, rows in cost + lat:
        for r in rows:
            if r[0] not in peers:
                peers.append(r[0])
    color = {p: PALETTE[i % len(PALETTE)] for i, p in enumerate(peers)}

    def height(groups):
        return sum((len(rows) + 1) * ROW + GROUP_GAP for _, rows in groups)
    plot_h = max(height(cost), height(lat), 60)
    width = 2 * (LABEL_W + PANEL_W) + 100
    total_h = TOP + plot_h + 70
    svg = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" '
           'font-family="sans-serif" font-size="11">' % (width, total_h, width, total_h),
           '<rect width="100%" height="100%" fill="white"/>']
    title = "ringnet benchmarks: %s rounds x %s s, kernel %s%s" % (
        meta.get("runs", "?"), meta.get("duration_s", "?"), meta.get("kernel", "?"),
        {"smoke": ", SMOKE (correctness run, not a measurement)",
         "quick": ", quick run (python3 benchmarks/run.py --full for the full one)"}.get(meta.get("mode"), ""))
    svg.append('<text x="10" y="18" font-size="13" font-weight="bold">%s</text>' % escape(title))
    svg.append('<text x="10" y="34" fill="#555">%s</text>' % escape(
        "%s; dots: median of per-round ratios, bars: their range" % meta.get("date", "")))

    def panel(x0, header, groups, scale, ticks, tick_fmt, draw_row, ref_line=None):
        svg.append('<text x="%d" y="%d" font-weight="bold">%s</text>' % (x0, TOP - 10, escape(header)))
        px0 = x0 + LABEL_W
        for t in ticks:
            x = px0 + scale(t)
            svg.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#e4e4e4"/>' % (x, TOP, x, TOP + plot_h))
            svg.append('<text x="%.1f" y="%d" text-anchor="middle" fill="#555">%s</text>' % (
                x, TOP + plot_h + 14, tick_fmt(t)))
        if ref_line is not None:
            x = px0 + scale(ref_line)
            svg.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#333" stroke-dasharray="4,3"/>' % (
                x, TOP, x, TOP + plot_h))
        y = TOP
        for wl, rows in groups:
            svg.append('<text x="%d" y="%d" font-weight="bold">%s</text>' % (x0, y + 12, escape(wl)))
            y += ROW  # the workload's own row
            for r in rows:
                y += ROW
                svg.append('<text x="%d" y="%d" fill="%s">%s</text>' % (x0 + 12, y - 4, color[r[0]], escape(r[0])))
                draw_row(px0, y - 8, r)
            y += GROUP_GAP

    if cost:
        lo = min(min(r[2] for r in rows) for _, rows in cost)
        hi = max(max(r[3] for r in rows) for _, rows in cost)
        lo, hi = min(lo, 1.0) * 0.95, max(hi, 1.0) * 1.05
        ticks = nice_ticks(lo, hi)
        lo, hi = min(lo, ticks[0]), max(hi, ticks[-1])

        def sc(v):
            return (v - lo) / (hi - lo) * PANEL_W

        def cost_row(px0, yc, r):
            _, med, rlo, rhi, _ = r
            c = color[r[0]]
            svg.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="%s" stroke-width="2"/>' % (
                px0 + sc(rlo), yc, px0 + sc(rhi), yc, c))
            for v in (rlo, rhi):
                svg.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="%s"/>' % (
                    px0 + sc(v), yc - 4, px0 + sc(v), yc + 4, c))
            svg.append('<circle cx="%.1f" cy="%d" r="4" fill="%s"/>' % (px0 + sc(med), yc, c))
            svg.append('<text x="%.1f" y="%d" fill="#333">%.2fx</text>' % (px0 + sc(rhi) + 6, yc + 4, med))
        refs = sorted({r[4] for _, rows in cost for r in rows if r[4]})
        panel(10, "CPU cost, ratio to %s (per op; bulk/relay per GB)" % "/".join(refs), cost, sc, ticks,
              lambda t: "%.2f" % t, cost_row, ref_line=1.0)
    if lat:
        vals = [v for _, rows in lat for r in rows for v in r[1:] if v]
        lo = 10 ** math.floor(math.log10(min(vals)))
        hi = max(10 ** math.ceil(math.log10(max(vals))), lo * 10)  # at least one decade

        def sl(v):
            return (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * PANEL_W

        def lat_row(px0, yc, r):
            _, p50, p99, p999 = r
            c = color[r[0]]
            marks = [(p50, "50"), (p99, "99"), (p999, "99.9")]
            known = [v for v, _ in marks if v]
            svg.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="%s" stroke-width="1"/>' % (
                px0 + sl(min(known)), yc, px0 + sl(max(known)), yc, c))
            for v, name in marks:
                if not v:
                    continue
                shape = {'50': '<circle cx="%.1f" cy="%d" r="4" fill="%s"/>',
                         '99': '<rect x="%.1f" y="%d" width="7" height="7" fill="%s"/>',
                         '99.9': '<circle cx="%.1f" cy="%d" r="3.5" fill="white" stroke="%s"/>'}[name]
                if name == "99":
                    svg.append(shape % (px0 + sl(v) - 3.5, yc - 3, c))
                else:
                    svg.append(shape % (px0 + sl(v), yc, c))
        ticks = [10 ** e for e in range(int(math.log10(lo)), int(math.log10(hi)) + 1)]
        panel(10 + LABEL_W + PANEL_W + 50, "latency, us (dot p50, square p99, ring p99.9)", lat, sl, ticks,
              lambda t: "%g" % t, lat_row)
    svg.append('<text x="10" y="%d" fill="#555">%s</text>' % (total_h - 12, escape(
        "server pinned to CPU %s, load generator to CPU %s; raw figures in the JSON beside this file" % (
            meta.get("server_cpu", "?"), meta.get("client_cpu", "?")))))
    svg.append("</svg>")
    return "\n".join(svg) + "\n"


def write_svg(data, path):
    Path(path).write_text(render(data))


def main(argv):
    if len(argv) not in (2, 3):
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    src = Path(argv[1])
    out = Path(argv[2]) if len(argv) == 3 else src.with_suffix(".svg")
    write_svg(json.loads(src.read_text()), out)
    print("wrote %s" % out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
