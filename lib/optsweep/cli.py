"""`optsweep` command line. Each subcommand parses its arguments and calls one library function.

User errors (bad params, arguments or tables) print one line `optsweep: error: ...` and exit with 2,
before any data is prepared or any run is trained.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any

from .params.paths import PARAMS_FILE, project
from .params.sections import AnalysisSettings
from .params.settings import ParamsError, load_analysis_settings, load_params
from .search import FailedRuns

DEFAULT_PARAMS = str(PARAMS_FILE)  # commands run from the project root, as dvc.yaml's stages do


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def cmd_prepare(args: argparse.Namespace) -> None:
    from .data.prepare import ensure_prepared, write_recipe

    params = load_params(args.params, args.set)
    if args.recipe:
        write_recipe(params, Path(args.recipe))
        return
    _print_json(ensure_prepared(params, replace=True))  # the study's data follows its params


def cmd_train(args: argparse.Namespace) -> None:
    from .data.prepare import ensure_prepared
    from .runs.trainer import DEFAULT_TRAINER, invalid_reason, load_trainer, make_run_spec

    params = load_params(args.params, args.set, args.optimizer)
    baseline, _ = params.scale_space(args.scale)
    trainer = load_trainer(params.study.trainer)
    reason = invalid_reason(make_run_spec(params, args.scale, baseline, data=None))
    if reason:
        raise ParamsError(f"{args.params}: {reason}")
    data = ensure_prepared(params) if params.study.trainer == DEFAULT_TRAINER else None
    _print_json(trainer(make_run_spec(params, args.scale, baseline, data)))


def cmd_bench(args: argparse.Namespace) -> None:
    from .train.bench import run_bench
    from .train.bench_suite import markdown, run_suite

    params = load_params(args.params, args.set)
    if args.suite is None:
        _print_json(run_bench(params, args.scale, steps=args.steps, rounds=args.rounds))
        return
    print(markdown(run_suite(params, args.suite, Path(args.out), parts=tuple(args.parts.split(",")))))


def _best_text(scale: str, best_loss: float | None, best: dict[str, Any], out: Path) -> str:
    loss = "none (every run diverged or failed)" if best_loss is None else f"{best_loss:.4f}"
    return f"{scale}: best loss {loss} with {best} -> {out}"


def cmd_sweep(args: argparse.Namespace) -> None:
    from .search import run_phase, run_sweep

    if (args.scale is None) == (args.phase is None):
        raise ParamsError("optsweep sweep: give either --scale NAME (one search) or --phase phase1|law (all scales)")
    params = load_params(args.params, args.set, args.optimizer)
    if args.phase == "law" and not args.sensitivity:
        raise ParamsError("optsweep sweep --phase law: needs --sensitivity results/sensitivity.json")
    if args.transfer_from and not Path(args.transfer_from).is_dir():
        raise ParamsError(f"--transfer-from {args.transfer_from}: not a folder of sweep results")
    transfer_from = Path(args.transfer_from) if args.transfer_from else None
    paths = project().of_optimizer(args.optimizer)
    if args.phase:
        out_dir = Path(args.out) if args.out else paths.sweeps(args.phase)
        results = run_phase(params, args.phase, out_dir, sensitivity_path=args.sensitivity, transfer_from=transfer_from)
        for name, result in results.items():
            print(_best_text(name, result.best_loss, result.best, out_dir / f"{name}.json"))
        return
    params.scale(args.scale)
    out = Path(args.out) if args.out else paths.sweep(args.scale, "law" if args.sensitivity else "phase1")
    result = run_sweep(params, args.scale, out, sensitivity_path=args.sensitivity, transfer_from=transfer_from)
    print(_best_text(args.scale, result["best_loss"], result["best"], out))


def cmd_store(args: argparse.Namespace) -> None:
    from .runs import view as store_view
    from .runs.store import RunStore
    from .search.retry import retry_failed

    params = load_params(args.params, args.set)
    store = RunStore(params.study.store)
    if args.action == "list":
        for row in store_view.rows(store):
            if args.status in (None, row.status):
                print(row.line())
    elif args.action == "show":
        record = store.get(args.key or "")
        if record is None:
            raise ParamsError(f"store {store.root}: no run {args.key!r} (see `optsweep store list`)")
        _print_json(dataclasses.asdict(record))
    elif args.action == "why":
        if not args.scale:
            raise ParamsError("optsweep store why: needs --scale NAME (the run of the baseline, moved by --set)")
        baseline, _ = params.scale_space(args.scale)
        from .search import study_data

        print(store_view.explain_missing(params, args.scale, baseline, study_data(params), store))
    elif args.action == "rekey":
        if not store.root.is_dir():
            raise ParamsError(f"optsweep store rekey: no run store at {store.root} (study.store in {args.params})")
        rekeyed = store_view.rekey(store, dry_run=args.dry_run)
        for key, reason in rekeyed.skipped.items():
            print(f"{key}: skipped, {reason}")
        print(rekeyed.line(args.dry_run))
    else:
        records, stale = retry_failed(params, store)
        for record in records:
            print(f"{record.key}: {record.status.value}")
        for record in stale:
            print(f"{record.key}: failed under older training code; a sweep with the current code trains it anew")


def cmd_analyze(args: argparse.Namespace) -> None:
    from .analysis import analyze_table

    settings = load_analysis_settings(args.params) if args.params else AnalysisSettings()
    overrides = {"threshold": args.threshold, "divergence_rise": args.divergence_rise,
                 "speedup_noise": args.speedup_noise}
    if args.threshold_kind:
        overrides["threshold_kind"] = args.threshold_kind
    if args.noise is not None:
        overrides["noise"], overrides["noise_kind"] = noise_setting(args.noise)
    settings = settings.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    written = analyze_table(args.runs_table, Path(args.out), settings=settings, reference=args.reference)
    for path in written:
        print(path)


def cmd_predict(args: argparse.Namespace) -> None:
    from .analysis import predict
    from .results.documents import PredictionInputs, read_document

    law_file = Path(args.law) if args.law else project().scaling_law
    if not law_file.is_file():
        raise ParamsError(f"--law {law_file}: file not found (run the scaling_law stage or `optsweep analyze`)")
    law = read_document(law_file, PredictionInputs)  # validated: a bad file names itself and the field
    _print_json(dataclasses.asdict(predict(law, n_params=args.n_params, tokens=args.tokens, width=args.width)))


def cmd_preset(args: argparse.Namespace) -> None:
    from .search.plan import activate_preset

    print(activate_preset(args.name, Path(args.params)))


def cmd_plan(args: argparse.Namespace) -> None:
    from .search.plan import GpuCount, default_gpus, print_plan

    params = load_params(args.params, args.set)
    gpus = default_gpus(params.study) if args.gpus is None else GpuCount(gpu_count(args.gpus), "--gpus")
    print_plan(params, gpus)


def gpu_count(text: str) -> int:
    """`--gpus G`: a whole number of GPUs, at least 1 (checked here so that a bad value is one error line)."""
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise ParamsError(f"--gpus: expected a whole number of GPUs, at least 1, got {text!r}")
    return count


def cmd_notebook(args: argparse.Namespace) -> None:
    from .report.notebook import parse_parameter, run_notebook

    notebook = Path(args.notebook)
    if not notebook.is_file():
        raise ParamsError(f"{notebook}: notebook not found")
    try:
        parameters = dict(parse_parameter(text) for text in args.p)
    except ValueError as error:
        raise ParamsError(str(error)) from None
    print(run_notebook(notebook, Path(args.html), parameters))


def add_optimizer_argument(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--optimizer", default=None, metavar="NAME",
                     help="an optimizer named under `optimizers:` in params (default: the study's own, "
                          "study.optimizer); its results go under results/optimizers/NAME/")


def noise_setting(text: str) -> tuple[float, str]:
    """`--noise 0.002` (loss units) or `--noise 0.1%` (of each scale's best loss) as (value, kind)."""
    relative = text.strip().endswith("%")
    number = text.strip().removesuffix("%")
    try:
        value = float(number) / (100 if relative else 1)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ParamsError(f"--noise {text!r}: allowed: a positive std of one config's loss in loss units "
                          "(0.002) or as a percentage of each scale's best loss (0.1%)")
    return value, "relative" if relative else "absolute"


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="optsweep", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler, help_text: str, params: bool = True) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        if params:
            sub.add_argument("--params", default=DEFAULT_PARAMS, help=f"params file (default {DEFAULT_PARAMS})")
            sub.add_argument(
                "--set", action="append", default=[], metavar="KEY=VALUE",
                help="override: a hyperparameter (lr=3e-3) or a dotted params path (study.seed=1)",
            )
        return sub

    prepare = add("prepare", cmd_prepare, "build the corpus, tokenizer and token shards named in params")
    prepare.add_argument("--recipe", metavar="PATH", help="only write the data recipe's identity to PATH "
                         "(what the shards are a function of; dvc.yaml's prepare stage depends on it)")

    train = add("train", cmd_train, "train one run at a scale and print its result JSON")
    train.add_argument("--scale", required=True, help="a scale name from params")
    add_optimizer_argument(train)

    bench = add("bench", cmd_bench, "tokens/s (and MFU on GPU): our trainer next to a plain HF eager loop")
    bench.add_argument("--scale", default=None, help="a scale name from params (default: the first)")
    bench.add_argument("--steps", type=int, default=20, help="timed optimizer steps per round")
    bench.add_argument("--rounds", type=int, default=3, help="timed rounds per loop (rows give median and range)")
    bench.add_argument(
        "--suite", default=None, choices=["gpu", "quick"],
        help="instead of one study scale: the issue-12 suite (gpu: 0.1B and 30M, concurrency, profile, loss "
             "curves; quick: the same at toy sizes), written as JSON + markdown under --out",
    )
    bench.add_argument("--out", default="reports/bench", help="folder for the suite's JSON and markdown")
    bench.add_argument("--parts", default="throughput,concurrency,profile,curves",
                       help="the suite's parts to run, comma-separated (to split it across device calls)")

    sweep = add("sweep", cmd_sweep, "coordinate descent over the grid at one scale, or at every scale of a phase")
    sweep.add_argument("--scale", default=None, help="a scale name from params")
    sweep.add_argument("--phase", choices=["phase1", "law"], default=None,
                       help="every scale of the phase at once, on one pool of workers")
    sweep.add_argument("--out", default=None, help="result JSON (default results/sweeps/<scale>.json, "
                                                   "results/law_sweeps/<scale>.json with --sensitivity); "
                                                   "with --phase, a folder")
    sweep.add_argument(
        "--sensitivity", default=None,
        help="sensitivity.json: free only the sensitive hyperparameters (and analysis.laws_for), fix the rest at their "
        "constants",
    )
    add_optimizer_argument(sweep)
    sweep.add_argument(
        "--transfer-from", default=None, metavar="DIR",
        help="another optimizer's sweep results (results/sweeps): carry each scale's best over where the "
             "names match and train it, to test whether optima transfer between optimizers",
    )

    analyze = add("analyze", cmd_analyze, "sensitivity and scaling laws from a CSV/Parquet table of runs", False)
    analyze.add_argument("runs_table", help="CSV or Parquet: scale, n_params, tokens, width, hparams, loss "
                                            "(and optionally optimizer)")
    analyze.add_argument("--out", required=True,
                         help="folder for sensitivity.json and scaling_law.json; with an optimizer column, also "
                              "speedup.json and the other optimizers' analyses in optimizers/<name>/")
    analyze.add_argument("--reference", default="adamw",
                         help="with an optimizer column: the optimizer the others' speedup is measured against")
    analyze.add_argument(
        "--params", default=None,
        help="the analysis settings: a study params file, or a file holding only an 'analysis:' mapping",
    )
    analyze.add_argument("--threshold", type=_positive_float, default=None,
                         help="loss that counts as mattering (overrides analysis.threshold)")
    analyze.add_argument("--threshold-kind", choices=("relative", "absolute"), default=None,
                         help="the threshold as a fraction of each scale's best loss, or in loss units")
    analyze.add_argument("--noise", default=None, metavar="STD",
                         help="the known run-to-run std of one config's loss, in loss units (0.002) or as a "
                              "percentage of each scale's best loss (0.1%%); decides over seeds and grid "
                              "differences (overrides analysis.noise)")
    analyze.add_argument("--speedup-noise", type=_positive_float, default=None, metavar="STD",
                         help="with an optimizer column: the loss std of one run behind every speedup interval, in "
                              "loss units (overrides analysis.speedup_noise; default: each optimizer's measured "
                              "noise, at least analysis.speedup_noise_floor)")
    analyze.add_argument("--divergence-rise", type=_positive_float, default=None,
                         help="a finite loss this much (relative) above its scale's best counts as diverged "
                              "(overrides analysis.divergence_rise)")

    predict = add("predict", cmd_predict, "recommended hyperparameters for N params and D tokens", False)
    predict.add_argument("--n-params", type=_positive_float, required=True, help="non-embedding parameters")
    predict.add_argument("--tokens", type=_positive_float, required=True, help="training tokens")
    predict.add_argument("--width", type=int, default=None, help="model width (for width-based lr rules)")
    predict.add_argument("--law", default=None, help="fitted scaling_law.json (default results/scaling_law.json)")

    preset = add("preset", cmd_preset, "make params/presets/NAME.yaml the active params file", False)
    preset.add_argument("name", help="micro, tiny, paper, optimizers, fantastic, or any file in params/presets/")
    preset.add_argument("--params", default=DEFAULT_PARAMS, help="the active params file to replace")

    notebook = add("notebook", cmd_notebook, "execute a jupytext notebook with papermill, write its HTML", False)
    notebook.add_argument("notebook", help="a jupytext .py notebook, e.g. notebooks/sweep.py")
    notebook.add_argument("--html", required=True, help="HTML page to write (code hidden, figures embedded)")
    notebook.add_argument("-p", action="append", default=[], metavar="NAME=VALUE", help="notebook parameter")

    store = add("store", cmd_store, "the run store: list runs, show one, say why a run is not stored, retry failed, "
                                    "re-key")
    store.add_argument("action", choices=["list", "show", "why", "retry", "rekey"],
                       help="list [--status S] | show KEY | why --scale NAME [--set h=v] | retry (failed runs) | "
                            "rekey [--dry-run]: move every stored result under the key today's identity rule gives "
                            "it (after an upgrade that changed the rule). It asserts that the stored runs were made "
                            "by code equivalent to the current code: it is for a refactor that moved code, never "
                            "for a change of what the code computes (that must retrain)")
    store.add_argument("key", nargs="?", default=None, help="a run key (for show)")
    store.add_argument("--status", choices=["ok", "diverged", "failed", "in_progress"], default=None)
    store.add_argument("--scale", default=None, help="a scale name (for why)")
    store.add_argument("--dry-run", action="store_true", help="rekey: count what would move, change nothing")

    plan = add("plan", cmd_plan, "dry run: print the study's runs, tokens, estimated GPU-hours and calendar")
    plan.add_argument("--gpus", default=None, metavar="G",
                      help="GPUs the calendar plans for (default: what the study's executor would use here: the "
                           "visible GPUs, or the Ray cluster's; 1 without a GPU)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except ParamsError as error:
        print(f"optsweep: error: {error}", file=sys.stderr)
        return 2
    except FailedRuns as error:
        print(f"optsweep: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("optsweep: interrupted; finished runs are kept in the run store", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
