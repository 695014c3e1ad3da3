"""`lfads ui` opened in headless Chromium: the compare view of a finished PBT run's members.

Real parts throughout: a real `lfads pbt` run, the real MLflow UI started by `lfads ui` on
loopback, Debian's chromium driven through chromedriver (selenium). Run by
`python3 dev.py tests_browser`. With LFADS_UI_SCREENSHOT=PATH the compare view is also saved as
a PNG there (docs/images/ui-compare.png is made that way).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from .helpers import TINY_DATA, lfads
from .mlflow_server import _healthy, _stop, free_port
from .test_pbt_e2e import pbt_config

pytestmark = pytest.mark.browser
webdriver = pytest.importorskip("selenium.webdriver")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = [
    *("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"),
    *("--disable-background-networking", "--disable-component-update", "--disable-sync"),
    "--window-size=1500,1000",
]


@pytest.fixture(scope="module")
def pbt_run(tmp_path_factory) -> tuple[Path, str, str]:
    root = tmp_path_factory.mktemp("ui")
    proc = lfads(
        "data", "synth", "lorenz", "tiny.h5", "--seed", "5", *TINY_DATA, "n_heldout=2", cwd=root
    )
    assert proc.returncode == 0, proc.stderr
    (root / "pbt.yaml").write_text(yaml.safe_dump(pbt_config(population=3, generations=2)))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    proc = lfads("pbt", "pbt.yaml", cwd=root, env={"MLFLOW_TRACKING_URI": uri})
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("pbt")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`lfads.kind` = 'pbt'")
    return root, uri, parent.info.run_id


@pytest.fixture(scope="module")
def ui_url(pbt_run) -> str:
    """`lfads ui` on a free loopback port, as a user starts it."""
    root, uri, _ = pbt_run
    port = free_port()
    log = open(root / "ui.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [sys.executable, "-m", "lfads_lightning", "ui", "--port", str(port), "--tracking-uri", uri],
        cwd=root,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while not _healthy(url):
        assert proc.poll() is None, (root / "ui.log").read_text()[-2000:]
        assert time.monotonic() < deadline, "lfads ui not healthy after 90 s"
        time.sleep(0.3)
    yield url
    _stop(proc)
    log.close()
    assert "MLflow UI for" in (root / "ui.log").read_text()


@pytest.fixture(scope="module")
def browser():
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip(
            "chromium/chromedriver not installed (apt-get install chromium chromium-driver)"
        )
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="lfads-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    with contextlib.suppress(Exception):
        driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


FIND = """
const find = (text) => [...document.querySelectorAll('a, th, td, div, span')].find(
  el => el.children.length <= 1 && el.textContent.trim() === text) || null;
const rowOf = (el) => el && (el.style.top ? el : el.parentElement.style.top ? el.parentElement : null);
const valuesGrid = (row) => {
  let section = row;
  while (section && section.querySelectorAll('.ReactVirtualized__Grid').length < 2)
    section = section.parentElement;
  const names = row.closest('.ReactVirtualized__Grid');
  return [...section.querySelectorAll('.ReactVirtualized__Grid')].find(g => g !== names);
};
"""
# Params and metrics are each two virtualised grids of absolutely positioned cells (names,
# values), scrolled together by the values grid; a value shares its name cell's CSS `top`. The
# run details above them form a plain table: there, rows are found by geometry.
SCROLL_TO_ROW = (
    FIND
    + """
const el = find(arguments[0]);
const row = rowOf(el);
if (!row) { if (el) el.scrollIntoView({block: 'center'}); return; }
const grid = valuesGrid(row);
grid.scrollIntoView({block: 'center'});
grid.scrollTop = Math.max(0, parseFloat(row.style.top) - 90);
"""
)
ROW_CELLS = (
    FIND
    + """
