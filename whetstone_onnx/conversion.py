"""The conversion pipeline: a short list of named stages over one typed state.

    load -> passes -> float_check -> sharpen -> netlist_forms -> finetune -> emit -> netlist
         -> spike_check -> accuracy

Each stage reads what earlier stages put in the ``Conversion`` and adds its own
results; ``run`` times each one. Nothing here writes to the user's output folder
(``api.convert`` does, once every check has run); the report is assembled from the
finished state by ``report.conversion_report``.
"""
from __future__ import annotations

import copy
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from . import check, runtime
from .data import Dataset, check_dataset, fit_to_input, load_dataset
from .emit import pool_before_steps, to_onnx
from .errors import DataError, InputError, UnsupportedModelError
from .finetune import FinetuneOptions, FinetuneResult, validation_split
from .finetune import finetune as run_finetune
from .lift import lift
from .load import LoadedModel, load_model
from .netlist.explicit import HEADER_FILE, NEURONS_FILE, SYNAPSES_FILE
from .netlist.hardware import PRESETS as HARDWARE_PRESETS
from .netlist.nir_export import DEFAULT_DT, PROFILES, to_nir
from .network import Network
from .ops.activation import Sharpenable, Spike
from .ops.dense import Dense
from .network_passes.activations import activations_before_pooling, approximated_activations, replace_activations
from .network_passes.calibrate import DEFAULT_PERCENTILE, calibrate_scales
from .onnx_passes.normalisers import REMOVED_NORMALISER
from .network_passes.branches import untangle_branches
from .network_passes.output_stage import (OUTPUT_MODES, conv_head_to_dense, make_output_stage,
                                           make_regression_output, split_readout_tail)
from .onnx_passes.pipeline import run_onnx_passes, unsupported_nodes
from .network_passes.step_network import to_step_network
from .report import DEFAULT_MAX_LOSS
from .network_passes.levels import MAX_LEVELS, expand_levels
from .tasks import (DEFAULT_MAX_ERROR_RATIO, TASKS, default_levels, image_peak, is_regression, regression_metrics,
                    targets)

CALIBRATION_SAMPLES = 1000
# Levels tried in turn for a classifier converted without --levels (choose_levels), from the
# first one (first_levels) up.
LEVEL_LADDER = (1, 2, 4)
# A classifier fine-tuned on fewer training samples per class than this starts at two levels
# (first_levels): binarisation takes information away and fine-tuning relearns it from data.
FEW_SAMPLES_PER_CLASS = 500
NETLIST_FILES = (SYNAPSES_FILE, NEURONS_FILE, HEADER_FILE)   # header last: it vouches for the others
RANDOM_CHECK_SAMPLES = 256
# Size guards (ConvertOptions.max_elements / max_synapses): an ImageNet-sized conv layer has a few
# million values per sample; the netlist's records take 12 bytes per synapse.
DEFAULT_MAX_ELEMENTS = 1 << 24
DEFAULT_MAX_SYNAPSES = 1 << 31


