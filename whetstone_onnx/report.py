"""The report: every number that leaves the program, in one versioned JSON document.

The CLI's table, the tests and the benchmarks all read these fields.
"""
from __future__ import annotations

import platform
from collections import Counter
from dataclasses import asdict
from importlib import metadata

from .artifacts import sha256
from .load import PINNED_IR_VERSION, PINNED_OPSET
from .network import Network
from .ops.activation import Activation, Sharpenable, Spike
from .ops.decode import NHotDecode
from .spiking_onnx import DOMAIN, DOMAIN_VERSION
from .tasks import error_guard

SCHEMA = "whetstone_onnx.report"
# 1.1: equivalence.sharpenable.sharpness is per layer (a Whetstone Keras export starts sharpened).
# 1.2: accuracy_guard; finetune.validation (the epoch kept); history rows' validation_accuracy.
# 1.3: output_stage (requested, written, chosen on validation); options.output may be "auto";
#      finetune.validation.output (each output stage's best validated accuracy).
# 1.4: passes.approximated_activations (the units that only approximate their activation).
# 1.5: task; metrics and error_guard (reconstruct, regress: accuracy and accuracy_guard are null);
#      equivalence.*.output (real-valued outputs compared); netlist.explicit.metrics;
#      equivalence.pooling_order (spiking.onnx pools some potentials before their step).
# 1.6: levels (the levels tried on the held-out samples when --levels was not given; null when none
#      were: options.levels is the number used).
# 1.7: finetune.validation.untrained_accuracy / untrained_mse and untrained_is_candidate (the spiking
#      form before training; kept only when the network came in spiking).
# 1.8: levels.first / first_reason (a classifier fine-tuned on few samples per class starts at two).
SCHEMA_VERSION = "1.8"
# Points of accuracy the spiking network may lose against the original before convert
# fails (exit 1) unless the loss is accepted.
DEFAULT_MAX_LOSS = 2.0

_PACKAGES = ("whetstone-onnx", "onnx", "onnxruntime", "onnx-ir", "numpy", "scikit-learn", "tensorflow",
             "keras", "tf2onnx")


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def conversion_report(c) -> dict:
    """The report of a finished ``conversion.Conversion``."""
    options, network = c.options, c.float_network
    output = options.output
    return {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION,
        "model": {"path": c.loaded.source, "sha256": c.loaded.sha256, "opset": c.loaded.original_opset,
                  "ir_version": c.loaded.original_ir_version,
                  "input": {"name": network.input_name, "shape": list(network.input_shape)},
                  "output": {"name": network.output_name, "classes": c.sharpenable.num_classes,
                             "shape": list(network.shapes()[-1]),
                             "removed_normaliser": c.normaliser}},
        "output_opset": {"ai.onnx": PINNED_OPSET, DOMAIN: DOMAIN_VERSION, "ir_version": PINNED_IR_VERSION},
        "task": options.task,
        "options": {"data": c.dataset.spec if c.dataset else None, "task": options.task,
                    "levels": c.levels,
                    "normalize": list(options.normalize) if options.normalize else None,
                    "output": output, "key_width": options.key_width, "seed": options.seed},
        "passes": {"onnx": c.onnx_counts, "network": c.network_counts, "approximated_activations": c.approximated},
        "layers": layer_table(c.spiking),
        "calibration": {"source": "data" if c.dataset else "random", "samples": len(c.calibration),
                        "percentile": options.calibration_percentile},
        "finetune": c.finetune_report,
        "levels": c.levels_report,
        "data": None if c.dataset is None else {"spec": c.dataset.spec, "train_samples": len(c.dataset.y_train),
                                                "test_samples": len(c.dataset.y_test)},
        "accuracy": c.accuracy,
        "metrics": c.metrics,
        "output_stage": {"requested": output, "chosen_on_validation": c.tuned is not None and c.readout is not None
                         and bool(c.tuned.validation),
                         "written": "nhot" if isinstance(c.trained.layers[-1], NHotDecode) else "readout"},
        "accuracy_guard": None if c.accuracy is None else accuracy_guard(c.accuracy, options.max_loss,
                                                                         options.accept_loss),
        "error_guard": None if c.metrics is None else error_guard(
            {name: values["mse"] for name, values in c.metrics.items()}, options.max_error_ratio,
            options.accept_loss),
        "equivalence": {
            "float": asdict(c.float_check),
            "sharpenable": {"samples": len(c.test), "sharpness": c.start_sharpness,
                            "class_agreement": c.start_agreement},
            "spiking": c.spike_check.to_dict(),
            "pooling_order": c.pooling_check,
            "nir": None if c.nir_check is None else c.nir_check.to_dict(),
            "netlist": None if c.netlist_check is None else c.netlist_check.to_dict(),
        },
        "netlist": None if c.nir_graph is None else {
            "nir": {"file": "model.nir", "profile": options.nir_profile, "dt": options.nir_dt,
                    "nodes": len(c.nir_graph.nodes), "edges": len(c.nir_graph.edges)},
            **c.netlist_report},
        "artifacts": {"sharpenable.onnx": {"sha256": sha256(c.sharpenable_model.SerializeToString())},
                      "spiking.onnx": {"sha256": sha256(c.spiking_model.SerializeToString())}},
        "timings_s": {k: round(v, 4) for k, v in c.timings.items()},
        "versions": package_versions(),
        "passed": c.float_check.passed and c.spike_check.passed and all(
            check is None or check.passed for check in (c.nir_check, c.netlist_check))
        and (c.pooling_check is None or c.pooling_check["passed"]),
    }


