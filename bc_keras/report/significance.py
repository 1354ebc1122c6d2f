"""The study report's significance tests as one family: every AUC comparison of two models on the
same images (DeLong's test, clustered by patient) and every paired test over folds, computed
first, Holm-adjusted together, then rendered: the pairs the claims need in the main text, the
rest in the appendix."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace

from bc_keras.evaluation import statistics
from bc_keras.prepare.folds import FOLD_KIND_OFFICIAL
from bc_keras.report.encoders import byol_twin, imagenet_twins
from bc_keras.report.runs import ENCODER_PRETRAINED, ENCODER_RANDOM
from bc_keras.report.sets import EvaluationSet, Model, shared_patients, shared_predictions
from bc_keras.report.tables import markdown_table, number, p_value, with_interval

ALPHA = 0.05
APPENDIX_HEADING = "## Appendix: all pairwise comparisons"
# Why a pair is in the main text (the "shown for" column); a pair with none is in the appendix.
REASON_LINEAR = "claim 2 (SimCLR vs random encoder)"
REASON_LABELS = "claim 3 (label fraction vs all labels)"
REASON_CROSS_FIT = "cross-fit vs single split"
REASON_BEST = "vs the best headline model"
REASON_BYOL = "claim 5 (BYOL vs SimCLR)"
REASON_SSL_TRANSFER = "claim 6 (self-supervised vs ImageNet initialisation)"
MAIN_RULE = (
    "Shown here: the pairs the claims compare (claim 2: the SimCLR encoder vs a random one at "
    "the same recipe and label fraction; claim 3: each label fraction vs all labels of the same "
    "model; claim 5: a classifier on a BYOL encoder vs the same on a SimCLR one; claim 6: a "
    "transfer from a self-supervised encoder vs the same from ImageNet), each cross-fitted "
    "model vs its single-split twin, and each headline model (all labels, not a random "
    "encoder) vs the set's best headline model (highest AUC). Every other "
    f"pair is in the appendix ({APPENDIX_HEADING.removeprefix('## ')}), adjusted over the same "
    "family."
)
AUC_TEST_MEANING = (
    "AUC test: whether two ROC AUCs measured on the same images differ by more than chance "
    "would make them differ. Images of one patient are not independent (a patient's many "
    "near-identical images would each count as new evidence), so when a patient has several "
    "test images the test is DeLong's clustered by patient (Obuchowski, 1997): each patient is "
    "one cluster and the variance comes from the spread between patients, so a handful of "
    "patients gives a wide margin however many images they hold. With one image per patient, "
    "or predictions that name no patient, it is DeLong's test over images (DeLong et al., 1988)."
)
PAIRED_MEANING = (
    "The paired test over folds (a paired t-test of the per-fold AUCs) treats each fold as one "
    "observation, so it respects patients; with few folds it has little power, and p >= 0.05 is "
    "no evidence that the models are equal."
)


@dataclass
class Estimate:
    """A model's score: one run's value with its patient-bootstrap interval, or the mean over
    folds with mean -/+ sd as the bar."""

    value: float | None
    low: float | None
    high: float | None
    text: str


def estimate(model: Model, metric: str) -> Estimate:
    """`model`'s `metric` as read from its metrics.json (mean and sd over its folds)."""
    if model.cross_validation:
        values = [value for _, value in model.fold_values(metric)]
        if not values:
            return Estimate(None, None, None, "n/a")
        mean, sd = statistics.mean_and_sd(values)
        if sd is None:
            return Estimate(mean, None, None, f"{number(mean)} (1 fold)")
        return Estimate(mean, mean - sd, mean + sd, f"{number(mean)} ± {number(sd)}")
    metrics = model.runs[0].metrics
    pair = (metrics.get("bootstrap_95ci_by_patient") or {}).get(metric)
    low, high = pair if pair else (None, None)
    return Estimate(metrics.get(metric), low, high, with_interval(metrics.get(metric), pair))


def verdict(adjusted) -> str:
    """The verdict of a Holm-adjusted p-value."""
    if adjusted is None:
        return "no test"
    if adjusted < ALPHA:
        return f"significant (Holm p < {ALPHA:g})"
    return f"not significant (Holm p ≥ {ALPHA:g})"


@dataclass
class Comparison:
    """Two models of one evaluation set and their tests: `auc` (`auc_difference_test` on the
    images both scored) and `paired` (the paired t-test over folds), each None with a note when
    it does not apply; `auc_holm` and `paired_holm`, their p-values Holm-adjusted over the
    report's family; `reasons`, why the main text shows the pair (none: the appendix)."""

    each: EvaluationSet
    model_a: Model
    model_b: Model
    auc: dict | None = None
    auc_note: str = ""
    paired: dict | None = None
    paired_note: str = ""
    auc_holm: float | None = None
    paired_holm: float | None = None
    reasons: list[str] = field(default_factory=list)

    def claim_test(self) -> tuple[str, float, float] | None:
        """`(test name, raw p, Holm p)` a claim reads: over folds for cross-validation (it
        respects patients by construction), else the AUC test; None when neither ran."""
        if self.paired is not None and self.paired["p_value"] is not None:
            return "paired over folds", self.paired["p_value"], self.paired_holm
        if self.auc is not None:
            return auc_method(self.auc), self.auc["p_value"], self.auc_holm
        return None


