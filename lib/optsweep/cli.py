"""`optsweep` command line. Each subcommand parses its arguments and calls one library function.

User errors (bad params, arguments or tables) print one line `optsweep: error: ...` and exit with 2,
before any data is prepared or any run is trained.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .config import ParamsError, load_params

DEFAULT_PARAMS = "params/study.yaml"


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def cmd_prepare(args: argparse.Namespace) -> None:
    from .data import ensure_prepared

    params = load_params(args.params, args.set)
    _print_json(ensure_prepared(params, replace=True))  # the study's data follows its params


def cmd_train(args: argparse.Namespace) -> None:
    from .data import ensure_prepared
    from .trainer import DEFAULT_TRAINER, invalid_reason, load_trainer, make_run_spec

    params = load_params(args.params, args.set)
    baseline, _ = params.scale_space(args.scale)
    trainer = load_trainer(params.study.trainer)
    reason = invalid_reason(make_run_spec(params, args.scale, baseline, data=None))
    if reason:
        raise ParamsError(f"{args.params}: {reason}")
    data = ensure_prepared(params) if params.study.trainer == DEFAULT_TRAINER else None
    _print_json(trainer(make_run_spec(params, args.scale, baseline, data)))


def cmd_bench(args: argparse.Namespace) -> None:
    from .bench import run_bench

    params = load_params(args.params, args.set)
    _print_json(run_bench(params, args.scale, steps=args.steps))


def cmd_sweep(args: argparse.Namespace) -> None:
    from .search import run_sweep

    params = load_params(args.params, args.set)
    params.scale(args.scale)
    out = Path(args.out or f"results/sweeps/{args.scale}.json")
    result = run_sweep(params, args.scale, out, sensitivity_path=args.sensitivity)
    loss = "none (every run diverged or failed)" if result["best_loss"] is None else f"{result['best_loss']:.4f}"
    print(f"{args.scale}: best loss {loss} with {result['best']} -> {out}")


def cmd_analyze(args: argparse.Namespace) -> None:
    from .analysis import analyze_table

    params = load_params(args.params) if args.params else None
    written = analyze_table(args.runs_table, Path(args.out), params=params)
    for path in written:
        print(path)


def cmd_predict(args: argparse.Namespace) -> None:
    from .analysis import predict

    if not Path(args.law).is_file():
        raise ParamsError(f"--law {args.law}: file not found (run the scaling_law stage or `optsweep analyze`)")
    try:
        law = json.loads(Path(args.law).read_text())
    except ValueError as error:
        raise ParamsError(f"--law {args.law}: not valid JSON ({error})") from None
    _print_json(predict(law, n_params=args.n_params, tokens=args.tokens, width=args.width))


def cmd_preset(args: argparse.Namespace) -> None:
    from .presets import activate_preset

    print(activate_preset(args.name, Path(args.params)))


def cmd_plan(args: argparse.Namespace) -> None:
    from .presets import print_plan

    print_plan(load_params(args.params, args.set))


def cmd_notebook(args: argparse.Namespace) -> None:
    from .notebook import parse_parameter, run_notebook

    notebook = Path(args.notebook)
    if not notebook.is_file():
        raise ParamsError(f"{notebook}: notebook not found")
    try:
        parameters = dict(parse_parameter(text) for text in args.p)
    except ValueError as error:
        raise ParamsError(str(error)) from None
    print(run_notebook(notebook, Path(args.html), parameters))


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

    add("prepare", cmd_prepare, "build the corpus, tokenizer and token shards named in params")

    train = add("train", cmd_train, "train one run at a scale and print its result JSON")
    train.add_argument("--scale", required=True, help="a scale name from params")

    bench = add("bench", cmd_bench, "tokens/s (and MFU on GPU): our trainer next to a plain HF eager loop")
    bench.add_argument("--scale", default=None, help="a scale name from params (default: the first)")
    bench.add_argument("--steps", type=int, default=20, help="timed optimizer steps per row")

    sweep = add("sweep", cmd_sweep, "coordinate descent over the grid at one scale")
    sweep.add_argument("--scale", required=True, help="a scale name from params")
    sweep.add_argument("--out", default=None, help="result JSON (default results/sweeps/<scale>.json)")
    sweep.add_argument(
        "--sensitivity", default=None,
        help="sensitivity.json: free only the sensitive hyperparameters, fix the rest at their constants",
    )

    analyze = add("analyze", cmd_analyze, "sensitivity and scaling laws from a CSV/Parquet table of runs", False)
    analyze.add_argument("runs_table", help="CSV or Parquet: scale, n_params, tokens, width, hparams, loss")
    analyze.add_argument("--out", required=True, help="folder for sensitivity.json and scaling_law.json")
    analyze.add_argument("--params", default=None, help="params file for the analysis settings (optional)")

    predict = add("predict", cmd_predict, "recommended hyperparameters for N params and D tokens", False)
    predict.add_argument("--n-params", type=_positive_float, required=True, help="non-embedding parameters")
    predict.add_argument("--tokens", type=_positive_float, required=True, help="training tokens")
    predict.add_argument("--width", type=int, default=None, help="model width (for width-based lr rules)")
    predict.add_argument("--law", default="results/scaling_law.json", help="fitted scaling_law.json")

    preset = add("preset", cmd_preset, "make params/presets/NAME.yaml the active params file", False)
    preset.add_argument("name", help="micro, tiny, paper, or any file in params/presets/")
    preset.add_argument("--params", default=DEFAULT_PARAMS, help="the active params file to replace")

    notebook = add("notebook", cmd_notebook, "execute a jupytext notebook with papermill, write its HTML", False)
    notebook.add_argument("notebook", help="a jupytext .py notebook, e.g. notebooks/sweep.py")
    notebook.add_argument("--html", required=True, help="HTML page to write (code hidden, figures embedded)")
    notebook.add_argument("-p", action="append", default=[], metavar="NAME=VALUE", help="notebook parameter")

    add("plan", cmd_plan, "dry run: print the study's runs, tokens and estimated GPU-hours")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except ParamsError as error:
        print(f"optsweep: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("optsweep: interrupted; finished runs are kept in the run store", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