@dataclass
class ConvertOptions:
    """Every choice ``convert`` leaves to the user but the model, the data and the output folder.
    See ``api.convert`` for what each one does."""
    normalize: tuple[float, float] | None = None
    task: str = "classify"                          # tasks.TASKS
    levels: int | None = None                       # binary units per hidden unit; None: tasks.default_levels
    output: str = "auto"
    key_width: int | None = None
    seed: int = 0
    finetune: bool | FinetuneOptions = True
    calibration_percentile: float = DEFAULT_PERCENTILE
    progress: bool = False
    netlist: bool = True
    nir_profile: str = "portable"
    nir_dt: float = DEFAULT_DT
    weight_bits: int | None = None
    hardware: str | None = None
    max_loss: float = DEFAULT_MAX_LOSS
    max_error_ratio: float = DEFAULT_MAX_ERROR_RATIO  # regression: spiking MSE / original MSE allowed
    accept_loss: bool = False
    model_dir: str | Path | None = None
    output_name: str | None = None
    force: bool = False          # replace a non-empty output folder
    # Size guards, checked on the static shapes before anything is allocated or expanded:
    max_elements: int = DEFAULT_MAX_ELEMENTS       # of any per-sample tensor of the network
    max_synapses: int = DEFAULT_MAX_SYNAPSES       # of the explicit netlist (candidates, before zeros go)

    def validate(self) -> None:
        """``InputError`` naming the first option out of range, before any work."""
        if self.task not in TASKS:
            raise InputError(f"--task {self.task!r}: expected one of {', '.join(TASKS)}")
        if is_regression(self.task) and self.output != "auto":
            raise InputError(f"--output {self.output}: a classifier's output stage; --task {self.task} reads "
                             "real values out of the last layer")
        if is_regression(self.task) and self.finetune and self.finetune_options.distillation:
            raise InputError(f"--distill: distils class probabilities, not --task {self.task}")
        if not (math.isfinite(self.max_error_ratio) and self.max_error_ratio >= 1.0):
            raise InputError(f"--max-error-ratio {self.max_error_ratio}: expected a ratio of at least 1")
        if self.levels is not None and not 1 <= self.levels <= MAX_LEVELS:
            raise InputError(f"--levels {self.levels}: expected 1 to {MAX_LEVELS}")
        if not 0.0 < self.calibration_percentile <= 100.0:
            raise InputError(f"calibration percentile {self.calibration_percentile}: must be in (0, 100]")
        if self.output not in OUTPUT_MODES:
            raise InputError(f"--output {self.output!r}: expected one of {', '.join(OUTPUT_MODES)}")
        if self.nir_profile not in PROFILES:
            raise InputError(f"--nir-profile {self.nir_profile!r}: expected one of {', '.join(PROFILES)}")
        if self.hardware is not None and self.hardware not in HARDWARE_PRESETS:
            raise InputError(f"--hardware {self.hardware!r}: expected one of {', '.join(HARDWARE_PRESETS)}")
        if self.weight_bits is not None and not 2 <= self.weight_bits <= 16:
            raise InputError(f"--weight-bits {self.weight_bits}: expected 2 to 16")
        if not (math.isfinite(self.nir_dt) and self.nir_dt > 0.0):
            raise InputError(f"--nir-dt {self.nir_dt}: must be a positive time step (seconds)")
        if self.max_elements < 1 or self.max_synapses < 1:
            raise InputError(f"--max-elements {self.max_elements} / --max-synapses {self.max_synapses}: must be "
                             "positive")
        if not 0.0 <= self.max_loss <= 100.0:
            raise InputError(f"--max-loss {self.max_loss}: expected 0 to 100 points")
        if self.finetune:
            self.finetune_options.validate()

    @property
    def finetune_options(self) -> FinetuneOptions:
        return self.finetune if isinstance(self.finetune, FinetuneOptions) else FinetuneOptions(seed=self.seed)


@dataclass
class Conversion:
    """What the stages know about one conversion, filled in stage by stage."""
    model: object                                   # what the user gave: a path, bytes or a ModelProto
    data: str | Dataset | None
    options: ConvertOptions
    out_dir: Path | None = None                     # the output's staging folder, if there is an output
    timings: dict[str, float] = field(default_factory=dict)
    # load
    loaded: LoadedModel | None = None
    dataset: Dataset | None = None
    # passes
    float_network: Network | None = None
    onnx_counts: dict[str, int] = field(default_factory=dict)
    normaliser: str | None = None                   # the output Softmax / LogSoftmax the passes removed
    train: np.ndarray | None = None                 # inputs fitted to the model (random without data)
    test: np.ndarray | None = None
    y_train: np.ndarray | None = None               # the task's targets (tasks.targets), with data
    y_test: np.ndarray | None = None
    rng: np.random.Generator | None = None
    calibration: np.ndarray | None = None
    # float_check
    float_model: onnx.ModelProto | None = None
    float_check: check.FloatCheck | None = None
    # sharpen
    levels: int | None = None                       # binary units per hidden unit (network_passes/levels.py)
    first_levels_reason: str | None = None          # why sharpen started with these levels (first_levels)
    sharpenable: Network | None = None
    network_counts: dict[str, int] = field(default_factory=dict)
    approximated: list[dict] = field(default_factory=list)
    readout: Dense | None = None                    # the float readout trained beside the N-hot code ("auto")
    initial_model: onnx.ModelProto | None = None
    start_sharpness: list[float] = field(default_factory=list)
    start_agreement: float | None = None
    # finetune
    finetune_report: dict = field(default_factory=dict)
    levels_report: dict | None = None               # choose_levels: the levels tried and why they stopped
    tuned: FinetuneResult | None = None
    trained: Network | None = None
    # emit
    sharpenable_model: onnx.ModelProto | None = None
    spiking: Network | None = None
    spiking_model: onnx.ModelProto | None = None
    # netlist
    nir_graph: object = None
    nir_check: check.NetlistCheck | None = None
    staging: tempfile.TemporaryDirectory | None = None   # the explicit netlist's files when there is no output
    netlist_report: dict | None = None
    netlist_check: check.NetlistCheck | None = None
    # spike_check, accuracy
    spike_check: check.SpikeCheck | None = None
    pooling_check: dict | None = None               # spiking.onnx's pooling order (check.check_pooling_order)
    accuracy: dict[str, float] | None = None         # classify
    metrics: dict[str, dict[str, float]] | None = None   # reconstruct, regress: graph -> {"mse", "psnr_db"}

    @property
    def doc(self) -> str:
        return f"whetstone_onnx graph of {Path(self.loaded.source).name} (sha256 {self.loaded.sha256[:16]})"


