"""The typed public API: ``inspect`` and ``convert``. The CLI is a thin shell over it."""
from __future__ import annotations

import copy
import json
import os
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from . import check, runtime, zoo
from .artifacts import json_bytes, sha256, write_atomic, write_atomic_with
from .data import Dataset, fit_to_input, load_dataset
from .emit import to_onnx
from .finetune import FinetuneOptions  # noqa: F401  (part of the API)
from .finetune import finetune as run_finetune
from .errors import DataError, InputError, UnsupportedModelError
from .lift import lift
from .load import PINNED_IR_VERSION, PINNED_OPSET, LoadedModel, load_model
from .netlist.explicit import HEADER_FILE, NEURONS_FILE, SYNAPSES_FILE
from .netlist.hardware import PRESETS as HARDWARE_PRESETS
from .netlist.nir_export import DEFAULT_DT, PROFILES, to_nir
from .network import Network
from .ops.activation import Activation, Sharpenable, Spike
from .ops.decode import NHotDecode
from .ops.dense import Dense
from .passes.activations import activations_before_pooling, approximated_activations, replace_activations
from .passes.calibrate import DEFAULT_PERCENTILE, calibrate_scales
from .passes.output_stage import OUTPUT_MODES, conv_head_to_dense, make_output_stage
from .passes.output import REMOVED_NORMALISER
from .passes.pipeline import qualified_op_type, run_onnx_passes, unsupported_message, unsupported_nodes
from .passes.spiking import to_step_network
from .plot import training_plot
from .report import DEFAULT_MAX_LOSS, SCHEMA, SCHEMA_VERSION, accuracy_guard, accuracy_table, package_versions
from .spiking_onnx import DOMAIN, DOMAIN_VERSION
from .zoo import DEFAULT_TIMEOUT_S, ZooResult

# A path, or the model's bytes or ModelProto (then ``model_dir``: the folder holding its external data, if any).
ModelInput = str | Path | bytes | onnx.ModelProto
CALIBRATION_SAMPLES = 1000
NETLIST_FILES = (SYNAPSES_FILE, NEURONS_FILE, HEADER_FILE)   # header last: it vouches for the others
RANDOM_CHECK_SAMPLES = 256


# ----------------------------------------------------------------------------- inspect

@dataclass
class InspectResult:
    source: str
    opset: int
    ops: dict[str, dict]                          # (domain.)op type -> {"count", "supported"}
    unsupported: list[tuple[str, str]]            # (op type, node name)
    layers: list[dict] = field(default_factory=list)   # planned network, when supported
    approximated: list[dict] = field(default_factory=list)   # planned units that approximate their activation
    problem: str | None = None                    # why the plan failed, when it did

    @property
    def supported(self) -> bool:
        return not self.unsupported and self.problem is None

    def error(self) -> str | None:
        """Why the model cannot be converted, in one line naming the file; None when it can."""
        if self.unsupported:
            return unsupported_message(self.source, self.unsupported)
        return None if self.problem is None else f"{self.source}: {self.problem}"

    def to_dict(self) -> dict:
        return {"model": self.source, "opset": self.opset, "supported": self.supported, "ops": self.ops,
                "unsupported": [{"op_type": t, "node": n} for t, n in self.unsupported],
                "problem": self.problem, "layers": self.layers, "approximated_activations": self.approximated}


def inspect(model: ModelInput, *, model_dir: str | Path | None = None, output_name: str | None = None
            ) -> InspectResult:
    """What the model holds, what is supported, and the spiking layers the converter would build."""
    loaded = load_model(model, model_dir, output_name)
    counts = Counter(qualified_op_type(node) for node in loaded.model.graph.node)
    unsupported = unsupported_nodes(loaded.model)
    refused = {op_type for op_type, _ in unsupported}
    result = InspectResult(loaded.source, loaded.original_opset,
                           {op: {"count": n, "supported": op not in refused} for op, n in sorted(counts.items())},
                           unsupported)
    if result.unsupported:
        return result
    try:
        # Everything convert does before training (calibrated on random inputs, the N-hot output
        # stage it builds without data), so that what inspect accepts, convert accepts.
        network = _float_network(loaded)[0]
        calibration = _inputs(None, network, None, 0)[0]
        calibrated = _sharpenable_passes(network, calibration, DEFAULT_PERCENTILE)[1]
        make_output_stage(network, "nhot", calibrated.outputs)
    except UnsupportedModelError as exc:
        result.problem = exc.message
        return result
    result.layers = _layer_table(network)
    result.approximated = approximated_activations(network)
    return result


