"""Retention heatmap of a cohort report: cohorts down, months since signup across.

Reads a report CSV (`cohort_summary_YYYY-MM-DD.csv`, data contract section 6); writes a PNG,
atomically. Command line: `python -m tasks.heatmap CSV [PNG]` (PNG defaults to CSV with .png).
"""

import csv
import os
import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers or in containers; must precede the pyplot import
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import PercentFormatter  # noqa: E402

COLUMNS = ["cohort_month", "months_since_signup", "cohort_size", "active_users", "retention_rate"]

# Matplotlib stamps its version into PNGs; without it the same report gives the same bytes.
PNG_METADATA = {"Software": None}


def read_report(csv_path) -> list:
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != COLUMNS:
            raise ValueError(f"{csv_path}: header must be {','.join(COLUMNS)}, got {reader.fieldnames}")
        return [
            {
                "cohort_month": row["cohort_month"],
                "months_since_signup": int(row["months_since_signup"]),
                "cohort_size": int(row["cohort_size"]),
                "retention_rate": float(row["retention_rate"]),
            }
            for row in reader
        ]


def report_date(csv_path) -> str:
    """The date in `cohort_summary_YYYY-MM-DD.csv`, or the bare file name for any other name."""
    name = Path(csv_path).name
    match = re.fullmatch(r"cohort_summary_(\d{4}-\d{2}-\d{2})\.csv", name)
    return match.group(1) if match else name


def write_heatmap(csv_path, png_path) -> Path:
    """Draw the report at `csv_path` into `png_path`; returns `png_path`."""
    rows = read_report(csv_path)
    title = f"Retention by signup cohort, report of {report_date(csv_path)}"
    fig = _empty_figure(title) if not rows else _heatmap_figure(rows, title)
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    # Same folder, so os.replace is a rename on one filesystem: readers see the old or the new
    # file, never half of one. The pid keeps concurrent Luigi workers off each other's temp file.
    tmp = png_path.with_name(f".{png_path.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=100, metadata=PNG_METADATA)
        os.replace(tmp, png_path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return png_path


def _empty_figure(title):
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.set_title(title)
    ax.text(0.5, 0.5, "no cohorts yet", ha="center", va="center", fontsize=14, color="dimgray")
    ax.set_axis_off()
    return fig


def _heatmap_figure(rows, title):
    cohorts = sorted({row["cohort_month"] for row in rows})
    months = max(row["months_since_signup"] for row in rows) + 1
    # NaN marks months a younger cohort has not reached yet; they are drawn blank, not as 0 %.
    rates = np.full((len(cohorts), months), np.nan)
    sizes = {}
    for row in rows:
        rates[cohorts.index(row["cohort_month"]), row["months_since_signup"]] = row["retention_rate"]
        sizes[row["cohort_month"]] = row["cohort_size"]

    # The figure grows with the grid so cell labels stay legible for long histories.
    fig, ax = plt.subplots(figsize=(max(6.0, 2.5 + 0.75 * months), max(3.0, 1.5 + 0.45 * len(cohorts))))
    cmap = plt.get_cmap("Blues").with_extremes(bad="whitesmoke")
    image = ax.imshow(np.ma.masked_invalid(rates), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    for y, x in zip(*np.nonzero(~np.isnan(rates))):
        rate = rates[y, x]
        ax.text(x, y, f"{rate:.1%}", ha="center", va="center", fontsize=8,
                color="white" if rate > 0.6 else "black")  # dark cells need light text

    ax.set_title(title)
    ax.set_xlabel("months since signup")
    ax.set_ylabel("signup cohort (users)")
    ax.set_xticks(range(months))
    ax.set_yticks(range(len(cohorts)), [f"{c} ({sizes[c]})" for c in cohorts])
    fig.colorbar(image, ax=ax, label="retention rate", format=PercentFormatter(1.0))
    fig.tight_layout()
    return fig


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (1, 2):
        print("usage: python -m tasks.heatmap CSV [PNG]", file=sys.stderr)
        return 2
    csv_path = Path(args[0])
    png_path = Path(args[1]) if len(args) == 2 else csv_path.with_suffix(".png")
    print(write_heatmap(csv_path, png_path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
