"""Charts for docs/performance.md, drawn from the benchmarks' JSON results.

Run with ``python -m bench.charts [--results DIR] [--out DIR] [--png]`` (matplotlib: ``pip
install -e '.[bench]'``). It reads, from ``--results`` (default ``bench/results``):

* ``policy_latency.json`` (``python -m bench.policy_latency --json …``),
* ``e2e_scale.json`` (``python -m bench.e2e_throughput --scale --json …``),
* ``store_throughput.json``, ``e2e_throughput.json``, ``pool_throughput.json``,
  ``store_scaling.json`` (each benchmark's ``--json``),
* ``runs.json``: for each benchmark, when it ran and the machine's load average at its start
  and end (``cat /proc/loadavg``), which go into each chart's caption.

and writes three SVG files to ``--out`` (default ``docs/perf``):

* ``gate.svg``: the whole gate (build the request + ``gate_node``), RUN and HOLD, beside
  cedarpy's equivalent decision, and the policy evaluator alone beside cedarpy and pycasbin
  by rule count (log scale, µs);
* ``scale.svg``: end-to-end µs per node at 100, 1,000 and 10,000 nodes, chain and fan-out;
* ``ratios.svg``: the ratios the targets are about: the store against its ``sqlite3`` loop,
  end-to-end against the loop and against DBOS, the pool against bare asyncio, and the
  Postgres and SQLite stores with 1, 2 and 4 worker processes.

A chart whose input is missing is skipped with a note on stderr. ``--png`` also writes a PNG
beside each SVG (for looking at them; the documentation embeds the SVGs). The charts only
draw what the JSON files hold: no number is computed here that the benchmarks did not
report, except ratios of the medians they report.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

ROOT = Path(__file__).resolve().parents[1]

#: Colours: Charter, then the peers and baselines.
CHARTER = "#1f5fa8"
CHARTER_LIGHT = "#7fa9d9"
PEER = "#e39a3b"
PEER_2 = "#8c564b"
MISSED = "#c0504d"
BASE = "#7f7f7f"
TARGET = "#2e7d32"

plt.rcParams.update(
    {
        "font.size": 9,
        "axes.titlesize": 10,
        "axes.titleweight": "bold",
        "axes.spines.top": False,
        "axes.spines.right": False,
        "svg.hashsalt": "charter-bench",  # stable ids: the same input draws the same file
        "svg.fonttype": "none",  # text stays text in the SVG
    }
)


def _load(results: Path, name: str) -> dict[str, Any] | None:
    path = results / name
    if not path.exists():
        print(f"charts: {path} not found, its chart is skipped", file=sys.stderr)
        return None
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _run_caption(runs: dict[str, Any], names: list[str], machine: str) -> str:
    """One caption line: the machine, then each benchmark's date and load (start → end)."""
    parts = []
    for name in names:
        run = runs.get(name)
        if run is None:
            continue
        start, end = run["load_start"][0], run["load_end"][0]
        when = run["started"][:16].replace("T", " ")
        parts.append(f"{run.get('label', name)} {when}: load {start:.1f} → {end:.1f}")
    return f"{machine}; 1-min load average at start → end of each run: " + "; ".join(parts)


def _caption(fig: Figure, text: str) -> None:
    width = int(fig.get_figwidth() * 19)  # characters per line at 7 pt
    fig.text(
        0.01, 0.01, textwrap.fill(text, width), fontsize=7, color="#444444", ha="left", va="bottom"
    )


def _save(fig: Figure, out: Path, stem: str, png: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / f"{stem}.svg", metadata={"Date": None})
    if png:
        fig.savefig(out / f"{stem}.png", dpi=110)
    plt.close(fig)
    print(f"charts: wrote {out / stem}.svg", file=sys.stderr)


def _bar_labels(ax: Axes, bars: Any, fmt: Callable[[float], str], **kwargs: Any) -> None:
    ax.bar_label(bars, labels=[fmt(b.get_width()) for b in bars], padding=6, fontsize=8, **kwargs)


def _us(value: float) -> str:
    return f"{value:,.0f} µs" if value >= 100 else f"{value:.3g} µs"


# ── (a) the gate ──────────────────────────────────────────────────────────────────────