# ----------------------------------------------------------------------------- convert

@dataclass
class ConversionResult:
    report: dict
    float_model: onnx.ModelProto
    sharpenable_model: onnx.ModelProto
    spiking_model: onnx.ModelProto
    sharpenable_network: Network
    spiking_network: Network
    out_dir: Path | None = None

    @property
    def passed(self) -> bool:
        return self.report["passed"]

    @property
    def accuracy(self) -> dict | None:
        return self.report["accuracy"]

    @property
    def accuracy_ok(self) -> bool:
        """False when the spiking network lost more than the allowed accuracy and the user
        did not accept it (always True without data)."""
        guard = self.report["accuracy_guard"]
        return guard is None or guard["passed"] or guard["accepted"]

    def summary(self) -> str:
        return accuracy_table(self.report)


def convert(model: ModelInput, out_dir: str | Path | None = None, *, data: str | Dataset | None = None,
            normalize: tuple[float, float] | None = None, output: str = "auto", key_width: int | None = None,
            seed: int = 0, finetune: bool | FinetuneOptions = True,
            calibration_percentile: float = DEFAULT_PERCENTILE, progress: bool = False,
            netlist: bool = True, nir_profile: str = "portable", nir_dt: float = DEFAULT_DT,
            weight_bits: int | None = None, hardware: str | None = None,
            max_loss: float = DEFAULT_MAX_LOSS, accept_loss: bool = False,
            model_dir: str | Path | None = None, output_name: str | None = None) -> ConversionResult:
    """Convert a trained ONNX classifier into sharpenable and spiking ONNX graphs.

    With data, the network is fine-tuned through Keras while it is sharpened
    (``finetune``: True for the defaults, a ``FinetuneOptions`` to choose, False
    to sharpen every layer at once). With ``out_dir``, writes sharpenable.onnx,
    spiking.onnx, the netlists (model.nir and netlist.json / .neurons.bin /
    .synapses.bin, unless ``netlist`` is False; ``weight_bits`` quantizes the
    explicit netlist's weights), report.json (and training.png after
    fine-tuning) there, each atomically, after every check has run.
    ``hardware`` (a preset of ``netlist.hardware.PRESETS``) adds a design-rule check.
    With data, the report's ``accuracy_guard`` says whether the spiking network scores more
    than ``max_loss`` points below the original (``accept_loss``: the user accepts that);
    ``ConversionResult.accuracy_ok`` is False when it does and was not accepted. Raises ``InputError``,
    ``UnsupportedModelError`` or ``DataError`` on bad input, before writing anything.
    Weights the model stores in external files are read from its own folder only (``model_dir``
    for bytes or a ModelProto), never from the working directory. ``output_name``: the class-score
    output of a model with several (by default the only float one of rank 2 or more).
    """
    if not 0.0 < calibration_percentile <= 100.0:
        raise InputError(f"calibration percentile {calibration_percentile}: must be in (0, 100]")
    if output not in OUTPUT_MODES:
        raise InputError(f"--output {output!r}: expected one of {', '.join(OUTPUT_MODES)}")
    if nir_profile not in PROFILES:
        raise InputError(f"--nir-profile {nir_profile!r}: expected one of {', '.join(PROFILES)}")
    if hardware is not None and hardware not in HARDWARE_PRESETS:
        raise InputError(f"--hardware {hardware!r}: expected one of {', '.join(HARDWARE_PRESETS)}")
    if weight_bits is not None and not 2 <= weight_bits <= 16:
        raise InputError(f"--weight-bits {weight_bits}: expected 2 to 16")
    if not 0.0 <= max_loss <= 100.0:
        raise InputError(f"--max-loss {max_loss}: expected 0 to 100 points")
    finetune_options = finetune if isinstance(finetune, FinetuneOptions) else FinetuneOptions(seed=seed)
    if finetune:
        finetune_options.validate()
    timings: dict[str, float] = {}
    clock = _Clock(timings)

    with clock("load"):
        loaded = load_model(model, model_dir, output_name)
        unsupported = unsupported_nodes(loaded.model)
        if unsupported:
            raise UnsupportedModelError(unsupported_message(loaded.source, unsupported))
        dataset = load_dataset(data) if isinstance(data, str) else data
    with clock("passes"):
        float_network, onnx_counts, normaliser = _float_network(loaded)
    train, test, rng = _inputs(dataset, float_network, normalize, seed)
    calibration = train[rng.permutation(len(train))[:CALIBRATION_SAMPLES]]

    with clock("float_check"):
        float_model = to_onnx(float_network, graph_name="float")
        float_check = check.check_float(loaded.model, float_model, normaliser, _check_inputs(test, rng))
    with clock("sharpen"):
        sharpenable = float_network.copy()
        network_counts, calibrated = _sharpenable_passes(sharpenable, calibration, calibration_percentile)
        approximated = approximated_activations(sharpenable)
        # "auto": fine-tuning trains an N-hot code and a readout side by side and keeps the one
        # that validates better. With nothing to validate on, the N-hot code, unless the model
        # is already sharpened (a Whetstone graph, such as a readout this converter wrote).
        choose_output = output == "auto" and bool(finetune) and dataset is not None \
            and finetune_options.validation > 0 and isinstance(sharpenable.layers[-1], Dense)
        readout = copy.deepcopy(sharpenable.layers[-1]) if choose_output else None
        sharpened = any(layer.sharpness > 0 for layer in sharpenable.layers if isinstance(layer, Sharpenable))
        stage = output if output != "auto" else "readout" if sharpened and not choose_output else "nhot"
        network_counts["make_output_stage"] = make_output_stage(sharpenable, stage, calibrated.outputs,
                                                                key_width=key_width, seed=seed)
        initial_model = to_onnx(sharpenable, graph_name="sharpenable", doc=_doc(loaded.source, loaded.sha256))
        # Per layer: 0 for a converted model; a Whetstone Keras model's export keeps the sharpness it had.
        start_sharpness = [layer.sharpness for layer in sharpenable.layers if isinstance(layer, Sharpenable)]
        agreement = check.class_agreement(loaded.model, initial_model, test)
    finetune_report: dict = {"requested": bool(finetune), "performed": False}
    trained, tuned = sharpenable, None
    if finetune and dataset is None:
        finetune_report["reason"] = "no --data given: layers were sharpened at once"
    elif not finetune:
        finetune_report["reason"] = "--no-finetune: layers were sharpened at once"
    else:
        with clock("finetune"):
            tuned = run_finetune(sharpenable, train, dataset.y_train, test, dataset.y_test, finetune_options,
                                 progress=progress, teacher=runtime.batch_function(float_model)
                                 if finetune_options.distillation else None,
                                 readout=readout)
        trained = tuned.network
        finetune_report.update(performed=True, options=asdict(tuned.options),
                               reached_full_sharpness=tuned.reached_full_sharpness, validation=tuned.validation,
                               history=tuned.history)
    with clock("emit"):
        sharpenable_model, spiking, spiking_model = _emit(trained, _doc(loaded.source, loaded.sha256))
        network_counts["to_step_network"] = sum(isinstance(layer, Spike) for layer in spiking.layers)
    nir_graph = nir_check = None
    staging = netlist_report = netlist_check = None
    if netlist:
        with clock("netlist"):
            nir_graph = to_nir(spiking, profile=nir_profile, dt=nir_dt)
            nir_check = check.check_nir(spiking_model, nir_graph, test)
            # The explicit netlist is streamed to files: write it to a staging directory,
            # check it from there, and move it into place with the other artifacts.
            # (TemporaryDirectory removes itself even if a later step raises.)
            if out_dir is not None:
                Path(out_dir).mkdir(parents=True, exist_ok=True)
            staging = tempfile.TemporaryDirectory(prefix=".netlist-",
                                                  dir=Path(out_dir) if out_dir is not None else None)
            netlist_report, netlist_check = _explicit_netlist(spiking, spiking_model, Path(staging.name), test,
                                                              dataset, weight_bits, hardware)
    with clock("spike_check"):
        spike_check = check.check_spiking(spiking, test)
        if tuned is not None:
            finetune_report["keras_vs_spiking_onnx"] = _keras_vs_spiking_onnx(
                tuned.keras_spiking_predictions, spiking_model, test)
    accuracy = None
    if dataset is not None:
        with clock("accuracy"):
            accuracy = {name: _accuracy(m, test, dataset.y_test) for name, m in
                        (("original", loaded.model), ("float", float_model), ("sharpenable_start", initial_model),
                         ("sharpenable", sharpenable_model), ("spiking", spiking_model))}

    sharpenable_bytes, spiking_bytes = sharpenable_model.SerializeToString(), spiking_model.SerializeToString()
    report = {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION,
        "model": {"path": loaded.source, "sha256": loaded.sha256, "opset": loaded.original_opset,
                  "ir_version": loaded.original_ir_version,
                  "input": {"name": float_network.input_name, "shape": list(float_network.input_shape)},
                  "output": {"name": float_network.output_name, "classes": sharpenable.num_classes,
                             "removed_normaliser": normaliser}},
        "output_opset": {"ai.onnx": PINNED_OPSET, DOMAIN: DOMAIN_VERSION, "ir_version": PINNED_IR_VERSION},
        "options": {"data": dataset.spec if dataset else None, "normalize": list(normalize) if normalize else None,
                    "output": output, "key_width": key_width, "seed": seed},
        "passes": {"onnx": onnx_counts, "network": network_counts, "approximated_activations": approximated},
        "layers": _layer_table(spiking),
        "calibration": {"source": "data" if dataset else "random", "samples": len(calibration),
                        "percentile": calibration_percentile},
        "finetune": finetune_report,
        "data": None if dataset is None else {"spec": dataset.spec, "train_samples": len(dataset.y_train),
                                              "test_samples": len(dataset.y_test)},
        "accuracy": accuracy,
        "output_stage": {"requested": output, "chosen_on_validation": tuned is not None and readout is not None
                         and bool(tuned.validation), "written": "nhot" if isinstance(trained.layers[-1], NHotDecode)
                         else "readout"},
        "accuracy_guard": None if accuracy is None else accuracy_guard(accuracy, max_loss, accept_loss),
        "equivalence": {
            "float": asdict(float_check),
            "sharpenable": {"samples": len(test), "sharpness": start_sharpness, "class_agreement": agreement},
            "spiking": spike_check.to_dict(),
            "nir": None if nir_check is None else nir_check.to_dict(),
            "netlist": None if netlist_check is None else netlist_check.to_dict(),
        },
        "netlist": None if nir_graph is None else {
            "nir": {"file": "model.nir", "profile": nir_profile, "dt": nir_dt, "nodes": len(nir_graph.nodes),
                    "edges": len(nir_graph.edges)},
            **netlist_report},
        "artifacts": {"sharpenable.onnx": {"sha256": sha256(sharpenable_bytes)},
                      "spiking.onnx": {"sha256": sha256(spiking_bytes)}},
        "timings_s": {k: round(v, 4) for k, v in timings.items()},
        "versions": package_versions(),
        "passed": float_check.passed and spike_check.passed and all(
            c is None or c.passed for c in (nir_check, netlist_check)),
    }
    if out_dir is not None:
        if nir_graph is not None:
            import nir
            write_atomic_with(Path(out_dir) / "model.nir", lambda path: nir.write(path, nir_graph))
            for name in NETLIST_FILES:      # same file system: each move is atomic
                os.replace(Path(staging.name) / name, Path(out_dir) / name)
        _write(Path(out_dir), sharpenable_bytes, spiking_bytes, report,
               training_plot(tuned.history) if tuned is not None else None)
    if staging is not None:
        staging.cleanup()
    return ConversionResult(report, float_model, sharpenable_model, spiking_model, trained, spiking,
                            None if out_dir is None else Path(out_dir))


