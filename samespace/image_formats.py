"""Image formats beyond Pillow's own: HEIF / HEIC, what phones save by default, when the optional ``pillow-heif``
is installed (``pip install 'samespace[heif]'``).

Pillow reads JPEG, PNG, WebP, AVIF, TIFF and more by itself; HEIF needs libheif, which pillow-heif brings as a
Pillow plugin. Once registered, a HEIF photo goes through the same decode path, limits and skip rules as any other
(decoding.open_image): pillow-heif applies the file's rotation and mirror on opening and reports EXIF orientation 1,
so the photo comes out upright once. Every reader calls :func:`enable_heif` before it opens a photo (it is cached),
so decode processes started by forkserver or spawn register the plugin too.
"""

from __future__ import annotations

from functools import lru_cache

HEIF_EXTENSIONS = frozenset({".heic", ".heif", ".hif"})  # stills; pillow-heif also opens .heics / .heifs
HEIF_EXTRA = "pip install 'samespace[heif]'"


@lru_cache(maxsize=1)
def enable_heif() -> bool:
    """Register pillow-heif's HEIF opener with Pillow, once per process. True when HEIF photos decode here."""
    try:
        import pillow_heif
    except (ImportError, OSError):  # absent, or its libheif fails to load: HEIF skipped, the rest decode
        return False
    pillow_heif.register_heif_opener()
    return True


def heif_version() -> str:
    """pillow-heif's and libheif's versions when HEIF decodes here (part of the decoder's identity), else ``""``."""
    if not enable_heif():
        return ""
    import pillow_heif

    return f"pillow-heif {pillow_heif.__version__}, libheif {pillow_heif.libheif_version()}"
