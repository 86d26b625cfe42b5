"""Render the JSON lines of a run as Markdown (``bench/RESULTS.md``) and a PNG plot.

Every figure is the median over the repetitions that completed; the range (min-max)
follows the headline figure of each row; ratios are to the raw ASGI app of the same run.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
# Runs kept beside the full run's, each rendered as a section of RESULTS.md of its own:
# file under bench/, section title; what the figures show, if a file beside it with the
# suffix .notes.md says so, follows the tables.
KEPT_RUNS = [("flood-before.jsonl", "Flood (before issue 11)")]
ORDER = ["raw", "starlette", "nexios-pypi", "nexios", "nexios-sansio", "raw-nexios"]
NO_GROUPS = "n/a: no cross-process groups"

Records = dict[str, dict[str, list[dict[str, Any]]]]  # workload -> framework -> reps


def load(path: Path) -> tuple[dict[str, Any], Records]:
    meta: dict[str, Any] = {}
    records: Records = defaultdict(lambda: defaultdict(list))
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if row.get("meta"):
            meta = row
        else:
            records[row["workload"]][row["framework"]].append(row)
    return meta, records


def med(rows: list[dict[str, Any]], key: str) -> float:
    values = [r[key] for r in rows if isinstance(r.get(key), int | float)]
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else math.nan


def spread(rows: list[dict[str, Any]], key: str, digits: int | None = None) -> str:
    values = [r[key] for r in rows if isinstance(r.get(key), int | float)]
    if len(values) < 2:
        return ""
    return f" ({fmt(min(values), digits)}-{fmt(max(values), digits)})"


def fmt(value: float, digits: int | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if digits is not None:
        return f"{value:,.{digits}f}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def ratio(value: float, base: float) -> str:
    if math.isnan(value) or math.isnan(base) or base == 0:
        return "-"
    return f"{value / base:.2f}x"


def good(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The repetitions that completed every broadcast (or had none)."""
    return [r for r in rows if r.get("ok") and not r.get("stalled")]


def frameworks(meta: dict[str, Any], records: Records) -> list[str]:
    seen = {fw for by_fw in records.values() for fw in by_fw}
    seen |= set(meta.get("frameworks", {}))
    return [fw for fw in ORDER if fw in seen] + sorted(seen - set(ORDER))


def name(meta: dict[str, Any], fw: str) -> str:
    return str(meta.get("frameworks", {}).get(fw, fw))


def sizes(records: Records, prefix: str) -> list[tuple[str, int]]:
    found = []
    for key, by_fw in records.items():
        if key.startswith(prefix):
            first = next(iter(by_fw.values()))[0]
            found.append((key, int(first["size"])))
    return sorted(found, key=lambda kv: kv[1])


def gc_share(row: dict[str, Any]) -> float:
    """Garbage collection's share of the server's CPU time in the window, in percent."""
    spent = row.get("gc_ms")
    cpu = row.get("server_cpu")
    if not spent or not cpu:
        return math.nan
    return 100 * (sum(spent) / 1000) / (cpu / 100 * row["window_s"])


def gc_cells(rows: list[dict[str, Any]]) -> str:
    """GC % of server CPU | full (gen 2) collections in the window, longest pause."""
    for row in rows:
        row["gc_share"] = gc_share(row)
        row["gc_full"] = (row.get("gc_count") or [0, 0, math.nan])[2]
    longest = med(rows, "gc_longest_ms")
    full = med(rows, "gc_full")
    pause = f", longest {fmt(longest)} ms" if not math.isnan(longest) else ""
    return f"{fmt(med(rows, 'gc_share'))} | {fmt(full, 0)}{pause}"


def cpu_per_message(rows: list[dict[str, Any]], rate: str) -> float:
    """Server CPU time per message, in µs (median over the repetitions): what a message
    costs the server, less sensitive than messages/s to a machine that is not quiet."""
    values = [
        r["server_cpu"] / 100 / r[rate] * 1e6
        for r in rows
        if isinstance(r.get("server_cpu"), int | float) and r.get(rate)
    ]
    return statistics.median(values) if values else math.nan


def cpu_cells(rows: list[dict[str, Any]]) -> str:
    return f"{fmt(med(rows, 'server_cpu'))} | {fmt(med(rows, 'client_cpu'))}"