def export_keras(model, out_dir: str | Path | None = None, *, data: str | Dataset | None = None,
                 normalize: tuple[float, float] | None = None, seed: int = 0,
                 finetune: bool | FinetuneOptions = False, **options) -> ConversionResult:
    """A Keras model built with ``whetstone_onnx.keras`` layers (e.g. in the classic
    Whetstone style) -> the same artifacts and checks as ``convert``.

    The model goes through Keras' own ``model.export(format="onnx")`` and that graph
    is converted (``options``: ``convert``'s output options). By default as it is:
    the spiking graph has every layer at sharpness 1, whatever sharpness the Keras
    model reached (the report keeps it), and the report adds how often the Keras
    model at sharpness 1 predicts the class ``spiking.onnx`` does. With ``finetune``
    (and ``data``) the converter trains on from the model's weights, as ``convert``
    does; the Keras model given is left as it is.
    """
    import keras

    dataset = load_dataset(data) if isinstance(data, str) else data
    with tempfile.TemporaryDirectory(prefix="whetstone_keras_") as scratch:
        exported = Path(scratch) / f"{model.name}.onnx"
        if not model._called:          # the check Keras' export makes: it exports called models only
            model(keras.ops.zeros((1, *model.inputs[0].shape[1:])))
        model.export(str(exported), format="onnx", verbose=False)
        result = convert(exported, out_dir, data=dataset, normalize=normalize, seed=seed, finetune=finetune,
                         **options)
    report = result.report
    report["model"].update(path=f"Keras model '{model.name}'", source="keras")
    if not report["finetune"]["performed"]:      # else the spiking graph is no longer this model's
        _, test, _ = _inputs(dataset, result.spiking_network, normalize, seed)
        report["equivalence"]["keras_vs_spiking_onnx"] = _keras_vs_spiking_onnx(
            build_spiking_keras_predictions(model, test), result.spiking_model, test)
    if out_dir is not None:
        write_atomic(Path(out_dir) / "report.json", json_bytes(report))
    return result


