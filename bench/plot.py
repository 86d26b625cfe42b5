"""Draw fan-out latency against connection count: ``python bench/plot.py OUT.png``.

Reads JSON on stdin: ``{"title", "series": [{"label", "points": [[connections, p50, p99]]}]}``;
runs in ``bench/.venvs/plot`` (matplotlib), which ``bench/report.py`` creates.
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main() -> None:
    data = json.load(sys.stdin)
    series = data["series"]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for i, s in enumerate(series):
        xs = [p[0] for p in s["points"]]
        color = f"C{i}"
        ax.plot(xs, [p[1] for p in s["points"]], "o-", color=color, label=f"{s['label']} p50")
        ax.plot(xs, [p[2] for p in s["points"]], "s--", color=color, label=f"{s['label']} p99")
    ax.set_xlabel("connections in the group")
    ax.set_ylabel("ms until the last client has the broadcast")
    ax.set_title(data["title"])
    ax.set_xscale("log")
    ax.set_yscale("log")
    xs = sorted({p[0] for s in series for p in s["points"]})
    ax.set_xticks(xs, [f"{x:,}" for x in xs])
    ax.minorticks_off()
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(sys.argv[1])


if __name__ == "__main__":
    main()
