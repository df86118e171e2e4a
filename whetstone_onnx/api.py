"""The typed public API of one model: ``inspect``, ``convert``, ``check_outputs``, ``export_keras``. Batch
conversion is ``whetstone_onnx.zoo.convert_zoo``. The CLI is a thin shell over both."""
from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from . import check, conversion, runtime
from .artifacts import OutputFolder, file_sha256, json_bytes, verified_report, write_atomic, write_atomic_with
from .conversion import (DEFAULT_MAX_ELEMENTS, DEFAULT_MAX_SYNAPSES, NETLIST_FILES,  # noqa: F401  (for the CLI)
                         RANDOM_CHECK_SAMPLES, ConvertOptions)
from .data import Dataset, fit_to_input, load_dataset
from .errors import InputError, UnsupportedModelError
from .finetune import FinetuneOptions  # noqa: F401  (part of the API)
from .load import load_model
from .network import Network
from .netlist.explicit import HEADER_FILE
from .netlist.nir_export import DEFAULT_DT
from .network_passes.activations import approximated_activations
from .network_passes.calibrate import DEFAULT_PERCENTILE
from .network_passes.levels import expand_levels
from .network_passes.output_stage import (OUTPUT_MODES, make_output_stage,  # noqa: F401  (OUTPUT_MODES: for the CLI)
                                          make_regression_output, split_readout_tail)
from .onnx_passes.pipeline import qualified_op_type, unsupported_nodes
from .plot import RECONSTRUCTIONS_SHOWN, reconstruction_plot, training_plot
from .tasks import (DEFAULT_MAX_ERROR_RATIO, REGRESSION_LEVELS, TASKS,  # noqa: F401  (REGRESSION_LEVELS: for the CLI)
                    default_levels, is_regression, suggest_task)
from .report import DEFAULT_MAX_LOSS, accuracy_table, conversion_report, layer_table, loss_guard

# A path, or the model's bytes or ModelProto (then ``model_dir``: the folder holding its external data, if any).
ModelInput = str | Path | bytes | onnx.ModelProto


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
    task: str = "classify"                        # the task planned for (tasks.TASKS)
    suggested_task: str | None = None             # what the graph suggests (tasks.suggest_task)

    @property
    def supported(self) -> bool:
        return not self.unsupported and self.problem is None

    def error(self) -> str | None:
        """Why the model cannot be converted, in one line naming the file; None when it can."""
        if self.unsupported:
            return UnsupportedModelError.for_ops(self.source, self.unsupported).message
        return None if self.problem is None else f"{self.source}: {self.problem}"

    def to_dict(self) -> dict:
        return {"model": self.source, "opset": self.opset, "supported": self.supported, "ops": self.ops,
                "unsupported": [{"op_type": t, "node": n} for t, n in self.unsupported],
                "problem": self.problem, "task": self.task, "suggested_task": self.suggested_task,
                "layers": self.layers, "approximated_activations": self.approximated}


def inspect(model: ModelInput, *, model_dir: str | Path | None = None, output_name: str | None = None,
            task: str | None = None) -> InspectResult:
    """What the model holds, what is supported, and the spiking layers the converter would build
    for ``task`` (default: the one the graph suggests, see tasks.suggest_task)."""
    if task is not None and task not in TASKS:
        raise InputError(f"--task {task!r}: expected one of {', '.join(TASKS)}")
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
        network = conversion.float_network(loaded)[0]
        result.suggested_task = suggest_task(network.input_shape, network.shapes()[-1])
        result.task = task or result.suggested_task
        tail = split_readout_tail(network) if is_regression(result.task) else []
        calibration = conversion.fitted_inputs(None, network, None, 0)[0]
        calibrated = conversion.sharpenable_passes(network, calibration, DEFAULT_PERCENTILE)[1]
        expand_levels(network, default_levels(result.task))
        if is_regression(result.task):
            make_regression_output(network, tail)
        else:
            make_output_stage(network, "nhot", calibrated.outputs)
    except UnsupportedModelError as exc:
        result.problem = exc.message
        return result
    result.layers = layer_table(network)
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
        guard = loss_guard(self.report)
        return guard is None or guard["passed"] or guard["accepted"]

    def summary(self) -> str:
        return accuracy_table(self.report)