def build_spiking_keras_predictions(model, x: np.ndarray) -> np.ndarray:
    """The Keras model's classes with every Whetstone layer at sharpness 1 (sharpness restored after)."""
    from .keras.sharpeners import at_full_sharpness, spiking_layers

    with at_full_sharpness(spiking_layers(model)):
        return model.predict(x, verbose=0).reshape(len(x), -1).argmax(1)


# ----------------------------------------------------------------------------- helpers

class _Clock:
    """``with clock("stage"):`` adds the stage's wall time to the timings."""

    def __init__(self, timings: dict[str, float]):
        self.timings = timings

    def __call__(self, stage: str):
        self.stage = stage
        return self

    def __enter__(self):
        self.start = time.perf_counter()

    def __exit__(self, *exc):
        self.timings[self.stage] = self.timings.get(self.stage, 0.0) + time.perf_counter() - self.start


def _float_network(loaded: LoadedModel) -> tuple[Network, dict[str, int], str | None]:
    model, counts = run_onnx_passes(loaded.model)
    # (A Softmax that ends a recognised N-hot decode stays part of it.)
    return lift(model), counts, model.graph.meta.get(REMOVED_NORMALISER)


def _sharpenable_passes(network: Network, calibration: np.ndarray, percentile: float):
    """The network passes that make a float network sharpenable, in order, up to the output stage:
    (rewrites per pass, the calibration's result)."""
    counts = {
        "conv_head_to_dense": conv_head_to_dense(network),
        "activations_before_pooling": activations_before_pooling(network),
        "replace_activations": replace_activations(network),
    }
    calibrated = calibrate_scales(network, calibration, percentile)
    counts["calibrate_scales"] = calibrated.scaled_layers
    return counts, calibrated


