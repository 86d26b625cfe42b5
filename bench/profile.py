"""Summarise a py-spy profile: ``python -m bench.profile FILE [--top N] [--match TEXT]``.

``python -m bench --profile ...`` records each server with ``py-spy record --format raw``
(collapsed stacks, one ``frame;frame;... count`` line each, frames ``func (file:line)``)
while the load generator runs, and calls ``summary`` on the file. Shown: the share of
samples in which a line is the innermost frame (self) and in which a function is on
the stack at all (inclusive), paths shortened to the package.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?):(?P<line>\d+)\)$")


def short(path: str) -> str:
    for marker in ("site-packages/", "/src/", "/bench/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def parse(path: Path) -> tuple[int, Counter[str], Counter[str], Counter[str]]:
    """Total samples; self samples per ``file:line func``; inclusive per function and
    per file (a function or file counted once per stack)."""
    total = 0
    self_lines: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    files: Counter[str] = Counter()
    for raw in path.read_text(errors="replace").splitlines():
        stack, _, count_text = raw.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        seen_funcs: set[str] = set()
        seen_files: set[str] = set()
        for frame in frames:
            m = FRAME.match(frame)
            if m is None:
                continue
            file = short(m["file"])
            func = f"{file}: {m['func']}"
            if func not in seen_funcs:
                seen_funcs.add(func)
                inclusive[func] += count
            top = file.split("/", 1)[0] if "/" in file else file
            if top not in seen_files:
                seen_files.add(top)
                files[top] += count
        m = FRAME.match(frames[-1])
        leaf = f"{short(m['file'])}:{m['line']} {m['func']}" if m else frames[-1]
        self_lines[leaf] += count
    return total, self_lines, inclusive, files


def summary(path: Path, top: int = 25, match: str | None = None) -> str:
    total, self_lines, inclusive, files = parse(path)
    if not total:
        return f"{path}: no samples"
    out = [f"{path.name}: {total} samples", "", "self (innermost frame), % of samples:"]
    for key, count in self_lines.most_common(top):
        out.append(f"  {100 * count / total:5.1f}%  {key}")
    out += ["", "inclusive (on the stack), % of samples:"]
    shown = 0
    for key, count in inclusive.most_common():
        if match and match not in key:
            continue
        out.append(f"  {100 * count / total:5.1f}%  {key}")
        shown += 1
        if shown >= top:
            break
    out += ["", "by package (on the stack), % of samples:"]
    for key, count in files.most_common(12):
        out.append(f"  {100 * count / total:5.1f}%  {key}")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("file", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--match", help="only inclusive entries containing this text")
    args = parser.parse_args()
    print(summary(args.file, args.top, args.match))


if __name__ == "__main__":
    main()
