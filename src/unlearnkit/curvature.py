"""Curvature computed once and reused: ``uk.curvature.fit(model, data, kind=...)``.

See :mod:`unlearnkit.influence.cached` for the object and its kinds (exact Cholesky factor for
convex models and small deep ones, K-FAC / EK-FAC, diagonal, CG on the GGN) and
:mod:`unlearnkit.influence.kfac` for the Kronecker-factored approximations.
"""

from unlearnkit.influence.cached import EXACT_MAX_PARAMS, Curvature, CurvatureKind, fit, load
from unlearnkit.influence.kfac import DENSE_BLOCK_MAX, Treatment

__all__ = ["Curvature", "CurvatureKind", "DENSE_BLOCK_MAX", "EXACT_MAX_PARAMS", "Treatment", "fit", "load"]
