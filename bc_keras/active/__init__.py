"""Active learning: which unlabelled images a pathologist should annotate next, and whether
choosing them that way beats choosing at random.

`python -m bc_keras.active select MODEL.h5 --pool DIR --budget N --strategy S` ranks a folder of
unlabelled images with a trained classifier and writes the N to annotate next as a CSV (path,
patient, score, rank); `python -m bc_keras.active simulate --data SPLIT ...` replays rounds of
select -> "annotate" (the known labels) -> retrain on a prepared split and plots the test AUC
against the number of labels for each strategy, with patient-bootstrap intervals.

Strategies (`strategies`): `entropy` and `margin` (uncertainty sampling), `random` (the
baseline), `coreset` (k-center greedy on the model's penultimate features). Every round is a
patient-aware batch: no patient gives more than a cap of its images to one round
(`strategies.patient_cap`), so a round is not spent on one slide's near-duplicate fields.

Importing this package imports no TensorFlow; `select` and `simulate` do.
"""

STRATEGY_ENTROPY = "entropy"
STRATEGY_MARGIN = "margin"
STRATEGY_RANDOM = "random"
STRATEGY_CORESET = "coreset"
STRATEGIES = (STRATEGY_ENTROPY, STRATEGY_MARGIN, STRATEGY_RANDOM, STRATEGY_CORESET)
# The strategies that rank by the model's uncertainty (compared with random in the verdict).
UNCERTAINTY_STRATEGIES = (STRATEGY_ENTROPY, STRATEGY_MARGIN)
