"""The review page that decides: facts, keepers, presets, colours, escaping, and (in Chromium) the export that
samespace act --choices reads."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from test_actions import checksums, write_scene

from samespace import choices, report
from samespace.commands import act, find

CHROMIUM = Path("/usr/bin/chromium")
# Debian's Chromium run headless by Playwright: no sandbox (root in a container), nothing fetched in the background.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


@pytest.fixture()
def reviewed(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(photos, result JSON, review page) of find over the act tests' scene."""
    photos = tmp_path / "photos"
    write_scene(photos)
    result, page = tmp_path / "result.json", tmp_path / "review.html"
    argv = [str(photos), "--method", "phash", "--no-cache", "--no-progress", "--json", str(result), "--html", str(page)]
    assert find.main(argv) == 0
    return photos, result, page


def _figures(page: str) -> dict[str, str]:
    """Each figure's HTML by the file name it shows."""
    figures = re.findall(r"<figure .*?</figure>", page, re.S)
    return {re.search(r"<b>(.*?)</b>", f).group(1): f for f in figures}


def _data(page: str) -> dict:
    return json.loads(page.split('id="samespace-data">', 1)[1].split("</script>", 1)[0])


def test_each_photo_shows_its_facts_and_the_keeper_its_reason(reviewed: tuple[Path, Path, Path]) -> None:
    photos, result, page_path = reviewed
    page = page_path.read_text()
    figures = _figures(page)
    assert set(figures) == {"a.png", "a_big.png", "a_copy.png", "b.png", "b.jpg"}
    assert "256 &times; 192" in figures["a_big.png"] and "128 &times; 96" in figures["a.png"]
    size = (photos / "a.png").stat().st_size
    assert f"{size / 1e3:.1f} kB" in figures["a.png"] and "2020-09-13" in figures["a.png"]  # OLD, local time
    assert 'class="keeper">kept: highest resolution (256x192)' in figures["a_big.png"]
    assert figures["a_big.png"].startswith('<figure class="keep"') and 'checked' not in figures["a_big.png"]
    for name in ("a.png", "a_copy.png", "b.png"):
        assert figures[name].startswith('<figure class="act"') and " checked>" in figures[name], name
    # Each other photo shows its pair with the keeper: its tier and score (a copy scores 1.000: tiers.COPY_SCORE)
    members = json.loads(result.read_text())["groups"][0]["members"]
    big = "ABC"[members.index(str(photos / "a_big.png"))]
    assert re.search(rf'class="pair same-photo photo-pair".*?>with {big} 1\.000 same photo</span>',
                     figures["a_copy.png"])
    assert "kept: largest file" in figures["b.jpg"] and "kept:" not in figures["b.png"]


def test_the_page_data_names_the_result_and_its_photos_in_order(reviewed: tuple[Path, Path, Path]) -> None:
    _, result, page_path = reviewed
    page = page_path.read_text()
    groups = [g["members"] for g in json.loads(result.read_text())["groups"]]
    data = _data(page)
    assert data == {"format": choices.CHOICES_FORMAT, "groups": choices.groups_digest(groups),
                    "paths": [m for members in groups for m in members]}
    indices = [int(i) for i in re.findall(r'class="choose" data-i="(\d+)"', page)]
    assert indices == list(range(len(data["paths"])))
    tiers_of = dict(re.findall(r'<section class="group" id="(g\d+)" data-title="Group \d+" data-tiers="([^"]*)"', page))
    expected = {f"g{k}": " ".join(sorted({p[3].replace(" ", "-") for p in g["pairs"]}))
                for k, g in enumerate(json.loads(result.read_text())["groups"], 1)}
    assert tiers_of == expected and tiers_of["g1"].startswith("identical same-photo")
    assert '<option value="g1">Group 1: 3 photos</option><option value="g2">Group 2: 2 photos</option>' in page


def test_colours_follow_the_tier_and_the_distance_from_the_threshold() -> None:
    assert report.margin(0.62, 0.62) == 0.0 and report.margin(1.0, 0.62) == 1.0
    assert report.margin(0.81, 0.62) == pytest.approx(0.5) and report.margin(0.9, 1.0) == 1.0
    doc = {"groups": [{"members": ["/x/a.jpg", "/x/b.jpg", "/x/c.jpg"],
                       "pairs": [["/x/a.jpg", "/x/b.jpg", 0.95, "same space"],
                                 ["/x/a.jpg", "/x/c.jpg", 0.91, "same space"],
                                 ["/x/b.jpg", "/x/c.jpg", 1.0, "identical"]]}],
           "summary": {"threshold": 0.9, "folders": ["/x"]}}
    page = report.render_html(doc)
    assert '<span class="pair same-space" style="--m:0.50"' in page  # 0.95: half way from 0.9 to 1
    assert '<span class="pair same-space" style="--m:0.10"' in page
    assert '<span class="pair identical" style="--m:1.00"' in page
    assert "+0.050 from the threshold 0.9" in page
    doc["summary"]["threshold"] = 0.5
    assert '<span class="pair same-space" style="--m:0.90"' in report.render_html(doc)  # the same score, further


def test_the_page_counts_in_the_singular_where_there_is_one() -> None:
    doc = {"groups": [{"members": ["/x/a.jpg", "/x/b.jpg"], "pairs": [["/x/a.jpg", "/x/b.jpg", 0.95, "same space"]]}],
           "summary": {"threshold": 0.5, "folders": ["/x"], "images_in_groups": 2, "pairs_scored": 1, "skipped": 1}}
    page = report.render_html(doc)
    assert "<b>1</b> group, <b>2</b> photos in groups" in page
    assert "1 pair scored" in page and "1 file skipped" in page
    doc["summary"].update(pairs_scored=4560, skipped=0)
    page = report.render_html(doc)
    assert "4,560 pairs scored" in page and "0 files skipped" in page


