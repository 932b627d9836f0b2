"""A scikit-learn estimator: a dense sparse autoencoder that fits, transforms and scores like PCA.

::

    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sparseae.sklearn import SparseAutoencoder

    pipe = make_pipeline(SparseAutoencoder(n_components=256, k=16, random_state=0), LogisticRegression(max_iter=1000))
    pipe.fit(X_train, y_train).score(X_test, y_test)

The model is the ``dense`` preset ([`sparseae.build_preset`][sparseae.build_preset]), trained by
[`sparseae.train`][sparseae.train]. Needs scikit-learn 1.6 or newer (``pip install scikit-learn``).
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any

import numpy as np
import torch

try:
    from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
    from sklearn.utils import check_random_state
    from sklearn.utils.validation import check_array, check_is_fitted, validate_data
except ImportError as e:  # validate_data is new in scikit-learn 1.6
    from sparseae.errors import SparseAEError

    raise SparseAEError(
        "sparseae.sklearn",
        expected="scikit-learn 1.6 or newer",
        got=f"an import error ({e})",
        fix="pip install -U 'scikit-learn>=1.6'.",
    ) from None

from sparseae.data import Dataset
from sparseae.errors import SparseAEError, check, positive_int, positive_number
from sparseae.models import DenseConfig, build_preset
from sparseae.sparsity import Sparsity, build_sparsity, get_sparsity
from sparseae.training import TrainConfig, train

EVAL_ROWS = 10_000
"""At most this many training rows (drawn with the seed) are evaluated after each epoch for ``history_``."""
INFERENCE_BATCH = 1000
"""Rows per forward pass in transform, inverse_transform and score."""
_FIXED_FIELDS = ("input_shape", "n_latents")
"""DenseConfig fields set by the estimator itself (from X and n_components), not by model_params."""
MAX_DEFAULT_K = 32
"""With ``k=None``, a constraint's ``k`` is ``default_k(n_components)``: at most this (topk's own default)."""


def default_k(n_components: int) -> int:
    """The ``k`` used when none is given: a quarter of the code, at least 1 and at most 32.

    32 (the constraints' own default) for codes of 128 latents or more, so a small code,
    such as the 3 latents of 3 features, still gets a sparse code rather than a refusal.
    """
    return max(1, min(MAX_DEFAULT_K, n_components // 4))


class SparseAutoencoder(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """A sparse autoencoder as a scikit-learn transformer: ``transform`` gives sparse codes.

    ``fit`` trains the ``dense`` preset (pre-encoder bias at the geometric median,
    unit-norm decoder, tied init, AuxK) on every row of ``X``, with the sparsity
    constraint named by ``sparsity``. ``transform`` returns the codes
    ``(n_samples, n_components)``, ``inverse_transform`` the reconstructions from codes,
    and ``score`` minus the fraction of variance unexplained (higher is better).

    Args:
        n_components: Number of latents (the dictionary's size); ``None``: as many as
            ``X`` has features. Sparse autoencoders are usually overcomplete: pass more.
        sparsity: The constraint on the code: a registered name (see
            [`sparseae.list_sparsities`][sparseae.list_sparsities]) or ``"module:ClassName"``.
        k: Shorthand for the constraint's ``k`` (topk, batchtopk), so that ``GridSearchCV``
            can search ``{"k": [...]}``; ``None``: the ``k`` in ``sparsity_params``, else
            a quarter of the code, at least 1 and at most 32:
            ``max(1, min(32, n_components // 4))`` (`default_k`), so 32 for 128
            latents or more and 1 for 3. The value used is ``k_``.
        sparsity_params: The constraint's other hyperparameters, e.g. ``{"weight": 1e-3}``
            for ``sparsity="l1"``; ``None``: its defaults.
        preprocess: Input preprocessing fitted on ``X`` and kept inside the model: ``"norm"``
            (one scale so the mean squared row norm equals the number of features),
            ``"standardize"``, ``"center"``, ``"zca"``, comma-separated steps, or ``None``.
        model_params: Other [`sparseae.DenseConfig`][sparseae.DenseConfig] fields, e.g. ``{"aux_k": 0}``.
        epochs: Passes over ``X``.
        batch_size: Rows per optimizer step.
        learning_rate: Adam learning rate; ``None``: the dense preset's, which follows the
            batch size (4e-3 at 4,096, times ``sqrt(batch_size / 4096)``, at least 2e-3).
            Every rate is decayed linearly to zero over the last fifth of the steps.
        random_state: Seeds the initialisation and the order of the rows: an int, a
            ``numpy.random.RandomState``, or ``None`` (a fresh seed each fit).
        device: Where to train and encode: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``,
            or ``"auto"`` (the first of CUDA, MPS, CPU that is there).
        verbose: Show a progress bar with the live loss while fitting.

    Attributes:
        model_: The trained [`sparseae.DenseAutoencoder`][sparseae.DenseAutoencoder], in eval mode
            (``sparseae.save_model(est.model_, path)`` saves it for ``sparseae.load``).
        components_: The decoder's atoms, ``(n_components, n_features)``: row ``j`` is what
            latent ``j`` adds to the reconstruction, in the units of the preprocessed input
            (unit norm; with ``preprocess="norm"``, divide by ``model_.preprocess.scale``
            for the input's units).
        n_components_: Number of latents.
        k_: The constraint's ``k`` as trained (``k``, ``sparsity_params["k"]`` or
            `default_k`); ``None`` for a constraint without a ``k``.
        n_features_in_: Number of features seen by ``fit``.
        feature_names_in_: Column names of ``X``, when ``X`` has string column names.
        history_: One record per epoch (train loss, and mse, fvu, L0, dead units on up to
            10,000 of the training rows: not held-out data).
    """

    def __init__(
        self,
        n_components: int | None = None,
        *,
        sparsity: str = "topk",
        k: int | None = None,
        sparsity_params: dict[str, Any] | None = None,
        preprocess: str | None = "norm",
        model_params: dict[str, Any] | None = None,
        epochs: int = 10,
        batch_size: int = 128,
        learning_rate: float | None = None,
        random_state: int | np.random.RandomState | None = None,
        device: str = "cpu",
        verbose: bool = False,
    ):
        self.n_components = n_components
        self.sparsity = sparsity
        self.k = k
        self.sparsity_params = sparsity_params
        self.preprocess = preprocess
        self.model_params = model_params
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    def fit(self, X: Any, y: Any = None) -> SparseAutoencoder:
        """Train a new model on every row of ``X`` ``(n_samples, n_features)``; ``y`` is ignored."""
        X = validate_data(self, X, dtype=[np.float64, np.float32], ensure_min_samples=2)
        n_samples, n_features = X.shape
        n_components = _positive_int(n_features if self.n_components is None else self.n_components, "n_components")
        seed = self._seed()
        sparsity = self._build_sparsity(n_components)
        model = build_preset(
            "dense",
            (n_features,),
            sparsity,
            seed=seed,
            preprocess=self.preprocess,
            n_latents=n_components,
            **self._model_params(),
        )
        config = TrainConfig.for_preset(
            "dense",
            epochs=_positive_int(self.epochs, "epochs"),
            batch_size=_positive_int(self.batch_size, "batch_size"),
            lr=None if self.learning_rate is None else _positive_float(self.learning_rate, "learning_rate"),
            seed=seed,
            device=self.device,
        )
        x = torch.tensor(X, dtype=torch.float32)  # a copy: X may be read-only or a memory map
        # train() evaluates a test split after every epoch; here that is (a sample of) the training rows.
        rows = torch.randperm(n_samples, generator=torch.Generator().manual_seed(seed))[:EVAL_ROWS].sort().values
        data = Dataset("X", x, x[rows])
        with torch.random.fork_rng(devices=[]):  # train() seeds torch's global generator; keep the caller's
            result = train(model, data, config, progress=bool(self.verbose))
        self.model_ = result.model
        self.n_components_ = n_components
        self.k_ = sparsity.get_params().get("k")
        self.components_ = self.model_.W_dec.detach().cpu().T.numpy().copy()  # (n_components, n_features)
        self.history_ = result.metrics
        return self

    def transform(self, X: Any) -> np.ndarray:
        """The sparse codes of ``X``, ``(n_samples, n_components)``, in ``X``'s float dtype (float64 otherwise)."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        codes = self.model_.encode_all(X, INFERENCE_BATCH)  # (n_samples, n_components)
        return codes.numpy().astype(X.dtype, copy=False)

    def inverse_transform(self, X: Any) -> np.ndarray:
        """Reconstructions ``(n_samples, n_features)`` from codes ``X`` ``(n_samples, n_components)``, in the input's units."""
        check_is_fitted(self)
        codes = check_array(X, dtype=[np.float64, np.float32], input_name="codes")
        if codes.shape[1] != self.n_components_:
            raise ValueError(
                f"X has {codes.shape[1]} features, but {type(self).__name__}.inverse_transform is expecting "
                f"{self.n_components_} codes (n_components_) per row. Pass the output of transform."
            )
        if "center" in self.model_.preprocess.steps:
            raise SparseAEError(
                "inverse_transform",
                expected="a model whose preprocessing can be undone from the codes alone",
                got=f"preprocessing {','.join(self.model_.preprocess.steps)}: 'center' removed each row's own mean",
                fix="Use score(X) or the reconstruction model_.reconstruct(x), which take the inputs, or fit without 'center'.",
            )
        model = self.model_
        device = next(model.parameters()).device
        out = []
        with torch.no_grad():
            for i in range(0, len(codes), INFERENCE_BATCH):
                code = torch.tensor(codes[i : i + INFERENCE_BATCH], dtype=torch.float32, device=device)
                y = model.decode(code)
                out.append(model.preprocess.inverse(y, y).cpu())  # its x is read only to undo 'center'
        return torch.cat(out).numpy().astype(codes.dtype, copy=False)

    def score(self, X: Any, y: Any = None) -> float:
        """Minus the fraction of variance unexplained of ``X``'s reconstructions: ``-sparseae.metrics.fvu``.

        ``FVU = sum ||x - x_hat||^2 / sum ||x - mean(X)||^2`` over the rows of ``X``, in ``X``'s
        own units (preprocessing undone), with ``mean(X)`` the per-feature mean of these rows.
        0 is a perfect reconstruction, -1 no better than predicting the mean row; it equals
        ``sklearn.metrics.r2_score(X, X_hat, multioutput="variance_weighted") - 1``. ``y`` is ignored.
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], ensure_min_samples=2, reset=False)
        model = self.model_
        device = next(model.parameters()).device
        X64 = X.astype(np.float64, copy=False)
        error = 0.0
        with torch.no_grad():
            for i in range(0, len(X), INFERENCE_BATCH):
                x = torch.tensor(X[i : i + INFERENCE_BATCH], dtype=torch.float32, device=device)
                recon = model.reconstruct(x).cpu().double().numpy()
                error += float(np.square(X64[i : i + INFERENCE_BATCH] - recon).sum())
        return -error / float(np.square(X64 - X64.mean(0)).sum())

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    @property
    def _n_features_out(self) -> int:
        """For get_feature_names_out: ``sparseautoencoder0``, ``sparseautoencoder1``, ..."""
        return self.n_components_

    def _seed(self) -> int:
        """An int seed for torch: ``random_state`` itself when it is an int, else drawn from it."""
        rng = check_random_state(self.random_state)  # also rejects what is neither int, RandomState nor None
        if isinstance(self.random_state, numbers.Integral) and not isinstance(self.random_state, bool):
            return int(self.random_state)
        return int(rng.randint(np.iinfo(np.int32).max))

    def _build_sparsity(self, n_components: int) -> Sparsity:
        """The constraint with its hyperparameters; a ``k`` nobody gave is `default_k` of the code size."""
        check(
            isinstance(self.sparsity, str),
            "sparsity",
            expected="the name of a constraint (a string)",
            got=repr(self.sparsity),
            fix="For example sparsity='topk'; see sparseae.list_sparsities().",
        )
        params = self.sparsity_params or {}
        check(
            isinstance(params, dict) and all(isinstance(key, str) for key in params),
            "sparsity_params",
            expected="a dict of the constraint's hyperparameters, or None",
            got=repr(params),
            fix="For example sparsity='l1', sparsity_params={'weight': 1e-3}.",
        )
        params = dict(params)
        known = get_sparsity(self.sparsity).hyperparameters()
        if self.k is not None:
            check(
                "k" in known,
                "k",
                expected=f"k only with a constraint that has it (sparsity={self.sparsity!r} has {', '.join(known) or 'none'})",
                got=self.k,
                fix="Leave k=None and pass the constraint's own hyperparameters in sparsity_params.",
            )
            check(
                params.get("k", self.k) == self.k,
                "k",
                expected="k in one place",
                got=f"k={self.k} and sparsity_params['k']={params.get('k')}",
                fix="Set one of them.",
            )
            params["k"] = self.k
        elif "k" in known and "k" not in params:
            params["k"] = default_k(n_components)
        return build_sparsity(self.sparsity, **params)

    def _model_params(self) -> dict[str, Any]:
        params = self.model_params or {}
        allowed = [f.name for f in dataclasses.fields(DenseConfig) if f.name not in _FIXED_FIELDS]
        check(
            isinstance(params, dict) and set(params) <= set(allowed),
            "model_params",
            expected=f"a dict of DenseConfig fields among {', '.join(allowed)}, or None",
            got=repr(params),
            fix="n_components sets the number of latents; X sets the input size.",
        )
        return dict(params)


def _positive_int(value: Any, what: str) -> int:
    return positive_int(value, what, fix=f"Pass a positive {what}.")


def _positive_float(value: Any, what: str) -> float:
    return positive_number(value, what, fix=f"Pass a positive {what}, e.g. 1e-3.")
