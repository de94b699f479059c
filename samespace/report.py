"""The HTML review page of find_duplicates.py: one self-contained file, thumbnails embedded, no network.

Each duplicate group (largest first) shows its photos side by side, labelled A, B, C ..., with the file name,
its folder and the pair scores (``A-B 0.97``). Thumbnails are JPEG data URIs; CSS is inline; no JavaScript.
"""

from __future__ import annotations

import base64
import html
import io
import warnings
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from samespace import decoding, outputs, tiers

THUMB_BOX = (240, 180)
MAX_PAIRS_SHOWN = 60  # per group; the JSON / CSV hold every pair

CSS = """
* { box-sizing: border-box; }
body { margin: 0; padding: 24px 32px; background: #eef0f3; color: #1c2330;
  font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header { margin-bottom: 20px; }
h1 { font-size: 22px; margin: 0 0 4px; }
.meta { color: #4a5568; }
.meta b { color: #1c2330; }
section.group { background: #fff; border-radius: 10px; padding: 14px 16px 12px; margin: 0 0 18px;
  box-shadow: 0 1px 3px rgba(0,0,0,.12); }
section.group h2 { font-size: 15px; margin: 0 0 10px; display: flex; gap: 10px; align-items: baseline; }
.count { background: #2b6cb0; color: #fff; border-radius: 10px; padding: 1px 9px; font-size: 13px; }
.range { color: #4a5568; font-weight: normal; font-size: 13px; }
.photos { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; width: 240px; }
figure .frame { position: relative; width: 240px; height: 180px; background: #e2e6ea; border-radius: 6px;
  display: flex; align-items: center; justify-content: center; overflow: hidden; }
figure img { max-width: 240px; max-height: 180px; display: block; }
figure .label { position: absolute; top: 6px; left: 6px; background: rgba(20,26,38,.82); color: #fff;
  font-weight: 700; border-radius: 4px; padding: 0 7px; font-size: 13px; }
figcaption { margin-top: 4px; font-size: 12.5px; word-break: break-all; }
figcaption .dir { color: #718096; font-size: 11.5px; }
.pairs { margin-top: 10px; display: flex; flex-wrap: wrap; gap: 6px; }
.pair { border-radius: 4px; padding: 1px 8px; font-size: 12.5px; font-variant-numeric: tabular-nums;
  border: 1px solid #cbd5e0; background: #f7fafc; }
.pair.high { background: #e6f4ea; border-color: #9ad0a8; }
.pair.identical { background: #dbe9fb; border-color: #8fb3e6; }
.pair.same-photo { background: #e8e2f8; border-color: #b3a3e0; }
.pair.mid { background: #fdf6e3; border-color: #e6cf8f; }
.more { color: #718096; font-size: 12.5px; align-self: center; }
details { background: #fff; border-radius: 10px; padding: 10px 16px; box-shadow: 0 1px 3px rgba(0,0,0,.12); }
details li { word-break: break-all; }
.none { background: #fff; border-radius: 10px; padding: 16px; }
"""


def _esc(text: object) -> str:
    """HTML-escaped text; a file name with control characters or bytes that are not UTF-8 shows them as backslash
    escapes (the page stays valid UTF-8; the JSON and CSV keep the exact name)."""
    return html.escape(outputs.printable_name(str(text), quote=False))


def _label(k: int) -> str:
    """0 -> A, 25 -> Z, 26 -> AA ..."""
    out = ""
    k += 1
    while k:
        k, r = divmod(k - 1, 26)
        out = chr(65 + r) + out
    return out


def thumbnail_uri(path: str | Path, box: tuple[int, int] = THUMB_BOX) -> str:
    """A JPEG data URI of the photo shrunk to fit ``box`` with its aspect ratio and EXIF orientation.

    The file is read as the decoder reads it (decoding.read_photo, decoding.open_image): read-only, only a regular file
    (a FIFO is never waited on), within the decoder's size and pixel limits. On failure, an empty string (the
    page shows a grey frame).
    """
    try:
        content, _ = decoding.read_photo(path)
        with warnings.catch_warnings():
            # PIL's warnings (its own pixel limit, a damaged EXIF tag) name no file and change nothing here
            warnings.filterwarnings("ignore", module=r"PIL\.")
            with decoding.open_image(path, content) as img:
                img.draft("RGB", (2 * box[0], 2 * box[1]))
                img = decoding.load_within_budget(img, (2 * box[0], 2 * box[1]))
                img = ImageOps.exif_transpose(img)
                if img.mode in ("RGBA", "LA", "PA", "P"):
                    rgba = img.convert("RGBA")
                    img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
                img = img.convert("RGB")
                img.thumbnail(box, Image.Resampling.LANCZOS)
                buffer = io.BytesIO()
                img.save(buffer, "JPEG", quality=80)
    except Exception:  # noqa: BLE001 - a thumbnail is never worth failing the report
        return ""
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _score_class(score: float, threshold: float, tier: str = tiers.SAME_SPACE) -> str:
    if tier != tiers.SAME_SPACE:  # exact and edited copies stand out from re-shoots
        return f"pair {tier.replace(' ', '-')}"
    if score >= threshold + 0.5 * (1.0 - threshold):
        return "pair high"
    return "pair mid"


