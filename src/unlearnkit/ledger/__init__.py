"""``unlearnkit.ledger``: a persistent, verifiable record of certified unlearning requests."""

from unlearnkit.ledger.ledger import FORMAT, Ledger, VerifyReport, parameter_hash

__all__ = ["FORMAT", "Ledger", "VerifyReport", "parameter_hash"]