def chart_gate(policy: dict[str, Any], caption: str, out: Path, png: bool) -> None:
    measurements = policy["measurements"]

    def median(engine: str, rules: int, query: str) -> float | None:
        for m in measurements:
            if m["engine"] == engine and m["rules"] == rules and m["query"] == query:
                return float(m["median_us"])
        return None

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.6), gridspec_kw={"wspace": 0.45})
    fig.suptitle("Policy decisions: the whole gate and the evaluator, beside cedarpy", y=0.98)

    # Left: the whole gate, RUN and HOLD, and cedarpy's equivalent decision.
    gate = policy["gate"]
    rows: list[tuple[str, float, str]] = []
    for query in ("run", "hold"):
        gate_us = gate[query]["gate_median_us"]
        rows.append((f"Charter {query.upper()}\n(request + gate_node)", gate_us, CHARTER))
        cedar = gate[query]["cedarpy_median_us"]
        if cedar is not None:
            rows.append((f"cedarpy {query.upper()}\n(is_authorized)", cedar, PEER))
    for label, value in sorted(gate["event_text_median_us"].items()):
        rows.append((f"serialise one event\n({label})", value, CHARTER_LIGHT))
    labels = [r[0] for r in rows][::-1]
    values = [r[1] for r in rows][::-1]
    colours = [r[2] for r in rows][::-1]
    bars = left.barh(labels, values, color=colours)
    _bar_labels(left, bars, _us)
    left.set_xscale("log")
    left.set_xlim(1, max(values) * 12)
    left.set_xlabel("µs per call (median, log scale)")
    left.set_title("Whole gate: the call an embedder makes")
    left.axvline(5, color=TARGET, linestyle="--", linewidth=1, label="≤ 5 µs (RUN, event)")
    left.axvline(15, color=TARGET, linestyle=":", linewidth=1.2, label="≤ 15 µs (HOLD)")
    left.legend(fontsize=7, loc="lower right", frameon=False, title="targets", title_fontsize=7)

    # Right: the evaluator alone by rule count, beside cedarpy and pycasbin.
    rules = sorted({m["rules"] for m in measurements if m["engine"] == "charter"})
    series = [
        ("charter", "Charter evaluator", CHARTER, "o"),
        ("charter_ctx", "Charter evaluator + context", CHARTER_LIGHT, "s"),
        ("cedarpy", "cedarpy", PEER, "^"),
        ("casbin", "pycasbin", PEER_2, "v"),
        ("floor", "floor (dict + startswith)", BASE, "."),
    ]
    for engine, label, colour, marker in series:
        for query, style in (("miss", "-"), ("hit", ":")):
            points = [(n, median(engine, n, query)) for n in rules]
            xs = [n for n, v in points if v is not None]
            ys = [v for _, v in points if v is not None]
            if not xs:
                continue
            right.plot(
                xs,
                ys,
                style,
                color=colour,
                marker=marker,
                markersize=4,
                label=label if query == "miss" else None,
            )
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xticks(rules, [f"{n:,}" for n in rules])
    right.set_xlabel("rules in the policy set (log scale)")
    right.set_ylabel("µs per decision (median, log scale)")
    right.set_title("Evaluator alone (solid: miss, dotted: hit)")
    right.axhline(5, color=TARGET, linestyle="--", linewidth=1, label="5 µs")
    right.legend(fontsize=7, loc="upper left", frameon=False)
    fig.subplots_adjust(left=0.2, right=0.98, top=0.86, bottom=0.2)
    _caption(fig, caption)
    _save(fig, out, "gate", png)


# ── (b) the scale curve ───────────────────────────────────────────────────────────────