def layer_table(network: Network) -> list[dict]:
    """One row per layer: its description, shapes and role."""
    rows = []

    def row(layer, index: int, shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
        out = layer.output_shape(*shapes)
        role = {Spike: "spiking", Sharpenable: "spiking", Activation: "float activation"}.get(type(layer))
        inputs = {"input_shape": list(shapes[0])} if not layer.merges else \
            {"input_shapes": [list(shape) for shape in shapes]}
        if layer.name in network.links:        # a branch or a merge: what it reads
            inputs["inputs"] = list(network.sources(index))
        rows.append({**layer.describe(), **inputs, "output_shape": list(out), **({"role": role} if role else {})})
        return out

    network.walk(row, tuple(network.input_shape))
    return rows


def accuracy_guard(accuracy: dict, max_loss: float, accepted: bool) -> dict:
    """The report's verdict on the accuracy lost between the original model and the spiking network."""
    loss = 100.0 * (accuracy["original"] - accuracy["spiking"])
    return {"loss_points": round(loss, 4), "max_loss_points": max_loss, "passed": loss <= max_loss + 1e-9,
            "accepted": accepted}


def loss_guard(report: dict) -> dict | None:
    """The report's verdict on what the spiking network lost: the accuracy guard of a classifier,
    the error guard of a regression network; None without data."""
    return report.get("accuracy_guard") or report.get("error_guard")


def guard_message(source: str, report: dict) -> str:
    """The one-line error of a conversion that lost more than allowed."""
    guard = loss_guard(report)
    if "mse_ratio" in guard:
        ratio = "an unbounded" if guard["mse_ratio"] is None else f"{guard['mse_ratio']:.2f}"
        return (f"{source}: the spiking network's mean squared error is {ratio} times the original's, more than "
                f"the {guard['max_mse_ratio']:g} allowed")
    return (f"{source}: the spiking network loses {guard['loss_points']:.2f} points of accuracy, more than the "
            f"{guard['max_loss_points']:g} allowed")


def accuracy_warning(report: dict) -> str | None:
    """One loud line when the spiking network lost more than allowed, else None."""
    guard = loss_guard(report)
    if guard is None or guard["passed"]:
        return None
    if "mse_ratio" in guard:
        mse = report["metrics"]
        return (f"WARNING: the spiking network's MSE is {mse['spiking']['mse']:.5g} against the original's "
                f"{mse['original']['mse']:.5g} (more than {guard['max_mse_ratio']:g} times it)"
                + (", accepted" if guard["accepted"] else ""))
    accuracy = report["accuracy"]
    return (f"WARNING: the spiking network scores {100 * accuracy['spiking']:.2f} %, {guard['loss_points']:.2f} "
            f"points below the original's {100 * accuracy['original']:.2f} % (more than the "
            f"{guard['max_loss_points']:g} allowed)" + (", accepted" if guard["accepted"] else ""))


def accuracy_table(report: dict) -> str:
    """The human-readable summary the CLI prints."""
    accuracy = report.get("accuracy") or {}
    metrics = report.get("metrics") or {}
    regression = report.get("task", "classify") != "classify"
    equivalence = report["equivalence"]
    psnr = any("psnr_db" in values for values in metrics.values())
    rows = [("graph", "MSE", *(("PSNR",) if psnr else ()), "note") if regression else ("graph", "accuracy", "note")]
    finetune = report["finetune"]
    levels = sorted(set(equivalence["sharpenable"]["sharpness"])) or [0.0]    # the layers' before training
    start_sharpness = f"{levels[0]:g}" if len(levels) == 1 else f"{levels[0]:g} to {levels[-1]:g}"
    notes = {
        "original": "the model as given",
        "float": f"canonical float graph, max rel. diff {equivalence['float']['relative_diff']:.1e}",
        "sharpenable_start": f"sharpness {start_sharpness} before training" + ("" if regression else
                             f", {100 * equivalence['sharpenable']['class_agreement']:.1f} % same class as original"),
        "sharpenable": "as written, after fine-tuning" if finetune["performed"]
                       else f"as written (sharpness {start_sharpness})",
        "spiking": "all layers binary spikes" + ("" if finetune["performed"] else ", sharpened at once"),
    }
    for key, note in notes.items():
        if regression:
            values = metrics.get(key)
            cells = ("-",) * len(rows[0][1:-1]) if values is None else (f"{values['mse']:.5g}",) + (
                (f"{values['psnr_db']:.2f} dB",) if psnr else ())
            rows.append((key, *cells, note))
        else:
            value = accuracy.get(key)
            rows.append((key, "-" if value is None else f"{100 * value:.2f} %", note))
    if not finetune["performed"]:
        rows.pop(3)      # sharpenable as written is the graph before training
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    spikes = equivalence["spiking"]
    ties = sum(layer["ties"] for layer in spikes["layers"])
    near = sum(layer["near_threshold"] for layer in spikes["layers"])
    lines.append("")
    approximated = report["passes"].get("approximated_activations")
    if approximated:
        kinds = ", ".join(f"{n} {op}" for op, n in Counter(entry["op_type"] for entry in approximated).items())
        then = "fine-tuning trained on from there" if finetune["performed"] else "fine-tuning can win back the rest"
        cost = "sharpenable_start's MSE above" if regression else \
            f"the network predicts the original's class on {100 * equivalence['sharpenable']['class_agreement']:.1f} " \
            "% of inputs"
        lines.append(f"approximated activations: {kinds} (at sharpness 0 {cost}; {then})")
    verdict = "agree" if spikes["passed"] else "DISAGREE"
    lines.append(f"spikes vs NumPy reference on {spikes['samples']} inputs: {verdict} "
                 f"({spikes['unexplained']} unexplained mismatches, {ties} threshold ties, "
                 f"{near} potentials within {spikes['tie_margin']:.0e} of a threshold" + _output_note(spikes) + ")")
    for name, label in (("nir", "model.nir"), ("netlist", "explicit netlist")):
        result = equivalence.get(name)
        if result is not None:
            ties = sum(layer["ties"] for layer in result["layers"])
            lines.append(f"spiking.onnx vs {label}: {'agree' if result['passed'] else 'DISAGREE'} "
                         f"({result['unexplained']} unexplained differences, {ties} threshold ties"
                         + _output_note(result) + ")")
    netlist = report.get("netlist")
    if netlist and "explicit" in netlist:
        stats = netlist["explicit"]["stats"]
        lines.append(f"netlist: {stats['neurons']} neurons, {stats['synapses']} synapses, max fan-in "
                     f"{stats['max_fan_in']}; {netlist['synops_per_inference']:.0f} SynOps vs "
                     f"{netlist['macs_per_inference']} MACs per inference")
    if finetune["performed"]:
        keras_check = finetune["keras_vs_spiking_onnx"]
        same = f"max |difference| {keras_check['max_abs_diff']:.2g}" if regression else \
            f"{100 * keras_check['agreement']:.2f} % same class"
        lines.append(f"Keras at sharpness 1 vs spiking.onnx: {same} on {keras_check['samples']} inputs; "
                     f"{len(finetune['history'])} epochs")
        validation = finetune.get("validation")
        if validation and regression:
            lines.append(f"kept epoch {validation['kept_epoch']} of {validation['epochs_run']}: spiking MSE "
                         f"{validation['mse']:.5g} on {validation['samples']} held-out training samples"
                         + (" (stopped early)" if validation["stopped_early"] else ""))
        elif validation:
            best = validation.get("best_accuracy", validation["accuracy"])
            lines.append(f"kept epoch {validation['kept_epoch']} of {validation['epochs_run']}: "
                         f"{100 * validation['accuracy']:.2f} % spiking on {validation['samples']} held-out "
                         f"training samples" + ("" if best == validation["accuracy"] else
                                                f" (best {100 * best:.2f} %, within one standard error)")
                         + (" (stopped early)" if validation["stopped_early"] else ""))
            levels = report.get("levels")
            if levels and len(levels["tried"]) > 1:
                scores = ", ".join(f"{entry['levels']}: {100 * entry['validation_accuracy']:.2f} %"
                                   for entry in levels["tried"])
                lines.append(f"levels: {levels['chosen']} binary units per hidden unit, chosen on the held-out "
                             f"samples ({scores}; the original {100 * levels['original_validation_accuracy']:.2f} %)"
                             + (f"; {levels['first']} first: {levels['first_reason']}" if levels["first"] > 1 else ""))
            elif levels and levels["first"] > 1:
                lines.append(f"levels: {levels['chosen']} binary units per hidden unit: {levels['first_reason']}")
            if "output" in validation:
                heads = validation["output"]
                lines.append(f"output stage: {heads['chosen']}, chosen on the held-out samples (N-hot "
                             f"{100 * heads['nhot']['best_accuracy']:.2f} %, readout {100 * heads['readout']['best_accuracy']:.2f} %)")
    else:
        lines.append(f"fine-tuning not performed: {finetune['reason']}")
    warning = accuracy_warning(report)
    if warning:
        lines.extend(["", warning])
    return "\n".join(lines)


def _output_note(result: dict) -> str:
    """A check's comparison of real-valued outputs, as the summary shows it ("" for spikes only)."""
    output = result.get("output")
    if not output:
        return ""
    return (f"; outputs within {output['relative_diff']:.1e} of each other (relative"
            f"{'' if output['passed'] else ', over the tolerance'})")