def convert(model: ModelInput, out_dir: str | Path | None = None, *, data: str | Dataset | None = None,
            normalize: tuple[float, float] | None = None, task: str = "classify", levels: int | None = None,
            output: str = "auto",
            key_width: int | None = None,
            seed: int = 0, finetune: bool | FinetuneOptions = True,
            calibration_percentile: float = DEFAULT_PERCENTILE, progress: bool = False,
            netlist: bool = True, nir_profile: str = "portable", nir_dt: float = DEFAULT_DT,
            weight_bits: int | None = None, hardware: str | None = None,
            max_loss: float = DEFAULT_MAX_LOSS, max_error_ratio: float = DEFAULT_MAX_ERROR_RATIO,
            accept_loss: bool = False, model_dir: str | Path | None = None,
            output_name: str | None = None) -> ConversionResult:
    """Convert a trained ONNX classifier (or autoencoder, or regression model) into sharpenable
    and spiking ONNX graphs.

    ``task`` (tasks.TASKS): "classify" (class labels), "reconstruct" (the target is the input:
    autoencoders) or "regress" (real-valued targets from an npz archive's y arrays). For the
    last two the output is read out of the last weight layer as real values, fine-tuning
    minimises the MSE, the report gives ``metrics`` (MSE, PSNR for images) and its
    ``error_guard`` fails the conversion when the spiking network's MSE is more than
    ``max_error_ratio`` times the original's.

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
    options = ConvertOptions(normalize=normalize, task=task, levels=levels, output=output, key_width=key_width,
                             seed=seed, finetune=finetune,
                             calibration_percentile=calibration_percentile, progress=progress, netlist=netlist,
                             nir_profile=nir_profile, nir_dt=nir_dt, weight_bits=weight_bits, hardware=hardware,
                             max_loss=max_loss, max_error_ratio=max_error_ratio, accept_loss=accept_loss,
                             model_dir=model_dir, output_name=output_name)
    return convert_with_options(model, out_dir, data=data, options=options)


def convert_with_options(model: ModelInput, out_dir: str | Path | None = None, *,
                         data: str | Dataset | None = None, options: ConvertOptions) -> ConversionResult:
    """``convert`` with its options as one ``ConvertOptions`` (what the CLI builds from its flags)."""
    options.validate()
    # The output folder is checked before any work, and written as one unit (artifacts.OutputFolder).
    folder = None if out_dir is None else OutputFolder(out_dir, force=options.force)
    c = conversion.Conversion(model, data, options, out_dir=None if folder is None else folder.staging)
    try:
        conversion.run(c)
        report = conversion_report(c)
        if folder is not None:
            _write(folder.staging, c, report)
            try:
                folder.commit()
            except OSError as exc:
                raise InputError(f"{out_dir}: cannot put the new output in place ({exc.strerror or exc})") from None
    except BaseException:
        if folder is not None:
            folder.discard()
        raise
    finally:
        if c.staging is not None:
            c.staging.cleanup()
    return ConversionResult(report, c.float_model, c.sharpenable_model, c.spiking_model, c.trained, c.spiking,
                            None if folder is None else Path(out_dir))


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
        _, test, _ = conversion.fitted_inputs(dataset, result.spiking_network, normalize, seed)
        report["equivalence"]["keras_vs_spiking_onnx"] = conversion.keras_vs_spiking_onnx(
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

def _write(out_dir: Path, c: conversion.Conversion, report: dict) -> None:
    """Every artifact into the staging folder (the explicit netlist is there already); the report last."""
    if c.nir_graph is not None:
        import nir
        write_atomic_with(out_dir / "model.nir", lambda path: nir.write(path, c.nir_graph))
    write_atomic(out_dir / "sharpenable.onnx", c.sharpenable_model.SerializeToString())
    write_atomic(out_dir / "spiking.onnx", c.spiking_model.SerializeToString())
    if c.tuned is not None:
        write_atomic(out_dir / "training.png", training_plot(c.tuned.history))
    if c.metrics is not None and "psnr_db" in c.metrics["spiking"]:       # reconstructed images
        shown = c.test[:RECONSTRUCTIONS_SHOWN]
        write_atomic(out_dir / "reconstructions.png", reconstruction_plot(
            [("target", c.y_test[:RECONSTRUCTIONS_SHOWN]), ("original", runtime.predict(c.loaded.model, shown)),
             ("spiking", runtime.predict(c.spiking_model, shown))]))
    # Every file beside the report, with its hash: ``check`` trusts none it cannot verify.
    report["artifacts"] = {path.name: {"sha256": file_sha256(path), "bytes": path.stat().st_size}
                           for path in sorted(out_dir.iterdir()) if path.is_file() and not path.name.startswith(".")}
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
            output = result.get("output")
            lines.append(f"  {name:<28} {'agree' if result['passed'] else 'DISAGREE'}: "
                         f"{result['unexplained']} unexplained differences, {ties} threshold ties, "
                         f"{len(result['layers'])} layers" + ("" if not output else
                                                             f"; real-valued outputs within "
                                                             f"{output['relative_diff']:.1e} (relative)"))
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
    report = verified_report(out)
    spiking_model = load_model(out / "spiking.onnx").model
    if data is None:
        options = report.get("options") if isinstance(report.get("options"), dict) else {}
        data = options.get("data")
        normalize = normalize or (tuple(options["normalize"]) if options.get("normalize") else None)
    dataset = load_dataset(data, report.get("task") == "regress") if isinstance(data, str) else data
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
    pooling = check.check_pooling_order(spiking_model, x)
    if pooling is not None:
        result.comparisons["spiking.onnx vs its layer form"] = pooling
    return result
