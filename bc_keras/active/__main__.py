"""`python -m bc_keras.active select MODEL.h5 --pool DIR --budget N --strategy S` (the images
to annotate next) and `python -m bc_keras.active simulate --data SPLIT ...` (the label-efficiency
simulation). `python -m bc_keras.active MODEL.h5 --pool ...` is `select`.

The command line imports TensorFlow only once its arguments are valid, so `--help` is instant.
"""

from __future__ import annotations

import argparse
import sys

from bc_keras import cli
from bc_keras.active import STRATEGIES, STRATEGY_RANDOM, UNCERTAINTY_STRATEGIES

SUBCOMMANDS = ("select", "simulate")
DEFAULT_OUT = "active_selection.csv"
CAP_HELP = (
    "the most images one patient may give a round (default: ceil(budget / 4), raised only when "
    "the pool's patients cannot otherwise fill the budget), so that no single patient fills a "
    "round"
)


def _strategy_list(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bc_keras.active",
        description="Active learning with a bc_keras classifier: choose the images a "
        "pathologist should annotate next (select), or measure whether choosing them so beats "
        "choosing at random (simulate). Strategies: entropy (binary entropy of the malignant "
        "probability), margin (closeness to the model's decision threshold), random, coreset "
        "(k-center greedy on the model's penultimate features). Run `%(prog)s select --help` "
        "or `%(prog)s simulate --help` for each one's flags.",
        formatter_class=cli.HelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    select = commands.add_parser(
        "select",
        help="write the N pool images to annotate next as a CSV (path, patient, score, rank)",
        description="Scores every image of a folder with a saved classifier, read as the model "
        "was trained (its size, resize, preprocessing, stain normaliser), and writes the "
        "--budget images to annotate next, best first: path, patient (BreaKHis slide id, or "
        "'unknown'), score (higher = chosen first) and rank.",
        formatter_class=cli.HelpFormatter,
    )
    select.add_argument(
        "model", metavar="MODEL.h5", help="a classifier .h5 saved by a bc_keras training script"
    )
    select.add_argument(
        "--pool",
        required=True,
        metavar="DIR",
        help="the folder of unlabelled images to choose from (subfolders too)",
    )
    select.add_argument(
        "--budget",
        required=True,
        type=int,
        metavar="N",
        help="how many images to choose (1 to the pool's size)",
    )
    select.add_argument(
        "--strategy",
        default="entropy",
        metavar="NAME",
        help=f"one of {', '.join(STRATEGIES)} (default: %(default)s)",
    )
    select.add_argument(
        "--labelled",
        action="append",
        default=[],
        metavar="PATH",
        help="images already annotated (a file or folder, repeatable): left out of the pool, "
        "and the coreset's starting centres",
    )
    select.add_argument(
        "--out",
        default=DEFAULT_OUT,
        metavar="FILE.csv",
        help="the selection CSV, written atomically (default: %(default)s)",
    )
    select.add_argument("--seed", type=int, default=42, help="seeds random (default: 42)")
    select.add_argument(
        "--patient-cap", type=cli.positive_int, default=None, metavar="K", help=CAP_HELP
    )
    select.add_argument(
        "--batch-size",
        type=cli.positive_int,
        default=32,
        help="images per prediction batch (default: %(default)s)",
    )
    cli.add_quiet_flag(select)
    _simulate_parser(commands)
    return parser


def _simulate_parser(commands) -> None:
    simulate = commands.add_parser(
        "simulate",
        help="rounds of select -> annotate (known labels) -> retrain; test AUC against labels "
        "per strategy",
        description="Starts from --start-fraction of a prepared split's training labels (whole "
        "patients per class), trains the experiment, then per round and strategy chooses "
        "--budget images of the rest with the last model, adds them with their known labels "
        "and retrains. Every model is validated and tested on the split's own val/ and test/. "
        "Writes OUT/active.json, OUT/active_auc.png (test AUC against labels, 95% "
        "patient-bootstrap intervals) and OUT/active.md with the verdict: does uncertainty "
        "sampling beat random at equal labels? Run again to resume.",
        formatter_class=cli.HelpFormatter,
    )
    simulate.add_argument(
        "--data",
        required=True,
        metavar="SPLIT",
        help="a prepared split (train/, val/, test/ of image folders)",
    )
    simulate.add_argument(
        "--experiment",
        default="cnn",
        metavar="NAME",
        help="cnn (the baseline CNN) or linear (a Dense head on a frozen SimCLR "
        "encoder, --encoder) (default: %(default)s)",
    )
    simulate.add_argument(
        "--encoder",
        default=None,
        metavar="ENC.h5",
        help="linear: the encoder from `train_simclr.py pretrain`, or 'none'",
    )
    simulate.add_argument(
        "--start-fraction",
        type=float,
        default=0.1,
        metavar="F",
        help="share of the training labels to start from, in (0, 1) (default: %(default)s)",
    )
    simulate.add_argument(
        "--rounds",
        type=int,
        default=3,
        metavar="K",
        help="rounds of selection (default: %(default)s)",
    )
    simulate.add_argument(
        "--budget",
        type=int,
        default=20,
        metavar="N",
        help="images labelled per round (default: %(default)s)",
    )
    default_strategies = ",".join((*UNCERTAINTY_STRATEGIES[:1], STRATEGY_RANDOM))
    simulate.add_argument(
        "--strategies",
        type=_strategy_list,
        default=default_strategies,
        metavar="A,B",
        help=f"comma-separated, of {', '.join(STRATEGIES)} (default: %(default)s)",
    )
    simulate.add_argument(
        "--out", required=True, metavar="DIR", help="the simulation folder (new, or one to resume)"
    )
    simulate.add_argument(
        "--seed",
        type=int,
        default=42,
        help="seeds the start, random and every run (default: %(default)s)",
    )
    simulate.add_argument(
        "--recipe",
        default="report",
        metavar="NAME",
        help="report or robust, for every run (default: %(default)s)",
    )
    simulate.add_argument(
        "--epochs",
        type=cli.positive_int,
        default=100,
        help="maximum epochs of every run (default: %(default)s)",
    )
    simulate.add_argument(
        "--image-size",
        type=cli.positive_int,
        default=224,
        help="input side in pixels (default: %(default)s)",
    )
    simulate.add_argument(
        "--batch-size",
        type=cli.positive_int,
        default=32,
        help="images per batch (default: %(default)s)",
    )
    simulate.add_argument(
        "--patient-cap", type=cli.positive_int, default=None, metavar="K", help=CAP_HELP
    )
    simulate.add_argument(
        "--bootstrap-samples",
        type=cli.positive_int,
        default=1000,
        help="patient-bootstrap resamples of each interval (default: %(default)s)",
    )
    cli.add_quiet_flag(simulate)


def _as_select(argv: list[str]) -> list[str]:
    """The issue's form `MODEL.h5 --pool ...` is `select MODEL.h5 --pool ...`."""
    if argv and argv[0] not in SUBCOMMANDS and not argv[0].startswith("-"):
        return ["select", *argv]
    return argv


def run_select(args) -> int:
    from bc_keras.active import select, strategies

    strategies.check_strategy(args.strategy)
    files = select.pool_images(args.pool, args.labelled)
    select.check_budget(args.budget, len(files), f"--pool {args.pool}")
    from bc_keras.evaluation.inference import collect_images
    from bc_keras.evaluation.predictor import load_model

    labelled = collect_images(args.labelled)[0] if args.labelled else []
    chosen = select.select_images(
        load_model(args.model),
        files,
        args.budget,
        args.strategy,
        labelled_files=labelled,
        seed=args.seed,
        cap=args.patient_cap,
        batch_size=args.batch_size,
    )
    path = select.write_selection(args.out, chosen.rows)
    patients = select.patients_in(chosen.rows)
    print(
        f"{args.strategy}: {len(chosen.rows)} of {chosen.pool_size} pool images chosen, "
        f"{len(patients)} patients, at most {chosen.cap} per patient: {path}"
    )
    return 0


def run_simulate(args) -> int:
    from bc_keras.active import simulate

    settings = simulate.SimulationSettings(
        data=args.data,
        experiment=args.experiment,
        encoder=args.encoder,
        start_fraction=args.start_fraction,
        rounds=args.rounds,
        budget=args.budget,
        strategies=list(args.strategies),
        seed=args.seed,
        recipe=args.recipe,
        epochs=args.epochs,
        image_size=args.image_size,
        batch_size=args.batch_size,
        patient_cap=args.patient_cap,
        bootstrap_samples=args.bootstrap_samples,
    )
    _check_recipe(args.recipe)
    result = simulate.simulate(settings, args.out)
    for line in result["verdicts"]:
        print(line)
    print(
        f"wrote {args.out}/{simulate.RESULT_FILE}, {simulate.FIGURE_FILE} and "
        f"{simulate.SUMMARY_FILE}"
    )
    return 0


def _check_recipe(recipe: str) -> None:
    from bc_keras import config as configs
    from bc_keras.errors import ConfigError

    if recipe not in configs.RECIPES:
        raise ConfigError(
            f"unknown --recipe {recipe!r}; choose one of {', '.join(configs.RECIPES)}"
        )


def main(argv=None) -> int:
    """Runs `select` or `simulate`; a `UserError` propagates (`cli.run_script` prints it)."""
    argv = _as_select(list(sys.argv[1:] if argv is None else argv))
    args = cli.apply_quiet(build_parser().parse_args(argv))
    return run_select(args) if args.command == "select" else run_simulate(args)


INTERRUPTED = (
    "interrupted: a selection CSV is written whole or not at all; run the same simulate "
    "command again to resume"
)

if __name__ == "__main__":
    sys.exit(cli.run_script(main, interrupted=INTERRUPTED))
