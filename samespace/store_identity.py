"""A scorer's identity in a store header: what it computes per image (decoder, preprocessing, weights, hash)."""

from __future__ import annotations

import hashlib
import inspect

from samespace import decoding, hashing, image_formats

# --------------------------------------------------------------------------------------------
# What an embedding depends on
# --------------------------------------------------------------------------------------------


def decode_identity() -> str:
    """The decoder's identity: decoding.decode_image's code, the image size, Pillow's version and, only where the
    HEIF plugin is installed, pillow-heif's and libheif's (installing it rebuilds a store once)."""
    from PIL import __version__ as pillow_version

    parts = [inspect.getsource(decoding.decode_image), inspect.getsource(decoding.to_rgb), str(decoding.IMAGE_SIZE),
             pillow_version]
    if heif := image_formats.heif_version():
        parts.append(heif)
    return _sha(*parts)


def preprocessing_identity() -> str:
    """The backbone input preprocessing's identity, from the one place samespace.feature_cache defines it."""
    from samespace import feature_cache  # imported here: it loads torch, which a hash store does not need

    return feature_cache.transform_identity()


def _sha(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _state_digest(module: object) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):  # type: ignore[attr-defined]
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def scorer_fingerprint(scorer: object) -> str:
    """Identity of what ``scorer`` computes per image: the decoder plus its hash function, or its backbone
    (weights + preprocessing), or the whole Siamese network's weights + preprocessing."""
    from samespace import model_scorer, scorers  # imported here: they load torch, which a hash store does not need

    name = type(scorer).__name__
    if isinstance(scorer, scorers.HashScorer):
        import imagehash

        function = hashing.HASH_FUNCTIONS[scorer.name]
        return _sha(name, scorer.name, decode_identity(), inspect.getsource(function),
                    inspect.getsource(hashing.hash_codes), imagehash.__version__)
    if isinstance(scorer, scorers.CosineScorer):
        extractor = scorer.extractor
        weights = extractor.fingerprint() if hasattr(extractor, "fingerprint") else _state_digest(extractor)
        parts = [name, decode_identity(), preprocessing_identity(), weights, inspect.getsource(scorers.l2_normalise)]
        if isinstance(scorer, scorers.VerifiedScorer):  # its keypoints too: the detector, its settings, OpenCV
            import cv2

            from samespace import verification

            parts += [inspect.getsource(verification.local_features), inspect.getsource(verification.unsquashed),
                      inspect.getsource(verification.pack), str(verification.MAX_KEYPOINTS),
                      str(verification.MAX_ASPECT), cv2.__version__]
        return _sha(*parts)
    if isinstance(scorer, model_scorer.ModelScorer):
        parts = [name, decode_identity(), preprocessing_identity(), _state_digest(scorer.model),
                 inspect.getsource(scorers.l2_normalise)]
        precision = getattr(scorer.backbone(), "precision", "fp32")
        return _sha(*parts, f"precision={precision}") if precision != "fp32" else _sha(*parts)
    raise TypeError(f"no embedding-store fingerprint for {name}")
