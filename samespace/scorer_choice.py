"""Which scorer a run uses (a checkpoint, the shipped default model or a reference method) and its threshold."""

from __future__ import annotations

import warnings
from pathlib import Path

from samespace import default_model, errors, model_scorer, scorers, scoring_methods, verification


def device_for(name: str) -> str:
    """``auto`` / ``cpu`` / ``cuda`` as the device to run on (auto: CUDA when available)."""
    from samespace.backbones import resolve_device

    try:
        return resolve_device(name)
    except ValueError as exc:
        raise errors.FindDuplicatesError(str(exc)) from exc


def default_method(backbone: str | None = None, backbone_weights: str = "imagenet") -> str:
    """Without --checkpoint / --method: the shipped default model (default_model.py) when present, else
    ``calibrated`` (its background and weights are those of EfficientNet-Lite0 ImageNet features: with another
    ``--backbone`` or ``--backbone-weights``, ``relative``)."""
    plain = backbone is None and backbone_weights == "imagenet"
    if not plain:
        return "relative"
    return "default" if default_model.available() else "calibrated"


def choose_scorer(
    method: str | None = None,
    checkpoint: str | Path | None = None,
    backbone: str | None = None,
    backbone_weights: str = "imagenet",
    batch_size: int = scoring_methods.DEFAULT_BATCH_SIZE,
    device: str = "cpu",
    threshold: float | None = None,
    precision: str = "fp32",
) -> tuple[scorers.PairScorer, float, str]:
    """The scorer for these options, its threshold, and where the threshold came from.

    ``checkpoint``: a trained model (its threshold file, else 0.5); else ``method`` (scoring_methods.METHODS);
    else the shipped default model when present, else ``calibrated``
    (``relative`` with another backbone). ``threshold`` overrides the default. ``precision``: the backbone's
    arithmetic (samespace.backbones.PRECISIONS); a method without a backbone takes fp32 only.

    >>> scorer, threshold, source = choose_scorer("phash")
    >>> scorer.name, threshold, source
    ('phash', 0.7344, 'calibrated default')
    """
    method = "model" if checkpoint else (method or default_method(backbone, backbone_weights))
    if method == "default":
        try:
            model, default = default_model.load(device)
        except default_model.DefaultModelError as exc:
            raise errors.FindDuplicatesError(str(exc)) from exc
        source = f"shipped default model ({default_model.META.name})"
        scorer: scorers.PairScorer = model_scorer.ModelScorer(model, batch_size=batch_size, device=device)
    elif method == "model":
        from samespace import checkpoint_loading

        checkpoint_loading.check_folder(checkpoint)  # each a CheckpointError (ValueError) naming the file
        default, source = checkpoint_loading.model_threshold(checkpoint)
        model = checkpoint_loading.load_model(checkpoint, device=device)
        scorer = model_scorer.ModelScorer(model, batch_size=batch_size, device=device)
    elif method in scoring_methods.BACKBONE_METHODS:
        from samespace.backbones import BackboneWeightsError

        backbone = backbone or scoring_methods.COSINE_BACKBONE
        try:
            scorer = scorers.reference_scorer(method, backbone, backbone_weights, device, batch_size)
        except BackboneWeightsError as exc:
            raise errors.FindDuplicatesError(str(exc)) from exc
        default = scoring_methods.DEFAULT_THRESHOLDS[method]
        source = f"calibrated default ({scoring_methods.COSINE_BACKBONE})"
        if (backbone, backbone_weights) != (
            scoring_methods.COSINE_BACKBONE,
            "imagenet",
        ) and threshold is None:
            warnings.warn(f"the default {method} threshold {default} was calibrated with "
                          f"{scoring_methods.COSINE_BACKBONE} ImageNet weights, not {backbone} / {backbone_weights}; "
                          "consider --threshold", stacklevel=2)
            source = (f"calibrated for {scoring_methods.COSINE_BACKBONE} imagenet, used with {backbone} "
                      f"{backbone_weights}")
    else:
        scorer = scorers.HashScorer(method)
        default, source = scoring_methods.DEFAULT_THRESHOLDS[method], "calibrated default"
    if precision != "fp32":
        extractor = scorer.backbone()
        if extractor is None:
            raise errors.FindDuplicatesError(f"--precision {precision}: the {scorer.name} method runs no backbone")
        try:
            extractor.set_precision(precision)  # type: ignore[operator]
        except ValueError as exc:
            raise errors.FindDuplicatesError(f"--precision: {exc}") from exc
    if threshold is None:
        threshold = default
    else:
        source = "--threshold"
    if isinstance(scorer, scorers.VerifiedScorer):  # pairs the largest bonus cannot lift to the threshold: unverified
        scorer.verify_from = threshold - verification.MAX_BONUS
    elif scorer.name == "calibrated":  # pairs the most spatial evidence cannot lift to the threshold: unverified
        scorer.verify_from = scorer.coefficients.verify_from(threshold)  # type: ignore[attr-defined]
    return scorer, threshold, source
