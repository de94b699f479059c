"""The HTML review page of ``samespace find --html``: one self-contained file that decides, with no network.

Each duplicate group (largest first) shows its photos side by side, labelled A, B, C ..., with the file name, its
folder, its resolution, file size and modification date, and the pair scores with their match tier
(``A-B 0.97 identical``), coloured by tier and by how far the score lies above the threshold. The keeper rule of
``samespace act`` (keepers.py, the default rule) marks the photo it keeps and why; a checkbox per photo starts
ticked for every other photo (ticked: act on it). "Export choices" downloads a JSON file that
``samespace act RESULT.json --choices FILE`` reads (choices.load_choices checks it against the result's groups).
A sticky bar jumps between groups and filters them by tier and by file name.

Thumbnails are JPEG data URIs; CSS and the one script are inline. A Content-Security-Policy allows only the data
URIs and that script (by its sha256), so the page loads nothing from anywhere, and every file name is escaped:
in the HTML by html.escape, in the embedded JSON with ``<``, ``>`` and ``&`` as ``\\u`` escapes.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import html
import io
import json
import warnings
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from samespace import actions, choices, cli, decoding, keepers, outputs, tiers

THUMB_BOX = (240, 180)
MAX_PAIRS_SHOWN = 60  # per group; the JSON / CSV hold every pair

CSS = """
* { box-sizing: border-box; }
body { margin: 0; padding: 0 32px 24px; background: #eef0f3; color: #1c2330;
  font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header { padding-top: 20px; margin-bottom: 12px; }
h1 { font-size: 22px; margin: 0 0 4px; }
.meta { color: #4a5568; }
.meta b { color: #1c2330; }
nav#bar { position: sticky; top: 0; z-index: 10; display: flex; flex-wrap: wrap; gap: 8px 14px; align-items: center;
  background: #1c2330; color: #fff; padding: 8px 14px; margin: 0 -32px 16px; font-size: 13px; }
nav#bar button, nav#bar select, nav#bar input[type=search] { font: inherit; border-radius: 5px;
  border: 1px solid #4a5568; padding: 3px 8px; background: #fff; color: #1c2330; }
nav#bar button#export { background: #2f855a; color: #fff; border-color: #276749; font-weight: 600; }
nav#bar label { white-space: nowrap; }
#status { color: #c6f6d5; }
#status.bad { color: #fed7d7; }
section.group { background: #fff; border-radius: 10px; padding: 14px 16px 12px; margin: 0 0 18px;
  box-shadow: 0 1px 3px rgba(0,0,0,.12); }
section.group.all-chosen { outline: 3px solid #e53e3e; }
section.group h2 { font-size: 15px; margin: 0 0 10px; display: flex; gap: 10px; align-items: baseline;
  flex-wrap: wrap; }
.count { background: #2b6cb0; color: #fff; border-radius: 10px; padding: 1px 9px; font-size: 13px; }
.range { color: #4a5568; font-weight: normal; font-size: 13px; }
.warn { display: none; color: #c53030; font-size: 13px; }
.all-chosen .warn { display: inline; }
.photos { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; width: 240px; border-radius: 8px; padding: 4px; border: 2px solid transparent; }
figure.keep { border-color: #38a169; background: #f0fff4; }
figure.act { border-color: #e2e8f0; }
figure.act .frame img { opacity: .72; }
figure .frame { position: relative; width: 228px; height: 171px; background: #e2e6ea; border-radius: 6px;
  display: flex; align-items: center; justify-content: center; overflow: hidden; }
figure img { max-width: 228px; max-height: 171px; display: block; }
figure .label { position: absolute; top: 6px; left: 6px; background: rgba(20,26,38,.82); color: #fff;
  font-weight: 700; border-radius: 4px; padding: 0 7px; font-size: 13px; }
.pick { display: flex; gap: 6px; align-items: center; margin: 4px 0 2px; font-size: 12.5px; font-weight: 600; }
figure.keep .pick span::after { content: "keep"; color: #276749; }
figure.act .pick span::after { content: "act on"; color: #9b2c2c; }
figcaption { font-size: 12.5px; word-break: break-all; }
figcaption .dir { color: #718096; font-size: 11.5px; }
.facts { color: #2d3748; font-size: 12px; font-variant-numeric: tabular-nums; word-break: normal; }
figcaption .pair { word-break: normal; white-space: nowrap; }
.keeper { color: #276749; font-size: 12px; font-weight: 600; }
.library { color: #2b6cb0; font-size: 12px; }
.pairs { margin-top: 10px; display: flex; flex-wrap: wrap; gap: 6px; }
.pair { border-radius: 4px; padding: 1px 8px; font-size: 12.5px; font-variant-numeric: tabular-nums;
  border: 1px solid hsl(calc(40 + 85 * var(--m, 1)), 55%, 62%);
  background: hsl(calc(40 + 85 * var(--m, 1)), 70%, 91%); }
.pair.identical { background: hsl(215, 75%, calc(94% - 8% * var(--m, 1))); border-color: #8fb3e6; }
.pair.same-photo { background: hsl(260, 60%, calc(95% - 8% * var(--m, 1))); border-color: #b3a3e0; }
.photo-pair { margin-top: 3px; display: inline-block; }
.legend .pair { margin-right: 4px; }
.more { color: #718096; font-size: 12.5px; align-self: center; }
details { background: #fff; border-radius: 10px; padding: 10px 16px; box-shadow: 0 1px 3px rgba(0,0,0,.12); }
details li { word-break: break-all; }
.none { background: #fff; border-radius: 10px; padding: 16px; }
[hidden] { display: none !important; }
"""


def _esc(text: object) -> str:
    """HTML-escaped text; a file name with control characters or bytes that are not UTF-8 shows them as backslash
    escapes (the page stays valid UTF-8; the JSON and CSV keep the exact name)."""
    return html.escape(outputs.printable_name(str(text), quote=False))


def _bold_count(number: int, noun: str) -> str:
    """``<b>1</b> group``, ``<b>1,234</b> groups`` (cli.counted, its number in bold)."""
    count, words = cli.counted(number, noun).split(" ", 1)
    return f"<b>{count}</b> {words}"


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



# The page's one script: presets come from the HTML (checked boxes), paths from the embedded JSON. No network.
SCRIPT = """
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("samespace-data").textContent);
  var groups = Array.prototype.slice.call(document.querySelectorAll("section.group"));
  var bar = document.getElementById("bar");
  var jump = document.getElementById("jump");
  var query = document.getElementById("query");
  var status = document.getElementById("status");
  var tierBoxes = Array.prototype.slice.call(document.querySelectorAll("input.tier"));

  function say(text, bad) { status.textContent = text; status.className = bad ? "bad" : ""; }

  function refreshGroup(group) {
    var boxes = group.querySelectorAll("input.choose");
    var figures = group.querySelectorAll("figure");
    var ticked = 0;
    for (var k = 0; k < boxes.length; k++) {
      var figure = boxes[k].closest("figure");
      figure.className = boxes[k].checked ? "act" : "keep";
      if (boxes[k].checked) { ticked++; }
    }
    group.classList.toggle("all-chosen", ticked === figures.length);
  }

  function applyFilter() {
    var wanted = {};
    tierBoxes.forEach(function (box) { wanted[box.value] = box.checked; });
    var text = query.value.trim().toLowerCase();
    var shown = 0;
    groups.forEach(function (group, k) {
      var tiers = group.getAttribute("data-tiers").split(" ");
      var tierOk = tiers.some(function (t) { return wanted[t]; });
      var nameOk = !text || Array.prototype.some.call(group.querySelectorAll("figure"), function (f) {
        return f.getAttribute("data-name").indexOf(text) >= 0;
      });
      group.hidden = !(tierOk && nameOk);
      jump.options[k + 1].hidden = group.hidden;
      if (!group.hidden) { shown++; }
    });
    document.getElementById("shown").textContent = shown + " of " + groups.length + " groups shown";
  }

  function visible() { return groups.filter(function (g) { return !g.hidden; }); }

  // A group shown "current" has its top just under the sticky bar (the anchor line).
  function anchor() { return bar.getBoundingClientRect().height + 8; }

  function show(group) {
    window.scrollTo(0, window.scrollY + group.getBoundingClientRect().top - anchor());
    jump.value = group.id;
  }

  function step(delta) {
    var line = anchor();
    var shown = visible();
    var target;
    if (delta > 0) {
      target = shown.filter(function (g) { return g.getBoundingClientRect().top > line + 4; })[0];
    } else {
      var above = shown.filter(function (g) { return g.getBoundingClientRect().top < line - 4; });
      target = above[above.length - 1];
    }
    if (target) { show(target); }
  }

  function exportChoices() {
    var full = groups.filter(function (g) { return g.classList.contains("all-chosen"); });
    if (full.length) {
      say(full[0].getAttribute("data-title") + " has every photo ticked: untick the one to keep", true);
      show(full[0]);
      return;
    }
    var actOn = [];
    document.querySelectorAll("input.choose").forEach(function (box) {
      if (box.checked && !box.disabled) { actOn.push(data.paths[Number(box.getAttribute("data-i"))]); }
    });
    var doc = {format: data.format, version: 1, groups: data.groups, act_on: actOn};
    var blob = new Blob([JSON.stringify(doc, null, 1) + "\\n"], {type: "application/json"});
    var link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = "choices.json";
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(function () { URL.revokeObjectURL(link.href); }, 10000);
    say("choices.json: " + actOn.length + " photos to act on; samespace act RESULT.json --choices choices.json "
        + "--trash (a dry run) shows what it would do", false);
  }

  document.addEventListener("change", function (event) {
    var box = event.target;
    if (box.classList.contains("choose")) { refreshGroup(box.closest("section.group")); }
    if (box.classList.contains("tier")) { applyFilter(); }
  });
  query.addEventListener("input", applyFilter);
  jump.addEventListener("change", function () {
    var target = document.getElementById(jump.value);
    if (target) { show(target); }
  });
  document.getElementById("prev").addEventListener("click", function () { step(-1); });
  document.getElementById("next").addEventListener("click", function () { step(1); });
  document.getElementById("export").addEventListener("click", exportChoices);
  document.addEventListener("keydown", function (event) {
    if (event.target.tagName === "INPUT" || event.target.tagName === "SELECT" || event.ctrlKey || event.metaKey) {
      return;
    }
    if (event.key === "j" || event.key === "n") { step(1); }
    if (event.key === "k" || event.key === "p") { step(-1); }
  });
  groups.forEach(refreshGroup);
  applyFilter();
})();
"""


def _tier_class(tier: str) -> str:
    return tier.replace(" ", "-")


def margin(score: float, threshold: float) -> float:
    """How far a score lies above the threshold, as a share of the way from the threshold to 1 (0 .. 1)."""
    if threshold >= 1.0:
        return 1.0
    return min(1.0, max(0.0, (score - threshold) / (1.0 - threshold)))


def _pair_span(text: str, score: float, threshold: float, tier: str, title: str, extra: str = "") -> str:
    m = margin(score, threshold)
    hint = f"{title}: {tier}, score {score:.3f}, {score - threshold:+.3f} from the threshold {threshold:g}"
    return (f'<span class="pair {_tier_class(tier)}{extra}" style="--m:{m:.2f}" title="{_esc(hint)}">'
            f"{text} {score:.3f} {_esc(tier)}</span>")


def _size_text(size: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def _facts_text(facts: keepers.Facts | None) -> str:
    if facts is None:
        return "cannot be read now"
    when = datetime.datetime.fromtimestamp(facts.mtime_ns / 1e9).strftime("%Y-%m-%d %H:%M")
    pixels = f"{facts.width} &times; {facts.height}" if facts.pixels else "size unknown"
    return f"{pixels} &middot; {_size_text(facts.size)}<br>modified {when}"


def _read_facts(path: str) -> keepers.Facts | None:
    try:
        return keepers.read_facts(path)
    except OSError:
        return None


def _group_html(number: int, group: dict[str, Any], threshold: float, library: list[str], first_index: int) -> str:
    """One group: photos with facts, the keeper marked and a checkbox each, then the pairs; ``first_index`` is
    the position of its first photo in the page's path list."""
    members = group["members"]
    label = {path: _label(k) for k, path in enumerate(members)}
    pairs = [tiers.pair_parts(pair) for pair in group["pairs"]]
    scores = [s for _, _, s, _ in pairs]
    facts = {path: _read_facts(path) for path in members}
    readable = [f for f in facts.values() if f is not None]
    choice = keepers.choose_keeper(readable, keepers.DEFAULT_RULE, library=library) if readable else None
    keeper = choice.keeper.path if choice else None
    group_tiers = sorted({t for _, _, _, t in pairs}, key=lambda t: tiers.TIERS.index(t) if t in tiers.TIERS else 9)
    span = f"scores {min(scores):.3f} - {max(scores):.3f}" if scores else ""
    badges = " ".join(f'<span class="pair {_tier_class(t)}">{_esc(t)}</span>' for t in group_tiers)
    title = f"Group {number}"
    out = [
        f'<section class="group" id="g{number}" data-title="{title}" '
        f'data-tiers="{_esc(" ".join(_tier_class(t) for t in group_tiers))}">',
        f'<h2>{title} <span class="count">{len(members)} photos</span>{badges}<span class="range">{span}</span>'
        '<span class="warn">every photo is ticked: untick the one to keep</span></h2>',
        '<div class="photos">',
    ]
    best: dict[str, tuple[str, float, str]] = {}  # photo -> (other photo, score, tier): its pair with the keeper,
    for a, b, s, tier in pairs:  # else its best pair
        for one, other in ((a, b), (b, a)):
            if one not in best or other == keeper or (best[one][0] != keeper and s > best[one][1]):
                best[one] = (other, s, tier)
    for k, path in enumerate(members):
        p = Path(path)
        uri = thumbnail_uri(path)
        img = f'<img src="{uri}" alt="{_esc(p.name)}">' if uri else ""
        in_library = any(actions.is_under(path, lib) for lib in library)
        ticked = path != keeper and not in_library and facts[path] is not None
        box = (f'<input type="checkbox" class="choose" data-i="{first_index + k}"'
               + (" checked" if ticked else "") + (" disabled" if in_library else "") + ">")
        if path == keeper and choice is not None:
            note = f'<div class="keeper">kept: {_esc(choice.reason)}</div>'
        elif in_library:
            note = '<div class="library">library photo: never acted on</div>'
        else:
            note = ""
        pair_note = ""
        if path in best:
            other, s, tier = best[path]
            pair_note = _pair_span(f"with {label[other]}", s, threshold, tier, f"{path}  ~  {other}", " photo-pair")
        out.append(
            f'<figure class="{"act" if ticked else "keep"}" data-name="{_esc(p.name.lower())}">'
            f'<div class="frame">{img}<span class="label">{label[path]}</span></div>'
            f'<label class="pick">{box}<span></span></label>'
            f"<figcaption><b>{_esc(p.name)}</b><br>"
            f'<span class="dir">{_esc(str(p.parent))}</span><br>'
            f'<span class="facts">{_facts_text(facts[path])}</span>{note}{pair_note}</figcaption></figure>'
        )
    out.append('</div><div class="pairs">')
    for a, b, s, tier in pairs[:MAX_PAIRS_SHOWN]:
        out.append(_pair_span(f"{label[a]}-{label[b]}", s, threshold, tier, f"{a}  ~  {b}"))
    hidden = len(group["pairs"]) - MAX_PAIRS_SHOWN
    if hidden > 0:
        out.append(f'<span class="more">and {hidden:,} more pairs (see the JSON or CSV)</span>')
    out.append("</div></section>")
    return "\n".join(out)


def json_for_script(value: Any) -> str:
    """JSON safe inside a ``<script>`` element: ASCII only, and ``<``, ``>``, ``&`` as ``\\u`` escapes, so no file
    name can close the element or open a comment."""
    text = json.dumps(value, ensure_ascii=True, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _nav(groups: list[dict[str, Any]]) -> str:
    options = "".join(
        f'<option value="g{k}">Group {k}: {len(g["members"])} photos</option>' for k, g in enumerate(groups, 1))
    tier_boxes = "".join(f'<label><input type="checkbox" class="tier" value="{_tier_class(t)}" checked> {t}</label>'
                         for t in tiers.TIERS)
    return (
        '<nav id="bar"><button id="prev" type="button" title="previous group (k)">&#9664; Previous</button>'
        f'<select id="jump" aria-label="jump to a group"><option value="">Jump to a group</option>{options}</select>'
        '<button id="next" type="button" title="next group (j)">Next &#9654;</button>'
        f"<span>{tier_boxes}</span>"
        '<input type="search" id="query" placeholder="filter by file name" aria-label="filter by file name">'
        '<span id="shown"></span>'
        '<button id="export" type="button">Export choices</button><span id="status"></span></nav>'
    )


def render_html(document: dict[str, Any], title: str = "SameSpace duplicate review") -> str:
    """The review page of a find JSON document (groups, pairs, skipped, summary)."""
    summary = document.get("summary", {})
    threshold = float(summary.get("threshold", 0.5))
    library = [str(f) for f in summary.get("against", [])]
    groups = document["groups"]
    meta = (
        f"{_bold_count(len(groups), 'group')}, {_bold_count(summary.get('images_in_groups', 0), 'photo')} in groups, "
        f"of <b>{summary.get('images', 0):,}</b> photos scanned in {_esc(', '.join(summary.get('folders', [])))}"
        f" &middot; method <b>{_esc(str(summary.get('method', '?')))}</b>, a pair is a duplicate when its "
        f"score &ge; <b>{threshold:g}</b> &middot; {cli.counted(summary.get('pairs_scored', 0), 'pair')} scored "
        f"({_esc(str(summary.get('candidates', '')))}) &middot; "
        f"{cli.counted(summary.get('skipped', 0), 'file')} skipped"
        "<br>Photos are labelled A, B, C ... in each group; <i>A-B 0.93 same space</i> is the score and match tier "
        "of photos A and B (hover it for both paths), from amber just above the threshold to green far above it; "
        "identical files are blue, edited copies of one photo purple. Largest groups first."
        "<br>The green photo of each group is the one <code>samespace act</code> keeps (the reason below it); "
        "ticked photos are to act on. Change the ticks, then <b>Export choices</b> and run "
        "<code>samespace act RESULT.json --choices choices.json --trash</code> (or <code>--move-to DIR</code>): "
        "a dry run until you add <code>--apply</code>."
    )
    body = [f"<header><h1>{_esc(title)}</h1><div class='meta'>{meta}</div></header>", _nav(groups)]
    if not groups:
        body.append('<div class="none">No duplicates found at this threshold.</div>')
    first = 0
    for k, group in enumerate(groups, 1):
        body.append(_group_html(k, group, threshold, library, first))
        first += len(group["members"])
    if document.get("blank"):
        items = "\n".join(f"<li>{_esc(path)}</li>" for path in document["blank"])
        body.append(
            f"<details><summary>{len(document['blank']):,} blank photos (almost no detail: not compared, except "
            f"byte-identical files)</summary><ul>{items}</ul></details>"
        )
    if document.get("skipped"):
        items = "\n".join(f"<li>{_esc(s['path'])}: {_esc(s['reason'])}</li>" for s in document["skipped"])
        body.append(f"<details><summary>{len(document['skipped']):,} skipped files</summary><ul>{items}</ul></details>")
    member_lists = [g["members"] for g in groups]
    data = {"format": choices.CHOICES_FORMAT, "groups": choices.groups_digest(member_lists),
            "paths": [m for members in member_lists for m in members]}
    script_hash = base64.b64encode(hashlib.sha256(SCRIPT.encode("utf-8")).digest()).decode("ascii")
    policy = (f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{script_hash}'; "
              "base-uri 'none'; form-action 'none'")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{policy}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<meta name="generator" content="{outputs.GENERATOR} find_duplicates.py">\n'
        f"<title>{_esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + f'\n<script type="application/json" id="samespace-data">{json_for_script(data)}</script>'
        + f"\n<script>{SCRIPT}</script>\n</body>\n</html>\n"
    )
