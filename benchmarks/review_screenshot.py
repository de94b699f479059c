"""A screenshot of a review page (``samespace find --html``) in Debian's Chromium, for the docs.

    python -m samespace sample data/sample
    python -m samespace find "data/sample/Test Data" --html /tmp/review.html --json /tmp/r.json
    python benchmarks/review_screenshot.py /tmp/review.html docs/review-page.png

Playwright drives /usr/bin/chromium (``make browser`` installs it); the page is opened from file:// as a user
opens it. The PNG is reduced to a 256-colour palette so it stays small in the repository.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


def screenshot(page_path: Path, out: Path, width: int = 1280, height: int = 860, untick: int = 1) -> int:
    """Write ``out`` (PNG) of ``page_path``'s first screen, after unticking the ``untick``-th ticked photo of the
    first group (to show a changed choice); its size in bytes."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(page_path.resolve().as_uri())
            if untick:
                page.locator("#g1 input.choose:checked").nth(untick - 1).uncheck()
            png = page.screenshot()
        finally:
            browser.close()
    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(256, dither=Image.Dither.NONE)
    image.save(out, optimize=True)
    return out.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("page", type=Path, help="the review page (find --html)")
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=860)
    args = parser.parse_args()
    size = screenshot(args.page, args.out, args.width, args.height)
    print(f"wrote {args.out} ({size:,} bytes)")


if __name__ == "__main__":
    main()