def _inputs(dataset: Dataset | None, network: Network, normalize, seed: int):
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


def _check_inputs(test: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Real inputs plus random ones, so the float check also covers off-distribution values."""
    random = rng.standard_normal((min(len(test), RANDOM_CHECK_SAMPLES), *test.shape[1:])).astype(np.float32)
    return np.concatenate([test, random])


def _keras_vs_spiking_onnx(keras_predictions: np.ndarray, spiking_model: onnx.ModelProto, x: np.ndarray) -> dict:
    """How often the Keras model at sharpness 1 and ``spiking.onnx`` predict the same class (first 100 differences)."""
    differences = np.flatnonzero(runtime.predict(spiking_model, x).reshape(len(x), -1).argmax(1) != keras_predictions)
    return {"samples": len(x), "agreement": float(1.0 - len(differences) / len(x)),
            "differences": differences[:100].tolist()}


def _accuracy(model: onnx.ModelProto, x: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(runtime.predict(model, x).reshape(len(x), -1).argmax(1) == labels))


def _layer_table(network: Network) -> list[dict]:
    rows, shape = [], network.input_shape
    for layer in network.layers:
        out = layer.output_shape(shape)
        role = {Spike: "spiking", Sharpenable: "spiking", Activation: "float activation"}.get(type(layer))
        rows.append({**layer.describe(), "input_shape": list(shape), "output_shape": list(out),
                     **({"role": role} if role else {})})
        shape = out
    return rows


def _explicit_netlist(spiking: Network, spiking_model: onnx.ModelProto, directory: Path, test: np.ndarray,
                      dataset: Dataset | None, weight_bits: int | None, hardware: str | None):
    """Write the explicit netlist into ``directory``, check and measure it: (report entry, check or None)."""
    from .netlist.explicit import read_netlist, write_netlist
    from .netlist.hardware import check_hardware
    from .sim import macs, simulate_netlist

    stats = write_netlist(spiking, directory, weight_bits=weight_bits)
    netlist = read_netlist(directory)
    simulated = simulate_netlist(netlist, test, keep_outputs=False)
    operations = macs(spiking)
    entry = {"explicit": {"files": list(NETLIST_FILES), "weight_bits": weight_bits, "stats": stats.to_dict()},
             "synops_per_inference": simulated.synops, "macs_per_inference": operations,
             "synops_per_mac": simulated.synops / operations if operations else None,
             "spike_rates": simulated.spike_rate,
             "hardware": None if hardware is None else check_hardware(stats, HARDWARE_PRESETS[hardware])}
    if dataset is not None:
        entry["explicit"]["accuracy"] = float(np.mean(simulated.classes == dataset.y_test))
    # Quantized weights compute other spikes by design: their effect is the accuracy above.
    return entry, None if weight_bits is not None else check.check_netlist(spiking_model, netlist, test)


def _doc(source: str, sha: str) -> str:
    return f"whetstone_onnx graph of {Path(source).name} (sha256 {sha[:16]})"


def _emit(trained: Network, doc: str) -> tuple[onnx.ModelProto, Network, onnx.ModelProto]:
    """(sharpenable model, step network, spiking model) of a trained sharpenable network."""
    sharpenable_model = to_onnx(trained, graph_name="sharpenable", doc=doc)
    spiking = trained.copy()
    for layer in spiking.layers:
        if isinstance(layer, Sharpenable):
            layer.sharpness = 1.0
    to_step_network(spiking)
    return sharpenable_model, spiking, to_onnx(spiking, graph_name="spiking", doc=doc)


def _write(out_dir: Path, sharpenable: bytes, spiking: bytes, report: dict, plot: bytes | None) -> None:
    """Every artifact, each atomically; the report last, so its presence means the set is complete."""
    write_atomic(out_dir / "sharpenable.onnx", sharpenable)
    write_atomic(out_dir / "spiking.onnx", spiking)
    if plot is not None:
        write_atomic(out_dir / "training.png", plot)
    write_atomic(out_dir / "report.json", json_bytes(report))


# ----------------------------------------------------------------------------- check

@dataclass
class CheckResult:
    out_dir: str
    samples: int
    data: str | None
    comparisons: dict[str, dict] = field(default_factory=dict)   # name -> a check's to_dict()

    @property
    def passed(self) -> bool:
        return all(result["passed"] for result in self.comparisons.values())

    def to_dict(self) -> dict:
        return {"out_dir": self.out_dir, "samples": self.samples, "data": self.data,
                "comparisons": self.comparisons, "passed": self.passed}

    def summary(self) -> str:
        lines = [f"{self.out_dir}: {self.samples} inputs ({self.data or 'random'})"]
        for name, result in self.comparisons.items():
            ties = sum(layer["ties"] for layer in result["layers"])
            lines.append(f"  {name:<28} {'agree' if result['passed'] else 'DISAGREE'}: "
                         f"{result['unexplained']} unexplained differences, {ties} threshold ties, "
                         f"{len(result['layers'])} layers")
            for difference in result.get("differences", [])[:10]:
                lines.append(f"    layer {difference['layer']} sample {difference['sample']} neuron "
                             f"{difference['neuron']}: potential {difference['distance_to_threshold']:.3g} "
                             "from its threshold")
        return "\n".join(lines)


def check_outputs(out_dir: str | Path, *, data: str | Dataset | None = None,
                  normalize: tuple[float, float] | None = None, seed: int = 0) -> CheckResult:
    """Re-run the equivalence of a conversion's files: spiking.onnx (onnxruntime) against
    the explicit netlist (reference simulator) and model.nir (re-read and simulated),
    layer by layer, each layer from onnxruntime's input to it. Without ``data``, the data and
    normalisation recorded in report.json are used, else random inputs."""
    import nir

    out = Path(out_dir)
    spiking_path = out / "spiking.onnx"
    if not spiking_path.is_file():
        raise InputError(f"{spiking_path}: file not found (is {out} a whetstone-onnx convert output?)")
    spiking_model = load_model(spiking_path).model
    if data is None and (out / "report.json").is_file():
        try:
            options = json.loads((out / "report.json").read_text()).get("options", {})
        except json.JSONDecodeError:
            raise InputError(f"{out / 'report.json'}: not valid JSON") from None
        data = options.get("data")
        normalize = normalize or (tuple(options["normalize"]) if options.get("normalize") else None)
    dataset = load_dataset(data) if isinstance(data, str) else data
    shape = tuple(d.dim_value for d in spiking_model.graph.input[0].type.tensor_type.shape.dim[1:])
    rng = np.random.default_rng(seed)
    if dataset is None:
        x = rng.standard_normal((RANDOM_CHECK_SAMPLES, *shape)).astype(np.float32)
    else:
        x = fit_to_input(dataset.x_test, shape, normalize, spec=dataset.spec)
    result = CheckResult(str(out), len(x), dataset.spec if dataset else None)
    if (out / HEADER_FILE).is_file():
        from .netlist.explicit import read_netlist
        result.comparisons["spiking.onnx vs netlist"] = check.check_netlist(
            spiking_model, read_netlist(out, verify=True), x).to_dict()
    nir_path = out / "model.nir"
    if nir_path.is_file():
        try:
            graph = nir.read(nir_path)
        except Exception as exc:  # h5py and nir raise many types on a damaged file
            raise InputError(f"{nir_path}: not a readable NIR file ({type(exc).__name__})") from None
        result.comparisons["spiking.onnx vs model.nir"] = check.check_nir(spiking_model, graph, x).to_dict()
    if not result.comparisons:
        raise InputError(f"{out}: no netlist to check against spiking.onnx (model.nir and netlist.json are missing)")
    return result


# ----------------------------------------------------------------------------- zoo

def convert_zoo(manifest: str | Path, out_dir: str | Path, *, jobs: int = 1, resume: bool = False,
                executor: str = "local", scheduler: str | None = None, fail_fast: bool = False,
                timeout: float = DEFAULT_TIMEOUT_S, memory_limit: int | None = None,
                progress: bool = False) -> ZooResult:
    """Convert every model a manifest lists, each in its own process, into ``out_dir/<name>/``.

    ``manifest``: a TOML file (``[defaults]`` and ``[[model]]`` tables holding a ``path``,
    an optional ``name`` and any keyword argument of ``convert``) or a directory of .onnx
    files. ``jobs`` models run at once; ``timeout`` (seconds) and ``memory_limit`` (MB of
    address space) bound each one. ``resume`` reuses the models whose file, options and
    package version are unchanged. ``executor="dask"`` runs the models on the Dask cluster
    at ``scheduler``, or on a local one with ``jobs`` workers. ``fail_fast`` starts no more
    models after the first that does not convert. ``progress`` shows progress on stderr.
    Writes ``summary.json`` and ``summary.md``; returns them as a ``ZooResult``
    (``exit_code`` 0 when every model converted, else 1). Raises ``InputError`` on a bad manifest.
    """
    return zoo.convert_zoo(manifest, out_dir, jobs=jobs, resume=resume, executor=executor, scheduler=scheduler,
                           fail_fast=fail_fast, timeout=timeout, memory_limit=memory_limit, progress=progress)