def load(c: Conversion) -> None:
    c.loaded = load_model(c.model, c.options.model_dir, c.options.output_name)
    unsupported = unsupported_nodes(c.loaded.model)
    if unsupported:
        raise UnsupportedModelError.for_ops(c.loaded.source, unsupported)
    c.dataset = load_dataset(c.data, c.options.task == "regress") if isinstance(c.data, str) else c.data
    if c.dataset is not None:
        check_dataset(c.dataset)


def passes(c: Conversion) -> None:
    c.float_network, c.onnx_counts, c.normaliser = float_network(c.loaded)
    _check_size(c.float_network, c.options.max_elements, c.loaded.source)
    output_shape = c.float_network.shapes()[-1]
    task = c.options.task
    if c.dataset is not None and len(output_shape) == 1 and task == "classify":
        check_dataset(c.dataset, classes=output_shape[0])
    c.train, c.test, c.rng = fitted_inputs(c.dataset, c.float_network, c.options.normalize, c.options.seed)
    if c.dataset is not None:
        c.y_train, c.y_test = (targets(task, labels, x, output_shape, c.dataset.spec)
                               for labels, x in ((c.dataset.y_train, c.train), (c.dataset.y_test, c.test)))
    c.calibration = c.train[c.rng.permutation(len(c.train))[:CALIBRATION_SAMPLES]]


def float_check(c: Conversion) -> None:
    c.float_model = to_onnx(c.float_network, graph_name="float")
    c.float_check = check.check_float(c.loaded.model, c.float_model, c.normaliser, _check_inputs(c.test, c.rng))


def sharpen(c: Conversion) -> None:
    options = c.options
    first = c.levels is None
    if first:
        c.levels, c.first_levels_reason = (options.levels, "--levels") if options.levels else first_levels(c)
    c.sharpenable = c.float_network.copy()
    regression = is_regression(options.task)
    if regression and c.normaliser:
        raise UnsupportedModelError(f"{c.loaded.source}: the output ends in a {c.normaliser}, a classifier's "
                                    f"class probabilities: --task {options.task} reads real values")
    tail = split_readout_tail(c.sharpenable) if regression else []
    c.network_counts, calibrated = sharpenable_passes(c.sharpenable, c.calibration, options.calibration_percentile)
    c.approximated = approximated_activations(c.sharpenable)
    c.network_counts["expand_levels"] = expand_levels(c.sharpenable, c.levels)
    if c.levels > 1 and not c.network_counts["expand_levels"] and options.levels is None:
        c.levels = 1        # (a network that came in spiking: its steps take no copies)
        if first:
            c.first_levels_reason += "; no hidden unit can take more levels"
    if regression:
        c.network_counts["make_regression_output"] = make_regression_output(c.sharpenable, tail)
        _start(c)
        return
    # "auto": fine-tuning trains an N-hot code and a readout side by side and keeps the one
    # that validates better. With nothing to validate on, the N-hot code, unless the model
    # is already sharpened (a Whetstone graph, such as a readout this converter wrote).
    choose_output = options.output == "auto" and bool(options.finetune) and c.dataset is not None \
        and options.finetune_options.validation > 0 and isinstance(c.sharpenable.layers[-1], Dense)
    c.readout = copy.deepcopy(c.sharpenable.layers[-1]) if choose_output else None
    sharpened = any(layer.sharpness > 0 for layer in c.sharpenable.layers if isinstance(layer, Sharpenable))
    stage = options.output if options.output != "auto" else "readout" if sharpened and not choose_output else "nhot"
    c.network_counts["make_output_stage"] = make_output_stage(c.sharpenable, stage, calibrated.outputs,
                                                              key_width=options.key_width, seed=options.seed)
    _start(c)
    c.start_agreement = check.class_agreement(c.loaded.model, c.initial_model, c.test)


