"""The README's picture of the Luigi UI (`make docs`): a two-day backfill of the bundled sample on a
luigid of its own, photographed in headless Chromium.

Reads the bundled sample in data/; writes docs/luigi-ui.png. Everything else (the embedded
PostgreSQL, luigid, the pipeline's data_dir) lives in a temporary folder, removed at the end with
the servers it started stopped. Needs Debian's chromium (`make browser`) and playwright (dev tools).

    python -m tools.screenshot [--out docs/luigi-ui.png]
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def photograph(port: int, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium is not installed: run `make browser` first")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(f"http://localhost:{port}/static/visualiser/index.html#tab=tasks&family=RunEtl")
            page.wait_for_selector("tbody tr:has-text('RunEtl')", timeout=30_000)
            page.screenshot(path=str(out))
        finally:
            browser.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "luigi-ui.png")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="etl-screenshot-"))
    port = free_port()
    (work / "luigi.cfg").write_text(f"[core]\nscheduler_host = localhost\nscheduler_port = {port}\n")
    env = {
        **os.environ,
        "ETL_DATA_DIR": str(work / "data"),
        "LUIGI_CONFIG_PATH": str(work / "luigi.cfg"),
        "ETL_SOURCE_URL": str(ROOT / "data"),
    }
    env.pop("ETL_DATABASE_URL", None)

    def cli(*arguments):
        return subprocess.run(
            [sys.executable, "-m", "tasks", *arguments], cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL
        )

    try:
        cli("luigid-start")
        cli("backfill", "2024-04-29", "2024-04-30", "--workers", "2")
        photograph(port, args.out)
        print(f"wrote {args.out}")
    finally:
        subprocess.run([sys.executable, "-m", "tasks", "clean"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
