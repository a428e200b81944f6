"""The scikit-learn facade: parameters, fit / score / predict, thresholds."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

import numpy as np
import torch
from sklearn.base import BaseEstimator, OutlierMixin, _fit_context
from sklearn.exceptions import NotFittedError
from sklearn.utils import Bunch, check_random_state
from sklearn.utils.validation import check_is_fitted

from skuniad import _inference, _thresholds, interop, persistence
from skuniad._fitting import check_training_setup, partition, train_networks
from skuniad._spec import (
    PARAMETER_CONSTRAINTS,
    NetworkSpec,
    check_param_consistency,
    training_fingerprint,
)
from skuniad.device import releasing_device_memory, resolve_device, resolve_precision
from skuniad.distributed import gather_shards
from skuniad.io import check_images, image_size
from skuniad.metrics import warn_on_anomalous_labels
from skuniad.training import TrainingInterrupted


class UniADDetector(OutlierMixin, BaseEstimator):
    """UniAD: one reconstruction model for the normal images of many categories.

    A frozen ImageNet CNN turns each image into a 14 x 14 grid of multi-scale
    feature tokens; a neighbor-masked transformer with layer-wise queries
    learns to rebuild them from normal images only. Where it cannot, the
    image is anomalous: the per-location reconstruction error is the anomaly
    map and its 16 x 16-pooled maximum the image score (You et al., NeurIPS
    2022).

    Parameters
    ----------
    backbone : str, default="tf_efficientnet_b4.aa_in1k"
        timm model name (optionally with a pretrained tag) supporting
        ``features_only``. ``"tf_efficientnet_lite0"`` is fast on CPUs and has
        bundled offline weights.
    backbone_weights : {"imagenet"} or path or None, default="imagenet"
        ``"imagenet"``: weights bundled in an installed package, else timm's
        pretrained weights (cache or hub). A path: a state-dict file. None:
        random weights, for tests only. Missing weights raise an error listing
        these options; there is no silent random fallback.
    out_indices : tuple of int, default=(0, 1, 2, 3)
        Backbone stages whose features are aligned and concatenated.
    image_size : int, default=224
        Images are resized (aspect not kept) to ``image_size`` squared.
    resize : {"pil-uint8", "float"}, default="pil-uint8"
        ``"pil-uint8"`` (the reference's): the 8-bit RGB image is resized by
        Pillow's bilinear filter, then scaled to [0, 1] (16-bit and float images
        rounded to 8 bits first; files decoded at full resolution). ``"float"``:
        scaled to [0, 1], then resized in float32 by torch's antialiased bilinear
        filter, keeping 16-bit precision (huge JPEGs decoded at a reduced
        scale). Both agree on images already ``image_size`` squared.
    static_padding_size : "auto", int or None, default="auto"
        TF "same" padding of the backbone's strided convolutions. An int S:
        every one pads as it would on an S x S input, fixed, as the reference
        implementation's EfficientNet does. None: computed from each input,
        as timm does. ``"auto"``: the variant's native resolution for
        ``tf_efficientnet_b0`` ... ``b8`` (380 for B4: the paper's network;
        at 224 px one B4 layer pads (2, 2) instead of timm's (1, 2)), None
        for any other backbone.
    hidden_dim, num_heads, num_encoder_layers, num_decoder_layers, dim_feedforward : int
        Transformer shape (256, 8, 4, 4, 1024 as in the paper).
    dropout : float, default=0.1
    neighbor_size : int or None, default=7
        Odd window hidden around each query by the neighbor mask; None
        disables the mask.
    jitter_scale : float, default=20.0
        Feature jitter strength ``alpha``.
    jitter_prob : float, default=1.0
        Probability of jittering a training batch.
    layer_queries : {"every", "first", "none"}, default="every"
        Decoder layers that own a learned query table: every layer (the
        paper's layer-wise queries), the first only, or none (the decoder
        starts from the encoder output). With ``neighbor_size=None`` and
        ``jitter_scale=0``, ``"none"`` is the paper's plain reconstruction
        transformer, the ablation that falls into the "identical shortcut".
    image_score : {"max", "mean", "std"}, default="max"
        How an anomaly map becomes the image score, as in the reference's
        evaluation: ``"max"`` of the 16 x 16 average-pooled map (the paper's
        choice for MVTec AD), the map's ``"mean"`` (its choice for
        CIFAR-10) or its standard deviation ``"std"``. Used by
        ``score_samples`` and everything built on it; the maps do not change.
    max_epochs : int, default=1000
    batch_size : int, default=8
        Training images per step. Feature extraction and scoring run
        ``min(4 * batch_size, 32)`` images at a time; when the GPU runs out
        of memory, a :class:`~skuniad.device.DeviceOutOfMemoryError` (a
        ``MemoryError``) says which ``batch_size`` to try.
    learning_rate : float, default=1e-4
    weight_decay : float, default=1e-4
    grad_clip : float, default=0.1
        Gradient-norm clip.
    lr_schedule : {"step", "cosine"}, default="step"
        ``"step"`` (the paper's): ``learning_rate`` until 80 % of
        ``max_epochs``, then x 0.1. ``"cosine"``: a linear warm-up over the
        first 5 % of the optimizer steps, then a half-cosine decay to 0 at
        the last step of ``max_epochs``; for short fits (docs/results.md,
        "Epochs to quality").
    ema_decay : float in (0, 1) or None, default=None
        Score with a moving average of the weights (decay at optimizer step t:
        ``min(ema_decay, (1 + t) / (10 + t))``); None: off.
    warm_start : bool, default=False
        When True and the detector is fitted, ``fit`` continues from ``model_``
        (reusing ``backbone_``) for ``max_epochs`` more epochs with a new optimizer
        and schedule; ``loss_curve_`` and ``n_epochs_`` accumulate. Parameters
        that change the network's shapes raise a ValueError.
    cache_dtype : {"float32", "float16", "bfloat16"}, default="float32"
        Storage of the backbone features, computed once per fit and reused every
        epoch: float32 trains exactly as recomputing them; 16 bits halve the memory.
    cache_max_gb : float or None, default=4.0
        A larger feature cache is memory-mapped from a temporary file.
    checkpoint_path : str or path or None, default=None
        Crash-recovery file of the training state (weights, optimizer, schedule,
        RNG states, loss curve), written atomically during training and after
        the last epoch. A later ``fit`` with the same path, training parameters
        and number of images resumes from it, bit-identically on CPU (``device``
        and ``precision`` may change); another training's raises a ValueError
        naming the differences (image contents are not compared). Kept until
        :meth:`save` has written the model; not saved in model files.
    checkpoint_every : int or None, default=None
        Epochs between checkpoints; None: at most one per ``checkpoint_interval``.
    checkpoint_interval : float, default=60.0
        Least seconds of training between two checkpoints.
    contamination : "auto" or float in (0, 0.5], default="auto"
        Sets ``offset_`` and ``pixel_threshold_`` from normal calibration images
        (the training images, the held-out ones with ``validation_fraction``, or
        :meth:`calibrate`'s). ``"auto"``: three robust standard deviations (1.4826
        x MAD) above the median (docs/user-guide.md, "Thresholds"). A float: that
        share of them on the anomalous side (``IsolationForest``'s rule).
    validation_fraction : float in (0, 1) or None, default=None
        None: thresholds from the training images (the paper trains on all).
        A float: that share of the normal images (of each group), drawn with
        ``random_state``, is held out of training to set the thresholds (a
        model scores its own training images low); 5 images per part at least.
    unknown_group : {"pooled", "error"}, default="pooled"
        For an image whose group has no threshold of its own: use the pooled
        ones (``offset_``, ``pixel_threshold_``), or raise a ValueError.
    device : str, default="auto"
        ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda:1"``...
    precision : {"auto", "bf16", "fp32"}, default="auto"
        ``"auto"``: bf16 autocast on CUDA and AVX-512/AMX-bf16 CPUs, else fp32.
    compile : bool, default=False
        Run the reconstruction network (not the backbone) through
        ``torch.compile`` in ``fit`` and scoring: the same maths, other
        rounding and dropout draws; the first steps compile. Without a working
        compiler (C++ on CPUs, Triton on GPUs) it warns and runs uncompiled.
        Checkpoints resume either way; ``save`` does not store it.
    random_state : int, RandomState instance or None, default=None
        Seeds shuffling, jitter, dropout and initialisation. With an int,
        CPU fits are bit-identical, in one process or across processes (see
        Notes for GPUs).
    verbose : int, default=0
        > 0 shows progress bars and one line per epoch with the loss.

    Attributes
    ----------
    thresholds_ : skuniad._thresholds.ThresholdTable
        The decision thresholds, pooled and per group; the five attributes
        below are read-only views of it. Absent from a model imported by
        :meth:`from_reference_checkpoint` until :meth:`calibrate`.
    offset_ : float
        ``decision_function = score_samples - offset_``.
    image_threshold_ : float
        ``-offset_``: the image anomaly score (``-score_samples``, the
        ``anomaly_score`` of ``skuniad predict``) above which ``predict``
        answers -1.
    pixel_threshold_ : float
        Anomaly-map value above which ``predict_masks`` marks a pixel, set by
        ``offset_``'s rule on the calibration maps' maxima: normal images get
        empty masks.
    group_image_thresholds_ : dict
        Group label -> image threshold (anomaly-score units, as
        ``image_threshold_``), from each group's calibration images, when
        ``fit`` or :meth:`calibrate` got ``groups``; else empty.
    group_pixel_thresholds_ : dict
        Group label -> pixel threshold, likewise.
    n_epochs_ : int
        Epochs actually trained (fewer than ``max_epochs`` after Ctrl-C),
        counting those of earlier fits continued with ``warm_start``.
    loss_curve_ : list of float
        Mean training loss of each epoch, earlier warm-started fits first.
    model_ : torch.nn.Module
        The trained reconstruction network (:class:`skuniad.nn.UniADReconstruction`).
    backbone_ : torch.nn.Module
        The frozen feature extractor (:class:`skuniad.nn.FrozenBackbone`).
    feature_shape_ : tuple of int
        ``(C, h, w)`` of the aligned feature map.
    device_ : torch.device
        Where the networks run.

    See Also
    --------
    sklearn.ensemble.IsolationForest : the outlier-detector contract followed here.
    skuniad.persistence : the safe model file written by :meth:`save`.

    Notes
    -----
    Persistence: :meth:`save` writes one safetensors file that never runs
    code when read; ``pickle`` and ``joblib`` work too, and a model fitted on
    a GPU loads on a CPU-only machine (docs/user-guide.md, "Saving and loading").

    Reproducibility: on CPU, the same images, parameters and integer
    ``random_state`` give bit-identical weights, scores and loss curves, in
    one process or in another one, with the same torch version and thread
    count. On CUDA, fits are close but not bit-identical: cuDNN and cuBLAS
    pick nondeterministic kernels (atomic adds) and bf16 autocast amplifies
    rounding differences. For repeatable GPU fits, use ``precision="fp32"``,
    set ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` and call
    ``torch.use_deterministic_algorithms(True)``, at a speed cost.

    Examples
    --------
    >>> import numpy as np
    >>> from skuniad import UniADDetector
    >>> rng = np.random.default_rng(0)
    >>> X = rng.integers(0, 255, size=(4, 32, 32, 3), dtype=np.uint8)
    >>> det = UniADDetector(backbone="tf_efficientnet_lite0", backbone_weights=None,
    ...                     image_size=64, hidden_dim=32, num_heads=2, dim_feedforward=64,
    ...                     num_encoder_layers=1, num_decoder_layers=1, neighbor_size=1,
    ...                     max_epochs=1, random_state=0)
    >>> det.fit(X).predict(X).shape
    (4,)
    """

    _parameter_constraints: dict = PARAMETER_CONSTRAINTS

    def __init__(
        self,
        *,
        backbone="tf_efficientnet_b4.aa_in1k",
        backbone_weights="imagenet",
        out_indices=(0, 1, 2, 3),
        image_size=224,
        resize="pil-uint8",
        static_padding_size="auto",
        hidden_dim=256,
        num_heads=8,
        num_encoder_layers=4,
        num_decoder_layers=4,
        dim_feedforward=1024,
        dropout=0.1,
        neighbor_size=7,
        jitter_scale=20.0,
        jitter_prob=1.0,
        layer_queries="every",
        image_score="max",
        max_epochs=1000,
        batch_size=8,
        learning_rate=1e-4,
        weight_decay=1e-4,
        grad_clip=0.1,
        lr_schedule="step",
        ema_decay=None,
        cache_dtype="float32",
        cache_max_gb=4.0,
        warm_start=False,
        checkpoint_path=None,
        checkpoint_every=None,
        checkpoint_interval=60.0,
        contamination="auto",
        validation_fraction=None,
        unknown_group="pooled",
        device="auto",
        precision="auto",
        compile=False,
        random_state=None,
        verbose=0,
    ):
        self.backbone = backbone
        self.backbone_weights = backbone_weights
        self.out_indices = out_indices
        self.image_size = image_size
        self.resize = resize
        self.static_padding_size = static_padding_size
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.num_encoder_layers = num_encoder_layers
        self.num_decoder_layers = num_decoder_layers
        self.dim_feedforward = dim_feedforward
        self.dropout = dropout
        self.neighbor_size = neighbor_size
        self.jitter_scale = jitter_scale
        self.jitter_prob = jitter_prob
        self.layer_queries = layer_queries
        self.image_score = image_score
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.grad_clip = grad_clip
        self.lr_schedule = lr_schedule
        self.ema_decay = ema_decay
        self.cache_dtype = cache_dtype
        self.cache_max_gb = cache_max_gb
        self.warm_start = warm_start
        self.checkpoint_path = checkpoint_path
        self.checkpoint_every = checkpoint_every
        self.checkpoint_interval = checkpoint_interval
        self.contamination = contamination
        self.validation_fraction = validation_fraction
        self.unknown_group = unknown_group
        self.device = device
        self.precision = precision
        self.compile = compile
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ fit
    @releasing_device_memory
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, groups=None, *, on_epoch_end=None):
        """Train on normal images of any categories mixed together.

        Parameters
        ----------
        X : array (n, H, W[, C]) or list of arrays, PIL images or paths
            Normal images only.
        y : None or array-like of shape (n_samples,), default=None
            Not used to train (unsupervised): every image of ``X`` is taken
            as normal. Labels that mark anomalous images (1 with 0/1 labels,
            -1 with sklearn's +1/-1) give a warning, since they would be
            learned as normal (e.g. a ``GridSearchCV`` refit on a labelled
            test set).
        groups : array-like of shape (n,) of str or int, default=None
            The category (product type) of each image, when known. Training
            is the same; the thresholds are then also set per category
            (``group_image_thresholds_``, ``group_pixel_thresholds_``) and
            ``validation_fraction`` holds out the same share of each one.
            Under sklearn's metadata routing, request it with
            ``set_fit_request(groups=True)``.
        on_epoch_end : callable or None, default=None
            Called as ``on_epoch_end(detector, epoch, loss)`` after every
            epoch (``epoch`` counts from 1, ``loss`` is its mean training
            loss), e.g. to record learning curves. Inside it the detector
            scores with the weights of that epoch: ``score_samples`` and
            ``anomaly_maps`` work, thresholds are not set yet. Scoring there
            changes nothing in the training: the fitted weights are those of
            a fit without the callback.

        Returns
        -------
        self : UniADDetector

        Raises
        ------
        skuniad.training.TrainingInterrupted
            Ctrl-C (a ``KeyboardInterrupt``) during training. When at least
            one epoch had finished, the detector is fitted with the weights of
            the last finished one (thresholds included) before it is raised;
            otherwise it is left as it was.
        """
        X = check_images(X)
        groups = _thresholds.check_groups(groups, len(X))
        warn_on_anomalous_labels(y, len(X))
        params = self.get_params()
        check_param_consistency(params)
        warm = self.warm_start and hasattr(self, "model_")
        check_training_setup(params, warm=warm)
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        part = partition(X, groups, self.validation_fraction, seed, resolve_device(self.device))
        network = NetworkSpec.from_params(params)
        if warm:
            self.network_spec_.check_warm_start(network)
        previous_curve = list(self.loss_curve_) if warm else []
        trained = train_networks(
            params,
            network,
            part,
            seed=part.seed,
            amp_dtype=resolve_precision(self.precision, part.device),
            fingerprint=training_fingerprint(params, warm_start_from_epoch=len(previous_curve)),
            warm_networks=(self.backbone_, self.model_) if warm else None,
            on_epoch_end=self._epoch_hook(on_epoch_end, part.device, network),
        )
        self._set_networks(trained.backbone, trained.model, part.device, trained.features, network)
        curve, interrupted, features = trained.loss_curve, trained.interrupted, trained.features
        del trained
        self.loss_curve_ = previous_curve + curve
        self.n_epochs_ = len(self.loss_curve_)
        if part.held_out is not None:  # thresholds from normal images the model has not trained on
            del features
            features = self._scorer().extract(part.held_out)
        self.thresholds_ = self._calibration_table(
            features, part.context, part.calibration_groups, held_out=part.held_out is not None
        )
        persistence.keep_until_saved(self, self.checkpoint_path if interrupted is None else None)
        if interrupted is not None:
            # a library re-raises: a loop (GridSearchCV, cross_val_score) must not go on
            # with a half-trained model; the CLI catches this and keeps it on purpose
            raise TrainingInterrupted(
                f"{interrupted}: the detector is fitted with the weights of the last finished "
                f"epoch (n_epochs_={self.n_epochs_}) and calibrated",
                curve,
            ) from None
        return self

    def _set_networks(self, backbone, model, device, features, network: NetworkSpec) -> None:
        self.backbone_, self.model_, self.device_ = backbone, model, device
        self.feature_shape_ = tuple(int(v) for v in features.shape[1:])
        self.network_spec_ = network

    def _epoch_hook(self, on_epoch_end, device, network):
        """``fit``'s ``on_epoch_end`` as the training loop's callback, the detector scorable."""
        if on_epoch_end is None:
            return None

        def hook(backbone, model, features, epoch: int, loss: float) -> None:
            self._set_networks(backbone, model, device, features, network)
            devices = [device.index or 0] if device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):  # whatever it draws, training goes on
                on_epoch_end(self, epoch + 1, loss)

        return hook

    def _calibration_table(self, features, context=None, groups=None, held_out=False):
        """The contamination rule on calibration features (all ranks'), pooled and per group."""
        values = (gather_shards(v, context) for v in self._scorer().calibration_values(features))
        return _thresholds.ThresholdTable.fit(*values, groups, self.contamination, held_out)

    def _scorer(self) -> _inference.Scorer:
        """The fitted networks, ready to score."""
        return _inference.Scorer(
            self.backbone_,
            self.model_,
            self.network_spec_,
            self.device_,
            resolve_precision(self.precision, self.device_),
            self.batch_size,
            self.verbose,
            self.compile,
        )

    @releasing_device_memory
    def _infer(self, X, keep_maps: bool):
        """Image scores (n,), model-size maps (n, S, S) or None, original sizes of checked X."""
        return self._scorer().score(X, keep_maps=keep_maps)

    def score_samples(self, X) -> np.ndarray:
        """Negated UniAD image score: HIGHER = MORE NORMAL (sklearn's convention).

        The image score is taken from the anomaly map at model resolution as
        ``image_score`` says (by default the maximum of its 16 x 16 average
        pooling, the paper's).

        Returns
        -------
        scores : ndarray of shape (n_samples,)
        """
        check_is_fitted(self, "model_")
        scores, _, _ = self._infer(check_images(X), keep_maps=False)
        return -scores

    def decision_function(self, X, groups=None) -> np.ndarray:
        """``score_samples(X) - offset_``: negative = anomalous.

        With ``groups``, each image's own group threshold replaces
        ``offset_`` (``score_samples(X) + group_image_thresholds_[g]``);
        groups without one use ``offset_`` (see ``unknown_group``).
        """
        self._check_calibrated()
        X = check_images(X)
        thresholds = self.thresholds_.image_for(groups, len(X), self.unknown_group)
        scores, _, _ = self._infer(X, keep_maps=False)
        return -scores + thresholds

    def predict(self, X, groups=None) -> np.ndarray:
        """+1 for normal images, -1 for anomalous ones (int).

        ``groups``: each image's category, to apply its own threshold (see
        :meth:`decision_function`).
        """
        self._check_calibrated()
        X = check_images(X)
        thresholds = self.thresholds_.image_for(groups, len(X), self.unknown_group)
        scores, _, _ = self._infer(X, keep_maps=False)
        return _thresholds.labels_above(scores, thresholds)

    def fit_predict(self, X, y=None, groups=None) -> np.ndarray:
        """``fit(X, groups=groups).predict(X, groups=groups)``."""
        return self.fit(X, groups=groups).predict(X, groups=groups)

    @property
    def image_threshold_(self) -> float:
        """``-offset_``: the anomaly score (``-score_samples``) above which an image is -1.

        In the units of ``scores.csv``'s ``anomaly_score``, next to
        ``pixel_threshold_`` for the maps.
        """
        self._check_calibrated()
        return self.thresholds_.image

    @property
    def offset_(self) -> float:
        return -self._calibrated_table("offset_").image

    @property
    def pixel_threshold_(self) -> float:
        return self._calibrated_table("pixel_threshold_").pixel

    @property
    def group_image_thresholds_(self) -> dict:
        groups = self._calibrated_table("group_image_thresholds_").groups
        return {group: image for group, (image, _) in groups.items()}

    @property
    def group_pixel_thresholds_(self) -> dict:
        groups = self._calibrated_table("group_pixel_thresholds_").groups
        return {group: pixel for group, (_, pixel) in groups.items()}

    def _calibrated_table(self, name: str) -> _thresholds.ThresholdTable:
        # an AttributeError, as for any fitted attribute not set yet: hasattr() works
        if "thresholds_" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return self.thresholds_

    def anomaly_maps(self, X, size="input"):
        """Per-pixel anomaly maps, HIGHER = MORE ANOMALOUS.

        Parameters
        ----------
        X : images
        size : {"input", "model"}, default="input"
            ``"input"``: each image's own size. ``"model"``:
            ``image_size`` squared.

        Returns
        -------
        maps : ndarray (n, H, W) or list of n ndarrays (H_i, W_i), float32
            The type follows ``X``'s, never the image sizes: an array or a
            tensor ``X`` (images of one size) gives an array, a list (of
            paths, PIL images or arrays) a list, even when all sizes agree.
            ``size="model"`` always gives an array ``(n, image_size, image_size)``.
        """
        _inference.check_map_size(size)
        check_is_fitted(self, "model_")
        stack = _inference.returns_array(X)
        _, maps, sizes = self._infer(check_images(X), keep_maps=True)
        return maps if size == "model" else _inference.to_image_size(maps, sizes, stack)

    def predict_masks(self, X, threshold=None, groups=None):
        """Boolean defect masks at input size: ``anomaly_maps(X) > threshold``.

        ``threshold=None`` uses ``pixel_threshold_``, or with ``groups`` each
        image's group threshold (``group_pixel_thresholds_``; groups without
        one use ``pixel_threshold_``, see ``unknown_group``). A number
        applies to every image.
        """
        check_is_fitted(self, "model_")
        if threshold is None:
            self._check_calibrated()
        X = check_images(X)
        _, thresholds = self._decision_thresholds(groups, len(X), pixel_threshold=threshold)
        return _thresholds.masks_above(self.anomaly_maps(X, size="input"), thresholds)

    def predict_all(
        self, X, *, size="input", groups=None, threshold=None, pixel_threshold=None
    ) -> Bunch:
        """Scores, labels, maps and masks from ONE pass of the networks.

        Each method's own call runs the backbone and the transformer again;
        this runs them once. All results are held in memory; for data sets
        whose maps do not fit, iterate with :meth:`predict_chunks`.

        Parameters
        ----------
        X : images
        size : {"input", "model"}, default="input"
            Size of the maps and masks, as in :meth:`anomaly_maps`.
        groups : array-like of shape (n,) of str or int, default=None
            Each image's category, to apply its own thresholds (as in
            :meth:`predict` and :meth:`predict_masks`).
        threshold : float, default=None
            Image threshold on the anomaly score (``-score_samples``) for
            every image, instead of the model's.
        pixel_threshold : float, default=None
            Anomaly-map threshold for every image's mask, instead of the
            model's (as ``predict_masks(X, threshold=...)``).

        Returns
        -------
        result : sklearn.utils.Bunch
            Keys named after the methods they equal: ``score_samples``,
            ``decision_function``, ``predict``, ``anomaly_maps`` and
            ``predict_masks``. The last three, which need thresholds, are None
            when the model has none (imported from a reference checkpoint,
            not calibrated) and none is given.
        """
        check_is_fitted(self, "model_")
        _inference.check_map_size(size)
        stack = _inference.returns_array(X)
        X = check_images(X)
        groups = _thresholds.check_groups(groups, len(X))
        explicit = (threshold, pixel_threshold)
        (result,) = self._iter_results(X, len(X), size, stack, groups, explicit, skip_errors=False)
        del result["indices"], result["errors"], result["image_sizes"]
        return result

    def predict_chunks(
        self,
        X,
        *,
        chunk_size=64,
        size="input",
        errors="raise",
        groups=None,
        threshold=None,
        pixel_threshold=None,
    ) -> Iterator[Bunch]:
        """:meth:`predict_all`, chunk by chunk: bounded memory for any number of images.

        Parameters
        ----------
        X : images
            Paths are read batch by batch; only one chunk's maps are held.
        chunk_size : int, default=64
            Images per yielded chunk (the last one may be shorter).
        size : {"input", "model"}, default="input"
        errors : {"raise", "skip"}, default="raise"
            ``"skip"``: an unreadable image does not stop the iteration; it
            gets a NaN score, label 0 and None (``size="input"``) or NaN
            (``"model"``) map and mask, and its reason in ``errors``.
        groups : array-like of shape (n,) of str or int, default=None
            Each image's category, to apply its own thresholds.
        threshold, pixel_threshold : float, default=None
            Thresholds for every image instead of the model's, as in
            :meth:`predict_all`.

        Yields
        ------
        chunk : sklearn.utils.Bunch
            :meth:`predict_all`'s keys for the chunk's images, plus
            ``indices`` (their positions in ``X``), ``errors`` (None, or
            why the image could not be read) and ``image_sizes`` (each
            image's own ``(height, width)``, None if unreadable).
        """
        check_is_fitted(self, "model_")
        _inference.check_chunk_options(size, chunk_size, errors)
        stack = _inference.returns_array(X)
        X = check_images(X)
        groups = _thresholds.check_groups(groups, len(X))
        explicit = (threshold, pixel_threshold)
        self._decision_thresholds(groups, len(X), *explicit)  # an unknown group fails now
        return self._iter_results(
            X, chunk_size, size, stack, groups, explicit, skip_errors=errors == "skip"
        )

    def _iter_results(
        self, X, chunk_size, size, stack, groups, explicit, skip_errors
    ) -> Iterator[Bunch]:
        scored = self._scorer().iter_scored(X, keep_maps=True, skip_errors=skip_errors)
        for begin, items in _inference.iter_chunks(scored, chunk_size):
            part = None if groups is None else groups[begin : begin + len(items)]
            thresholds = self._decision_thresholds(part, len(items), *explicit)
            yield _inference.chunk_result(items, begin, size, stack, *thresholds)

    def _decision_thresholds(self, groups, n: int, threshold=None, pixel_threshold=None):
        table = getattr(self, "thresholds_", None)
        return _thresholds.decision_thresholds(
            table, groups, n, self.unknown_group, threshold, pixel_threshold
        )

    def score(self, X, y) -> float:
        """Image AUROC of the anomaly score against ``y``.

        ``y`` may use 1 = anomalous / 0 = normal, or sklearn's -1 = outlier /
        +1 = inlier; both are understood. This makes ``GridSearchCV`` select
        by AUROC with no ``scoring`` argument.
        """
        from skuniad.metrics import as_anomaly_labels, image_auroc

        return image_auroc(as_anomaly_labels(y), -self.score_samples(X))

    # ------------------------------------ calibration, reference checkpoints, ONNX
    @releasing_device_memory
    def calibrate(
        self,
        X,
        y=None,
        *,
        groups=None,
        masks=None,
        objective="contamination",
        target=None,
        defect_rate=None,
    ) -> UniADDetector:
        """Set the thresholds without training, from normal or labelled images.

        All earlier thresholds are replaced (without ``groups``, none per group
        remain). Needed once by models imported with
        :meth:`from_reference_checkpoint`.

        Parameters
        ----------
        X : images
        y : array-like of shape (n,), default=None
            1 / -1 = defective, 0 / +1 = normal (either convention); None:
            all normal.
        groups : array-like of shape (n,) of str or int, default=None
            The category of each image, for thresholds per category.
        masks : list of (H, W) bool arrays or None, default=None
            Ground truth of each image at its size (None: empty for a normal
            image, unknown for a defective one): with ``"f1"`` and
            ``"recall"``, the pixel threshold is chosen on these pixels;
            otherwise it follows the image rule on the normal images' maps.
        objective : {"contamination", "f1", "false_alarms", "recall"}
            ``"contamination"``: ``fit``'s rule on the normal images. ``"f1"``:
            the highest F1 (anomalib's default) at ``defect_rate``, each
            class's scores kernel-smoothed (steadier from a few defects).
            ``"false_alarms"``: flag at most ``target`` of the normal images,
            counting those ``fit`` held out (``validation_fraction``), as
            ``"f1"`` does. ``"recall"``: catch at least ``target`` of the
            defective ones. With ``groups``, per group; a group with too few
            images of a class needed (5) raises, or with
            ``unknown_group="pooled"`` keeps the pooled thresholds with a
            warning. The choice and what it achieved on these images:
            ``thresholds_.calibration``.
        target : float in (0, 1), default=None
            For ``"false_alarms"`` and ``"recall"``.
        defect_rate : float in (0, 1) or dict of group to float, default=None
            For ``"f1"``: the share of defective images where the thresholds
            will be used (F1 depends on it); None: their share in ``y``.

        Returns
        -------
        self : UniADDetector
        """
        check_is_fitted(self, "model_")
        X = check_images(X)
        groups = _thresholds.check_groups(groups, len(X))
        _thresholds.check_objective(objective, target, defect_rate)
        held_out = getattr(self, "thresholds_", None) and self.thresholds_.held_out
        if y is None and masks is None and objective == "contamination":
            table = self._calibration_table(self._scorer().extract(X), groups=groups)
            self.thresholds_ = dataclasses.replace(table, held_out=held_out)
            return self
        sizes = [image_size(x, i) for i, x in enumerate(X)]
        labels, masks = _thresholds.check_calibration_inputs(
            y, masks, groups, sizes, objective, self.unknown_group, defect_rate
        )  # all before any work
        scorer = self._scorer()
        self.thresholds_ = _thresholds.calibrate_table(
            *scorer.calibration_values(scorer.extract(X)),
            labels,
            groups,
            objective=objective,
            target=target,
            defect_rate=defect_rate,
            contamination=self.contamination,
            pixels=None if masks is None else scorer.masked_pixels(X, masks),
            unknown_group=self.unknown_group,
            held_out=held_out,
        )
        return self

    def _check_calibrated(self) -> None:
        check_is_fitted(self, "model_")
        if not hasattr(self, "thresholds_"):
            raise NotFittedError(
                "this UniADDetector has no decision thresholds (offset_, pixel_threshold_): "
                "it was imported from a reference checkpoint without calibration images. "
                "Call det.calibrate(X_normal) with normal images first; score_samples and "
                "anomaly_maps work without it."
            )

    @classmethod
    def from_reference_checkpoint(
        cls,
        path: str | os.PathLike,
        device: str = "auto",
        calibration_images=None,
        *,
        reference_padding: bool = True,
    ) -> UniADDetector:
        """A fitted detector from the UniAD authors' checkpoint (``ckpt.pth.tar``).

        Backbone and reconstruction weights and the architecture (feature
        stages, grid, hidden size, layers, heads, FFN, neighbor window, jitter)
        come from the checkpoint; inputs are 224 px (the checkpoint's grid
        times its stride), resized as the reference does (``resize="pil-uint8"``)
        with ImageNet normalisation, ``precision="fp32"``.
        Reading runs no code from the file (see :mod:`skuniad.interop`).

        The checkpoint holds no decision thresholds. Pass normal images as
        ``calibration_images`` to set ``offset_`` and ``pixel_threshold_`` now,
        or call :meth:`calibrate` later; until then ``score_samples`` and
        ``anomaly_maps`` work and ``predict``, ``decision_function`` and
        ``predict_masks`` (without a threshold) raise ``NotFittedError``.
        ``n_epochs_`` is the checkpoint's epoch; ``loss_curve_`` is empty.

        Parameters
        ----------
        path : str or path
        device : str, default="auto"
        calibration_images : images or None, default=None
            Normal images for :meth:`calibrate`.
        reference_padding : bool, default=True
            Pad the backbone's strided convolutions as the reference does
            (``static_padding_size`` = the EfficientNet's native resolution),
            so anomaly maps equal the reference's. False: timm's dynamic
            padding (one B4 layer differs at 224 px).

        Raises
        ------
        ValueError
            The file is not a reference checkpoint, or describes a network
            skuniad does not build.
        """
        return interop.detector_from_reference(
            cls,
            path,
            device=device,
            calibration_images=calibration_images,
            reference_padding=reference_padding,
        )

    def export_reference_checkpoint(self, path: str | os.PathLike) -> None:
        """Write the weights in the reference checkpoint layout (``ckpt.pth.tar``).

        The dict the reference saves: ``state_dict`` with ``module.backbone.*``
        (lukemelas names, the stages this detector uses) and
        ``module.reconstruction.*``; ``arch`` as plain dicts; ``epoch`` =
        ``n_epochs_``; no optimizer state (``optimizer`` None, ``best_metric``
        NaN), so the reference can evaluate it but not resume training.
        :meth:`from_reference_checkpoint` reads it back; the outputs are
        identical when ``static_padding_size`` matches its ``reference_padding``
        (the defaults do: ``"auto"`` and True) and ``resize`` is ``"pil-uint8"``.
        Needs a ``tf_efficientnet_b*`` backbone.
        """
        check_is_fitted(self, "model_")
        interop.write_reference_checkpoint(self, path)

    def export_onnx(self, path: str | os.PathLike, opset: int = interop.DEFAULT_OPSET) -> None:
        """Write the inference graph to an ONNX file, backbone included.

        Input ``images``: (batch, 3, image_size, image_size) float32, resized and
        normalized with ``backbone_.mean`` / ``backbone_.std``; the batch is
        dynamic. Outputs: ``anomaly_map`` (batch, image_size, image_size) and
        ``image_score`` (batch,), higher = more anomalous (``image_score`` =
        ``-score_samples``). The neighbor mask is a constant of the graph. The
        graph computes in fp32 whatever ``precision`` is.
        """
        check_is_fitted(self, "model_")
        interop.export_onnx(self, path, opset=opset)

    # ---------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike) -> None:
        """Write the fitted detector to one safe file (``.skuniad`` by convention).

        A safetensors file: the networks' tensors, plus JSON metadata with the
        parameters, fitted values and skuniad/torch/timm versions (see
        :mod:`skuniad.persistence`). The write is atomic: an interrupted save
        leaves any previous file at ``path`` intact. A ``RandomState``
        ``random_state`` is saved as None. Then a finished fit's checkpoint is deleted.
        """
        check_is_fitted(self, "model_")
        persistence.save_detector(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "auto") -> UniADDetector:
        """Read a detector written by :meth:`save`; never executes code from the file.

        Parameters
        ----------
        path : str or path
        device : str, default="auto"
            Where the networks go: ``"auto"`` (CUDA when available, else CPU),
            ``"cpu"``, ``"cuda"``, ``"cuda:1"``...

        Raises
        ------
        ValueError
            The file is not a skuniad model (e.g. a pickle), is truncated, or
            was written in a newer format than this skuniad reads.
        """
        return persistence.load_detector(cls, path, resolve_device(device))

    def __getstate__(self):
        return persistence.pickle_state(self, dict(super().__getstate__()))

    def __setstate__(self, state):
        persistence.unpickle_state(self, state, super().__setstate__)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.input_tags.string = True
        tags.input_tags.positive_only = True  # pixel values: negative ones are rejected
        tags.non_deterministic = self.random_state is None
        return tags