def auc_method(result: dict) -> str:
    """Which AUC test ran, in words."""
    if result["method"] == statistics.METHOD_OBUCHOWSKI:
        return f"clustered DeLong (Obuchowski), {result['clusters']} patients"
    return "DeLong over images"


def compare(each: EvaluationSet, model_a: Model, model_b: Model) -> Comparison:
    """The AUC test on the shared (pooled) predictions, clustered by each image's patient, and
    for cross-validation the paired test over folds of per-fold AUC."""
    result = Comparison(each, model_a, model_b)
    shared = shared_predictions(model_a, model_b)
    if each.cross_validation and each.fold_kind == FOLD_KIND_OFFICIAL:
        result.auc_note = "n/a: the official folds' test sets overlap"
    elif shared is None:
        result.auc_note = "n/a: not the same test images"
    else:
        patients = shared_patients(model_a, model_b)
        try:
            result.auc = statistics.auc_difference_test(*shared, patients=patients)
        except ValueError:
            unit = "images" if patients is None else "patients"
            result.auc_note = f"n/a: needs two {unit} of each class"
    if each.cross_validation:
        aucs_a, aucs_b = dict(model_a.fold_values("auc_roc")), dict(model_b.fold_values("auc_roc"))
        folds = sorted(set(aucs_a) & set(aucs_b))
        if len(folds) >= 2:
            result.paired = statistics.paired_fold_test(
                [aucs_a[k] for k in folds], [aucs_b[k] for k in folds]
            )
        else:
            result.paired_note = f"n/a: {len(folds)} shared fold(s), the test needs 2"
    return result


def _reasons(model_a: Model, model_b: Model, best: Model | None) -> list[str]:
    """Why the main text shows the pair (see MAIN_RULE)."""
    a, b = model_a.key, model_b.key
    reasons = []
    encoders = {a.encoder, b.encoder} == {ENCODER_PRETRAINED, ENCODER_RANDOM}
    if encoders and a.experiment == b.experiment == "simclr_linear":
        if replace(a, encoder="") == replace(b, encoder=""):
            reasons.append(REASON_LINEAR)
    fractions = {a.label_fraction, b.label_fraction}
    if a.family() == b.family() and 1.0 in fractions and len(fractions) == 2:
        reasons.append(REASON_LABELS)
    single = replace(a, cross_fit=0, cross_fit_final="")
    # Exactly one of the two cross-fitted: two cross-fitted variants are not twins.
    one_crossed = bool(a.cross_fit) != bool(b.cross_fit)
    if one_crossed and single == replace(b, cross_fit=0, cross_fit_final=""):
        reasons.append(REASON_CROSS_FIT)
    if byol_twin(a) == b or byol_twin(b) == a:
        reasons.append(REASON_BYOL)
    if b in imagenet_twins(a) or a in imagenet_twins(b):
        reasons.append(REASON_SSL_TRANSFER)
    if best is not None and best in (model_a, model_b) and all(map(_headline, (model_a, model_b))):
        reasons.append(REASON_BEST)
    return reasons


def _headline(model: Model) -> bool:
    return model.key.label_fraction == 1.0 and model.key.encoder != ENCODER_RANDOM


def best_model(each: EvaluationSet) -> Model | None:
    """The set's headline model with the highest AUC (the first of equals), if any."""
    scored = [(estimate(m, "auc_roc").value, m) for m in each.models if _headline(m)]
    scored = [(value, model) for value, model in scored if value is not None]
    return max(scored, key=lambda item: item[0])[1] if scored else None


@dataclass
class Family:
    """Every test the report computes, Holm-adjusted together."""

    comparisons: list[Comparison]

    @property
    def size(self) -> int:
        """How many p-values the family holds (the Holm adjustment's m)."""
        return len(self._p_values()[0])

    def _p_values(self) -> tuple[list[float], list[tuple[Comparison, str]]]:
        values, slots = [], []
        for comparison in self.comparisons:
            for name, result in (("auc", comparison.auc), ("paired", comparison.paired)):
                if result is not None and result["p_value"] is not None:
                    values.append(result["p_value"])
                    slots.append((comparison, name))
        return values, slots

    def adjust(self) -> None:
        """Sets each comparison's Holm-adjusted p-values over the whole family."""
        values, slots = self._p_values()
        for (comparison, name), adjusted in zip(slots, statistics.holm_adjust(values), strict=True):
            setattr(comparison, f"{name}_holm", adjusted)

    def of(self, each: EvaluationSet) -> list[Comparison]:
        return [comparison for comparison in self.comparisons if comparison.each is each]

    def pair(self, each: EvaluationSet, model_a: Model, model_b: Model) -> Comparison | None:
        """The comparison of two models of `each`, whichever order they come in."""
        wanted = {id(model_a), id(model_b)}
        return next((c for c in self.of(each) if {id(c.model_a), id(c.model_b)} == wanted), None)