const el = find(arguments[0]);
const row = rowOf(el);
if (!el) return [];
if (row) {
  const cells = [...valuesGrid(row).querySelectorAll('div')].filter(
    d => d.style.top === row.style.top);
  cells.sort((a, b) => parseFloat(a.style.left) - parseFloat(b.style.left));
  return cells.map(d => d.textContent.trim());
}
const box = el.getBoundingClientRect();
const mid = (box.top + box.bottom) / 2;
const cells = [...document.querySelectorAll('div, span, td')].filter(c => {
  if (c.children.length !== 0) return false;
  const r = c.getBoundingClientRect();
  return r.left > box.right && r.top < mid && r.bottom > mid && c.textContent.trim() !== '';
});
cells.sort((a, b) => a.getBoundingClientRect().left - b.getBoundingClientRect().left);
return cells.map(c => c.textContent.trim());
"""
)


def row_cells(driver, name: str, n: int) -> list[str] | None:
    """The values of the first n runs in the row called `name` (scrolled into view first: the
    grids render only visible rows)."""
    driver.execute_script(SCROLL_TO_ROW, name)
    time.sleep(0.5)
    cells = driver.execute_script(ROW_CELLS, name, n)
    return cells[:n] if len(cells) >= n else None


def _wait(driver, predicate, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(
        f"timed out; page text: {driver.find_element('tag name', 'body').text[:2000]}"
    )


def test_compare_view_lists_members_with_co_bps(pbt_run, ui_url, browser):
    _, uri, parent = pbt_run
    client = MlflowClient(uri)
    exp_id = client.get_run(parent).info.experiment_id
    members = client.search_runs(
        [exp_id],
        f"tags.`mlflow.parentRunId` = '{parent}' and tags.`lfads.generation` = '1'",
        order_by=["tags.`lfads.member`"],
    )
    assert len(members) == 3
    ids = [r.info.run_id for r in members]
    query = urllib.parse.urlencode(
        {"runs": json.dumps(ids), "experiments": json.dumps([exp_id])}, safe='[]",'
    )
    browser.get(f"{ui_url}/#/compare-runs?{query}")
    _wait(browser, lambda: "Comparing 3 Runs" in browser.find_element("tag name", "body").text)
    names = _wait(browser, lambda: row_cells(browser, "Run Name:", 3))
    assert names == [r.info.run_name for r in members] == ["m00-g001", "m01-g001", "m02-g001"]
    shown = _wait(browser, lambda: row_cells(browser, "valid/co_bps", 3))
    assert len(shown) == 3, shown
    for text, run in zip(shown, members, strict=True):
        # The UI rounds (to about 3 decimals); the member's own last logged value, in run order.
        assert float(text) == pytest.approx(run.data.metrics["valid/co_bps"], abs=6e-4), shown
    # Generation and lineage are params of each member, so the compare view shows them too.
    assert _wait(browser, lambda: row_cells(browser, "pbt.generation", 3)) == ["1"] * 3
    lineage = [r.data.params["pbt.copied_from_member"] for r in members]
    assert row_cells(browser, "pbt.copied_from_member", 3) == lineage
    if os.environ.get("LFADS_UI_SCREENSHOT"):
        save_screenshot_at_row(browser, "valid/co_bps", os.environ["LFADS_UI_SCREENSHOT"])


def save_screenshot_at_row(driver, name: str, path: str) -> None:
    """A docs screenshot from the run names down to the metrics grid, wheel-scrolled (as a
    user does) until the row `name` is in view, cropped to the compare view."""
    from PIL import Image
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin

    driver.set_window_size(1500, 2600)  # tall enough for run details, params and metrics
    driver.refresh()
    _wait(driver, lambda: "Comparing 3 Runs" in driver.find_element("tag name", "body").text)
    time.sleep(2)
    details = driver.execute_script(FIND + "return find('Run details');")
    driver.execute_script("arguments[0].scrollIntoView({block: 'start'});", details)
    metrics = driver.execute_script(FIND + "return find('Metrics');")
    # The metrics' two grids are the first after the header; the values grid is the wider.
    names_grid, grid = driver.execute_script(
        """
const grids = [...document.querySelectorAll('.ReactVirtualized__Grid')].filter(
  g => arguments[0].compareDocumentPosition(g) & Node.DOCUMENT_POSITION_FOLLOWING).slice(0, 2);
return grids.sort((a, b) => a.getBoundingClientRect().width - b.getBoundingClientRect().width);
""",
        metrics,
    )
    for _ in range(40):
        visible = driver.execute_script(
            FIND
            + """
const el = find(arguments[0]); if (!el) return false;
const r = el.getBoundingClientRect(), g = arguments[1].getBoundingClientRect();
return r.top > g.top + 40 && r.bottom < g.bottom - 60;""",
            name,
            grid,
        )
        if visible:
            break
        ActionChains(driver).scroll_from_origin(ScrollOrigin.from_element(grid), 0, 45).perform()
        time.sleep(0.3)
    # The UI syncs the names grid one wheel event late (seen: names 45 px = one row behind the
    # values, so each name sat beside the next metric's values): align it before the picture.
    driver.execute_script(
        "arguments[0].scrollTop = arguments[1].scrollTop;"
        "arguments[0].dispatchEvent(new Event('scroll'));",
        names_grid,
        grid,
    )
    time.sleep(2)
    aligned = driver.execute_script(
        """
const top = (g) => Object.fromEntries([...g.querySelectorAll('[style*="top"]')].map(
  c => [c.style.top, Math.round(c.getBoundingClientRect().top)]));
const names = top(arguments[0]), values = top(arguments[1]);
return Object.keys(names).every(k => !(k in values) || names[k] === values[k]);
""",
        names_grid,
        grid,
    )
    assert aligned, "metric names and values are not side by side; no screenshot taken"
    driver.save_screenshot(path)
    box = driver.execute_script(
        "const d = arguments[0].getBoundingClientRect(), g = arguments[1].getBoundingClientRect();"
        "return [d.left - 30, d.top - 10, g.right + 10, g.bottom + 10];",
        details,
        grid,
    )
    ratio = driver.execute_script("return window.devicePixelRatio;") or 1
    with Image.open(path) as image:
        image.crop(tuple(round(v * ratio) for v in box)).save(path, optimize=True)


def test_runs_table_nests_members_under_parent(pbt_run, ui_url, browser):
    _, uri, parent = pbt_run
    run = MlflowClient(uri).get_run(parent)
    browser.get(f"{ui_url}/#/experiments/{run.info.experiment_id}/runs")

    def listed() -> str:
        text = browser.find_element("tag name", "body").text
        return text if run.info.run_name in text else ""

    body = _wait(browser, listed)
    # Members are child runs: collapsed under their parent until it is expanded.
    assert "m00-g000" not in body
