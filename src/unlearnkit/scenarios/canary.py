"""Scenario ``canary``: unlearn a secret memorised by a character-level language model.

As in Warnecke et al. (NDSS 2023, unintended memorisation), after Carlini et al.'s "Secret
Sharer": the sentence ``"my telephone number is <secret>."`` with a random digit string is
inserted several times into a text (a fixed excerpt of Python's documentation shipped with
unlearnkit), a character-level LSTM is trained on every window of the text (predict the next
character from the previous ``window``), and the secret is unlearned by **replacing its digits
in every affected window** — every row whose input or target overlaps an inserted secret — by
letters (``"redacted..."`` cut to the secret's length), features and labels alike.

Efficacy: the canary's **exposure** (bits; Carlini et al.: ``log2 |R| - log2 rank`` of the
secret among all digit strings of its length, exact up to 100,000 candidates, else a skew-normal
extrapolation from 5,000) — a model that never saw the secret scores about 1.44 bits on average.
Fidelity: next-character accuracy and **bits per character** on held-out clean text (the last
15 % of the excerpt, never trained on).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from unlearnkit.data.changes import Changes, FeatureEdit, LabelEdit
from unlearnkit.data.text import CharVocab, char_windows, python_docs_excerpt
from unlearnkit.metrics.exposure import Canary, canary_exposure
from unlearnkit.models import ShardedEnsemble
from unlearnkit.models.lstm import CharLSTM, char_log_perplexity
from unlearnkit.scenarios import rules
from unlearnkit.scenarios.compare import Problem
from unlearnkit.training import TrainConfig, train

NAME = "canary"
TITLE = "Scenario: a memorised secret in a character-level LSTM"
PREFIX = "my telephone number is "
SUFFIX = "."
LEAD = "by the way, "  # fixed context before a scored canary, so that every digit has a full window
REPLACEMENT = "redacted" * 4


@dataclass(frozen=True)
class Size:
    train_chars: int
    test_chars: int
    digits: int
    insertions: int
    window: int
    hidden: int
    embed_dim: int
    epochs: int
    lr: float
    batch_size: int


SIZES = {
    "tiny": Size(2_000, 1_500, 4, 12, 6, 48, 16, 12, 1e-2, 64),  # a 6-character window: a first look in half a minute
    "full": Size(20_000, 8_000, 6, 10, 24, 64, 32, 15, 5e-3, 128),
}


def build_text(size: Size, seed: int) -> tuple[str, str, str, list[int]]:
    """``(train text with canaries, held-out text, secret, start position of each inserted secret)``."""
    corpus = python_docs_excerpt()
    held_out = corpus[-size.test_chars:]
    base = corpus[: size.train_chars]
    rng = np.random.default_rng(seed)
    secret = "".join(rng.choice(list("0123456789"), size=size.digits))
    sentence = f"{PREFIX}{secret}{SUFFIX} "
    breaks = [i + 2 for i in range(len(base) - 2) if base[i:i + 2] == ". "]
    places = sorted(rng.choice(breaks, size=min(size.insertions, len(breaks)), replace=False))
    parts, starts, last, shift = [], [], 0, 0
    for p in places:
        parts.append(base[last:p])
        starts.append(p + shift + len(PREFIX))
        parts.append(sentence)
        shift += len(sentence)
        last = p
    parts.append(base[last:])
    return "".join(parts), held_out, secret, starts


def redact(text: str, starts: list[int], length: int) -> str:
    """``text`` with the ``length`` characters at each start replaced by the replacement letters."""
    chars = list(text)
    for s in starts:
        chars[s:s + length] = REPLACEMENT[:length]
    return "".join(chars)


def window_changes(old, new) -> Changes:
    """The change turning the windows of ``old`` into those of ``new`` (same ids): feature and label edits per row."""
    diff_x = np.any(old.X != new.X, axis=1)
    diff_y = old.y != new.y
    edits = []
    for r in np.flatnonzero(diff_x):
        cols = np.flatnonzero(old.X[r] != new.X[r])
        edits.append(FeatureEdit(cols, new.X[r, cols], (int(old.ids[r]),)))
    labels = (LabelEdit(old.ids[diff_y], new.y[diff_y]),) if diff_y.any() else ()
    return Changes(feature_edits=tuple(edits), label_edits=labels)


def problems(size: Size, seed: int, device) -> list[Problem]:
    text, held_out, secret, starts = build_text(size, seed)
    vocab = CharVocab.from_text(python_docs_excerpt() + PREFIX + REPLACEMENT + LEAD + "0123456789" + SUFFIX)
    train_data = char_windows(vocab.encode(text), size.window, name="docs+canary", vocab_size=len(vocab))
    redacted = char_windows(vocab.encode(redact(text, starts, len(secret))), size.window, name="docs+canary", vocab_size=len(vocab))
    changes = window_changes(train_data, redacted)
    test_codes = vocab.encode(held_out)
    test = char_windows(test_codes, size.window, name="held-out docs", vocab_size=len(vocab))
    config = TrainConfig(epochs=size.epochs, lr=size.lr, batch_size=size.batch_size, seed=seed)
    arch = dict(vocab_size=len(vocab), window=size.window, embed_dim=size.embed_dim, hidden=size.hidden, l2=1e-5)
    model = train(CharLSTM(**arch), train_data, config=config, device=device)
    sisa = train(ShardedEnsemble(base_kind="char-lstm", base_config=arch, n_shards=rules.SISA_SHARDS), train_data, config=config,
                 device=device)
    canary = Canary(PREFIX, secret, suffix=SUFFIX)
    lead = vocab.encode(LEAD)

    def efficacy(m):
        bits = (float("nan") if isinstance(m, ShardedEnsemble)
                else float(char_log_perplexity(m, [test_codes], device=device)[0]) / (len(test_codes) - size.window))
        return {"exposure": _exposure(m, canary, vocab, lead, seed, device), "bits_per_char": bits}

    return [Problem(NAME, f"docs: secret x{len(starts)}", seed, model, train_data, test, changes, sisa=sisa, efficacy=efficacy,
                    info={"text": f"{len(text):,} characters ({len(train_data):,} windows of {size.window})",
                          "secret": f"{len(secret)} digits inserted {len(starts)} times",
                          "affected windows": changes.resolve(train_data).n_affected,
                          "model": f"char-LSTM, embedding {size.embed_dim}, hidden {size.hidden}, "
                                   f"{sum(p.numel() for p in model.parameters()):,} parameters, {size.epochs} epochs"})]


def _exposure(model, canary: Canary, vocab: CharVocab, lead, seed: int, device) -> float:
    # Every candidate text is LEAD + prefix + secret + suffix: the characters before the secret, and the windows that
    # predict them, are the same for every candidate, so they add one constant to every log-perplexity and change no
    # rank. Only the characters from the secret on are scored, each with its full window of context: the same
    # exposure, about five times cheaper.
    skip = max(0, len(lead) + len(canary.prefix) - int(model.input_shape[0]))

    def scorer(texts):
        return char_log_perplexity(model, [np.concatenate([lead, vocab.encode(t)])[skip:] for t in texts], device=device)

    return canary_exposure(canary, scorer, seed=seed).exposure


def strategies(model, data, changes, *, seed: int = 0, device=None):
    return rules.default_strategies(model, data, changes, seed=seed, device=device)


def goals(summary: list[dict]) -> list:
    """Exposure after second-order within 1 bit of the retrained model's, at >= 20x the speed of retraining."""
    from unlearnkit.scenarios.report import Goal, lookup

    details, met = [], True
    for problem in dict.fromkeys(e["problem"] for e in summary):
        ret, so, orig = (lookup(summary, problem, m) for m in ("retrain", "second-order", "original"))
        if not so or so.get("exposure") is None:
            met = False
            details.append(f"{problem}: second-order failed")
            continue
        gap = abs(so["exposure"] - ret["exposure"])
        ok = gap <= 1.0 and so["speedup"] >= 20
        met &= ok
        details.append(f"{problem}: exposure {orig['exposure']:.1f} -> {so['exposure']:.2f} bits (retrained "
                       f"{ret['exposure']:.2f}) at {so['speedup']:.1f}x{'' if ok else ' (missed)'}")
    return [Goal("second-order exposure within 1 bit of the retrained model's at >= 20x retraining's speed", met,
                 "; ".join(details))]