def chart_scale(curve: dict[str, Any], caption: str, out: Path, png: bool) -> None:
    points = curve["scale"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.4), gridspec_kw={"wspace": 0.3})
    fig.suptitle(
        f"End-to-end cost per node by workflow size (Charter, SQLite "
        f"synchronous={curve['synchronous']}, one worker, median of {curve['rounds']})",
        y=0.98,
    )
    for shape, colour, marker in (("chain", CHARTER, "o"), ("fanout", PEER_2, "s")):
        mine = sorted((p for p in points if p["shape"] == shape), key=lambda p: p["nodes"])
        if not mine:
            continue
        xs = [p["nodes"] for p in mine]
        name = "fan-out" if shape == "fanout" else shape
        left.plot(
            xs,
            [p["us_per_node"] for p in mine],
            "-",
            color=colour,
            marker=marker,
            label=f"{name}, wall",
        )
        left.plot(
            xs,
            [p["cpu_us_per_node"] for p in mine],
            ":",
            color=colour,
            marker=marker,
            label=f"{name}, CPU",
        )
        for p in mine:
            left.annotate(
                f"{p['us_per_node']:,.0f}",
                (p["nodes"], p["us_per_node"]),
                textcoords="offset points",
                xytext=(0, 6 if shape == "chain" else -12),
                ha="center",
                fontsize=7,
            )
        by_nodes = {p["nodes"]: p for p in mine}
        if 1_000 in by_nodes and 10_000 in by_nodes:
            # The target: at 10,000 nodes at most 1.1× the cost per node at 1,000.
            limit = 1.1 * by_nodes[1_000]["us_per_node"]
            left.plot([8_000, 12_500], [limit, limit], color=colour, linewidth=1, linestyle="--")
            left.annotate(
                f"1.1× its 1k: {limit:,.0f}",
                (12_500, limit),
                textcoords="offset points",
                xytext=(2, 0),
                va="center",
                fontsize=6,
                color=colour,
            )
        right.plot(
            xs,
            [p["rss_per_node_bytes"] / 1024 for p in mine],
            "-",
            color=colour,
            marker=marker,
            label=name,
        )
        for p in mine:
            right.annotate(
                f"{p['rss_per_node_bytes'] / 1024:.1f}",
                (p["nodes"], p["rss_per_node_bytes"] / 1024),
                textcoords="offset points",
                xytext=(0, -12 if shape == "chain" else 6),
                ha="center",
                fontsize=7,
            )
    sizes = sorted({p["nodes"] for p in points})
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_xticks(sizes, [f"{n:,}" for n in sizes])
        ax.set_xlabel("nodes in the workflow (log scale)")
        ax.legend(fontsize=7, frameon=False)
        ax.set_ylim(bottom=0)
    left.set_ylim(top=max(p["us_per_node"] for p in points) * 1.25)
    left.set_xlim(min(sizes) * 0.6, max(sizes) * 4)  # room for the target's label
    left.set_ylabel("µs per node (median)")
    left.set_title("Time per node (target at 10k: ≤ 1.1× that at 1k)")
    right.set_ylabel("peak RSS growth per node (KiB)")
    right.set_title("Memory per node")
    fig.subplots_adjust(left=0.08, right=0.98, top=0.84, bottom=0.22)
    _caption(fig, caption)
    _save(fig, out, "scale", png)


# ── (c) the ratios ────────────────────────────────────────────────────────────────────


def _ratio_panel(
    ax: Axes,
    rows: list[tuple[str, float, float | None]],
    title: str,
    xlabel: str,
    fmt: Callable[[float], str],
) -> None:
    """Horizontal bars, one per (label, value, target); a target is a green tick on its bar."""
    labels = [r[0] for r in rows][::-1]
    values = [r[1] for r in rows][::-1]
    targets = [r[2] for r in rows][::-1]
    colours = [
        CHARTER if t is None or v >= t else MISSED for v, t in zip(values, targets, strict=True)
    ]
    ax.barh(labels, values, color=colours)
    top = max([*values, *(t for t in targets if t is not None)])
    for index, (value, target) in enumerate(zip(values, targets, strict=True)):
        if target is not None:
            ax.plot([target, target], [index - 0.42, index + 0.42], color=TARGET, linewidth=2)
        # The value, right of its bar and of its target tick.
        right = value if target is None else max(value, target)
        ax.text(right + top * 0.02, index, fmt(value), va="center", fontsize=8)
    ax.set_xlim(0, top * 1.3)
    if fmt is _pct:
        ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_title(title)
    ax.set_xlabel(xlabel)


def _pct(value: float) -> str:
    return f"{value:.0%}"


def _times(value: float) -> str:
    return f"{value:.2f}×"


