"""sparseae.sklearn.SparseAutoencoder: scikit-learn's estimator checks, pipelines, grid search, exact behaviour."""

import ast
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import make_blobs
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import r2_score
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import estimator_checks
from sklearn.utils.estimator_checks import parametrize_with_checks
from threadpoolctl import threadpool_limits

import sparseae
from sparseae.metrics import fvu
from sparseae.sklearn import SparseAutoencoder, default_k
from sparseae.sparsity import get_sparsity


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """On a few shared cores, torch's and BLAS's spinning worker threads make each small fit 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(threads)


def tiny(sparsity: str = "topk") -> SparseAutoencoder:
    """Small and quick, for checks that fit many times. Several checks set n_components=1, hence k=1."""
    k = 1 if "k" in get_sparsity(sparsity).hyperparameters() else None
    return SparseAutoencoder(n_components=8, sparsity=sparsity, k=k, epochs=2, batch_size=16, random_state=0)


# Every check passes for the defaults (whose k must fit the checks' 1- to 3-feature codes) and for
# every registered constraint: none is expected to fail (see docs/sklearn.md).
@parametrize_with_checks([SparseAutoencoder(), *(tiny(name) for name in sparseae.list_sparsities())])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


# Checks scikit-learn runs on its own transformers only (not in parametrize_with_checks); pandas/polars ones skip without them.
EXTRA_CHECKS = [
    "check_get_feature_names_out_error",
    "check_transformer_get_feature_names_out",
    "check_transformer_get_feature_names_out_pandas",
    "check_dataframe_column_names_consistency",
    "check_set_output_transform",
    "check_set_output_transform_pandas",
    "check_global_output_transform_pandas",
    "check_set_output_transform_polars",
    "check_global_set_output_transform_polars",
]


# The set_output checks fit with column names and transform without them (and back) on purpose.
@pytest.mark.parametrize("default", [False, True], ids=["tiny", "default"])
@pytest.mark.parametrize("name", EXTRA_CHECKS)
@pytest.mark.filterwarnings("ignore:X (does not have valid|has) feature names:UserWarning")
def test_sklearn_feature_name_and_set_output_checks(name, default):
    getattr(estimator_checks, name)("SparseAutoencoder", SparseAutoencoder() if default else tiny())


@pytest.mark.parametrize(("n_components", "k"), [(1, 1), (3, 1), (7, 1), (8, 2), (20, 5), (127, 31), (128, 32), (4096, 32)])
def test_default_k_is_a_quarter_of_the_code_at_most_32(n_components, k):
    assert default_k(n_components) == k


def test_defaults_fit_any_width():
    X = np.random.default_rng(0).normal(size=(40, 3))
    sae = SparseAutoencoder(epochs=1, random_state=0)
    assert sae.fit(X).k_ == 1 and sae.n_components_ == 3 and sae.k is None  # resolved in fit, the parameter untouched
    assert ((sae.transform(X) != 0).sum(1) <= 1).all()
    wide = np.random.default_rng(0).normal(size=(40, 20))
    assert SparseAutoencoder(sparsity="batchtopk", epochs=1, random_state=0).fit(wide).k_ == 5
    assert SparseAutoencoder(n_components=256, epochs=1, random_state=0).fit(X).k_ == 32
    assert SparseAutoencoder(k=3, epochs=1, random_state=0).fit(wide).k_ == 3
    assert SparseAutoencoder(sparsity_params={"k": 7}, epochs=1, random_state=0).fit(wide).k_ == 7
    assert SparseAutoencoder(sparsity="l1", epochs=1, random_state=0).fit(X).k_ is None


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(n_samples=300, n_features=20, centers=3, random_state=0)
    return X, y


@pytest.fixture(scope="module")
def fitted(blobs):
    return SparseAutoencoder(n_components=32, k=4, epochs=20, batch_size=32, random_state=0).fit(blobs[0])


def test_pipeline_with_logistic_regression(blobs):
    X, y = blobs
    pipe = make_pipeline(SparseAutoencoder(n_components=32, k=4, epochs=10, batch_size=32, random_state=0), LogisticRegression())
    assert pipe.fit(X[:200], y[:200]).score(X[200:], y[200:]) > 0.95
    assert pipe.named_steps["sparseautoencoder"].n_features_in_ == 20
    assert pipe[:-1].get_feature_names_out()[:2].tolist() == ["sparseautoencoder0", "sparseautoencoder1"]


def test_grid_search_over_k_on_mnist(mnist):
    # 2,000 training digits, codes of 128 latents; a logistic regression on raw pixels scores about 0.87 here.
    X, y = mnist.train[:2000].flatten(1).numpy(), mnist.train_labels[:2000].numpy()
    X_test, y_test = mnist.test[:1000].flatten(1).numpy(), mnist.test_labels[:1000].numpy()
    sae = SparseAutoencoder(n_components=128, epochs=5, batch_size=64, random_state=0)
    pipe = make_pipeline(sae, StandardScaler(), LogisticRegression(max_iter=500))
    search = GridSearchCV(pipe, {"sparseautoencoder__k": [8, 32]}, cv=3).fit(X, y)
    assert search.best_score_ > 0.83, search.cv_results_["mean_test_score"]  # measured: k=8 0.855, k=32 0.876
    assert search.best_params_["sparseautoencoder__k"] in (8, 32)
    best = search.best_estimator_.named_steps["sparseautoencoder"]
    assert best.k == search.best_params_["sparseautoencoder__k"] and best.n_features_in_ == 784
    assert ((best.transform(X_test) != 0).sum(1) <= best.k).all()
    assert search.score(X_test, y_test) > 0.83  # the refit pipeline; measured 0.86


def test_get_params_set_params_round_trip_with_constraint_hyperparameters():
    sae = SparseAutoencoder(n_components=64, sparsity="l1", sparsity_params={"weight": 1e-3}, preprocess=None, random_state=3)
    params = sae.get_params()
    assert params["sparsity"] == "l1" and params["sparsity_params"] == {"weight": 1e-3} and params["k"] is None
    assert SparseAutoencoder(**params).get_params() == params
    assert clone(sae).get_params() == params
    sae.set_params(sparsity="topk", k=8, sparsity_params={"alpha": 2.0})
    assert sae.get_params()["k"] == 8 and sae.get_params()["sparsity_params"] == {"alpha": 2.0}
    pipe = make_pipeline(sae, LogisticRegression())
    pipe.set_params(sparseautoencoder__k=16)
    assert pipe.get_params()["sparseautoencoder__k"] == 16


def test_the_constraint_gets_its_hyperparameters(blobs):
    X = blobs[0]
    sae = SparseAutoencoder(n_components=16, k=3, sparsity_params={"alpha": 2.0}, epochs=1, random_state=0).fit(X)
    assert (sae.model_.sparsity.k, sae.model_.sparsity.alpha) == (3, 2.0)
    assert ((sae.transform(X) != 0).sum(1) <= 6).all()  # alpha * k units at encode time
    l1 = SparseAutoencoder(n_components=16, sparsity="l1", sparsity_params={"weight": 0.01}, epochs=1, random_state=0).fit(X)
    assert l1.model_.sparsity.name == "l1" and l1.model_.sparsity.weight == 0.01
    assert SparseAutoencoder(n_components=16, sparsity_params={"k": 5}, epochs=1).fit(X).model_.sparsity.k == 5


def test_unfitted_estimator_raises_not_fitted_error(blobs):
    sae = SparseAutoencoder()
    for method in (sae.transform, sae.inverse_transform, sae.score):
        with pytest.raises(NotFittedError):
            method(blobs[0])
    with pytest.raises(NotFittedError):
        sae.get_feature_names_out()


def test_fitted_attributes(fitted, blobs):
    assert fitted.n_features_in_ == 20 and fitted.n_components_ == 32
    assert fitted.components_.shape == (32, 20)
    np.testing.assert_allclose(np.linalg.norm(fitted.components_, axis=1), 1, atol=1e-5)  # unit-norm decoder atoms
    assert [r["epoch"] for r in fitted.history_] == list(range(1, 21))
    assert fitted.history_[-1]["test_fvu"] < fitted.history_[0]["test_fvu"]
    assert not hasattr(fitted, "feature_names_in_")
    names = fitted.get_feature_names_out()
    assert names.tolist() == [f"sparseautoencoder{i}" for i in range(32)]


def test_feature_names_in_from_a_dataframe(blobs):
    pd = pytest.importorskip("pandas")
    X = pd.DataFrame(blobs[0], columns=[f"f{i}" for i in range(20)])
    sae = SparseAutoencoder(n_components=8, k=2, epochs=1, random_state=0).set_output(transform="pandas")
    codes = sae.fit_transform(X)
    assert sae.feature_names_in_.tolist() == list(X.columns)
    assert list(codes.columns) == [f"sparseautoencoder{i}" for i in range(8)]


def test_transform_inverse_transform_and_score_match_the_model(fitted, blobs):
    X = blobs[0]
    codes = fitted.transform(X)
    assert codes.shape == (300, 32) and codes.dtype == np.float64
    assert ((codes != 0).sum(1) <= 4).all() and (codes >= 0).all()
    model = fitted.model_
    x = torch.tensor(X, dtype=torch.float32)
    with torch.no_grad():
        np.testing.assert_array_equal(codes, model.encode(x).numpy())
        recon = model.reconstruct(x)
    np.testing.assert_allclose(fitted.inverse_transform(codes), recon.numpy(), rtol=1e-5, atol=1e-5)
    score = fitted.score(X)
    assert score == pytest.approx(-fvu(torch.from_numpy(X), recon.double()), rel=1e-6)
    assert score == pytest.approx(r2_score(X, recon.numpy(), multioutput="variance_weighted") - 1, rel=1e-5)
    assert -0.5 < score < 0  # it learned something; 0 is perfect


def test_components_are_what_a_latent_adds_to_the_reconstruction(fitted):
    # preprocess="norm" scales inputs by one constant: in the input's units, atoms are components_ / scale.
    codes = np.zeros((2, 32))
    codes[1, 5] = 1.5
    delta = np.diff(fitted.inverse_transform(codes), axis=0)[0]
    np.testing.assert_allclose(delta, 1.5 * fitted.components_[5] / float(fitted.model_.preprocess.scale), rtol=1e-4, atol=1e-6)


def test_fits_are_deterministic_and_leave_torchs_generator_alone(blobs):
    X = blobs[0][:100]
    state = torch.get_rng_state()
    a = SparseAutoencoder(n_components=16, k=2, epochs=3, random_state=7).fit_transform(X)
    assert torch.equal(torch.get_rng_state(), state)
    b = SparseAutoencoder(n_components=16, k=2, epochs=3, random_state=7).fit(X).transform(X)
    np.testing.assert_array_equal(a, b)
    c = SparseAutoencoder(n_components=16, k=2, epochs=3, random_state=8).fit_transform(X)
    assert not np.array_equal(a, c)


def test_saved_model_loads_with_the_same_codes(fitted, blobs, tmp_path):
    sparseae.save_model(fitted.model_, tmp_path / "sae")
    loaded = sparseae.load(tmp_path / "sae")
    x = torch.tensor(blobs[0], dtype=torch.float32)
    with torch.no_grad():
        np.testing.assert_array_equal(loaded.encode(x).numpy(), fitted.transform(blobs[0]))


X_SMALL = np.random.default_rng(0).normal(size=(20, 5))


@pytest.mark.parametrize(
    "params, match",
    [
        ({"sparsity": "l1", "k": 4}, r"k: expected k only with a constraint that has it \(sparsity='l1' has weight\)"),
        ({"k": 4, "sparsity_params": {"k": 8}}, r"k: expected k in one place, got k=4 and sparsity_params\['k'\]=8"),
        ({"sparsity_params": [("k", 4)]}, r"sparsity_params: expected a dict of the constraint's hyperparameters"),
        ({"sparsity_params": {"kk": 4}}, r"sparsity 'topk': expected hyperparameters among k, alpha, got kk"),
        ({"sparsity": "top-k"}, r"sparsity: expected one of .*topk.*, got 'top-k'"),
        ({"sparsity": None}, r"sparsity: expected the name of a constraint \(a string\), got None"),
        ({"k": 9}, r"topk k: expected k at most the code size \(8\), got k = 9"),
        ({"n_components": 0}, r"n_components: expected an integer >= 1, got 0"),
        ({"model_params": {"n_latents": 4}}, r"model_params: expected a dict of DenseConfig fields among pre_bias, "),
        ({"epochs": 1.5}, r"epochs: expected an integer >= 1, got 1.5"),
        ({"learning_rate": -1}, r"learning_rate: expected a finite number > 0, got -1"),
        ({"preprocess": "whiten"}, r"preprocess: expected steps among center, standardize, norm, zca"),
        ({"random_state": -1}, r"Seed must be between 0 and 2\*\*32 - 1"),
    ],
)
def test_bad_parameters_are_reported_at_fit(params, match):
    sae = SparseAutoencoder(**{"n_components": 8, "k": 2, "epochs": 1, **params})  # __init__ only stores them
    with pytest.raises(ValueError, match=match):
        sae.fit(X_SMALL)


def test_one_sample_is_refused():
    with pytest.raises(ValueError, match=r"Found array with 1 sample\(s\) \(shape=\(1, 5\)\) while a minimum of 2 is required"):
        SparseAutoencoder(n_components=8, k=2).fit(X_SMALL[:1])


def test_inverse_transform_errors(blobs):
    X = blobs[0]
    sae = SparseAutoencoder(n_components=8, k=2, epochs=1, random_state=0).fit(X)
    with pytest.raises(ValueError, match=r"X has 7 features, but SparseAutoencoder.inverse_transform is expecting 8 codes"):
        sae.inverse_transform(np.zeros((3, 7)))
    centred = SparseAutoencoder(n_components=8, k=2, epochs=1, preprocess="center", random_state=0).fit(X)
    with pytest.raises(ValueError, match=r"inverse_transform: expected a model whose preprocessing can be undone"):
        centred.inverse_transform(centred.transform(X))
    assert centred.score(X) < 0  # score has the inputs, so 'center' is undone there


def test_docs_list_every_parameter():
    page = (Path(__file__).parents[1] / "docs" / "sklearn.md").read_text(encoding="utf-8")
    table = dict(re.findall(r"^\| `(\w+)` \| `([^`]+)` \|", page, re.M))
    assert {name: ast.literal_eval(value) for name, value in table.items()} == SparseAutoencoder().get_params()
