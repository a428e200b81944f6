"""Image loading as a scikit-learn transformer, for pipelines of images.

:class:`ImageLoader` turns file paths, PIL images or arrays into 8-bit RGB
arrays, so ``make_pipeline(ImageLoader(), UniADDetector())`` fits and scores
a list of paths like any other sklearn pipeline. It reads pixels with the
same code as the detector (:mod:`skuniad.io`).
"""

from __future__ import annotations

from numbers import Integral

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils._param_validation import Interval, StrOptions

from skuniad.io import (
    MIN_IMAGE_SIDE,
    RESIZE_MODES,
    check_images,
    read_image,
    resize,
    resize_uint8,
)

__all__ = ["ImageLoader"]


class ImageLoader(TransformerMixin, BaseEstimator):
    """Read images (paths, PIL images or arrays) into uint8 RGB arrays.

    A stateless transformer: ``fit`` learns nothing and ``transform`` reads
    every image, converts it to three 8-bit channels (grayscale is
    replicated, alpha dropped, 16-bit and float images rescaled and rounded)
    and, when ``size`` is given, resizes it as the detector does.

    Parameters
    ----------
    size : int or None, default=None
        None keeps each image's own size and ``transform`` returns a list of
        ``(H_i, W_i, 3)`` arrays. An int resizes every image to a square of
        that side (aspect not kept, as the detector does) and ``transform``
        returns one ``(n, size, size, 3)`` array. The detector's
        ``image_size`` is the natural choice: the detector then skips its own
        resize, and memory stays at ``3 * size**2`` bytes per image. Full-size
        images of a large data set may not fit in memory at once; pass their
        paths straight to the detector then, which reads them batch by batch.
    resize : {"pil-uint8", "float"}, default="pil-uint8"
        The detector's ``resize`` to imitate. With ``"pil-uint8"`` (both
        defaults) the detector gets exactly the pixels it computes from the
        files; with ``"float"``, those pixels rounded to 8 bits.

    See Also
    --------
    skuniad.UniADDetector : accepts the same inputs directly.

    Notes
    -----
    Anomaly maps and masks are not part of sklearn's ``Pipeline`` interface;
    reach them through the fitted steps::

        pipe = make_pipeline(ImageLoader(), UniADDetector()).fit(paths)
        maps = pipe[-1].anomaly_maps(pipe[:-1].transform(paths))

    With ``size`` set, the maps' "input size" is ``size``, not the files'.

    Examples
    --------
    >>> import numpy as np
    >>> from skuniad.preprocessing import ImageLoader
    >>> gray16 = np.full((2, 20, 30), 65535, dtype=np.uint16)
    >>> images = ImageLoader().fit_transform(gray16)
    >>> len(images), images[0].shape, images[0].dtype, int(images[0].max())
    (2, (20, 30, 3), dtype('uint8'), 255)
    >>> ImageLoader(size=16).fit_transform(gray16).shape
    (2, 16, 16, 3)
    """

    _parameter_constraints: dict = {
        "size": [Interval(Integral, MIN_IMAGE_SIDE, None, closed="left"), None],
        "resize": [StrOptions(set(RESIZE_MODES))],
    }

    def __init__(self, *, size=None, resize="pil-uint8"):
        self.size = size
        self.resize = resize

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Check ``X`` (types, shapes, that files exist) and the parameters.

        Parameters
        ----------
        X : array (n, H, W[, C]) or list of arrays, PIL images or paths
        y : ignored

        Returns
        -------
        self : ImageLoader
        """
        check_images(X)
        return self

    def set_output(self, *, transform=None):
        """Accept a container request (``Pipeline.set_output``); images stay arrays.

        Images are not tables: whatever ``transform`` asks (``"default"``,
        ``"pandas"``, ``"polars"`` or None), :meth:`transform` returns arrays
        as documented. Accepting the call lets ``pipe.set_output(...)`` reach
        the tabular steps of a pipeline that starts with an ImageLoader.

        Returns
        -------
        self : ImageLoader
        """
        if transform not in (None, "default", "pandas", "polars"):
            raise ValueError(
                f"transform must be 'default', 'pandas', 'polars' or None, got {transform!r}"
            )
        return self

    def transform(self, X):
        """Read every image of ``X`` as uint8 RGB.

        Parameters
        ----------
        X : array (n, H, W[, C]) or list of arrays, PIL images or paths

        Returns
        -------
        images : list of ndarray (H_i, W_i, 3) uint8, or ndarray (n, size, size, 3) uint8
            A list when ``size`` is None, one array otherwise.
        """
        self._validate_params()  # stateless: transform may come without fit
        X = check_images(X)
        if self.size is None:
            return [_to_uint8(read_image(item, i)[0]) for i, item in enumerate(X)]
        out = np.empty((len(X), self.size, self.size, 3), dtype=np.uint8)
        for i, item in enumerate(X):
            if self.resize == "pil-uint8":
                out[i] = resize_uint8(read_image(item, i, as_uint8=True)[0], self.size)
                continue
            # as in the detector: huge files are decoded at a reduced scale first
            image, _ = read_image(item, i, max_side=self.size)
            out[i] = _to_uint8(resize(image, self.size).permute(1, 2, 0).numpy())
        return out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.input_tags.string = True
        tags.input_tags.positive_only = True
        tags.transformer_tags.preserves_dtype = []
        return tags


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """Float RGB in [0, 1] -> uint8; exact for images that were 8-bit to begin with."""
    return np.rint(image * 255.0).astype(np.uint8)
