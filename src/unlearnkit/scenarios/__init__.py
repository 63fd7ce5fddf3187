"""End-to-end scenarios of Warnecke et al. (NDSS 2023) and beyond, each ending in a report.

``run(name, size=..., seeds=..., out=...)`` builds the scenario's problems on real offline data,
solves each with the original model, retraining, fine-tuning, SISA and the first- and
second-order updates (and their iterative variants), with hyperparameters from the documented
rules of :mod:`unlearnkit.scenarios.rules`, checks the scenario's goals and writes a Markdown
report with a PNG plot and the raw numbers as JSON. The CLI is ``unlearnkit scenario <name>``.

=====================  ===========================================================================
``sensitive-features``  zero name / column features in logistic regression (text, tabular, sparse)
``canary``              unlearn a telephone number memorised by a character-level LSTM (exposure)
``label-poisoning``     correct 10 % / 20 % flipped labels of a CNN (digits, Fashion-MNIST)
``backdoor``            remove a trigger patch and its target labels from a CNN (attack success)
=====================  ===========================================================================
"""

from unlearnkit.scenarios.registry import SCENARIOS, SIZES, merge, run, write_report

__all__ = ["SCENARIOS", "SIZES", "merge", "run", "write_report"]
