"""tasks.heatmap: a cohort report CSV becomes a readable PNG, written atomically."""

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


def _read_png(path):
    assert path.read_bytes()[:8] == PNG_MAGIC
    return matplotlib.image.imread(path)  # raises on a truncated or corrupt file


def test_heatmap_of_worked_example(tmp_path):
    csv_path = tmp_path / "cohort_summary_2024-03-06.csv"
    csv_path.write_text(WORKED_EXAMPLE)
    png_path = tmp_path / "out" / "heatmap.png"

    assert heatmap.write_heatmap(csv_path, png_path) == png_path

    height, width = _read_png(png_path).shape[:2]
    assert width >= 400 and height >= 200
    assert [p.name for p in png_path.parent.iterdir()] == ["heatmap.png"]  # no temp file left


def test_same_report_gives_same_bytes(tmp_path):
    csv_path = tmp_path / "cohort_summary_2024-03-06.csv"
    csv_path.write_text(WORKED_EXAMPLE)
    first = heatmap.write_heatmap(csv_path, tmp_path / "a.png").read_bytes()
    second = heatmap.write_heatmap(csv_path, tmp_path / "b.png").read_bytes()
    assert first == second


def test_empty_report_still_gives_a_png(tmp_path):
    csv_path = tmp_path / "cohort_summary_2024-01-01.csv"
    csv_path.write_text(HEADER)
    png_path = tmp_path / "empty.png"

    heatmap.write_heatmap(csv_path, png_path)

    height, width = _read_png(png_path).shape[:2]
    assert width >= 400 and height >= 200


def test_report_date_comes_from_the_file_name():
    assert heatmap.report_date("reports/cohort_summary_2024-03-05.csv") == "2024-03-05"
    assert heatmap.report_date("other.csv") == "other.csv"


def test_cli_writes_png_next_to_csv(tmp_path, capsys):
    csv_path = tmp_path / "cohort_summary_2024-03-06.csv"
    csv_path.write_text(WORKED_EXAMPLE)

    assert heatmap.main([str(csv_path)]) == 0

    png_path = tmp_path / "cohort_summary_2024-03-06.png"
    _read_png(png_path)
    assert capsys.readouterr().out.strip() == str(png_path)
    assert heatmap.main([]) == 2
