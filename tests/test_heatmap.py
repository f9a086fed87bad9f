"""tasks.heatmap: a cohort report's CSV becomes a slide-wide PNG and an SVG, the same bytes every time."""

import io
import xml.etree.ElementTree as ET

import matplotlib.image

from tasks import heatmap

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HEADER = "cohort_month,months_since_signup,cohort_size,active_users,retention_rate\n"

# The data contract's worked example, cohort_summary_2024-03-06.csv.
WORKED_EXAMPLE = HEADER + (
    "2024-01,0,3,3,1.0000\n"
    "2024-01,1,3,2,0.6667\n"
    "2024-01,2,3,2,0.6667\n"
    "2024-02,0,1,1,1.0000\n"
    "2024-02,1,1,1,1.0000\n"
    "2024-03,0,1,1,1.0000\n"
)


def _png_size(content: bytes):
    assert content[:8] == PNG_MAGIC
    height, width = matplotlib.image.imread(io.BytesIO(content)).shape[:2]  # raises on a corrupt file
    return width, height


def test_heatmap_of_worked_example_is_slide_wide():
    width, height = _png_size(heatmap.render(WORKED_EXAMPLE, "2024-03-06", "png"))
    assert width >= 1600 and height >= 400


def test_svg_is_a_drawing_with_every_cell_label():
    svg = heatmap.render(WORKED_EXAMPLE, "2024-03-06", "svg")
    root = ET.fromstring(svg)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    text = svg.decode()
    # matplotlib draws text as glyph paths but keeps each string in a comment
    for label in ("100.0%", "66.7%", "2024-01 (3)", "2024-03 (1)", "report of 2024-03-06"):
        assert label in text


def test_same_report_gives_same_bytes():
    for fmt in ("png", "svg"):
        assert heatmap.render(WORKED_EXAMPLE, "2024-03-06", fmt) == heatmap.render(WORKED_EXAMPLE, "2024-03-06", fmt)


def test_empty_report_still_gives_a_picture():
    width, _ = _png_size(heatmap.render(HEADER, "2024-01-01", "png"))
    assert width >= 1600


def test_report_date_comes_from_the_file_name():
    assert heatmap.report_date("reports/cohort_summary_2024-03-05.csv") == "2024-03-05"
    assert heatmap.report_date("other.csv") == "other.csv"


def test_cli_writes_next_to_the_csv(tmp_path, capsys):
    csv_path = tmp_path / "cohort_summary_2024-03-06.csv"
    csv_path.write_text(WORKED_EXAMPLE)
    assert heatmap.main([str(csv_path)]) == 0
    png_path = tmp_path / "cohort_summary_2024-03-06.png"
    _png_size(png_path.read_bytes())
    assert capsys.readouterr().out.strip() == str(png_path)
    assert heatmap.main([str(csv_path), str(tmp_path / "out.svg")]) == 0
    assert (tmp_path / "out.svg").read_bytes().lstrip().startswith(b"<?xml")
    assert heatmap.main([]) == 2


def test_a_grid_of_centuries_is_drawn_within_bounds():
    # One valid event dated year 1 makes a cohort 24,000 months old; unbounded, its picture took
    # all the machine's memory. Shrunk to fit, with the cohorts still named.
    rows = [f"0001-01,{k},1,1,1.0000\n" for k in range(24_277)] + ["2024-01,0,2,1,0.5000\n"]
    png = heatmap.render(HEADER + "".join(rows), "2024-01-31", "png")
    width, height = _png_size(png)
    assert 1600 <= width <= heatmap.MAX_INCHES * heatmap.DPI and height <= heatmap.MAX_INCHES * heatmap.DPI
    svg = heatmap.render(HEADER + "".join(rows), "2024-01-31", "svg").decode()
    assert "0001-01 (1)" in svg and "2024-01 (2)" in svg
