"""The HTML report: its tables say what the audit says (escaped), and it works in a real browser. Headless
Chromium (Debian's /usr/bin/chromium, driven by Playwright) opens the report of a small model from a file:// URL
with no console errors and no network, decodes every figure, sorts the layer table by a clicked header, and a
full-page screenshot is kept as a test artifact (``$RFLENS_ARTIFACTS`` or ``test-artifacts/``).

Without Playwright or /usr/bin/chromium the browser tests are skipped, unless ``RFLENS_REQUIRE_BROWSER=1``
(CI) makes that a failure."""

from __future__ import annotations

import dataclasses
import os
import re
import struct
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from rflens.audit import Audit, audit
from rflens.report import html as report_html
from rflens.report.html import LAYER_COLUMNS, layer_rows, render, write_html

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # headless=True adds --headless
FIGURE_IDS = ("rf-depth", "structural-erf", "gradient-erf", "dead-pixels", "foveation")
PNG = b"\x89PNG\r\n\x1a\n"


class Small(nn.Module):
    """Two 3x3/2 convs: uneven padding at 64 px, two culprit layers with a checkerboard, hence fixes; a global
    pool gives rows without a receptive field (empty sort keys)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn, self.act1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        self.down, self.act2, self.pool = nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(2)
        self.down2, self.head = nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.gap, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act2(self.down(self.act1(self.bn(self.stem(x)))))
        x = self.head(self.down2(self.pool(x)))
        return self.fc(self.gap(x).flatten(1))


@dataclasses.dataclass
class Report:
    audit: Audit
    path: Path
    html: str


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Report:
    torch.manual_seed(0)
    result = audit(Small().eval(), 64, gradients=True, n=2, model_name="small")
    path = tmp_path_factory.mktemp("report") / "audit.html"
    write_html(result, path)
    return Report(result, path, path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------------------------
# The rendered HTML, without a browser


class Tables(HTMLParser):
    """Every table with an id: its header texts and its body rows, each row its attributes and its cells (the
    cell's attributes, text and the classes of the spans inside it)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, dict[str, Any]] = {}
        self.table: dict[str, Any] | None = None
        self.cell: dict[str, Any] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "table" and "id" in a:
            self.table = self.tables[a["id"]] = {"headers": [], "rows": []}
        elif self.table is None:
            return
        elif tag == "tr":
            self.table["rows"].append({"attrs": a, "cells": []})
        elif tag in ("th", "td"):
            self.cell = {"tag": tag, "attrs": a, "text": "", "spans": []}
        elif tag == "span" and self.cell is not None:
            self.cell["spans"].append(a.get("class", "").split())

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell["text"] += data

    def handle_endtag(self, tag: str) -> None:
        if self.table is None:
            return
        if tag in ("th", "td") and self.cell is not None:
            cell, self.cell = self.cell, None
            cell["text"] = cell["text"].strip()
            if cell["tag"] == "th":
                self.table["headers"].append(cell["text"])
            else:
                self.table["rows"][-1]["cells"].append(cell)
        elif tag == "table":
            self.table["rows"] = [r for r in self.table["rows"] if r["cells"]]  # drop the header row
            self.table = None


def tables(html: str) -> dict[str, dict[str, Any]]:
    parser = Tables()
    parser.feed(html)
    parser.close()
    return parser.tables


def test_verdict_table_has_one_row_per_verdict_with_its_level(report):
    rows = tables(report.html)["verdict-table"]["rows"]
    assert report.audit.verdicts and len(rows) == len(report.audit.verdicts)
    for row, v in zip(rows, report.audit.verdicts, strict=True):
        area, level, text = row["cells"]
        assert area["text"] == v.area and text["text"] == v.text
        assert level["spans"] == [["level", v.level]] and level["text"] == v.level
    assert {v.level for v in report.audit.verdicts} >= {"ok", "problem"}  # the model shows more than one level


def test_layer_table_has_one_row_per_layer_with_its_sort_keys(report):
    table = tables(report.html)["layer-table"]
    assert table["headers"] == list(LAYER_COLUMNS)
    rows = table["rows"]
    assert len(rows) == len(report.audit.rf.layers) == len(layer_rows(report.audit))
    for row, layer, cells in zip(rows, report.audit.rf.layers, layer_rows(report.audit), strict=True):
        assert row["cells"][0]["text"] == (layer.name or "(model)")
        assert [c["attrs"]["data-key"] for c in row["cells"]] == [str(c.key) for c in cells]
        assert [c["text"] for c in row["cells"]] == [c.text for c in cells]
        assert row["attrs"]["class"] == cells[LAYER_COLUMNS.index("status")].text


def test_every_section_has_content(report):
    """The model was chosen so that no section is empty: the browser test below then sees every figure."""
    t = tables(report.html)
    uneven = [r for r in report.audit.padding.layers if r.uneven]
    assert uneven and len(t["uneven-table"]["rows"]) == len(uneven)
    assert report.audit.dead_pixels.culprits
    assert len(t["culprit-table"]["rows"]) == len(report.audit.dead_pixels.culprits)
    assert report.audit.fixes and len(t["fix-table"]["rows"]) == len(report.audit.fixes)
    assert len(t["foveation-table"]["rows"]) == len(report.audit.padding.foveation) > 1
    for fid in FIGURE_IDS:
        assert re.search(rf'<figure id="fig-{fid}">\s*<img src="data:image/png;base64,', report.html), fid


def test_report_is_self_contained(report):
    refs = re.findall(r"""\b(?:src|href)\s*=\s*["']?([^"'\s>]*)""", report.html, flags=re.IGNORECASE)
    assert refs and all(r.startswith("data:") for r in refs), [r[:40] for r in refs if not r.startswith("data:")]
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", report.html, flags=re.IGNORECASE)


def test_text_is_escaped(report, monkeypatch):
    monkeypatch.setattr(report_html, "figures", lambda audit: [])  # the pictures are not what is tested here
    evil = dataclasses.replace(report.audit.verdicts[0], text="<script>x</script>", area='a "b" & <c>')
    out = render(dataclasses.replace(report.audit, verdicts=[evil, *report.audit.verdicts[1:]]))
    assert "&lt;script&gt;x&lt;/script&gt;" in out and "<script>x" not in out
    assert "&lt;c&gt;" in out and "<c>" not in out
    row = tables(out)["verdict-table"]["rows"][0]["cells"]
    assert row[0]["text"] == 'a "b" & <c>' and row[2]["text"] == "<script>x</script>"  # shown as written


def test_layer_names_are_not_styled_as_numbers(report):
    rows = tables(report.html)["layer-table"]["rows"]
    assert not any("num" in r["cells"][0]["attrs"].get("class", "").split() for r in rows)


# ---------------------------------------------------------------------------------------------------------------
# In headless Chromium


def _no_browser(reason: str) -> None:
    if os.environ.get("RFLENS_REQUIRE_BROWSER") == "1":
        pytest.fail(f"RFLENS_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One headless Chromium for the module, with a fresh profile."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _no_browser("Python Playwright is not installed (pip install playwright)")
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        _no_browser(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            user_data_dir=tmp_path_factory.mktemp("chromium-profile"), executable_path=str(CHROMIUM),
            headless=True, args=CHROMIUM_ARGS)
        try:
            yield context
        finally:
            context.close()


@dataclasses.dataclass
class Page:
    page: Any
    errors: list[str]  # console errors and uncaught exceptions
    requests: list[str]  # every URL the page asked for


@pytest.fixture
def page(browser, report) -> Iterator[Page]:
    """The report, freshly loaded in a new tab."""
    tab = browser.new_page()
    seen = Page(tab, [], [])
    tab.on("console", lambda m: seen.errors.append(f"console: {m.text}") if m.type == "error" else None)
    tab.on("pageerror", lambda e: seen.errors.append(f"pageerror: {e}"))
    tab.on("requestfailed", lambda r: seen.errors.append(f"request failed: {r.url[:80]}"))
    tab.on("request", lambda r: seen.requests.append(r.url))
    tab.goto(report.path.as_uri(), wait_until="load")
    yield seen
    tab.close()


def column(page: Page, name: str) -> list[str]:
    return page.page.eval_on_selector_all(
        "#layer-table tbody tr", f"rows => rows.map(r => r.cells[{LAYER_COLUMNS.index(name)}].dataset.key)")


def all_rows(page: Page) -> list[tuple[str, ...]]:
    return [tuple(r) for r in page.page.eval_on_selector_all(
        "#layer-table tbody tr", "rows => rows.map(r => Array.from(r.cells, c => c.dataset.key))")]


def click(page: Page, name: str) -> None:
    page.page.click(f"#layer-table thead th:nth-child({LAYER_COLUMNS.index(name) + 1})")


def sort_state(page: Page) -> dict[str, str]:
    """Header -> its aria-sort, for the headers that have one."""
    states = page.page.eval_on_selector_all(
        "#layer-table thead th", "ths => ths.map(th => [th.textContent, th.getAttribute('aria-sort')])")
    return {name: state for name, state in states if state is not None}


def test_opens_without_errors_or_network(page, report):
    assert page.page.title() == "rflens audit: small at 64x64"
    assert page.page.locator("#verdict-table tbody tr").count() == len(report.audit.verdicts)
    page.page.wait_for_timeout(200)  # late console messages
    assert page.errors == []
    assert page.requests and all(u.startswith(("file:", "data:")) for u in page.requests), page.requests


def test_every_image_is_decoded(page):
    images = page.page.eval_on_selector_all("img", """imgs => Promise.all(imgs.map(i => i.decode().then(
        () => ({figure: i.closest('figure') && i.closest('figure').id, complete: i.complete, width: i.naturalWidth,
                height: i.naturalHeight, src: i.getAttribute('src').slice(0, 22)}))))""")
    assert len(images) == len(FIGURE_IDS)
    for img in images:
        assert img["complete"] and img["width"] > 0 and img["height"] > 0, img
        assert img["src"] == "data:image/png;base64,", img
    assert sorted(img["figure"] for img in images) == sorted(f"fig-{fid}" for fid in FIGURE_IDS)
    assert page.errors == []


@pytest.mark.parametrize("name", ["rf", "FLOPs"])
def test_numeric_column_sorts_by_number(page, name):
    before = all_rows(page)
    keys = column(page, name)
    numbers = sorted((k for k in keys if k), key=float)
    empty = [k for k in keys if not k]
    assert len(set(numbers)) > 2 and empty  # something to sort, and empty keys to put last
    assert sorted(numbers) != numbers  # sorting the keys as strings would give another order

    click(page, name)
    assert sort_state(page) == {name: "ascending"}
    assert column(page, name) == numbers + empty
    assert sorted(all_rows(page)) == sorted(before)  # whole rows move together

    click(page, name)
    assert sort_state(page) == {name: "descending"}
    assert column(page, name) == numbers[::-1] + empty  # empty keys stay last
    assert [float(k) for k in column(page, name) if k] == sorted(map(float, numbers), reverse=True)

    click(page, name)
    assert sort_state(page) == {name: "ascending"}
    assert column(page, name) == numbers + empty
    assert page.errors == []


def test_text_column_sorts_by_string(page):
    click(page, "rf")
    keys = column(page, "op")
    assert keys != sorted(keys, key=str.casefold) and all(keys)

    click(page, "op")
    assert sort_state(page) == {"op": "ascending"}  # the rf header lost its direction
    assert column(page, "op") == sorted(keys, key=str.casefold)
    click(page, "op")
    assert sort_state(page) == {"op": "descending"}
    assert column(page, "op") == sorted(keys, key=str.casefold, reverse=True)

    click(page, "layer")  # names sort by depth: back to the document order
    assert sort_state(page) == {"layer": "ascending"}
    assert [int(k) for k in column(page, "layer")] == list(range(len(keys)))
    assert page.errors == []


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_full_page_screenshot(page, report):
    artifacts = Path(os.environ.get("RFLENS_ARTIFACTS") or Path(__file__).parents[1] / "test-artifacts")
    artifacts.mkdir(parents=True, exist_ok=True)
    path = artifacts / "html_report.png"
    path.unlink(missing_ok=True)
    click(page, "rf")  # show a sorted column
    # clicking scrolled to the table; back to the top, or every sticky header above it is drawn where it stuck
    page.page.evaluate("window.scrollTo(0, 0)")
    page.page.screenshot(path=str(path), full_page=True)
    data = path.read_bytes()
    width, height = png_size(data)
    viewport = page.page.viewport_size
    assert width >= viewport["width"] and height > 2 * viewport["height"]  # the whole page, not the window
    assert height >= page.page.evaluate("document.documentElement.scrollHeight")
    assert len(data) > 100_000
    assert page.errors == []
