"""The command line: a thin shell over ``api``. Results go to stdout or files,
diagnostics to stderr; errors are one line and an exit code (0 ok, 1 a check
failed, 2 bad input or usage), never a traceback."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from . import __version__, api, zoo
from .data import parse_normalize
from .errors import CheckFailed, UnsupportedModelError, WhetstoneError
from .native_logs import native_logs_filtered
from .report import guard_message
from .finetune import BATCHNORM_LAYERS, EFFORT_SCALE, MIN_SHIFTED_SIDE, OPTIMIZERS, SHARPENERS, FinetuneOptions


OUTPUT_NAME_HELP = ("the model's class-score output, when it has several (default: the only float tensor "
                    "output of rank 2 or more, e.g. skl2onnx's probabilities beside its labels)")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's default prints usage; one line is the contract
        # prog is "whetstone-onnx" for the main parser, "whetstone-onnx convert" for a command's.
        raise WhetstoneError(f"usage: {message} (see {self.prog} --help)")


def _verbosity_flags() -> argparse.ArgumentParser:
    """--quiet / --verbose, accepted before or after the command. (SUPPRESS: a command's
    parser must not reset a flag given before the command to its default.)"""
    flags = argparse.ArgumentParser(add_help=False)
    group = flags.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                       help="no progress or log output on stderr (errors only)")
    group.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="log what is done on stderr")
    return flags


def build_parser() -> argparse.ArgumentParser:
    flags = _verbosity_flags()
    parser = _Parser(prog="whetstone-onnx", description="Convert trained ONNX classifiers to Whetstone "
                                                        "single-spike networks.", parents=[flags])
    parser.add_argument("--version", action="version", version=f"whetstone-onnx {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_zoo(commands, flags)

    inspect = commands.add_parser("inspect", help="list the model's ops and the planned spiking layers",
                                  description="List the model's ops (supported or not) and the spiking layers "
                                              "convert would build from it; exit 2 when something is not supported.",
                                  parents=[flags])
    inspect.add_argument("model", help="an .onnx file")
    inspect.add_argument("--json", action="store_true", help="print the result as JSON")
    inspect.add_argument("--output-name", metavar="NAME", help=OUTPUT_NAME_HELP)
    inspect.add_argument("--task", choices=api.TASKS,
                         help="plan for this task (default: the one the graph suggests: reconstruct for an output "
                              "as large as the input, else classify)")

    convert = commands.add_parser("convert", help="convert a model; writes sharpenable.onnx, spiking.onnx, "
                                                  "report.json",
                                  description="Convert a trained ONNX classifier into a single-spike network: "
                                              "sharpenable.onnx, spiking.onnx, the netlists and report.json in "
                                              "OUTDIR, written only after every check ran. With --data it is "
                                              "fine-tuned while sharpened. Exit 0 ok, 1 a check failed or the "
                                              "accuracy lost is over --max-loss, 2 bad input.",
                                  parents=[flags])
    convert.add_argument("model", help="an .onnx file")
    convert.add_argument("--output-name", metavar="NAME", help=OUTPUT_NAME_HELP)
    convert.add_argument("-o", "--out", required=True, metavar="OUTDIR", help="output directory")
    convert.add_argument("--data", metavar="SPEC", help="digits | mnist:DIR | npz:FILE")
    convert.add_argument("--normalize", metavar="MEAN,STD", type=_normalize,
                         help="the model expects (x - MEAN) / STD of the data's [0, 1] pixels")
    convert.add_argument("--task", choices=api.TASKS, default="classify",
                         help="what the model is for: classify (default: class labels), reconstruct (an "
                              "autoencoder: the target is its input) or regress (real-valued targets: an npz "
                              "archive's float y_train / y_test); the last two read real values out of the last "
                              "layer and report MSE instead of accuracy")
    convert.add_argument("--levels", type=int, metavar="K",
                         help="binary units per hidden unit (a Dense unit or a convolution channel read by a "
                              "Dense or convolution), with staggered thresholds (a thermometer code of its value: "
                              "K times the neurons there); default for classify: 1 (2 when fine-tuned on fewer "
                              "than 500 samples per class), then 2 and 4 while the held-out samples show a loss "
                              "over --max-loss (with few samples per class, any loss; the best validated kept); "
                              f"{api.REGRESSION_LEVELS} for reconstruct and regress")
    convert.add_argument("--output", choices=api.OUTPUT_MODES, default="auto",
                         help="output stage: a spiking N-hot code, a float readout of the last layer, or "
                              "auto (default): both trained while fine-tuning, the better one on the "
                              "held-out samples kept (N-hot without fine-tuning)")
    convert.add_argument("--key-width", type=int, metavar="K", help="N-hot code width (default 20 x classes)")
    convert.add_argument("--percentile", type=float, default=api.DEFAULT_PERCENTILE, metavar="P",
                         help="calibration: each ReLU layer is scaled by the P-th percentile of its positive "
                              f"activations (default {api.DEFAULT_PERCENTILE:g})")
    convert.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    convert.add_argument("--no-finetune", action="store_true", help="sharpen every layer at once, no training")
    convert.add_argument("--max-loss", type=float, default=api.DEFAULT_MAX_LOSS, metavar="POINTS",
                         help="with --data: fail (exit 1) when the spiking network scores more than POINTS below "
                              f"the original (default {api.DEFAULT_MAX_LOSS:g})")
    convert.add_argument("--max-error-ratio", type=float, default=api.DEFAULT_MAX_ERROR_RATIO, metavar="RATIO",
                         help="--task reconstruct / regress: fail (exit 1) when the spiking network's MSE is more "
                              f"than RATIO times the original's (default {api.DEFAULT_MAX_ERROR_RATIO:g})")
    convert.add_argument("--accept-loss", action="store_true",
                         help="keep a conversion that loses more than --max-loss or --max-error-ratio allow "
                              "(still reported loudly)")
    convert.add_argument("--force", action="store_true",
                         help="replace OUTDIR if it is not empty (it is replaced whole, never mixed)")
    convert.add_argument("--max-elements", type=int, default=api.DEFAULT_MAX_ELEMENTS, metavar="N",
                         help="refuse a network with a per-sample tensor of more than N values "
                              f"(default {api.DEFAULT_MAX_ELEMENTS})")
    convert.add_argument("--max-synapses", type=int, default=api.DEFAULT_MAX_SYNAPSES, metavar="N",
                         help=f"refuse an explicit netlist of more than N synapses (default {api.DEFAULT_MAX_SYNAPSES})")
    check = commands.add_parser("check", help="re-check a convert output: spiking.onnx against model.nir "
                                              "and the explicit netlist, layer by layer",
                                description="Re-check a convert output folder without trusting its report: "
                                            "spiking.onnx against model.nir and the explicit netlist, layer by "
                                            "layer, on the data recorded in report.json or --data; exit 1 when "
                                            "spikes differ beyond threshold ties.", parents=[flags])
    check.add_argument("out_dir", metavar="OUTDIR")
    check.add_argument("--data", metavar="SPEC", help="default: the data recorded in OUTDIR/report.json")
    check.add_argument("--normalize", metavar="MEAN,STD", type=_normalize)
    check.add_argument("--json", action="store_true", help="print the result as JSON")

    netlists = convert.add_argument_group("netlists")
    netlists.add_argument("--nir-profile", choices=("semantic", "portable", "cuba"), default="portable",
                          help="NIR neuron model: Threshold, memoryless LIF (default) or CubaLIF")
    netlists.add_argument("--nir-dt", type=float, default=1e-4, help="time step of the LIF profiles (default 1e-4)")
    netlists.add_argument("--no-netlist", action="store_true", help="write no netlists (model.nir, netlist.*)")
    netlists.add_argument("--weight-bits", type=int, metavar="K",
                          help="quantize the explicit netlist's weights to K bits (accuracy effect reported)")
    netlists.add_argument("--hardware", choices=("loihi", "truenorth", "spinnaker2"),
                          help="design-rule check of the netlist against a chip's limits")
    tuning = convert.add_argument_group("fine-tuning (with --data)")
    defaults = FinetuneOptions()
    tuning.add_argument("--effort", choices=tuple(EFFORT_SCALE), default=defaults.effort,
                        help="training budget, in optimizer steps scaled to the data and the number of layers: "
                             f"quick ({EFFORT_SCALE['quick']:g}x), default, thorough "
                             f"({EFFORT_SCALE['thorough']:g}x) (default {defaults.effort})")
    tuning.add_argument("--epochs", type=int, default=defaults.epochs,
                        help="epochs of training while sharpening (default: from --effort's step budget)")
    tuning.add_argument("--sharpener", choices=SHARPENERS, default=defaults.sharpener,
                        help=f"sharpening schedule (default {defaults.sharpener})")
    tuning.add_argument("--optimizer", choices=OPTIMIZERS, default=defaults.optimizer)
    tuning.add_argument("--learning-rate", type=float, default=defaults.learning_rate,
                        help=f"default {defaults.learning_rate:g}")
    tuning.add_argument("--batch-size", type=int, default=defaults.batch_size,
                        help=f"default {defaults.batch_size}")
    tuning.add_argument("--ste-epochs", type=int, default=defaults.straight_through_epochs,
                        help="most epochs at full sharpness with a straight-through gradient "
                             "(default: from --effort's step budget)")
    tuning.add_argument("--validation", type=float, default=defaults.validation, metavar="SHARE",
                        help="share of the training data held out to choose the epoch kept and stop early "
                             f"(0 to 0.5, default {defaults.validation:g}; 0 keeps the last epoch)")
    tuning.add_argument("--patience", type=int, default=defaults.patience, metavar="EPOCHS",
                        help="stop after this many straight-through epochs without a better validation score "
                             "(default: a quarter of them, at least 3)")
    tuning.add_argument("--weight-average", type=int, default=defaults.weight_average_steps, metavar="STEPS",
                        help="straight-through phase: score and keep the moving average of the weights over "
                             "about STEPS optimizer steps (0: the weights as trained; default: a fifth of "
                             "the phase's steps)")
    tuning.add_argument("--batchnorm", choices=BATCHNORM_LAYERS, default=defaults.batchnorm,
                        help="hidden layers that train with a re-enabled batch norm, folded again after "
                             f"(default {defaults.batchnorm})")
    tuning.add_argument("--shift", type=int, metavar="PIXELS", default=defaults.shift,
                        help="shift training images by up to PIXELS at random each epoch "
                             f"(default 1 for images of at least {MIN_SHIFTED_SIDE} pixels a side, else 0)")
    tuning.add_argument("--distill", type=float, metavar="WEIGHT", default=defaults.distillation,
                        help="weight of the original model's soft class probabilities in the loss, for "
                             "fine-tuning data fewer than the model was trained on (0 to 1, default 0)")
    convert.set_defaults(tuning_flags=[(action.dest, action.option_strings[0], action.default)
                                       for action in tuning._group_actions])
    return parser


def _add_zoo(commands, flags: argparse.ArgumentParser) -> None:
    parser = commands.add_parser("zoo", help="convert every model of a manifest, each in its own process; "
                                          "writes OUTDIR/<model>/ and OUTDIR/summary.json, summary.md",
                              description="Convert every model a TOML manifest (or a folder of .onnx files) "
                                          "lists, each in its own process, into OUTDIR/<model>/, with "
                                          "OUTDIR/summary.json and summary.md; exit 1 when any model did not "
                                          "convert.", parents=[flags])
    parser.add_argument("manifest", metavar="MANIFEST", help="a TOML manifest, or a directory of .onnx files")
    parser.add_argument("-o", "--out", required=True, metavar="OUTDIR", help="output directory")
    parser.add_argument("--jobs", type=int, default=1, metavar="N", help="models converted at once (default 1)")
    parser.add_argument("--resume", action="store_true",
                     help="skip models whose file, options and package version are unchanged since the last run")
    parser.add_argument("--executor", choices=zoo.EXECUTORS, default="local",
                     help="local worker processes (default) or a Dask cluster")
    parser.add_argument("--scheduler", metavar="ADDRESS",
                     help="Dask scheduler, e.g. tcp://host:8786 (default: start a local cluster of --jobs workers)")
    parser.add_argument("--fail-fast", action="store_true", help="start no more models after the first failure")
    parser.add_argument("--timeout", type=float, default=zoo.DEFAULT_TIMEOUT_S, metavar="SECONDS",
                     help=f"per-model time limit (default {zoo.DEFAULT_TIMEOUT_S:g})")
    parser.add_argument("--memory-limit", type=int, metavar="MB", help="per-model address-space limit")


def _normalize(text: str):
    return parse_normalize(text)


def _configure_logging(args) -> None:
    """Logs go to stderr only; results go to stdout and files."""
    level = logging.ERROR if getattr(args, "quiet", False) else \
        logging.INFO if getattr(args, "verbose", False) else logging.WARNING
    logging.basicConfig(stream=sys.stderr, level=level, format="whetstone-onnx: %(message)s")


def main(argv: list[str] | None = None) -> int:
    args = None
    try:
        args = build_parser().parse_args(argv)
        _configure_logging(args)
        if getattr(args, "verbose", False):
            return _COMMANDS[args.command](args)
        with native_logs_filtered():
            return _COMMANDS[args.command](args)
    except WhetstoneError as exc:
        print(f"whetstone-onnx: error: {_naming_the_file(exc.message, args)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("whetstone-onnx: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader left early (`inspect --json | head`): nothing more to say, and Python must
        # not complain again while flushing stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _naming_the_file(message: str, args) -> str:
    """The message with the file or folder the command works on in front, unless it names it
    already or is about an option (a problem found deep in the conversion knows the layer, not
    the file)."""
    subject = getattr(args, "model", None) or getattr(args, "out_dir", None) or getattr(args, "manifest", None)
    output = getattr(args, "out", None)          # a problem with the output folder names that folder
    if subject is None or str(subject) in message or message.startswith(("--", "usage:")) \
            or (output is not None and message.startswith(f"{output}:")):
        return message
    return f"{subject}: {message}"


def _inspect(args) -> int:
    result = api.inspect(args.model, output_name=args.output_name, task=args.task)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(f"{result.source}: opset {result.opset}")
        if result.suggested_task is not None:
            print(f"task: {result.task}" + (" (suggested by the graph; --task to choose)" if args.task is None
                                              else f" (the graph suggests {result.suggested_task})"))
        for op, info in result.ops.items():
            print(f"  {op:<22} x{info['count']:<4} {'supported' if info['supported'] else 'UNSUPPORTED'}")
        if result.layers:
            print("planned layers:")
            for row in result.layers:
                role = f"  [{row['role']}]" if "role" in row else ""
                if "approximated" in row:
                    role += f"  approximates {row['replaces']}"
                shapes = row["input_shape"] if "input_shape" in row else " + ".join(map(str, row["input_shapes"]))
                reads = f"  (reads {', '.join(row['inputs'])})" if "inputs" in row else ""
                print(f"  {row['name']:<28} {row['kind']:<12} {shapes} -> {row['output_shape']}{role}{reads}")
    if not result.supported:
        raise UnsupportedModelError(result.error())
    return 0


def _convert(args) -> int:
    if args.key_width is not None and args.key_width < 1:
        raise WhetstoneError(f"--key-width {args.key_width}: must be a positive integer")
    given = [flag for dest, flag, default in args.tuning_flags if getattr(args, dest) != default]
    if given and (args.data is None or args.no_finetune):
        raise WhetstoneError(f"{', '.join(given)}: fine-tuning options, but "
                             + ("no --data was given to fine-tune on" if args.data is None else "--no-finetune was given"))
    recipe = FinetuneOptions(effort=args.effort, epochs=args.epochs, sharpener=args.sharpener,
                             optimizer=args.optimizer, learning_rate=args.learning_rate,
                             batch_size=args.batch_size, seed=args.seed, straight_through_epochs=args.ste_epochs,
                             batchnorm=args.batchnorm, shift=args.shift, distillation=args.distill,
                             validation=args.validation, patience=args.patience,
                             weight_average_steps=args.weight_average)
    options = api.ConvertOptions(normalize=args.normalize, output=args.output, key_width=args.key_width,
                                 seed=args.seed, finetune=False if args.no_finetune else recipe,
                                 calibration_percentile=args.percentile,
                                 progress=not getattr(args, "quiet", False), netlist=not args.no_netlist,
                                 nir_profile=args.nir_profile, nir_dt=args.nir_dt, weight_bits=args.weight_bits,
                                 hardware=args.hardware, max_loss=args.max_loss,
                                 max_error_ratio=args.max_error_ratio, accept_loss=args.accept_loss, task=args.task,
                                 levels=args.levels,
                                 output_name=args.output_name, force=args.force, max_elements=args.max_elements,
                                 max_synapses=args.max_synapses)
    result = api.convert_with_options(args.model, args.out, data=args.data, options=options)
    print(result.summary())
    netlist_files = ["model.nir", *api.NETLIST_FILES] if not args.no_netlist else []
    written = ["sharpenable.onnx", "spiking.onnx", *netlist_files, "report.json"] + \
        (["training.png"] if result.report["finetune"]["performed"] else []) + \
        (["reconstructions.png"] if "reconstructions.png" in result.report["artifacts"] else [])
    print(f"\nwrote {', '.join(f'{args.out}/{name}' for name in written)}")
    if not result.passed:
        raise CheckFailed(f"{args.model}: equivalence check failed (see {args.out}/report.json)")
    if not result.accuracy_ok:
        raise CheckFailed(f"{guard_message(args.model, result.report)} (see {args.out}/report.json; "
                          "--accept-loss keeps it)")
    return 0


def _check(args) -> int:
    result = api.check_outputs(args.out_dir, data=args.data, normalize=args.normalize)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.summary())
    if not result.passed:
        raise CheckFailed(f"{args.out_dir}: spikes differ beyond threshold ties")
    return 0


def _zoo(args) -> int:
    result = zoo.convert_zoo(args.manifest, args.out, jobs=args.jobs, resume=args.resume,
                             executor=args.executor, scheduler=args.scheduler, fail_fast=args.fail_fast,
                             timeout=args.timeout, memory_limit=args.memory_limit,
                             progress=not getattr(args, "quiet", False))
    print(result.table())
    print(f"\nwrote {args.out}/summary.json, {args.out}/summary.md")
    if not result.passed:
        failed = result.summary["total"] - result.counts["ok"]
        print(f"whetstone-onnx: error: {failed} of {result.summary['total']} models did not convert, or lost "
              f"more accuracy than allowed (see {args.out}/summary.md)", file=sys.stderr)
    return result.exit_code


_COMMANDS = {"inspect": _inspect, "convert": _convert, "check": _check, "zoo": _zoo}

if __name__ == "__main__":
    sys.exit(main())
