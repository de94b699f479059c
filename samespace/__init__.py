"""SameSpace: find photos of the same space (re-shot, cropped, edited) in photo folders."""

__version__ = "0.1.0"
