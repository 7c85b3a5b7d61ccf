"""``python -m bench [--quick] [--only NAME ...]``: run the benchmarks, print one table.

Every scenario runs in turn (each bounded in time, loopback only, cleaning up its
processes and temporary files); a scenario that fails shows up as a NOT met row
with the error rather than stopping the others. The table marks every target met
or NOT met; notes under it say what each number is and what limits a missed
target. Results and the machine they ran on go to ``bench/results.json``.

``--peers`` (``make bench PEERS=1``) also runs nginx + nchan and better-sse
(``bench.peers``) in the fan-out, latency and connection scenarios and prints
them in a second table, one column per server.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback
from typing import Any

from . import machine_info, row

SCENARIOS = (
    "writes_saved",
    "emit_cost",
    "persist",
    "slow_storage",
    "fanout",
    "channels",
    "latency",
    "connections",
    "archive",
    "import_time",
    "workers",
)
PEER_SCENARIOS = ("fanout", "latency", "connections")
HEADERS = ("bench", "scenario", "metric", "value", "unit", "target", "met")
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results.json")


def format_value(value: float) -> str:
    if value != value:  # NaN
        return "n/a"
    if float(value).is_integer():
        return f"{value:,.0f}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(rows: list[dict[str, Any]]) -> str:
    """Rows as an aligned text table followed by their notes."""
    cells = [
        [
            r["bench"],
            r["scenario"],
            r["metric"],
            format_value(r["value"]),
            r["unit"],
            r["target"],
            ("yes" if r["met"] else "NOT met") if r["target"] != "-" else "",
        ]
        for r in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(HEADERS)]
    lines = [" | ".join(h.ljust(w) for h, w in zip(HEADERS, widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    for c in cells:
        line = " | ".join(
            v.rjust(w) if i == 3 else v.ljust(w)
            for i, (v, w) in enumerate(zip(c, widths, strict=True))
        )
        lines.append(line.rstrip())
    notes = [r for r in rows if r.get("note")]
    if notes:
        lines.append("")
        lines.append("Notes:")
        for r in notes:
            mark = "NOT met: " if not r["met"] else ""
            lines.append(f"- {r['scenario']} / {r['metric']}: {mark}{r['note']}")
    return "\n".join(lines)


def side_by_side(rows: list[dict[str, Any]], *, markdown: bool = False) -> str:
    """The peer rows (those with ``server`` and ``measure``) as one line per scenario
    and measure, one column per server; a missed target shows as "NOT met"."""
    from .peers import NAMES

    servers = [s for s in NAMES if any(r["server"] == s for r in rows)]
    lines: dict[tuple[str, str, str], dict[str, str]] = {}
    for r in rows:
        cell = format_value(r["value"]) + ("" if r["met"] else " NOT met")
        lines.setdefault((r["scenario"], r["measure"], r["unit"]), {})[r["server"]] = cell
    headers = ["scenario", "measure", "unit", *(NAMES[s] for s in servers)]
    cells = [[*key, *(by.get(s, "") for s in servers)] for key, by in lines.items()]
    if markdown:
        out = ["| " + " | ".join(headers) + " |", "|---|---|---|" + "--:|" * len(servers)]
        out += ["| " + " | ".join(c) + " |" for c in cells]
        return "\n".join(out)
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    out = [" | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    out.append("-+-".join("-" * w for w in widths))
    for c in cells:
        out.append(
            " | ".join(
                v.rjust(w) if i >= 3 else v.ljust(w)
                for i, (v, w) in enumerate(zip(c, widths, strict=True))
            ).rstrip()
        )
    notes = [r for r in rows if r.get("note")]
    if notes:
        out += ["", "Notes:"]
        out += [f"- {r['scenario']} / {r['metric']}: {r['note']}" for r in notes]
    return "\n".join(out)


def markdown(rows: list[dict[str, Any]]) -> str:
    """The same rows as a Markdown table (for docs/performance.md)."""
    out = ["| scenario | metric | value | unit | target | met |", "|---|---|--:|---|---|---|"]
    for r in rows:
        met = ("yes" if r["met"] else "**NOT met**") if r["target"] != "-" else ""
        out.append(
            f"| {r['scenario']} | {r['metric']} | {format_value(r['value'])} | {r['unit']} "
            f"| {r['target']} | {met} |"
        )
    return "\n".join(out)


def run_scenario(
    name: str, quick: bool, with_peers: bool = False
) -> tuple[list[dict[str, Any]], float, str | None]:
    started = time.monotonic()
    try:
        module = importlib.import_module(f"bench.{name}")
        if with_peers and name in PEER_SCENARIOS:
            rows: list[dict[str, Any]] = module.run(quick, with_peers=True)
        else:
            rows = module.run(quick)
        error = None
    except Exception as exc:
        traceback.print_exc()
        error = f"{type(exc).__name__}: {exc}"
        rows = [row(name, "scenario failed", float("nan"), "-", "runs", False, error[:500])]
    for r in rows:
        r["bench"] = name
    return rows, time.monotonic() - started, error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="the one-minute subset")
    parser.add_argument(
        "--only",
        action="append",
        choices=SCENARIOS,
        metavar="NAME",
        help=f"run only this scenario (repeatable): {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--peers",
        action="store_true",
        help="also run nginx + nchan and better-sse (installed by bench/peers/install)",
    )
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    parser.add_argument("--results", default=RESULTS, help="where to write the JSON results")
    args = parser.parse_args(argv)
    names = [n for n in SCENARIOS if not args.only or n in args.only]
    if args.peers:
        from .peers import missing

        gaps = missing()
        if gaps:
            parser.error(f"--peers: not installed (run bench/peers/install): {', '.join(gaps)}")
    machine = machine_info()
    machine["load_average_start"] = list(os.getloadavg())
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    timings: dict[str, Any] = {}
    for name in names:
        print(f"running {name}{' (quick)' if args.quick else ''} ...", file=sys.stderr, flush=True)
        scenario_rows, seconds, error = run_scenario(name, args.quick, args.peers)
        rows.extend(scenario_rows)
        timings[name] = {"seconds": round(seconds, 1), "error": error}
        print(f"  {name}: {seconds:.1f} s", file=sys.stderr, flush=True)
    machine["load_average_end"] = list(os.getloadavg())
    total = time.monotonic() - started
    plain = [r for r in rows if "server" not in r]
    peer_rows = [r for r in rows if "server" in r]
    print(table(plain))
    if peer_rows:
        print("\nPeers, side by side (same load generator, same run):\n")
        print(side_by_side(peer_rows))
    missed = [r for r in rows if not r["met"]]
    print(
        f"\n{len(rows)} rows, {sum(1 for r in rows if r['target'] != '-')} with targets, "
        f"{len(missed)} NOT met; {total:.0f} s on {machine['cpu']} "
        f"({machine['usable_cores']} cores), Python {machine['python']}, {machine['date']}"
    )
    if args.markdown:
        print()
        print(markdown(plain))
        if peer_rows:
            print()
            print(side_by_side(peer_rows, markdown=True))
    with open(args.results, "w") as out:
        json.dump(
            {
                "machine": machine,
                "quick": args.quick,
                "only": args.only,
                "seconds": round(total, 1),
                "scenarios": timings,
                "rows": rows,
            },
            out,
            indent=1,
        )
        out.write("\n")
    print(f"written {os.path.relpath(args.results)}", file=sys.stderr)
    # Missed targets are results, not failures; a scenario that crashed is a failure.
    return 1 if any(t["error"] for t in timings.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