def test_hostile_file_names_are_escaped_in_the_html_and_in_the_page_data(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    write_scene(photos)
    hostile = {"a.png": "<script>alert(1)<!--.png", "b.png": "\"'><img src=x onerror=alert(1)>&amp.png"}
    for old, new in hostile.items():
        os.rename(photos / old, photos / new)
    page_path, result = tmp_path / "r.html", tmp_path / "r.json"
    assert find.main([str(photos), "--method", "phash", "--no-cache", "--no-progress", "--json", str(result),
                      "--html", str(page_path)]) == 0
    page = page_path.read_text()
    assert "<img src=x" not in page and "<script>alert" not in page and "<!--" not in page
    assert page.count("<script") == 2  # the data and the page's own script
    assert "&lt;script&gt;alert(1)&lt;!--.png" in page
    assert 'data-name="&quot;&#x27;&gt;&lt;img src=x onerror=alert(1)&gt;&amp;amp.png"' in page
    assert set(_data(page)["paths"]) >= {str(photos / n) for n in hostile.values()}  # the exact names, back
    assert "\\u003cscript\\u003ealert(1)\\u003c!--.png" in page


def test_a_page_without_groups_still_has_its_bar_and_data() -> None:
    page = report.render_html({"groups": [], "summary": {"threshold": 0.5}})
    assert "No duplicates found" in page and '<nav id="bar">' in page
    assert _data(page) == {"format": choices.CHOICES_FORMAT, "groups": choices.groups_digest([]), "paths": []}


# --------------------------------------------------------------------------------------------
# In a real browser: tick, untick, filter, navigate, export, and act on the export
# --------------------------------------------------------------------------------------------


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: `make test` installs Debian's chromium "
                    "(apt-get install chromium chromium-driver)")
def test_in_chromium_the_exported_choices_drive_act(reviewed: tuple[Path, Path, Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from playwright.sync_api import sync_playwright

    photos, result, page_path = reviewed
    before = checksums(photos)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 700})
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            requests: list[str] = []
            page.on("request", lambda request: requests.append(request.url))
            page.goto(page_path.as_uri())
            boxes = page.locator("input.choose")
            assert boxes.count() == 5
            paths = _data(page_path.read_text())["paths"]
            box = {Path(p).relative_to(photos).as_posix(): boxes.nth(k) for k, p in enumerate(paths)}
            assert sorted(name for name, b in box.items() if b.is_checked()) == ["a.png", "b.png", "sub/a_copy.png"]
            assert page.locator("#shown").inner_text() == "2 of 2 groups shown"

            # Filters: by file name, then by tier
            page.fill("#query", "B.JPG")
            assert page.locator("#shown").inner_text() == "1 of 2 groups shown"
            assert page.locator("#g1").is_hidden() != page.locator("#g2").is_hidden()
            page.fill("#query", "")
            for tier in ("identical", "same-photo", "same-space"):
                page.locator(f"input.tier[value={tier}]").uncheck()
            assert page.locator("#shown").inner_text() == "0 of 2 groups shown"
            for tier in ("identical", "same-photo", "same-space"):
                page.locator(f"input.tier[value={tier}]").check()

            # Navigation: next scrolls group 2 under the bar
            page.click("#next")
            page.click("#next")
            assert page.evaluate("document.getElementById('jump').value") == "g2"
            page.click("#prev")
            assert page.evaluate("document.getElementById('jump').value") == "g1"

            # Every photo of a group ticked: no download, one line on the page
            box["b.jpg"].check()
            group_b = page.locator("section.group", has=page.locator("figure[data-name='b.jpg']"))
            assert "all-chosen" in group_b.get_attribute("class")
            page.click("#export")
            assert page.locator("#status").inner_text().endswith("has every photo ticked: untick the one to keep")
            box["b.jpg"].uncheck()
            assert "all-chosen" not in group_b.get_attribute("class")

            # Keep the byte copy too (untick it), then export
            box["sub/a_copy.png"].uncheck()
            assert page.locator("figure.keep").count() == 3
            with page.expect_download(timeout=15_000) as download_info:
                page.click("#export")
            download = download_info.value
            assert download.suggested_filename == "choices.json"
            exported_path = tmp_path / "choices.json"
            download.save_as(exported_path)
            assert errors == [] and all(url.startswith(("file:", "data:", "blob:")) for url in requests), requests
        finally:
            browser.close()

    exported = json.loads(exported_path.read_text())
    groups = [g["members"] for g in json.loads(result.read_text())["groups"]]
    assert exported == {"format": choices.CHOICES_FORMAT, "version": 1, "groups": choices.groups_digest(groups),
                        "act_on": [str(photos / "a.png"), str(photos / "b.png")]}
    capsys.readouterr()
    assert act.main([str(result), "--choices", str(exported_path), "--move-to", str(tmp_path / "dups")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"move {photos / 'a.png'}  keep {photos / 'a_big.png'}: chosen on the review page",
                   f"move {photos / 'b.png'}  keep {photos / 'b.jpg'}: chosen on the review page",
                   "dry run: 2 groups, 2 files to move; nothing changed (add --apply to do it)"]
    assert checksums(photos) == before


def test_make_test_installs_the_chromium_the_browser_test_drives() -> None:
    makefile = (Path(__file__).resolve().parent.parent / "Makefile").read_text()
    assert "test: $(VENV)/.installed browser" in makefile and f"CHROMIUM := {CHROMIUM}" in makefile
    assert "apt-get install -y --no-install-recommends chromium chromium-driver" in makefile
