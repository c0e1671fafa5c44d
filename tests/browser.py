"""Headless Chromium for the tests that look at the run page: Debian's package, installed by the
test set-up where it is missing, driven by Playwright (which downloads no browser of its own here)."""

from __future__ import annotations

import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

CHROMIUM = "/usr/bin/chromium"
# the flags a closed machine needs: no background connections, no component updates
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def ensure_chromium() -> str:
    """Debian's chromium, installed with apt-get when it is not there yet (the test machine is root)."""
    if not Path(CHROMIUM).exists():
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env, timeout=900, stdout=subprocess.DEVNULL)
    assert shutil.which(CHROMIUM) or Path(CHROMIUM).exists(), "chromium did not install"
    return CHROMIUM


@contextmanager
def open_page(html: Path) -> Iterator[tuple[Any, list[str], list[str]]]:
    """(the page, every URL it requested, every dialog it opened) for `html` loaded from the file system."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=ensure_chromium(), args=FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            requests: list[str] = []
            dialogs: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(html.resolve().as_uri())
            page.wait_for_selector("body[data-ready='1']", timeout=30_000)
            yield page, requests, dialogs
        finally:
            browser.close()


def shown_rows(page: Any, table: str) -> list[list[str]]:
    """The text of every body row of a table, cell by cell."""
    return page.eval_on_selector_all(f"#{table} tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))")


def check_page(html: Path, shots: Path, reason: str) -> None:
    """Load the page, filter to rejected pairs of `reason`, sort by grade, open the side-by-side view
    and screenshot each; no dialog, no request beyond the file system, every filtered row as asked."""
    with open_page(html) as (page, requests, dialogs):
        page.click("nav button[data-tab=pairs]")
        page.select_option("#p-status", "rejected")
        page.select_option("#p-reason", reason)
        rows = shown_rows(page, "p-table")
        assert rows and all(r[5] == "rejected" and r[6] == reason for r in rows), rows
        page.select_option("#p-sort", "score-desc")
        grades = [float(r[4]) for r in shown_rows(page, "p-table") if r[4] != "–"]
        assert grades == sorted(grades, reverse=True)
        page.screenshot(path=str(shots / "pairs-rejected.png"), full_page=False)
        page.click("nav button[data-tab=evals]")
        side = shown_rows(page, "e-table")
        assert side and all(len(r) == 5 for r in side), side
        page.screenshot(path=str(shots / "side-by-side.png"), full_page=False)
        assert not dialogs, dialogs
        assert all(u.startswith("file://") for u in requests), [u for u in requests if not u.startswith("file://")]
