"""Named exceptions. Each message says what went wrong and how to fix it."""


class UnlearnKitError(Exception):
    """Base class of every error unlearnkit raises on purpose."""


class DataError(UnlearnKitError, ValueError):
    """A dataset is malformed: wrong shapes, NaN or infinite values, labels or ids out of range."""


class ChangesError(UnlearnKitError, ValueError):
    """A change set is invalid: empty, out of range, contradictory or non-finite."""


class ModelError(UnlearnKitError, ValueError):
    """A model cannot be used as asked: unknown architecture, mismatched data, foreign file."""


class SolverError(UnlearnKitError, RuntimeError):
    """An inverse-Hessian-vector solver failed: too many parameters, diverged, non-finite."""


class MethodError(UnlearnKitError, ValueError):
    """An unlearning method is unknown or got hyperparameters it does not accept."""


class MetricError(UnlearnKitError, ValueError):
    """A metric cannot be computed as asked: unknown name, mismatched inputs, missing data."""


class CertificationError(UnlearnKitError, ValueError):
    """Certified unlearning cannot be given as asked: an unsupported model, data outside the
    stated feature-norm bound, invalid (epsilon, delta, sigma), or an exhausted budget."""


class LedgerError(UnlearnKitError, RuntimeError):
    """A ledger cannot be used: missing, corrupted, tampered with, or out of step with its model."""


class BenchError(UnlearnKitError, ValueError):
    """A benchmark configuration, results store or run cannot be used as given: an invalid config,
    a store made by another config, a corrupted or foreign results database."""


class OutputError(UnlearnKitError, ValueError):
    """An output path cannot be written safely: a folder, a symbolic link, a device or FIFO, or a
    file inside a ledger folder that only the ledger may write."""