def _group_html(number: int, group: dict[str, Any], threshold: float) -> str:
    members = group["members"]
    label = {path: _label(k) for k, path in enumerate(members)}
    pairs = [tiers.pair_parts(pair) for pair in group["pairs"]]
    scores = [s for _, _, s, _ in pairs]
    span = f"scores {min(scores):.3f} - {max(scores):.3f}" if scores else ""
    out = [
        '<section class="group">',
        f'<h2>Group {number} <span class="count">{len(members)} photos</span><span class="range">{span}</span></h2>',
        '<div class="photos">',
    ]
    for path in members:
        p = Path(path)
        uri = thumbnail_uri(path)
        img = f'<img src="{uri}" alt="{_esc(p.name)}">' if uri else ""
        out.append(
            f'<figure><div class="frame">{img}<span class="label">{label[path]}</span></div>'
            f"<figcaption><b>{_esc(p.name)}</b><br>"
            f'<span class="dir">{_esc(str(p.parent))}</span></figcaption></figure>'
        )
    out.append('</div><div class="pairs">')
    for a, b, s, tier in pairs[:MAX_PAIRS_SHOWN]:
        title = _esc(f"{a}  ~  {b}: {tier}")
        out.append(f'<span class="{_score_class(s, threshold, tier)}" title="{title}">{label[a]}-{label[b]} {s:.3f}'
                   f' {_esc(tier)}</span>')
    hidden = len(group["pairs"]) - MAX_PAIRS_SHOWN
    if hidden > 0:
        out.append(f'<span class="more">and {hidden:,} more pairs (see the JSON or CSV)</span>')
    out.append("</div></section>")
    return "\n".join(out)


def render_html(document: dict[str, Any], title: str = "SameSpace duplicate review") -> str:
    """The review page of a find_duplicates JSON document (groups, pairs, skipped, summary)."""
    summary = document.get("summary", {})
    threshold = float(summary.get("threshold", 0.5))
    groups = document["groups"]
    meta = (
        f"<b>{len(groups):,}</b> groups, <b>{summary.get('images_in_groups', 0):,}</b> photos in groups, "
        f"of <b>{summary.get('images', 0):,}</b> photos scanned in {_esc(', '.join(summary.get('folders', [])))}"
        f" &middot; method <b>{_esc(str(summary.get('method', '?')))}</b>, a pair is a duplicate when its "
        f"score &ge; <b>{threshold:g}</b> &middot; {summary.get('pairs_scored', 0):,} pairs scored "
        f"({_esc(str(summary.get('candidates', '')))}) &middot; {summary.get('skipped', 0):,} files skipped"
        "<br>Photos are labelled A, B, C ... in each group; <i>A-B 0.93</i> is the score of photos A and B "
        "(hover it for both paths). Largest groups first."
    )
    body = [f"<header><h1>{_esc(title)}</h1><div class='meta'>{meta}</div></header>"]
    if not groups:
        body.append('<div class="none">No duplicates found at this threshold.</div>')
    body.extend(_group_html(k, group, threshold) for k, group in enumerate(groups, 1))
    if document.get("blank"):
        items = "\n".join(f"<li>{_esc(path)}</li>" for path in document["blank"])
        body.append(
            f"<details><summary>{len(document['blank']):,} blank photos (almost no detail: not compared, except "
            f"byte-identical files)</summary><ul>{items}</ul></details>"
        )
    if document.get("skipped"):
        items = "\n".join(f"<li>{_esc(s['path'])}: {_esc(s['reason'])}</li>" for s in document["skipped"])
        body.append(f"<details><summary>{len(document['skipped']):,} skipped files</summary><ul>{items}</ul></details>")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<meta name="generator" content="{outputs.GENERATOR} find_duplicates.py">\n'
        f"<title>{_esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