def _start(c: Conversion) -> None:
    """The sharpenable network before training, as ONNX, and its layers' sharpness."""
    c.initial_model = to_onnx(c.sharpenable, graph_name="sharpenable", doc=c.doc)
    # Per layer: 0 for a converted model; a Whetstone Keras model's export keeps the sharpness it had.
    c.start_sharpness = [layer.sharpness for layer in c.sharpenable.layers if isinstance(layer, Sharpenable)]


def netlist_forms(c: Conversion) -> None:
    """Before any training: the network must have the netlist forms asked for, or the conversion
    stops now rather than after fine-tuning (the layers' kinds, pads and order are what decide,
    and training changes none of them). Levels first_levels chose that would not fit fall back
    to the task's default."""
    try:
        _check_netlist_forms(c)
    except InputError as error:
        default = default_levels(c.options.task)
        if c.options.levels is not None or c.levels == default:
            raise
        c.first_levels_reason += f"; {c.levels} levels would not fit: {error.message}"
        c.levels = default
        sharpen(c)
        _check_netlist_forms(c)


def _check_netlist_forms(c: Conversion) -> None:
    if not c.options.netlist:
        return
    from .netlist.explicit import plan_netlist

    step_network = emit_trained(c.sharpenable, c.doc)[1]
    to_nir(step_network, profile=c.options.nir_profile, dt=c.options.nir_dt)
    synapses = sum(projection.candidates for projection in plan_netlist(step_network).projections)
    if synapses > c.options.max_synapses:
        raise InputError(f"{c.loaded.source}: the explicit netlist would hold up to {synapses} synapses, more than "
                         f"the limit of {c.options.max_synapses} (--max-synapses raises it; --no-netlist skips it)")


def finetune(c: Conversion) -> None:
    options = c.options
    c.finetune_report = {"requested": bool(options.finetune), "performed": False}
    c.trained = c.sharpenable
    if options.finetune and c.dataset is None:
        c.finetune_report["reason"] = "no --data given: layers were sharpened at once"
    elif not options.finetune:
        c.finetune_report["reason"] = "--no-finetune: layers were sharpened at once"
    else:
        _finetune_sharpenable(c)
        if options.levels is None and options.task == "classify" and c.tuned.validation:
            choose_levels(c)


def _finetune_sharpenable(c: Conversion) -> None:
    options = c.options
    recipe = options.finetune_options
    teacher = runtime.batch_function(c.float_model) if recipe.distillation else None
    c.tuned = run_finetune(c.sharpenable, c.train, c.y_train, c.test, c.y_test, recipe,
                           progress=options.progress, teacher=teacher, readout=c.readout,
                           regression=is_regression(options.task))
    c.trained = c.tuned.network
    c.finetune_report = {"requested": True, "performed": True, "options": asdict(c.tuned.options),
                         "reached_full_sharpness": c.tuned.reached_full_sharpness,
                         "validation": c.tuned.validation, "history": c.tuned.history}


def samples_per_class(c: Conversion) -> float | None:
    """Training samples per class of a classifier that is fine-tuned; None for any other conversion."""
    if c.options.task != "classify" or not c.options.finetune or c.dataset is None:
        return None
    return len(c.y_train) / max(1, c.dataset.num_classes)


def first_levels(c: Conversion) -> tuple[int, str]:
    """The levels a conversion without ``--levels`` starts with, and why: tasks.default_levels, but
    two for a classifier fine-tuned on fewer than FEW_SAMPLES_PER_CLASS training samples per
    class. One bit per hidden unit loses what fine-tuning must relearn from the data, and few
    samples cannot teach it back; the held-out samples cannot show that loss either, since the
    original was trained on them and scores ~100 % there (docs/pipeline.md, "Few samples per
    class start at two levels", has the figures)."""
    per_class = samples_per_class(c)
    if per_class is None:
        return default_levels(c.options.task), "the default"
    if per_class >= FEW_SAMPLES_PER_CLASS:
        return default_levels(c.options.task), f"{per_class:.0f} training samples per class"
    return LEVEL_LADDER[1], f"{per_class:.0f} training samples per class, fewer than {FEW_SAMPLES_PER_CLASS}"