def chart_ratios(
    store: dict[str, Any] | None,
    e2e: dict[str, Any] | None,
    pool: dict[str, Any] | None,
    scaling: dict[str, Any] | None,
    caption: str,
    out: Path,
    png: bool,
) -> None:
    fig, axes = plt.subplots(2, 2, figsize=(11, 8.2), gridspec_kw={"hspace": 0.55, "wspace": 0.6})
    fig.suptitle(
        "Charter beside its baselines (blue: target met or none; red: not met; "
        "green tick: the target)",
        y=0.985,
    )
    (vs_loop, vs_dbos), (vs_bare, scale) = axes

    rows: list[tuple[str, float, float | None]] = []
    if store is not None:
        target = store["target_store_over_baseline"]
        rows.extend(
            (f"store, {r['synchronous']}", r["store_over_baseline"], target)
            for r in store["ratios"]
        )
    if e2e is not None:
        for r in e2e["ratios"]:
            target = 0.5 if r["synchronous"] == "FULL" else 0.35
            shape = "fan-out" if r["shape"] == "fanout" else r["shape"]
            rows.append(
                (
                    f"end-to-end, {r['synchronous']} {shape}",
                    r["over_sqlite3"],
                    target,
                )
            )
    if rows:
        _ratio_panel(
            vs_loop,
            rows,
            "Store and end-to-end against the sqlite3 loop",
            "Charter's rate as a fraction of the loop's (ratio of medians)",
            _pct,
        )
    else:
        vs_loop.set_visible(False)

    rows = []
    if e2e is not None:
        for r in e2e["ratios"]:
            if r["over_dbos"] is not None:
                shape = "fan-out" if r["shape"] == "fanout" else r["shape"]
                rows.append((f"{r['synchronous']} {shape}", r["over_dbos"], 3.0))
    if rows:
        _ratio_panel(
            vs_dbos,
            rows,
            "End-to-end against DBOS Transact",
            "Charter nodes/s ÷ DBOS nodes/s (ratio of medians)",
            _times,
        )
    else:
        vs_dbos.set_visible(False)

    rows = []
    if pool is not None:
        for s in pool["summaries"]:
            target = 0.5 if s["producers"] == 64 else None
            workers = f"{s['workers']} worker{'s' if s['workers'] > 1 else ''}"
            producers = f"{s['producers']} producer{'s' if s['producers'] > 1 else ''}"
            rows.append((f"{workers} × {producers}", s["ratio"], target))
    if rows:
        _ratio_panel(
            vs_bare,
            rows,
            "Worker pool against a bare asyncio.Queue",
            "pool submissions/s ÷ bare submissions/s (ratio of medians)",
            _times,
        )
    else:
        vs_bare.set_visible(False)

    if scaling is not None:
        by_store: dict[str, dict[int, float]] = {}
        for row in scaling["rows"]:
            if row["workload"] == "many runs":
                by_store.setdefault(row["store"], {})[row["workers"]] = row["median"]
        width = 0.38
        for offset, (name, colour) in zip(
            (-width / 2, width / 2), (("postgres", CHARTER), ("sqlite", BASE)), strict=True
        ):
            rates = by_store.get(name)
            if not rates:
                continue
            counts = sorted(rates)
            one = rates[counts[0]]
            xs = [index + offset for index in range(len(counts))]
            bars = scale.bar(
                xs,
                [rates[w] / one for w in counts],
                width,
                color=colour,
                label=f"{name} (1 worker: {one:,.0f} items/s)",
            )
            scale.bar_label(
                bars, labels=[f"{rates[w] / one:.2f}×" for w in counts], fontsize=7, padding=2
            )
            scale.set_xticks(range(len(counts)), [str(w) for w in counts])
        scale.axhline(1, color=BASE, linewidth=0.8)
        scale.set_xlabel("worker processes (items spread over 32 runs)")
        scale.set_ylabel("items/s ÷ items/s with one worker")
        scale.set_title("Store scaling with worker processes")
        scale.legend(fontsize=7, frameon=False, loc="upper left")
        scale.set_ylim(0, 2.0)
    else:
        scale.set_visible(False)
    fig.subplots_adjust(left=0.2, right=0.97, top=0.92, bottom=0.12)
    _caption(fig, caption)
    _save(fig, out, "ratios", png)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.charts",
        description="Draw docs/performance.md's charts (SVG) from the benchmarks' JSON results.",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=ROOT / "bench" / "results",
        help="where the JSON results are (default bench/results)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "docs" / "perf",
        help="where to write the SVG files (default docs/perf)",
    )
    parser.add_argument("--png", action="store_true", help="also write a PNG beside each SVG")
    args = parser.parse_args(argv)
    runs = _load(args.results, "runs.json") or {}
    machine = runs.get("machine", "machine not recorded")
    policy = _load(args.results, "policy_latency.json")
    if policy is not None:
        chart_gate(policy, _run_caption(runs, ["policy_latency"], machine), args.out, args.png)
    curve = _load(args.results, "e2e_scale.json")
    if curve is not None:
        chart_scale(curve, _run_caption(runs, ["e2e_scale"], machine), args.out, args.png)
    store = _load(args.results, "store_throughput.json")
    e2e = _load(args.results, "e2e_throughput.json")
    pool = _load(args.results, "pool_throughput.json")
    scaling = _load(args.results, "store_scaling.json")
    if any(x is not None for x in (store, e2e, pool, scaling)):
        names = ["store_throughput", "e2e_throughput", "pool_throughput", "store_scaling"]
        chart_ratios(
            store, e2e, pool, scaling, _run_caption(runs, names, machine), args.out, args.png
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
