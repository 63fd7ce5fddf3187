"""``unlearnkit.ledger``: a persistent, verifiable record of certified unlearning requests."""

from unlearnkit.ledger.ledger import FORMAT, KEY_ENV, Head, Ledger, VerifyReport, parameter_hash, read_key

__all__ = ["FORMAT", "KEY_ENV", "Head", "Ledger", "VerifyReport", "parameter_hash", "read_key"]