# What sharpen and fine-tuning decide for one number of levels (choose_levels keeps the best).
_LEVELS_STATE = ("levels", "sharpenable", "network_counts", "approximated", "readout", "initial_model",
                 "start_sharpness", "start_agreement", "tuned", "trained", "finetune_report")


def choose_levels(c: Conversion) -> None:
    """A classifier converted without ``--levels``: while the spiking network scores more than
    ``--max-loss`` points below the original on the held-out training samples (a loss the
    accuracy guard would refuse), sharpen and fine-tune again from the float network with the
    next number of levels in ``LEVEL_LADDER`` above the first (first_levels); the network
    written is the one that scored best there (among equals the fewest levels; with few samples
    per class the most, below). One bit per unit is too little for some narrow networks:
    digits_conv (8 channels on an 8 x 8 image) scores 93.7 % there with one level, 99.3 % with
    two, and 93.1 -> 96.7 % on the test split.
    Fine-tuned on fewer than FEW_SAMPLES_PER_CLASS samples per class, any shortfall counts,
    and more levels that score as well are kept: there the held-out samples hide most of the
    loss (the networks learnt them) and cannot rank what the test split tells apart
    (digits_conv: 99.3 % held out with two levels and with four, 96.94 and 97.50 % on the test
    split; the original 97.50 %)."""
    recipe = c.options.finetune_options
    held = validation_split(c.y_train, recipe.validation, recipe.seed)[1]
    original = float(np.mean(runtime.predict(c.float_model, c.train[held]).argmax(1) == c.y_train[held]))
    tried = [{"levels": c.levels, "validation_accuracy": c.tuned.validation["accuracy"]}]
    best = {name: getattr(c, name) for name in _LEVELS_STATE}
    few = samples_per_class(c) < FEW_SAMPLES_PER_CLASS
    allowed = 0.0 if few else c.options.max_loss
    reason = "every number of levels in the ladder was tried"
    for levels in (levels for levels in LEVEL_LADDER if levels > c.levels):
        if 100 * (original - best["tuned"].validation["accuracy"]) <= allowed:
            reason = ("level with the original on the held-out samples (few samples per class)" if few else
                      "within --max-loss points of the original on the held-out samples")
            break
        c.levels = levels
        sharpen(c)
        if not c.network_counts["expand_levels"]:
            reason = "no hidden unit can take more levels (network_passes/levels.py)"
            break
        try:
            _check_netlist_forms(c)
        except (InputError, UnsupportedModelError) as error:    # (too many synapses, say: the fewer levels stay)
            reason = f"{levels} levels would not fit: {error.message}"
            break
        _finetune_sharpenable(c)
        tried.append({"levels": levels, "validation_accuracy": c.tuned.validation["accuracy"]})
        score, best_score = c.tuned.validation["accuracy"], best["tuned"].validation["accuracy"]
        if score > best_score or (few and score == best_score):
            best = {name: getattr(c, name) for name in _LEVELS_STATE}
    for name, value in best.items():
        setattr(c, name, value)
    c.levels_report = {"first": tried[0]["levels"], "first_reason": c.first_levels_reason, "chosen": c.levels,
                       "original_validation_accuracy": round(original, 6),
                       "max_loss_points": c.options.max_loss, "tried": tried, "reason": reason}


def emit(c: Conversion) -> None:
    c.sharpenable_model, c.spiking, layered = emit_trained(c.trained, c.doc)
    c.spiking_model, c.network_counts["pool_before_steps"] = pool_before_steps(layered)
    c.network_counts["to_step_network"] = sum(isinstance(layer, Spike) for layer in c.spiking.layers)


