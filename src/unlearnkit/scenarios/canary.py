"""Scenario ``canary``: unlearn a secret memorised by a character-level language model.

As in Warnecke et al. (NDSS 2023, unintended memorisation), after Carlini et al.'s "Secret
Sharer": the sentence ``"my telephone number is <secret>."`` with a random digit string is
inserted several times into a text (a fixed excerpt of Python's documentation shipped with
unlearnkit), a character-level LSTM is trained on every window of the text (predict the next
character from the previous ``window``), and the secret is unlearned by **replacing its digits
in every affected window** — every row whose input or target overlaps an inserted secret — by
letters (``"redacted..."`` cut to the secret's length), features and labels alike.

Beyond the paper, the same secret is also unlearned from a second model trained on the same windows: a
small causal character transformer (:class:`~unlearnkit.models.char_transformer.CharTransformer`, a plain
``torch.nn`` module with no pretrained weights) made unlearnable by :func:`unlearnkit.wrap` and trained by
the library's loop, the way a user brings their own network. It has no SISA row (a sharded ensemble is
built from a model kind, which a wrapped module does not have).

Efficacy: the canary's **exposure** (bits; Carlini et al.: ``log2 |R| - log2 rank`` of the
secret among all digit strings of its length, exact up to 100,000 candidates, else a skew-normal
extrapolation from 5,000) — a model that never saw the secret scores about 1.44 bits on average. At the
``full`` size the secret has 10 digits (``|R| = 10^10``, at most ``log2 10^10 = 33.2`` bits), so exposure is
extrapolated; an extrapolation beyond 33.2 bits (the secret far in the tail of the sampled candidates) is
capped there, i.e. read as "the secret is the model's first guess".
Fidelity: next-character accuracy and **bits per character** on held-out clean text (the excerpt's last
``test_chars`` characters, never trained on; the validation text lies just before it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from unlearnkit.data.changes import Changes, FeatureEdit, LabelEdit
from unlearnkit.data.text import CharVocab, char_windows, python_docs_excerpt
from unlearnkit.errors import DataError
from unlearnkit.metrics.exposure import Canary, canary_exposure
from unlearnkit.models import ShardedEnsemble
from unlearnkit.models.char_transformer import CharTransformer
from unlearnkit.models.lstm import CharLSTM, char_log_perplexity
from unlearnkit.models.wrap import wrap
from unlearnkit.scenarios import rules
from unlearnkit.scenarios.compare import Problem
from unlearnkit.training import TrainConfig, train

NAME = "canary"
TITLE = "Scenario: a memorised secret in a character-level LSTM and a small transformer"
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
    transformer: "TransformerSize | None" = None
    """The second model, a causal character transformer trained on the same windows; ``None``: the LSTM alone."""


@dataclass(frozen=True)
class TransformerSize:
    """The :class:`~unlearnkit.models.char_transformer.CharTransformer` of a size and how it is trained (Adam)."""

    dim: int
    heads: int
    depth: int
    epochs: int
    lr: float
    batch_size: int


SIZES = {
    # a 6-character window: a first look in half a minute
    "tiny": Size(2_000, 1_500, 4, 12, 6, 48, 16, 12, 1e-2, 64, transformer=TransformerSize(32, 2, 1, 12, 1e-2, 64)),
    # a 10-digit secret (|R| = 10^10, at most 33.2 bits) inserted 20 times; both models retrain in minutes
    "full": Size(60_000, 8_000, 10, 20, 24, 128, 32, 15, 2e-3, 128, transformer=TransformerSize(64, 4, 2, 10, 2e-3, 128)),
}


def build_text(size: Size, seed: int) -> tuple[str, str, str, list[int]]:
    """``(train text with canaries, held-out text, secret, start position of each inserted secret)``."""
    corpus = python_docs_excerpt()
    held_out = corpus[-size.test_chars:]
    if size.train_chars + val_chars(size) + size.test_chars > len(corpus):
        raise DataError(f"canary size asks for {size.train_chars + val_chars(size) + size.test_chars:,} characters; "
                         f"the excerpt has {len(corpus):,}")
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


def val_chars(size: Size) -> int:
    """Characters of clean held-out text for the methods' validation windows: half the test text's length."""
    return size.test_chars // 2


def validation_text(size: Size) -> str:
    """Clean text between the training text and the test text (disjoint from both), for ``Problem.val``."""
    corpus = python_docs_excerpt()
    end = len(corpus) - size.test_chars
    return corpus[end - val_chars(size):end]


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


def vocabulary() -> CharVocab:
    """The characters of the excerpt and of every text the scenario writes (canary, redaction, lead, digits)."""
    return CharVocab.from_text(python_docs_excerpt() + PREFIX + REPLACEMENT + LEAD + "0123456789" + SUFFIX)


def problems(size: Size, seed: int, device, *, sisa: bool = True, keep=None) -> list[Problem]:
    """The scenario's problems on ``seed``; ``sisa=False`` skips the SISA ensemble (the tuning search needs none);
    ``keep(name)`` returning False skips a problem before its model is trained."""
    text, held_out, secret, starts = build_text(size, seed)
    vocab = vocabulary()
    train_data = char_windows(vocab.encode(text), size.window, name="docs+canary", vocab_size=len(vocab))
    redacted = char_windows(vocab.encode(redact(text, starts, len(secret))), size.window, name="docs+canary", vocab_size=len(vocab))
    changes = window_changes(train_data, redacted)
    test_codes = vocab.encode(held_out)
    test = char_windows(test_codes, size.window, name="held-out docs", vocab_size=len(vocab))
    val = char_windows(vocab.encode(validation_text(size)), size.window, name="validation docs", vocab_size=len(vocab))
    val = val.replace(ids=val.ids + len(train_data) + len(test))  # ids of their own: never mistaken for training rows
    config = TrainConfig(epochs=size.epochs, lr=size.lr, batch_size=size.batch_size, seed=seed)
    arch = dict(vocab_size=len(vocab), window=size.window, embed_dim=size.embed_dim, hidden=size.hidden, l2=1e-5)
    names = {"lstm": f"docs: secret x{len(starts)}", "transformer": f"transformer: secret x{len(starts)}"}
    wanted = {k: keep is None or bool(keep(n)) for k, n in names.items()}
    canary = Canary(PREFIX, secret, suffix=SUFFIX)
    lead = vocab.encode(LEAD)

    def efficacy(m):
        bits = (float("nan") if isinstance(m, ShardedEnsemble)
                else float(char_log_perplexity(m, [test_codes], device=device)[0]) / (len(test_codes) - size.window))
        return {"exposure": _exposure(m, canary, vocab, lead, seed, device), "bits_per_char": bits}

    info = {"text": f"{len(text):,} characters ({len(train_data):,} windows of {size.window})",
            "secret": f"{len(secret)} digits inserted {len(starts)} times",
            "affected windows": changes.resolve(train_data).n_affected}
    out = []
    if wanted["lstm"]:
        model = train(CharLSTM(**arch), train_data, config=config, device=device)
        ensemble = train(ShardedEnsemble(base_kind="char-lstm", base_config=arch, n_shards=rules.SISA_SHARDS), train_data,
                         config=config, device=device) if sisa else None
        out.append(Problem(NAME, names["lstm"], seed, model, train_data, test, changes, sisa=ensemble, efficacy=efficacy,
                           val=val, info={**info, "model": f"char-LSTM, embedding {size.embed_dim}, hidden {size.hidden}, "
                                          f"{sum(p.numel() for p in model.parameters()):,} parameters, {size.epochs} epochs"}))
    if size.transformer is not None and wanted["transformer"]:
        spec = size.transformer
        # a plain torch.nn module made unlearnable by wrap(); SISA needs members built by kind, so this problem has none
        module = CharTransformer(vocab_size=len(vocab), window=size.window, dim=spec.dim, heads=spec.heads, depth=spec.depth)
        wrapped = wrap(module, n_classes=len(vocab), input_shape=(size.window,), l2=1e-5, blocks="blocks")  # even one block
        tconfig = TrainConfig(epochs=spec.epochs, lr=spec.lr, batch_size=spec.batch_size, seed=seed)
        transformer = train(wrapped, train_data, config=tconfig, device=device)
        out.append(Problem(NAME, names["transformer"], seed, transformer, train_data, test, changes,
                           efficacy=efficacy, val=val,
                           info={**info, "model": f"causal char-transformer (unlearnkit.wrap), width {spec.dim}, "
                                 f"{spec.heads} heads, {spec.depth} blocks, "
                                 f"{sum(p.numel() for p in transformer.parameters()):,} parameters, {spec.epochs} epochs"}))
    return out


def _exposure(model, canary: Canary, vocab: CharVocab, lead, seed: int, device) -> float:
    # Every candidate text is LEAD + prefix + secret + suffix: the characters before the secret, and the windows that
    # predict them, are the same for every candidate, so they add one constant to every log-perplexity and change no
    # rank. Only the characters from the secret on are scored, each with its full window of context: the same
    # exposure, about five times cheaper.
    skip = max(0, len(lead) + len(canary.prefix) - int(model.input_shape[0]))

    def scorer(texts):
        return char_log_perplexity(model, [np.concatenate([lead, vocab.encode(t)])[skip:] for t in texts], device=device)

    return canary_exposure(canary, scorer, seed=seed).exposure


def tuning_measure(problem: Problem, size: Size, device=None):
    """``("exposure", model -> exposure / log2 10^digits)``: the canary's exposure as a share of its largest value, the
    scenario's measure in the tuned baselines' search (:mod:`unlearnkit.scenarios.tuning`); no held-out text is scored."""
    secret = build_text(size, problem.seed)[2]
    vocab, canary = vocabulary(), Canary(PREFIX, secret, suffix=SUFFIX)
    top = len(secret) * float(np.log2(10.0))
    return "exposure", lambda model: _exposure(model, canary, vocab, vocab.encode(LEAD), problem.seed, device) / top


def strategies(model, data, changes, *, seed: int = 0, device=None):
    return [*rules.default_strategies(model, data, changes, seed=seed, device=device),
            *rules.network_cached_strategies(model, data, changes)]


EXPOSURE_BITS = 2.0
BITS_PER_CHAR_SHARE = 0.02
SPEEDUP = 20.0


def goals(summary: list[dict]) -> list:
    """A closed-form update (any first- or second-order row: one-shot, iterative, cached) brings the exposure within
    2 bits of the retrained model's, with bits per character within 2 % of retraining's, at >= 20x retraining's
    speed (amortised: the request's own seconds); judged on the mean over seeds, the best row reported
    (:func:`unlearnkit.scenarios.goals.best_closed_form`)."""
    from unlearnkit.scenarios.goals import at_least, best_closed_form, within
    from unlearnkit.scenarios.report import Goal, lookup

    def judge(problem: str, e: dict):
        ret = lookup(summary, problem, "retrain") or {}
        return [within(f"exposure within {EXPOSURE_BITS:g} bits", "exposure", e.get("exposure"), ret.get("exposure"),
                       EXPOSURE_BITS, unit=" bits"),
                within(f"bits per character within {100 * BITS_PER_CHAR_SHARE:g} %", "bits/char", e.get("bits_per_char"),
                       ret.get("bits_per_char"), BITS_PER_CHAR_SHARE, relative=True),
                at_least(f">= {SPEEDUP:g}x", e.get("speedup"), SPEEDUP, text="{:.1f}x (amortised)")]

    problems_ = list(dict.fromkeys(e["problem"] for e in summary))
    verdict = best_closed_form(summary, problems_, judge)
    return [Goal(f"a closed-form update brings exposure within {EXPOSURE_BITS:g} bits of the retrained model's, with bits "
                 f"per character within {100 * BITS_PER_CHAR_SHARE:g} % of retraining's, at >= {SPEEDUP:g}x retraining's "
                 "speed (amortised)", verdict.met, verdict.detail())]