def family(sets: list[EvaluationSet]) -> Family:
    """Every pair of models of every set compared, the family Holm-adjusted and each pair
    marked for the main text or the appendix."""
    comparisons = []
    for each in sets:
        best = best_model(each)
        for model_a, model_b in itertools.combinations(each.models, 2):
            comparison = compare(each, model_a, model_b)
            comparison.reasons = _reasons(model_a, model_b, best)
            comparisons.append(comparison)
    result = Family(comparisons)
    result.adjust()
    return result


def _statistic(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _table(each: EvaluationSet, comparisons: list[Comparison], main: bool) -> str:
    header = ["model A", "model B", "AUC A", "AUC B"]
    if each.cross_validation:
        header += ["mean AUC difference over folds (A - B)", "paired t", "p (paired, folds)",
                   "p (paired, Holm)"]  # fmt: skip
    header += ["AUC test", "z", "p (AUC test)", "p (AUC test, Holm)", "verdict"]
    header += ["shown for"] if main else []
    rows = []
    for comparison in comparisons:
        auc, paired = comparison.auc, comparison.paired
        row = [
            comparison.model_a.label,
            comparison.model_b.label,
            estimate(comparison.model_a, "auc_roc").text,
            estimate(comparison.model_b, "auc_roc").text,
        ]
        verdicts = []
        if each.cross_validation:
            if paired:
                row += [f"{paired['mean_difference']:+.3f}", _statistic(paired["t"]),
                        p_value(paired["p_value"]), p_value(comparison.paired_holm)]  # fmt: skip
                verdicts.append(f"paired: {verdict(comparison.paired_holm)}")
            else:
                row += [comparison.paired_note, "", "", ""]
        if auc:
            row += [auc_method(auc), _statistic(auc["z"]), p_value(auc["p_value"]),
                    p_value(comparison.auc_holm)]  # fmt: skip
            verdicts.append(f"AUC: {verdict(comparison.auc_holm)}")
        else:
            row += [comparison.auc_note, "", "", ""]
        row.append("; ".join(verdicts) or "no test applies")
        row += ["; ".join(comparison.reasons)] if main else []
        rows.append(row)
    return markdown_table(header, rows)


def holm_text(tests: Family) -> str:
    """What the Holm-adjusted p-values are adjusted over."""
    return (
        "p (Holm): the p-value adjusted with Holm's step-down method over the report's whole "
        f"family of {tests.size} test{'' if tests.size == 1 else 's'} (every AUC test and paired fold test of every pair of "
        "models, main text and appendix; the claims' tests are among them, each counted once); "
        f"the verdict reads the adjusted p against {ALPHA:g}, the raw p beside it."
    )


def comparison_intro(tests: Family) -> list[str]:
    """What the comparison tables show and what their tests mean, said once."""
    return [MAIN_RULE, "", AUC_TEST_MEANING, "", holm_text(tests), ""]


def _meaning(each: EvaluationSet) -> str:
    if each.cross_validation:
        return (
            f"AUC A/B: mean ± sd over folds. {PAIRED_MEANING} The AUC test here uses the "
            "pooled out-of-fold predictions."
        )
    return "AUC A/B: with 95% patient-bootstrap intervals."


def comparison_lines(each: EvaluationSet, tests: Family) -> list[str]:
    """The main text's tests of the set: the pairs the claims and the best-model rule compare."""
    comparisons = tests.of(each)
    if not comparisons:
        return ["One model only: nothing to compare.", ""]
    main = [comparison for comparison in comparisons if comparison.reasons]
    rest = len(comparisons) - len(main)
    if main:
        lines = [_table(each, main, main=True), "", _meaning(each), ""]
    else:
        lines = ["No pair of this set is one the claims or the best-model rule compare.", ""]
    if rest:
        lines += [f"The other {rest} pair(s) of this set: in the appendix.", ""]
    return lines


def appendix_lines(sets: list[EvaluationSet], tests: Family) -> list[str]:
    """The appendix: every pair the main text leaves out, set by set, Holm-adjusted over the
    same family."""
    lines = [
        APPENDIX_HEADING,
        "",
        "Every pair of models compared, beyond those of the main text (not repeated here). "
        f"{holm_text(tests)} The AUC test is the one of the Model comparison (clustered by "
        "patient where a patient has several images).",
        "",
    ]
    shown = False
    for each in sets:
        rest = [comparison for comparison in tests.of(each) if not comparison.reasons]
        if rest:
            shown = True
            lines += [f"### {each.title} (appendix)", "", _table(each, rest, main=False), ""]
            lines += [_meaning(each), ""]
    if not shown:
        lines += ["No other pair: every comparison is in the main text.", ""]
    return lines