def netlist(c: Conversion) -> None:
    options = c.options
    if not options.netlist:
        return
    c.nir_graph = to_nir(c.spiking, profile=options.nir_profile, dt=options.nir_dt)
    c.nir_check = check.check_nir(c.spiking_model, c.nir_graph, c.test)
    # The explicit netlist is streamed to files and checked from there: into the output's
    # staging folder, or without one a temporary folder (which removes itself however the
    # conversion ends).
    if c.out_dir is None:
        c.staging = tempfile.TemporaryDirectory(prefix="whetstone_netlist_")
    where = c.out_dir if c.out_dir is not None else Path(c.staging.name)
    c.netlist_report, c.netlist_check = _explicit_netlist(c.spiking, c.spiking_model, where, c.test,
                                                          c.y_test, options.weight_bits, options.hardware,
                                                          image_peak(options.task, c.y_test) if c.y_test is not None
                                                          else None)


def spike_check(c: Conversion) -> None:
    c.spike_check = check.check_spiking(c.spiking, c.test)
    c.pooling_check = check.check_pooling_order(c.spiking_model, c.test)
    if c.tuned is not None:
        compare = keras_vs_spiking_values if c.spiking.regression else keras_vs_spiking_onnx
        c.finetune_report["keras_vs_spiking_onnx"] = compare(c.tuned.keras_spiking_predictions, c.spiking_model,
                                                             c.test)


def accuracy(c: Conversion) -> None:
    if c.dataset is None:
        return
    models = (("original", c.loaded.model), ("float", c.float_model), ("sharpenable_start", c.initial_model),
              ("sharpenable", c.sharpenable_model), ("spiking", c.spiking_model))
    if c.spiking.regression:
        peak = image_peak(c.options.task, c.y_test)
        c.metrics = {name: regression_metrics(runtime.predict(model, c.test), c.y_test, peak)
                     for name, model in models}
    else:
        c.accuracy = {name: _accuracy(model, c.test, c.y_test) for name, model in models}


STAGES: list[tuple[str, Callable[[Conversion], None]]] = [
    ("load", load), ("passes", passes), ("float_check", float_check), ("sharpen", sharpen),
    ("netlist_forms", netlist_forms), ("finetune", finetune), ("emit", emit), ("netlist", netlist),
    ("spike_check", spike_check), ("accuracy", accuracy),
]


def _check_size(network: Network, max_elements: int, source: str) -> None:
    """``InputError`` for a network with a per-sample tensor larger than ``max_elements``: every
    stage holds batches of such tensors (calibration, checks, training)."""
    shapes = [tuple(network.input_shape)] + network.shapes()
    largest = max(range(len(shapes)), key=lambda i: math.prod(shapes[i]))
    if math.prod(shapes[largest]) > max_elements:
        where = "the input" if largest == 0 else f"the output of '{network.layers[largest - 1].name}'"
        raise InputError(f"{source}: {where} has {math.prod(shapes[largest])} values per sample "
                         f"{list(shapes[largest])}, more than the limit of {max_elements} (--max-elements raises it)")


def run(conversion: Conversion) -> Conversion:
    """Every stage in order, each timed into ``conversion.timings`` (stages that had nothing to
    do, such as fine-tuning without data, are not listed)."""
    for name, stage in STAGES:
        start = time.perf_counter()
        stage(conversion)
        if _did_work(name, conversion):
            conversion.timings[name] = time.perf_counter() - start
    return conversion


def _did_work(stage: str, c: Conversion) -> bool:
    return {"netlist_forms": c.options.netlist, "finetune": c.tuned is not None, "netlist": c.nir_graph is not None,
            "accuracy": c.dataset is not None}.get(stage, True)


# ----------------------------------------------------------------------------- shared with inspect

def float_network(loaded: LoadedModel) -> tuple[Network, dict[str, int], str | None]:
    model, counts = run_onnx_passes(loaded.model)
    # (A Softmax that ends a recognised N-hot decode stays part of it.)
    return lift(model), counts, model.graph.meta.get(REMOVED_NORMALISER)


def sharpenable_passes(network: Network, calibration: np.ndarray, percentile: float):
    """The network passes that make a float network sharpenable, in order, up to the output stage:
    (rewrites per pass, the calibration's result)."""
    counts = {
        "untangle_branches": untangle_branches(network),
        "conv_head_to_dense": conv_head_to_dense(network),
        "activations_before_pooling": activations_before_pooling(network),
        "replace_activations": replace_activations(network),
    }
    calibrated = calibrate_scales(network, calibration, percentile)
    counts["calibrate_scales"] = calibrated.scaled_layers
    return counts, calibrated


