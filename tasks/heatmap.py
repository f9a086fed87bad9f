"""Retention heatmap of a cohort report: cohorts down, months since signup across.

Reads a report's CSV text (data contract section 6); returns the picture as PNG (at least 1600 px
wide, for a slide; at most 4800 px either way, MAX_INCHES) or SVG bytes, the same bytes for the
same report. Command line:
`python -m tasks.heatmap CSV [OUT.png|OUT.svg]` writes a file next to the CSV by default.
"""

import csv
import io
import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers or in containers; must precede the pyplot import
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import PercentFormatter  # noqa: E402

COLUMNS = ["cohort_month", "months_since_signup", "cohort_size", "active_users", "retention_rate"]
WIDTH_INCHES = 16  # at DPI, 1600 px: readable on a slide
DPI = 100
# A grid grows with the months it spans, and one valid event dated 1970 spans 650 of them: past
# this size, in either direction, the grid is shrunk to fit, its cells unlabelled and one row or
# column in several named. Unbounded, a year-1 event asked for a picture of 24 GB.
MAX_INCHES = 48
# Names along a shrunk axis: at most this many, evenly spaced.
MAX_TICKS = 40

# Matplotlib stamps its version and the time into files; without them the same report gives the
# same bytes. The SVG's element ids come from a hash salted with this fixed text.
METADATA = {"png": {"Software": None}, "svg": {"Date": None, "Creator": None}}
matplotlib.rcParams["svg.hashsalt"] = "product-events-etl"


def read_report(csv_text: str) -> list:
    reader = csv.DictReader(io.StringIO(csv_text))
    if reader.fieldnames != COLUMNS:
        raise ValueError(f"a report's header must be {','.join(COLUMNS)}, got {reader.fieldnames}")
    return [
        {
            "cohort_month": row["cohort_month"],
            "months_since_signup": int(row["months_since_signup"]),
            "cohort_size": int(row["cohort_size"]),
            "retention_rate": float(row["retention_rate"]),
        }
        for row in reader
    ]


def render(csv_text: str, report_date: str, fmt: str = "png") -> bytes:
    """The heatmap of a report as PNG or SVG bytes."""
    rows = read_report(csv_text)
    title = f"Retention by signup cohort, report of {report_date}"
    fig = _empty_figure(title) if not rows else _heatmap_figure(rows, title)
    out = io.BytesIO()
    try:
        fig.savefig(out, format=fmt, dpi=DPI, metadata=METADATA[fmt])
    finally:
        plt.close(fig)
    return out.getvalue()


def _empty_figure(title):
    fig, ax = plt.subplots(figsize=(WIDTH_INCHES, 6))
    ax.set_title(title, fontsize=18)
    ax.text(0.5, 0.5, "no cohorts yet", ha="center", va="center", fontsize=24, color="dimgray")
    ax.set_axis_off()
    return fig


def _heatmap_figure(rows, title):
    cohorts = sorted({row["cohort_month"] for row in rows})
    months = max(row["months_since_signup"] for row in rows) + 1
    # NaN marks months a younger cohort has not reached yet; they are drawn blank, not as 0 %.
    rates = np.full((len(cohorts), months), np.nan)
    line_of = {cohort: line for line, cohort in enumerate(cohorts)}
    sizes = {}
    for row in rows:
        rates[line_of[row["cohort_month"]], row["months_since_signup"]] = row["retention_rate"]
        sizes[row["cohort_month"]] = row["cohort_size"]

    # At least slide width; wider and taller with the grid so cell labels stay legible, up to a bound.
    width, height = max(WIDTH_INCHES, 3 + 0.9 * months), max(6.0, 2 + 0.5 * len(cohorts))
    labelled = width <= MAX_INCHES and height <= MAX_INCHES
    fig, ax = plt.subplots(figsize=(min(width, MAX_INCHES), min(height, MAX_INCHES)))
    cmap = plt.get_cmap("Blues").with_extremes(bad="whitesmoke")
    image = ax.imshow(np.ma.masked_invalid(rates), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    if labelled:
        for y, x in zip(*np.nonzero(~np.isnan(rates)), strict=True):
            rate = rates[y, x]
            ax.text(
                x, y, f"{rate:.1%}", ha="center", va="center", fontsize=11, color="white" if rate > 0.6 else "black"
            )  # dark cells need light text

    ax.set_title(title, fontsize=18)
    ax.set_xlabel("months since signup", fontsize=13)
    ax.set_ylabel("signup cohort (users)", fontsize=13)
    names = [f"{c} ({sizes[c]})" for c in cohorts]
    columns, lines = _named(months, width <= MAX_INCHES), _named(len(cohorts), height <= MAX_INCHES)
    ax.set_xticks(columns)
    ax.set_yticks(lines, [names[line] for line in lines])
    ax.tick_params(labelsize=11)
    fig.colorbar(image, ax=ax, label="retention rate", format=PercentFormatter(1.0))
    fig.tight_layout()
    return fig


def _named(count: int, every: bool) -> range:
    """The positions of an axis of `count` rows or columns that get a name: every one, or evenly
    spaced ones, at most MAX_TICKS."""
    return range(0, count, 1 if every else -(-count // MAX_TICKS))


def report_date(csv_path) -> str:
    """The date in `cohort_summary_YYYY-MM-DD.csv`, or the bare file name for any other name."""
    name = Path(csv_path).name
    match = re.fullmatch(r"cohort_summary_(\d{4}-\d{2}-\d{2})\.csv", name)
    return match.group(1) if match else name


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (1, 2):
        print("usage: python -m tasks.heatmap CSV [OUT.png|OUT.svg]", file=sys.stderr)
        return 2
    csv_path = Path(args[0])
    out = Path(args[1]) if len(args) == 2 else csv_path.with_suffix(".png")
    out.write_bytes(render(csv_path.read_text(), report_date(csv_path), out.suffix.lstrip(".") or "png"))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
