#!/usr/bin/env python3
"""Plots connection sweeps (benches/conn-sweep.sh output) as one SVG.

    benches/sweep-svg.py OUT.svg LABEL=sweep.tsv [LABEL=sweep.tsv ...]

Two panels over the number of connections (log scale): node CPU per ping (us) and
p99 latency (ms). No plotting library needed.
"""
import csv
import math
import sys

W, H = 760, 300
PANEL_W, PANEL_H = 300, 200
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]


def load(path):
    rows = []
    with open(path) as f:
        for r in csv.DictReader(f, delimiter="\t"):
            try:
                rows.append((int(r["connections"]), float(r["node_cpu_us_per_ping"]), float(r["p99_ms"])))
            except (KeyError, ValueError):
                continue
    return [r for r in rows if not (math.isnan(r[1]) or math.isnan(r[2]))]


def panel(out, x0, title, series, pick, unit):
    xs = [c for _, rows in series for c, _, _ in rows]
    ys = [pick(r) for _, rows in series for r in rows]
    if not xs:
        return
    lx0, lx1 = math.log10(min(xs)), math.log10(max(xs))
    if lx1 == lx0:
        lx1 = lx0 + 1
    y1 = max(ys) * 1.15 or 1.0
    px = lambda c: x0 + 40 + (math.log10(c) - lx0) / (lx1 - lx0) * (PANEL_W - 50)
    py = lambda v: 40 + PANEL_H - v / y1 * PANEL_H
    out.append(f'<text x="{x0 + 40}" y="25" font-size="13">{title}</text>')
    out.append(f'<line x1="{x0 + 40}" y1="{40 + PANEL_H}" x2="{x0 + PANEL_W}" y2="{40 + PANEL_H}" stroke="#000"/>')
    out.append(f'<line x1="{x0 + 40}" y1="40" x2="{x0 + 40}" y2="{40 + PANEL_H}" stroke="#000"/>')
    for i in range(5):
        v = y1 * i / 4
        out.append(f'<text x="{x0 + 36}" y="{py(v) + 4:.1f}" font-size="10" text-anchor="end">{v:.3g}</text>')
    for c in sorted(set(xs)):
        out.append(f'<text x="{px(c):.1f}" y="{55 + PANEL_H}" font-size="10" text-anchor="middle">{c}</text>')
    out.append(f'<text x="{x0 + 40 + (PANEL_W - 50) / 2}" y="{72 + PANEL_H}" font-size="11" '
               f'text-anchor="middle">connections ({unit})</text>')
    for k, (label, rows) in enumerate(series):
        color = COLORS[k % len(COLORS)]
        pts = " ".join(f"{px(c):.1f},{py(pick(r)):.1f}" for r in rows for c in [r[0]])
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{pts}"/>')
        for r in rows:
            out.append(f'<circle cx="{px(r[0]):.1f}" cy="{py(pick(r)):.1f}" r="3" fill="{color}"/>')


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    series = []
    for arg in sys.argv[2:]:
        label, _, path = arg.partition("=")
        series.append((label, sorted(load(path))))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H + 40}" font-family="sans-serif">',
           f'<rect width="{W}" height="{H + 40}" fill="#fff"/>']
    panel(out, 0, "node CPU per ping (us)", series, lambda r: r[1], "log scale")
    panel(out, 380, "p99 latency (ms)", series, lambda r: r[2], "log scale")
    for k, (label, _) in enumerate(series):
        color = COLORS[k % len(COLORS)]
        out.append(f'<rect x="{60 + k * 200}" y="{H + 10}" width="12" height="12" fill="{color}"/>')
        out.append(f'<text x="{78 + k * 200}" y="{H + 21}" font-size="12">{label}</text>')
    out.append("</svg>")
    with open(sys.argv[1], "w") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