def fitted_inputs(dataset: Dataset | None, network: Network, normalize, seed: int):
    """(train inputs, test inputs, rng) fitted to the model; random inputs without data."""
    rng = np.random.default_rng(seed)
    if dataset is None:
        if normalize is not None:
            raise DataError("--normalize needs --data")
        random = rng.standard_normal((2 * RANDOM_CHECK_SAMPLES, *network.input_shape)).astype(np.float32)
        return random[:RANDOM_CHECK_SAMPLES], random[RANDOM_CHECK_SAMPLES:], rng
    train = fit_to_input(dataset.x_train, network.input_shape, normalize, spec=dataset.spec)
    test = fit_to_input(dataset.x_test, network.input_shape, normalize, spec=dataset.spec)
    return train, test, rng


def emit_trained(trained: Network, doc: str) -> tuple[onnx.ModelProto, Network, onnx.ModelProto]:
    """(sharpenable model, step network, spiking model) of a trained sharpenable network."""
    sharpenable_model = to_onnx(trained, graph_name="sharpenable", doc=doc)
    spiking = trained.copy()
    for layer in spiking.layers:
        if isinstance(layer, Sharpenable):
            layer.sharpness = 1.0
    to_step_network(spiking)
    return sharpenable_model, spiking, to_onnx(spiking, graph_name="spiking", doc=doc)


# ----------------------------------------------------------------------------- helpers

def _check_inputs(test: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Real inputs plus random ones, so the float check also covers off-distribution values."""
    random = rng.standard_normal((min(len(test), RANDOM_CHECK_SAMPLES), *test.shape[1:])).astype(np.float32)
    return np.concatenate([test, random])


def keras_vs_spiking_onnx(keras_predictions: np.ndarray, spiking_model: onnx.ModelProto, x: np.ndarray) -> dict:
    """How often the Keras model at sharpness 1 and ``spiking.onnx`` predict the same class (first 100 differences)."""
    differences = np.flatnonzero(runtime.predict(spiking_model, x).reshape(len(x), -1).argmax(1) != keras_predictions)
    return {"samples": len(x), "agreement": float(1.0 - len(differences) / len(x)),
            "differences": differences[:100].tolist()}


def keras_vs_spiking_values(keras_outputs: np.ndarray, spiking_model: onnx.ModelProto, x: np.ndarray) -> dict:
    """How far the Keras model at sharpness 1 and ``spiking.onnx`` compute apart (real-valued outputs)."""
    return {"samples": len(x), **check.compare_values(runtime.predict(spiking_model, x), keras_outputs)}


def _accuracy(model: onnx.ModelProto, x: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(runtime.predict(model, x).reshape(len(x), -1).argmax(1) == labels))


def _explicit_netlist(spiking: Network, spiking_model: onnx.ModelProto, directory: Path, test: np.ndarray,
                      y_test: np.ndarray | None, weight_bits: int | None, hardware: str | None,
                      peak: float | None):
    """Write the explicit netlist into ``directory``, check and measure it: (report entry, check or None)."""
    from .netlist.explicit import read_netlist, write_netlist
    from .netlist.hardware import check_hardware
    from .netlist.sim import simulate_netlist

    stats = write_netlist(spiking, directory, weight_bits=weight_bits)
    netlist = read_netlist(directory)
    simulated = simulate_netlist(netlist, test, keep_outputs=False)
    operations = spiking.macs()
    entry = {"explicit": {"files": list(NETLIST_FILES), "weight_bits": weight_bits, "stats": stats.to_dict()},
             "synops_per_inference": simulated.synops, "macs_per_inference": operations,
             "synops_per_mac": simulated.synops / operations if operations else None,
             "spike_rates": simulated.spike_rate,
             "hardware": None if hardware is None else check_hardware(stats, HARDWARE_PRESETS[hardware])}
    if y_test is not None and spiking.regression:
        entry["explicit"]["metrics"] = regression_metrics(simulated.values, y_test, peak)
    elif y_test is not None:
        entry["explicit"]["accuracy"] = float(np.mean(simulated.classes == y_test))
    # Quantized weights compute other spikes by design: their effect is the accuracy above.
    return entry, None if weight_bits is not None else check.check_netlist(spiking_model, netlist, test)
