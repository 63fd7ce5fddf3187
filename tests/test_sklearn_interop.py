"""scikit-learn LogisticRegression: second-order update + refinement against sklearn's own retraining."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_wine
from sklearn.linear_model import LogisticRegression as SkLR
from sklearn.preprocessing import StandardScaler

import unlearnkit as uk
from unlearnkit.errors import ModelError
from unlearnkit.interop import unlearn_logistic_regression


def _theta(est) -> np.ndarray:
    return np.concatenate([est.coef_.ravel(), np.ravel(est.intercept_)])


def _data(loader):
    X, y = loader(return_X_y=True)
    return StandardScaler().fit_transform(X), y


def _changes_and_corrected(X, y, classes):
    """Relabel rows 0..5 to the next class and remove rows 20..25; the corrected (X, y) by hand."""
    idx = np.searchsorted(classes, y[:6])
    new_idx = (idx + 1) % len(classes)
    changes = uk.Changes.relabel(range(6), new_idx) + uk.Changes.remove(range(20, 26))
    yc = y.copy()
    yc[:6] = classes[new_idx]
    keep = np.setdiff1d(np.arange(len(y)), np.arange(20, 26))
    return changes, X[keep], yc[keep]


@pytest.mark.parametrize("loader,fit_intercept", [(load_breast_cancer, True), (load_wine, True), (load_wine, False)])
def test_refined_update_matches_sklearn_retraining(loader, fit_intercept):
    X, y = _data(loader)
    est = SkLR(C=0.5, max_iter=2000, fit_intercept=fit_intercept).fit(X, y)
    before = copy.deepcopy(_theta(est))
    changes, Xc, yc = _changes_and_corrected(X, y, est.classes_)
    result = unlearn_logistic_regression(est, X, y, changes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = SkLR(C=0.5, max_iter=20000, tol=1e-12, fit_intercept=fit_intercept).fit(Xc, yc)
    rel = np.linalg.norm(_theta(result.estimator) - _theta(ref)) / np.linalg.norm(_theta(ref))
    assert rel < 1e-4, rel
    assert result.diagnostics["reached"]
    # the one-step error is reported, and refinement improved on it
    assert np.isfinite(result.one_step_distance) and result.one_step_distance > 0
    assert result.residual < result.one_step_residual
    np.testing.assert_array_equal(_theta(est), before)  # input untouched
    assert result.estimator.predict(Xc).shape == yc.shape
    assert (result.estimator.predict(Xc) == yc).mean() > 0.9


def test_one_step_update_is_close_for_a_small_change():
    X, y = _data(load_breast_cancer)
    est = SkLR(C=1.0, max_iter=5000, tol=1e-10).fit(X, y)
    changes = uk.Changes.remove([3])
    result = unlearn_logistic_regression(est, X, y, changes, refine=False)
    ref = SkLR(C=1.0, max_iter=5000, tol=1e-10).fit(np.delete(X, 3, 0), np.delete(y, 3))
    moved = np.linalg.norm(_theta(est) - _theta(ref))
    err = np.linalg.norm(_theta(result.estimator) - _theta(ref))
    assert err < 0.1 * moved  # the one step removes most of the change
    assert np.isnan(result.one_step_distance) and result.refine_steps == 0


@pytest.mark.parametrize("setting,match", [
    ({"penalty": "l1", "solver": "saga"}, "penalty"),
    ({"penalty": "elasticnet", "l1_ratio": 0.5, "solver": "saga"}, "penalty"),
    ({"class_weight": "balanced"}, "class_weight"),
    ({"solver": "liblinear"}, "liblinear"),
    ({"C": np.inf}, "C=inf"),
])
def test_settings_we_cannot_honour_are_refused(setting, match):
    X, y = _data(load_breast_cancer)
    est = SkLR(max_iter=2000).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.set_params(**setting)
    with pytest.raises(ModelError, match=match):
        unlearn_logistic_regression(est, X, y, uk.Changes.remove([0]))


def test_bad_inputs_are_refused():
    X, y = _data(load_wine)
    est = SkLR(max_iter=2000).fit(X, y)
    with pytest.raises(ModelError, match="not fitted"):
        unlearn_logistic_regression(SkLR(), X, y, uk.Changes.remove([0]))
    with pytest.raises(ModelError, match="shape"):
        unlearn_logistic_regression(est, X[:, :5], y, uk.Changes.remove([0]))
    with pytest.raises(ModelError, match="labels"):
        unlearn_logistic_regression(est, X, y + 10, uk.Changes.remove([0]))
    with pytest.raises(uk.ChangesError):
        unlearn_logistic_regression(est, X, y, uk.Changes.relabel([0], [7]))  # class index out of range