def failed_note(rows: list[dict[str, Any]]) -> str:
    failed = [r for r in rows if not r.get("ok")]
    if not failed:
        return ""
    return f" ({len(failed)} failed: {failed[0].get('error', '')[:80]})"


# ---------------------------------------------------------------------- sections


def echo_section(meta: dict[str, Any], records: Records, fws: list[str]) -> list[str]:
    by_fw = records.get("echo")
    if not by_fw:
        return []
    size = next(iter(by_fw.values()))[0]["size"]
    spec = meta.get("workloads", {}).get("echo", {})
    lines = [
        "## Echo",
        "",
        f"{size} connections, each sending 32 bytes of text and awaiting the echo (closed "
        f"loop), {spec.get('duration', '?')} s measured after {spec.get('warmup', '?')} s "
        "of warm-up. Latency: send to echo, every message.",
        "",
        "| framework | messages/s (min-max) | x raw | server CPU µs/message | p50 ms "
        "| p99 ms | server CPU % | client CPU % | GC % of server CPU | full GCs | reps |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = med(good(by_fw.get("raw", [])), "msgs_per_s")
    for fw in fws:
        rows = by_fw.get(fw, [])
        ok = good(rows)
        if not rows:
            continue
        lines.append(
            f"| {name(meta, fw)} | {fmt(med(ok, 'msgs_per_s'))}{spread(ok, 'msgs_per_s')} "
            f"| {ratio(med(ok, 'msgs_per_s'), base)} "
            f"| {fmt(cpu_per_message(ok, 'msgs_per_s'), 2)} | {fmt(med(ok, 'p50_ms'), 3)} "
            f"| {fmt(med(ok, 'p99_ms'), 3)} | {cpu_cells(ok)} | {gc_cells(ok)} "
            f"| {len(ok)}{failed_note(rows)} |"
        )
    return [*lines, ""]


def fanout_section(meta: dict[str, Any], records: Records, fws: list[str]) -> list[str]:
    found = sizes(records, "fanout-")
    if not found:
        return []
    lines = [
        "## Fan-out",
        "",
        "All connections in one group; a publisher (a WebSocket control connection) "
        "triggers 200 broadcasts of 64 bytes of text, one after another: each is sent "
        "when the previous one has reached every client. Latency: from the trigger to "
        "the moment the **last** client has the message (p50, p99 over the 200 "
        "broadcasts); deliveries/s: messages received by all clients over the whole "
        "window. Raw ASGI and Starlette: a loop of `await send` over a set of "
        "connections; nexios 3.12 (PyPI): its own `ChannelBox.group_send`; ours: "
        "`app.channels.publish` (members joined with `ws.join`).",
        "",
    ]
    for key, size in found:
        by_fw = records[key]
        base_rows = good(by_fw.get("raw", []))
        base = med(base_rows, "deliveries_per_s")
        base_p50 = med(base_rows, "p50_ms")
        lines += [
            f"### {size:,} connections",
            "",
            "| framework | deliveries/s (min-max) | x raw | server CPU µs/delivery "
            "| last client p50 ms | x raw | p99 ms | server CPU % | client CPU % "
            "| GC % of server CPU | full GCs | reps |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for fw in fws:
            rows = by_fw.get(fw, [])
            if not rows:
                continue
            ok = good(rows)
            d = med(ok, "deliveries_per_s")
            p50 = med(ok, "p50_ms")
            lines.append(
                f"| {name(meta, fw)} | {fmt(d)}{spread(ok, 'deliveries_per_s')} "
                f"| {ratio(d, base)} | {fmt(cpu_per_message(ok, 'deliveries_per_s'), 2)} "
                f"| {fmt(p50)} | {ratio(p50, base_p50)} "
                f"| {fmt(med(ok, 'p99_ms'))} | {cpu_cells(ok)} | {gc_cells(ok)} "
                f"| {len(ok)}{failed_note(rows)} |"
            )
        lines.append("")
    return lines


def idle_section(meta: dict[str, Any], records: Records, fws: list[str]) -> list[str]:
    found = sizes(records, "idle-")
    if not found:
        return []
    lines = [
        "## Idle connections",
        "",
        "Server RSS (`VmRSS`) after 50 warm-up connections came and went, and again with "
        "N idle connections open (on `/ws/echo`, nothing sent), 1 s after the last "
        "handshake; bytes per connection = the difference / N. CPU: the server's, "
        "over 2 s with the connections open and idle.",
        "",
        "| framework | connections | bytes/connection (min-max) | x raw "
        "| server RSS open, MiB | handshakes/s | server CPU % idle | reps |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, size in found:
        by_fw = records[key]
        base = med(good(by_fw.get("raw", [])), "bytes_per_conn")
        for fw in fws:
            rows = by_fw.get(fw, [])
            if not rows:
                continue
            ok = good(rows)
            b = med(ok, "bytes_per_conn")
            lines.append(
                f"| {name(meta, fw)} | {size:,} | {fmt(b)}{spread(ok, 'bytes_per_conn')} "
                f"| {ratio(b, base)} | {fmt(med(ok, 'rss_after') / 2**20)} "
                f"| {fmt(med(ok, 'connects_per_s'))} | {fmt(med(ok, 'server_cpu'))} "
                f"| {len(ok)}{failed_note(rows)} |"
            )
    return [*lines, ""]


def cross_section(meta: dict[str, Any], records: Records, fws: list[str]) -> list[str]:
    found = sizes(records, "cross-")
    if not found:
        return []
    lines = [
        "## Cross-process fan-out (Redis)",
        "",
        "Two server processes of the same app sharing Redis (`redis://127.0.0.1:6379/0`, "
        "pub/sub), half the connections on each, all in one group; the broadcasts are "
        "triggered on the first process. Both servers are pinned to the server core "
        "(their CPU is added up); Redis is not pinned. Latency: until the last client, "
        "on either process, has the message. The last column compares with the same "
        "framework's single-process fan-out to the same number of connections.",
        "",
        "| framework | connections | deliveries/s (min-max) | p50 ms | p99 ms "
        "| server CPU % (both) | client CPU % | vs one process, deliveries/s | reps |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, size in found:
        by_fw = records[key]
        single = records.get(f"fanout-{size}", {})
        for fw in fws:
            rows = by_fw.get(fw, [])
            if not rows:
                lines.append(f"| {name(meta, fw)} | {size:,} | {NO_GROUPS} | | | | | | |")
                continue
            ok = good(rows)
            d = med(ok, "deliveries_per_s")
            one = med(good(single.get(fw, [])), "deliveries_per_s")
            lines.append(
                f"| {name(meta, fw)} | {size:,} | {fmt(d)}{spread(ok, 'deliveries_per_s')} "
                f"| {fmt(med(ok, 'p50_ms'))} | {fmt(med(ok, 'p99_ms'))} | {cpu_cells(ok)} "
                f"| {ratio(d, one)} | {len(ok)}{failed_note(rows)} |"
            )
    return [*lines, ""]


def slow_verdict(rows: list[dict[str, Any]]) -> str:
    stalled = [r for r in rows if r.get("ok") and r.get("stalled")]
    if not stalled:
        return ""
    completed = statistics.median(r.get("completed", 0) for r in stalled)
    broadcasts = stalled[0].get("broadcasts") or "the warm-up"
    return (
        f"stalls in {len(stalled)}/{len(rows)} reps: {completed:g} of {broadcasts} "
        "broadcasts reached every healthy client"
    )


def slow_section(meta: dict[str, Any], records: Records, fws: list[str]) -> list[str]:
    found = sizes(records, "slow-")
    if not found:
        return []
    lines = [
        "## Slow consumer",
        "",
        "The fan-out above with 1% of the clients not reading: each of them asks the "
        "server for 16 MiB (`fill`, sent by its own handler) and stops reading, so the "
        "socket to it, the kernel's buffers and the server's transport buffer are full and "
        "any further `await send` to it waits. The healthy clients' latency (the last "
        "healthy client) is compared with the same framework's fan-out to as many "
        "clients without the slow ones. A broadcast that does not reach every healthy "
        "client within the timeout stops the run: a stall.",
        "",
        "| framework | healthy / slow | healthy p50 ms | healthy p99 ms | p99 without "
        "slow clients | x | deliveries/s | server CPU % | client CPU % | result |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, _size in found:
        by_fw = records[key]
        for fw in fws:
            rows = by_fw.get(fw, [])
            if not rows:
                continue
            first = rows[0]
            total = int(first["size"]) + int(first.get("slow", 0))
            ref = med(good(records.get(f"fanout-{total}", {}).get(fw, [])), "p99_ms")
            ok = good(rows)
            p99 = med(ok, "p99_ms")
            verdict = slow_verdict(rows) or (f"{len(ok)} reps" + failed_note(rows))
            lines.append(
                f"| {name(meta, fw)} | {first['size']} / {first.get('slow', 0)} "
                f"| {fmt(med(ok, 'p50_ms'))} | {fmt(p99)} | {fmt(ref)} | {ratio(p99, ref)} "
                f"| {fmt(med(ok, 'deliveries_per_s'))} | {cpu_cells(ok)} | {verdict} |"
            )
    return [*lines, ""]


def tally_cell(rows: list[dict[str, Any]], key: str) -> str:
    """A count per outcome (``key`` holds a dict of counts, or a string), every repetition:
    "10 open" when all agree, else each repetition's, separated by semicolons."""
    per_rep = []
    for row in rows:
        value = row.get(key)
        if isinstance(value, dict):
            per_rep.append(", ".join(f"{n} {what}" for what, n in sorted(value.items())) or "none")
        else:
            per_rep.append(str(value))
    if not per_rep:
        return "-"
    if len(set(per_rep)) == 1:
        return per_rep[0] + (f" (each of {len(per_rep)} reps)" if len(per_rep) > 1 else "")
    return "; ".join(per_rep)


def flood_title(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    first = rows[0]
    stalled = int(first.get("stalled_members", 0))
    members = int(first["size"]) + stalled
    messages = int(first.get("messages", 0))
    size = int(first.get("message_bytes", 0))
    who = f"{members:,} member{'s' if members > 1 else ''}"
    if stalled:
        who += f", {stalled} of which never read{'s' if stalled == 1 else ''}"
    return f"{messages:,} messages of {size // 1024} KiB to {who}"


def fate_cell(rows: list[dict[str, Any]]) -> str:
    """The stalled members' fate, and when during the flood the server ended their TCP
    connections (the kernel's view: a reset or a FIN), over every repetition."""
    cell = tally_cell(rows, "stalled_fate")
    left = [x for r in rows for x in r.get("stalled_left_s") or []]
    if left:
        how = sorted({k for r in rows for k in (r.get("stalled_tcp") or {})})
        cell += (
            f"; closed by the server during the flood, {fmt(min(left))}-{fmt(max(left))} s "
            f"after the trigger ({len(left)} in {len(rows)} reps; its end: {', '.join(how)})"
        )
    return cell


def flood_bounds(spec: dict[str, Any]) -> str:
    text = f"Quiet after {spec.get('quiet', '?')} s, timeout {spec.get('timeout', '?')} s"
    if spec.get("stalled"):
        text += f"; the stalled members read again for {spec.get('fate_wait', '?')} s"
    return text + "."


def flood_section(
    meta: dict[str, Any], records: Records, fws: list[str], title: str = "Flood"
) -> list[str]:
    found = sizes(records, "flood-")
    if not found:
        return []
    lines = [f"## {title}", ""]
    if title != "Flood":  # a kept run: its own command, date, revision and load
        loads = [r["load"] for by_fw in records.values() for rs in by_fw.values() for r in rs]
        machine = meta.get("machine", {})
        lines += [
            f"Made by `{meta.get('command', '?')}` on {meta.get('date', '?')} (git "
            f"{meta.get('git', '?')}), {meta.get('reps', '?')} interleaved repetitions, "
            f"on the machine above ({machine.get('cpus', '?')} cores, servers on core "
            f"{machine.get('server_core', '?')}, load generator on core "
            f"{machine.get('client_core', '?')}). Load average at start: "
            f"`{meta.get('load_at_start', '?')}`; 1-minute load at the start of each unit: "
            f"{fmt(min(loads))}-{fmt(max(loads))} (the machine is shared: another "
            "engineer's unit tests ran on it at times).",
            "",
        ]
    lines += [
        "Open loop: on one text message from the control connection, a handler publishes "
        "N binary messages of S bytes to the group **as fast as the framework lets it**, "
        "never waiting for receipts (raw ASGI and Starlette: a loop over the members of "
        "`await send` / `await ws.send_bytes` per message, as in their fan-out; nexios "
        "3.12: `ChannelBox.group_send` per message; ours: `await app.channels.publish` per "
        "message). Each message's first 8 bytes are its number; every reading member "
        "counts what it gets (one bit per number: duplicates and out-of-order arrivals "
        "show). The members that never read asked for a 4 KiB receive buffer and paused "
        "reading. The flood ends when every reader has every message (*complete*), or "
        "when nothing arrived for a while (*quiet*, after the seconds in the table's "
        "heading) while the server was idle (it stalled, or dropped the rest), or at the "
        "timeout (*timeout*, in the heading; then *lost* counts what had not arrived "
        "yet). The reading members are all in the one load-generator process: they read "
        "as fast as it can (its CPU per delivery is beside the server's).",
        "",
        "- deliveries/s: messages received by the reading members / time from the trigger "
        "to the last one's arrival;",
        "- lost: for each reader, N minus the distinct messages it got: the total (of N x "
        "readers), the worst reader, and how many readers lost any;",
        "- publisher done: when the handler's loop ended (it answers the control "
        "connection), from the trigger; *never* if not before the end;",
        "- CPU µs/delivery: the server's and the client's CPU time from the trigger to the "
        "end, per message received; peak RSS: the server's `VmHWM` at the end (its RSS "
        "before the flood in brackets);",
        "- the stalled members' fate: after the flood they read again (for the seconds "
        "in the heading): *open* "
        "(the server neither closed nor dropped them), *closed CODE* (a close frame), or "
        "*closed, no close frame* (a reset or a bare FIN); and, watched during the flood "
        "from the server's end of their sockets (`/proc/net/tcp`, every second: a member "
        "that does not read cannot see a close), when the server closed or aborted them.",
        "",
    ]
    for key, _size in found:
        by_fw = records[key]
        first = next(iter(by_fw.values()))
        spec = meta.get("workloads", {}).get(key, {})
        lines += [
            f"### {key}: {flood_title(meta, first)}",
            "",
            flood_bounds(spec),
            "",
            "| framework | deliveries/s (min-max) | lost by readers (min-max) | worst reader "
            "| readers that lost | out of order / dup. | end | publisher done, s "
            "| CPU µs/delivery, server / client | server peak RSS, MiB (before) "
            "| stalled members' fate | readers closed by the server | reps |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for fw in fws:
            rows = by_fw.get(fw, [])
            if not rows:
                continue
            ok = [r for r in rows if r.get("ok")]
            expected = med(ok, "expected")
            done = [r.get("publisher_done_s") for r in ok]
            done_cell = fmt(med(ok, "publisher_done_s"))
            never = sum(1 for d in done if d is None)
            if never:
                done_cell = f"never in {never}/{len(ok)} reps" + (
                    f"; {done_cell}" if never < len(ok) else ""
                )
            disorder = f"{fmt(med(ok, 'out_of_order'), 0)} / {fmt(med(ok, 'duplicates'), 0)}"
            lines.append(
                f"| {name(meta, fw)} | {fmt(med(ok, 'deliveries_per_s'))}"
                f"{spread(ok, 'deliveries_per_s')} "
                f"| **{fmt(med(ok, 'lost_total'), 0)}**{spread(ok, 'lost_total', 0)} "
                f"of {fmt(expected, 0)} "
                f"| {fmt(med(ok, 'lost_worst'), 0)} | {fmt(med(ok, 'lost_members'), 0)} "
                f"| {disorder} | {tally_cell(ok, 'end')} | {done_cell} "
                f"| {fmt(med(ok, 'cpu_us_per_delivery'), 2)} / "
                f"{fmt(med(ok, 'client_us_per_delivery'), 2)} "
                f"| {fmt(med(ok, 'rss_peak') / 2**20)} ({fmt(med(ok, 'rss_before') / 2**20)}) "
                f"| {fate_cell(ok) if ok[0].get('stalled_members') else '-'} "
                f"| {tally_cell(ok, 'readers_closed')} | {len(ok)}{failed_note(rows)} |"
                if ok
                else f"| {name(meta, fw)} | - | | | | | | | | | | | 0{failed_note(rows)} |"
            )
        lines.append("")
    return lines


def kept_runs(markdown: Path) -> list[str]:
    """The sections of the runs kept beside the full run's (``KEPT_RUNS``), in RESULTS.md."""
    lines: list[str] = []
    if markdown.name != "RESULTS.md":
        return lines
    for filename, title in KEPT_RUNS:
        path = BENCH / filename
        if path.exists():
            meta, records = load(path)
            lines += flood_section(meta, records, frameworks(meta, records), title)
            notes = path.with_suffix(".notes.md")
            if notes.exists():
                lines += [notes.read_text().strip(), ""]
            lines += [f"Raw data: `{_rel(path)}`.", ""]
    return lines


# ---------------------------------------------------------------------- targets, checks


def targets(records: Records) -> list[str]:
    lines = ["| target | figure | met |", "|---|---|---|"]

    def both(key: str, metric: str) -> tuple[float, float]:
        by_fw = records.get(key, {})
        return med(good(by_fw.get("nexios", [])), metric), med(good(by_fw.get("raw", [])), metric)

    if "echo" in records:
        ours, raw = both("echo", "msgs_per_s")
        r = ours / raw if raw else math.nan
        lines.append(
            f"| echo: nexios ≥ 0.95x raw ASGI messages/s | {r:.3f}x "
            f"({fmt(ours)} vs {fmt(raw)}) | {'yes' if r >= 0.95 else '**no**'} |"
        )
    for key, size in sizes(records, "fanout-"):
        ours, raw = both(key, "deliveries_per_s")
        r = ours / raw if raw else math.nan
        p50o, p50r = both(key, "p50_ms")
        lines.append(
            f"| fan-out {size:,}: nexios at least as fast as the raw ASGI loop "
            f"| {r:.3f}x deliveries/s; last-client p50 {fmt(p50o)} vs {fmt(p50r)} ms "
            f"| {'yes' if r >= 1.0 else '**no**'} |"
        )
    # Diagnostic rows: the framework's own cost, the raw app on the same (nexios') protocol.
    for key in ["echo"] + [k for k, _ in sizes(records, "fanout-")]:
        by_fw = records.get(key, {})
        if not by_fw.get("raw-nexios"):
            continue
        rate = "msgs_per_s" if key == "echo" else "deliveries_per_s"
        ours = cpu_per_message(good(by_fw.get("nexios", [])), rate)
        bare = cpu_per_message(good(by_fw["raw-nexios"]), rate)
        lines.append(
            f"| {key}, same protocol: server CPU per message, nexios vs the raw ASGI app "
            f"on nexios' protocol | {fmt(ours, 2)} vs {fmt(bare, 2)} µs ({ratio(ours, bare)}) "
            f"| reported |"
        )
    for key, size in sizes(records, "idle-"):
        ours, raw = both(key, "bytes_per_conn")
        lines.append(
            f"| idle {size:,}: report bytes per connection | nexios {fmt(ours)} B, "
            f"raw {fmt(raw)} B ({ratio(ours, raw)}) | reported |"
        )
    for key, size in sizes(records, "slow-"):
        rows = records[key].get("nexios", [])
        if not rows:
            continue
        total = size + int(rows[0].get("slow", 0))
        ours = med(good(rows), "p99_ms")
        ref = med(good(records.get(f"fanout-{total}", {}).get("nexios", [])), "p99_ms")
        r = ours / ref if ref else math.nan
        stalled = slow_verdict(rows)
        met = "yes" if r <= 2.0 and not stalled else "**no**"
        lines.append(
            f"| slow consumer: healthy p99 within 2x of the run without the slow clients "
            f"| {fmt(ours)} ms vs {fmt(ref)} ms = {r:.2f}x {stalled} | {met} |"
        )
    for key, _size in sizes(records, "flood-"):
        rows = [r for r in records[key].get("nexios", []) if r.get("ok")]
        if not rows:
            continue
        lost = med(rows, "lost_total")
        lines.append(
            f"| {key}: no message lost by a member that reads (issue 11) "
            f"| {fmt(lost, 0)} of {fmt(med(rows, 'expected'), 0)} lost, "
            f"{fmt(med(rows, 'lost_members'), 0)} readers lost some "
            f"| {'yes' if lost == 0 else '**no**'} |"
        )
    return [*lines, ""]


def client_check(records: Records) -> list[str]:
    """Is the load generator the bottleneck? Its CPU against the server's, per row."""
    worst = (0.0, "")
    above = []
    rows = 0
    for key, by_fw in records.items():
        if key.startswith(("idle-", "flood-")):
            continue  # idle: nothing is sent; flood: its window ends with idle seconds
        for fw, reps in by_fw.items():
            ok = good(reps)
            client, server = med(ok, "client_cpu"), med(ok, "server_cpu")
            if math.isnan(client) or math.isnan(server) or not server:
                continue
            rows += 1
            share = client / server
            if share > worst[0]:
                worst = (share, f"{key}, {fw}: client {fmt(client)}% vs server {fmt(server)}%")
            if client >= server:
                above.append(f"{key} / {fw}")
    if not rows:
        return []
    verdict = (
        "The client used less CPU than the server in every row"
        if not above
        else f"**The client used as much CPU as the server in: {', '.join(above)}**"
    )
    return [
        "## Is the client the bottleneck?",
        "",
        f"{verdict} (medians, echo, fan-out, slow and cross-process rows; the client is "
        f"one process on its own core). Highest client/server ratio: "
        f"{worst[0]:.2f} ({worst[1]}).",
        "",
    ]


def header(meta: dict[str, Any]) -> list[str]:
    machine = meta.get("machine", {})
    lines = [
        "# nexios benchmark results",
        "",
        f"Made by `{meta.get('command', 'python -m bench')}` on {meta.get('date', '?')} "
        f"(git {meta.get('git', '?')}), {meta.get('reps', '?')} interleaved repetitions; "
        "every figure is the median of the repetitions.",
        "",
        f"Machine: {machine.get('cpus', '?')} cores ({machine.get('cpu', '?')}), Linux "
        f"{machine.get('kernel', '?')}; load average at start: "
        f"`{meta.get('load_at_start', '?')}`. Servers pinned to core "
        f"{machine.get('server_core', '?')}, the load generator (one process, uvloop, "
        f"picows) to core {machine.get('client_core', '?')} (`taskset`). CPU % is percent "
        "of one core over the measured window (100 = one core busy).",
        "",
        "Every server: uvicorn with httptools and uvloop, log level WARNING, no access "
        'log. Raw ASGI, Starlette and nexios 3.12: uvicorn\'s `ws="websockets-sansio"`; '
        "ours: `nexios.server.make_config` (what `app.run()` uses): nexios' protocol, "
        "a subclass of that same sans-I/O protocol. Two diagnostic rows, where present, "
        "separate the protocol from the framework: our app on uvicorn's protocol, and "
        "the raw ASGI app on nexios' protocol. Versions:",
        "",
    ]
    for fw, versions in meta.get("versions", {}).items():
        items = ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))
        lines.append(f"- {meta.get('frameworks', {}).get(fw, fw)}: {items}")
    return [*lines, ""]


def render(jsonl: Path, markdown: Path, *, plot: bool = True) -> None:
    meta, records = load(jsonl)
    fws = frameworks(meta, records)
    lines = header(meta)
    lines += ["## Targets", "", *targets(records)]
    lines += echo_section(meta, records, fws)
    lines += fanout_section(meta, records, fws)
    png = markdown.parent / ("fanout.png" if markdown.name == "RESULTS.md" else "fanout-smoke.png")
    picture = f"![fan-out latency against connections]({png.name})"
    if plot and sizes(records, "fanout-"):
        made = make_plot(meta, records, fws, png)
        lines += [picture if made is True else str(made), ""]
    elif sizes(records, "fanout-") and png.exists():  # --no-plot: the one drawn before
        lines += [picture, ""]
    lines += slow_section(meta, records, fws)
    lines += idle_section(meta, records, fws)
    lines += cross_section(meta, records, fws)
    lines += flood_section(meta, records, fws)
    lines += client_check(records)
    if (BENCH / "PROFILES.md").exists() and markdown.name == "RESULTS.md":
        lines += [
            "Where the time goes, what was changed to meet the targets and what each "
            "change bought: [PROFILES.md](PROFILES.md) (py-spy profiles, garbage-collection "
            "logs).",
            "",
        ]
    lines += [
        "Raw data: `" + _rel(jsonl) + "` (one JSON line per repetition, the first line "
        "describes the run).",
        "",
    ]
    lines += resume_section(markdown)
    lines += kept_runs(markdown)
    markdown.write_text("\n".join(lines))


RESUME_RUNS = BENCH / "resume.jsonl"


def resume_section(markdown: Path) -> list[str]:
    """The resume cost (``python -m bench.resume``, one JSON line per run in
    ``bench/resume.jsonl``): only nexios resumes, so a table of its own."""
    if markdown.name != "RESULTS.md" or not RESUME_RUNS.exists():
        return []
    rows = [json.loads(line) for line in RESUME_RUNS.read_text().splitlines() if line.strip()]
    lines = [
        "## Resume cost",
        "",
        "A member that rejoins a group with `ws.join(group, since=position)` "
        f"{rows[0]['behind']:,} messages behind: the time from its handshake to the last "
        "replayed message, and the server's CPU per replayed message (`python -m "
        "bench.resume [--redis]`: server on core 0, picows client on core 1; each run "
        "replays to a new connection several times, in order and once each, checked). On "
        "Redis the group has no member when the messages are published, so the server's "
        "copy of the log starts at the top and the replay reads the Redis stream.",
        "",
        "| broker | behind | message | median | range | server CPU per message | git | when |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['broker']} | {row['behind']:,} | {row['size'] // 1024} KiB | "
            f"{row['median_ms']} ms | {row['min_ms']}-{row['max_ms']} ms | "
            f"{row['server_cpu_us_per_message']} µs | {row['git']} | {row['at']} |"
        )
    lines += ["", f"Raw data: `{_rel(RESUME_RUNS)}`.", ""]
    return lines


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(BENCH.parent))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------- plot


def make_plot(meta: dict[str, Any], records: Records, fws: list[str], png: Path) -> Any:
    """Draw with matplotlib from a venv of its own (``bench/.venvs/plot``). True, or why not."""
    series = []
    for fw in fws:
        points = []
        for key, size in sizes(records, "fanout-"):
            ok = good(records[key].get(fw, []))
            if ok:
                points.append([size, med(ok, "p50_ms"), med(ok, "p99_ms")])
        if points:
            series.append({"label": name(meta, fw), "points": points})
    spec = next((v for k, v in meta.get("workloads", {}).items() if k.startswith("fanout-")), {})
    title = f"Fan-out: {spec.get('broadcasts', '?')} broadcasts of 64 bytes (medians)"
    try:
        from bench.run import PLOT, VENVS, ensure_venv

        python = ensure_venv(VENVS / "plot", [PLOT], VENVS / "plot" / "bin" / "python")
        done = subprocess.run(
            [python, "-I", str(BENCH / "plot.py"), str(png)],
            input=json.dumps({"title": title, "series": series}),
            text=True,
            capture_output=True,
            timeout=120,
        )
    except Exception as exc:
        return f"(no plot: {type(exc).__name__}: {exc})"
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        return f"(no plot: plot.py failed: {done.stderr.strip()[-200:]})"
    return True


# ---------------------------------------------------------------------- smoke


def smoke_problems(jsonl: Path) -> list[str]:
    """What shows that the harness is broken (never a speed): failures, missing figures."""
    meta, records = load(jsonl)
    problems = []
    expected = {
        "echo": "msgs_per_s",
        "fanout": "deliveries_per_s",
        "idle": "bytes_per_conn",
        "flood": "deliveries_per_s",
    }
    for key, by_fw in records.items():
        for fw, rows in by_fw.items():
            for row in rows:
                where = f"{key} / {fw}"
                if not row.get("ok"):
                    problems.append(f"{where}: {row.get('error')}")
                    continue
                if row.get("stalled"):
                    if not key.startswith("slow-"):
                        problems.append(f"{where}: stalled ({row.get('completed')} done)")
                    continue
                metric = expected[row["kind"]]
                value = row.get(metric)
                if not isinstance(value, int | float) or math.isnan(value) or value <= 0:
                    problems.append(f"{where}: no {metric} ({value!r})")
                if "server_cpu" not in row:
                    problems.append(f"{where}: no server CPU")
                if row.get("unknown") or (row["kind"] == "flood" and not row.get("rss_peak")):
                    problems.append(f"{where}: messages numbered outside the flood, or no RSS")
    wanted = set(meta.get("workloads", {}))
    missing = wanted - set(records)
    if missing and not all(k.startswith("cross-") for k in missing):
        problems.append(f"workloads with no result: {sorted(missing)}")
    return problems
