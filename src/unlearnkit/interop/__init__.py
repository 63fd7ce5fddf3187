"""Unlearning for models fitted by other libraries (scikit-learn)."""

from unlearnkit.interop.sklearn import SklearnUnlearnResult, check_estimator, unlearn_logistic_regression

__all__ = ["SklearnUnlearnResult", "check_estimator", "unlearn_logistic_regression"]
