"""Headless Chromium (Debian's package) driven by Playwright: log in to Airflow, read and capture the Campaigns pages.

Used by tests/ui/test_browser.py, and as a script for the pictures of docs/campaigns-page.md against `make ui`:

    python tests/browser.py --url http://localhost:8080 --user admin \
        --password-file var/airflow/simple_auth_manager_passwords.json.generated \
        --run-date 2026-10-30 --where "gender=F&age_band=25-34&arm=subject_1" --out tests/screenshots
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"


def number(text: str) -> float:
    """A number as the page shows it ("1,234.50", "12.5%" -> 0.125)."""
    clean = text.strip().replace(",", "")
    return float(clean[:-1]) / 100 if clean.endswith("%") else float(clean)


def launch(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])


def login(page, url: str, user: str, password: str) -> None:
    """Airflow's own login form (simple auth manager); afterwards the browser holds the UI's token cookie."""
    page.goto(f"{url}/auth/login")
    page.get_by_label("Username").fill(user)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(re.escape(url) + r"/(\?.*)?$"), timeout=30_000)


def table(page, selector: str) -> dict[str, dict[str, str]]:
    """Rows of a page table keyed by data-arm (or data-run), cells by data-field: the text shown."""
    return page.eval_on_selector_all(
        f"{selector} tr[data-arm], {selector} tr[data-run]",
        """rows => Object.fromEntries(rows.map(r => [r.dataset.arm || r.dataset.run,
            Object.fromEntries([...r.querySelectorAll('[data-field]')].map(c => [c.dataset.field, c.innerText]))]))""",
    )


def fields(page, selector: str) -> dict[str, str]:
    """data-field cells inside one element: the text shown."""
    return page.eval_on_selector_all(
        f"{selector} [data-field]", "cells => Object.fromEntries(cells.map(c => [c.dataset.field, c.innerText]))"
    )


def capture(url: str, user: str, password: str, run_date: str, segment_query: str, out: Path) -> dict[str, Path]:
    """Screenshots of the Campaigns entry in the Airflow UI, the run page and a segment page."""
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    shots = {}
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        login(page, url, user, password)
        page.goto(f"{url}/plugin/campaigns")
        page.frame_locator("iframe").locator("#runs").wait_for()
        shots["nav"] = out / "campaigns-in-airflow.png"
        page.screenshot(path=str(shots["nav"]))
        page.goto(f"{url}/campaigns/runs/{run_date}")
        page.wait_for_load_state("networkidle")
        shots["run"] = out / "campaigns-run.png"
        page.screenshot(path=str(shots["run"]), full_page=True)
        page.goto(f"{url}/campaigns/runs/{run_date}/segments?{segment_query}")
        page.wait_for_load_state("networkidle")
        shots["segment"] = out / "campaigns-segment.png"
        page.screenshot(path=str(shots["segment"]), full_page=True)
        browser.close()
    return shots


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://localhost:8080")
    parser.add_argument("--user", default="admin")
    parser.add_argument("--password-file", type=Path, required=True)
    parser.add_argument("--run-date", required=True)
    parser.add_argument("--where", default="", help="the segment page's query string")
    parser.add_argument("--out", type=Path, default=Path("tests/screenshots"))
    args = parser.parse_args()
    password = json.loads(args.password_file.read_text())[args.user]
    for name, path in capture(args.url, args.user, password, args.run_date, args.where, args.out).items():
        print(name, path)
