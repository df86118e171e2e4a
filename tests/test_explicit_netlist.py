"""The explicit neuron/synapse netlist: file format, reference simulator, stats,
quantization and the hardware design-rule check."""
from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
from conftest import MODELS

from whetstone_onnx import api, runtime
from whetstone_onnx.data import fit_to_input, load_dataset
from whetstone_onnx.errors import InputError, UnsupportedModelError
from whetstone_onnx.netlist import explicit
from whetstone_onnx.netlist.explicit import (FORMAT, NEURON_DTYPE, SYNAPSE_DTYPE, VERSION, read_netlist,
                                             write_netlist)
from whetstone_onnx.netlist.hardware import TRUENORTH, HardwareLimits, check_hardware
from whetstone_onnx.network import Network
from whetstone_onnx.ops.activation import Activation, Spike
from whetstone_onnx.ops.conv import Conv2d
from whetstone_onnx.ops.decode import NHotDecode
from whetstone_onnx.ops.dense import Dense
from whetstone_onnx.ops.pool import AvgPool2d, MaxPool2d
from whetstone_onnx.ops.shape import Reshape, Transpose
from whetstone_onnx.netlist.sim import compile_netlist, simulate_netlist

CASES = [("digits_dense.onnx", None, "nhot"), ("digits_conv.onnx", None, "nhot"),
         ("torchstyle_digits_conv.onnx", (0.5, 0.5), "nhot"), ("digits_dense.onnx", None, "readout"),
         ("digits_conv.onnx", None, "readout"), ("torchstyle_digits_conv.onnx", (0.5, 0.5), "readout")]


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0][:-5]}-{c[2]}")
def converted(request, digits, tmp_path_factory):
    model, normalize, output = request.param
    result = api.convert(MODELS / model, data="digits", normalize=normalize, output=output, finetune=False)
    x = fit_to_input(digits.x_test, result.spiking_network.input_shape, normalize, spec="digits")
    out = tmp_path_factory.mktemp("netlist")
    stats = write_netlist(result.spiking_network, out)
    return result, x, out, stats


def test_round_trip_header_and_records(converted):
    result, _, out, stats = converted
    assert sorted(p.name for p in out.iterdir()) == ["netlist.json", "netlist.neurons.bin", "netlist.synapses.bin"]
    netlist = read_netlist(out, verify=True)
    header = netlist.header
    assert header["format"] == FORMAT and header["version"] == VERSION
    assert header["threshold_rule"] == "a neuron fires when its potential >= threshold"
    assert netlist.neurons.dtype == NEURON_DTYPE and netlist.synapses.dtype == SYNAPSE_DTYPE
    network = result.spiking_network
    assert header["input"]["shape"] == list(network.input_shape)
    assert header["input"]["neurons"] == int(np.prod(network.input_shape))
    # Populations tile the id space in order; records carry their population and index.
    first = 0
    for index, population in enumerate(netlist.populations):
        assert population["first_id"] == first and population["count"] == int(np.prod(population["shape"]))
        records = netlist.neurons[first:first + population["count"]]
        assert (records["population"] == index).all()
        np.testing.assert_array_equal(records["index"], np.arange(population["count"]))
        thresholds = records["threshold"]
        assert np.isnan(thresholds).all() == (population["kind"] in ("input", "linear", "readout"))
        first += population["count"]
    assert len(netlist.neurons) == first == stats.neurons
    offset = 0
    for projection in netlist.projections:
        assert projection["synapse_offset"] == offset
        synapses = netlist.projection_synapses(projection)
        post = netlist.population(projection["post"])
        assert ((synapses["post"] >= post["first_id"]) & (synapses["post"] < post["first_id"] + post["count"])).all()
        assert (synapses["weight"] != 0).all()
        offset += projection["synapse_count"]
    assert len(netlist.synapses) == offset == stats.synapses == sum(stats.synapses_per_projection.values())
    assert header["stats"]["synapses"] == stats.synapses
    assert stats.file_bytes["netlist.synapses.bin"] == offset * SYNAPSE_DTYPE.itemsize
    decode = header["output"]["decode"]
    if result.report["options"]["output"] == "nhot":
        key = next(layer.key for layer in network.layers if isinstance(layer, NHotDecode))
        assert decode["kind"] == "nhot" and np.array_equal(np.array(decode["key"]), key)
    else:
        assert decode["kind"] == "argmax" and netlist.population(header["output"]["population"])["kind"] == "readout"


def test_simulator_matches_the_step_network_and_onnxruntime(converted):
    result, x, out, _ = converted
    netlist = read_netlist(out)
    network = result.spiking_network
    simulated = simulate_netlist(netlist, x)
    reference = network.forward(x, all_layers=True)
    for population in netlist.populations[1:]:
        got = simulated.outputs[population["name"]].reshape(len(x), -1)
        want = reference[population["layer"]].reshape(len(x), -1)
        if population["kind"] in ("spiking", "or"):
            mismatches = int(np.count_nonzero(got != want))
            # A mismatch could only be a float64 tie; the simulator counts those.
            assert mismatches <= simulated.near_threshold.get(population["name"], 0), population["name"]
            assert mismatches == 0, (population["name"], mismatches)
        else:
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    onnx_classes = runtime.predict(result.spiking_model, x).reshape(len(x), -1).argmax(1)
    np.testing.assert_array_equal(simulated.classes, onnx_classes)
    assert 0 < simulated.synops <= netlist.stats.synapses
    assert all(0.0 <= rate <= 1.0 for rate in simulated.spike_rate.values())


def _tiny_conv_network(rng, strides=(2, 2), pads=(1, 2, 0, 1), group=2) -> Network:
    weight = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    weight[1, 0, 1, 1] = 0.0                      # a zero weight: no synapse
    conv = Conv2d("conv", weight, None, strides, pads, (1, 1), group)
    out_shape = conv.output_shape((4, 7, 6))
    threshold = rng.standard_normal((4, 1, 1)).astype(np.float32)
    return Network("x", (4, 7, 6), "y", [conv, Spike("spike", threshold)]), out_shape


@pytest.mark.parametrize("dilations", [(1, 1), (2, 1)])
def test_conv_expansion_equals_conv_forward(rng, tmp_path, dilations):
    network, out_shape = _tiny_conv_network(rng)
    conv = network.layers[0]
    conv.dilations = dilations
    out_shape = conv.output_shape((4, 7, 6))
    write_netlist(network, tmp_path)
    netlist = read_netlist(tmp_path)
    n_in = 4 * 7 * 6
    dense = np.zeros((int(np.prod(out_shape)), n_in))
    records = netlist.synapses
    np.add.at(dense, (records["post"].astype(np.int64) - n_in, records["pre"].astype(np.int64)),
              records["weight"].astype(np.float64))
    x = rng.standard_normal((5, 4, 7, 6))
    np.testing.assert_allclose(x.reshape(5, -1) @ dense.T, conv.forward(x).reshape(5, -1), rtol=1e-12, atol=1e-12)
    # Groups: output channels 0-1 see input channels 0-1 only.
    pre_channel = records["pre"] // (7 * 6)
    post_channel = (records["post"] - n_in) // int(np.prod(out_shape[1:]))
    assert ((pre_channel // 2) == (post_channel // 2)).all()
    simulated = simulate_netlist(netlist, x)
    np.testing.assert_array_equal(simulated.outputs["spike"], network.forward(x))


def test_pooling_layers(rng, tmp_path):
    conv = Conv2d("conv", rng.standard_normal((3, 2, 3, 3)).astype(np.float32), None, (1, 1), (1, 1, 1, 1))
    layers = [conv, Spike("spike", np.full((3, 1, 1), 0.2, np.float32)),
              MaxPool2d("max", (3, 3), (2, 2), (1, 1, 1, 1), ceil_mode=True),
              AvgPool2d("avg", (2, 2), (1, 1), (0, 0, 1, 1), count_include_pad=False),
              Reshape("flat", (3 * 4 * 4,)), Dense("out", rng.standard_normal((5, 48)).astype(np.float32),
                                                   rng.standard_normal(5).astype(np.float32))]
    network = Network("x", (2, 7, 7), "y", layers)
    write_netlist(network, tmp_path)
    netlist = read_netlist(tmp_path)
    assert [p["kind"] for p in netlist.populations] == ["input", "spiking", "or", "linear", "readout"]
    x = rng.standard_normal((20, 2, 7, 7))
    simulated = simulate_netlist(netlist, x)
    reference = network.forward(x, all_layers=True)
    np.testing.assert_array_equal(simulated.outputs["max"], reference[2])
    np.testing.assert_allclose(simulated.outputs["avg"], reference[3], rtol=1e-6)   # 1/count stored as float32
    np.testing.assert_allclose(simulated.outputs["out"], reference[5], rtol=1e-5, atol=1e-6)
    or_synapses = netlist.projection_synapses(netlist.projections[1])
    assert (or_synapses["weight"] == 1.0).all()
    assert (netlist.thresholds(netlist.population("max")) == 1.0).all()


def test_stats_of_a_hand_checked_dense_network(tmp_path):
    weight1 = np.array([[1.0, 0.0, 2.0], [0.5, -1.0, 0.0]], np.float32)      # 4 synapses
    weight2 = np.array([[1.0, 1.0], [0.0, -2.0], [3.0, 0.0]], np.float32)    # 4 synapses
    network = Network("x", (3,), "y", [Dense("d1", weight1, None), Spike("s1", np.array([0.5, 0.5], np.float32)),
                                       Dense("d2", weight2, None), Spike("s2", np.array([1.0, 1.0, 1.0], np.float32))])
    stats = write_netlist(network, tmp_path)
    assert stats.neurons == 8 and stats.neurons_per_population == {"input": 3, "s1": 2, "s2": 3}
    assert stats.synapses == 8 and stats.synapses_per_projection == {"s1": 4, "s2": 4}
    # Fan-in: s1 = [2, 2], s2 = [2, 1, 1]; fan-out: inputs [2, 1, 1], s1 [2, 2].
    assert stats.max_fan_in == 2 and stats.mean_fan_in == pytest.approx(8 / 5)
    assert stats.max_fan_out == 2 and stats.mean_fan_out == pytest.approx(8 / 5)
    assert stats.weight_min == -2.0 and stats.weight_max == 3.0
    assert stats.distinct_weights == 6            # -2, -1, 0.5, 1, 2, 3
    assert stats.fan_in_histogram == {"s1": [[2, 2]], "s2": [[1, 2], [2, 1]]}
    assert stats.to_dict()["synapses"] == 8
    x = np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    simulated = simulate_netlist(read_netlist(tmp_path), x)
    # Sample 0: input nonzero 0, 1 (fan-out 2 + 1); s1 = [1, 0] (fan-out 2).  Sample 1: input 2 (1); s1 = [1, 0] (2).
    assert simulated.synops == pytest.approx(((3 + 2) + (1 + 2)) / 2)
    assert network.macs() == 6 + 6


def test_weight_quantization(converted, digits, tmp_path):
    result, x, out, _ = converted
    network = result.spiking_network
    stats = write_netlist(network, tmp_path, weight_bits=4)
    netlist = read_netlist(tmp_path, verify=True)
    quantization = netlist.header["weight_quantization"]
    assert quantization["bits"] == 4
    for projection in netlist.projections:
        weights = netlist.projection_synapses(projection)["weight"]
        assert len(np.unique(weights)) <= 16
        scale = projection["weight_scale"]
        if scale is not None:
            assert quantization["scales"][projection["name"]] == scale
            np.testing.assert_allclose(weights / scale, np.round(weights / scale), atol=1e-4)
    full = simulate_netlist(read_netlist(out), x)
    quantized = simulate_netlist(netlist, x)
    accuracy = {"float32": float(np.mean(full.classes == digits.y_test)),
                "4-bit": float(np.mean(quantized.classes == digits.y_test))}
    print(f"\n{network.layers[0].name}: accuracy {accuracy}, synapses {netlist.stats.synapses} "
          f"(float32 {read_netlist(out).stats.synapses})")
    assert stats.synapses <= read_netlist(out).stats.synapses
    assert accuracy["4-bit"] > 0.1      # reported above; 4 bits must still classify


def test_hardware_check_flags_fan_in_and_quantization(converted):
    _, _, out, stats = converted
    netlist = read_netlist(out)
    tiny = HardwareLimits("tiny", max_fan_in=8, weight_bits=2, neurons_per_core=16, max_cores=2, source="test")
    report = check_hardware(netlist, tiny)
    assert not report["ok"]
    fan_in = report["rules"]["fan_in"]
    assert not fan_in["ok"] and fan_in["actual"] == stats.max_fan_in > 8 and fan_in["neurons_over_limit"] > 0
    assert report["rules"]["weights"]["needs_quantization"]
    cores = report["rules"]["cores"]
    assert cores["actual"] == sum(-(-count // 16) for count in list(stats.neurons_per_population.values())[1:])
    assert check_hardware(stats, tiny) == report == check_hardware(stats.to_dict(), tiny)
    generous = HardwareLimits("big", max_fan_in=10_000, weight_bits=24, neurons_per_core=10_000, source="test")
    assert check_hardware(stats, generous)["ok"]
    json.dumps(check_hardware(stats, TRUENORTH))


def test_corrupt_or_missing_files_are_input_errors(converted, tmp_path):
    result, _, _, _ = converted
    write_netlist(result.spiking_network, tmp_path)
    synapses = tmp_path / "netlist.synapses.bin"
    data = bytearray(synapses.read_bytes())
    data[5] ^= 0xFF
    synapses.write_bytes(bytes(data))
    read_netlist(tmp_path)                                   # same size: only the checksum sees it
    with pytest.raises(InputError, match="sha256"):
        read_netlist(tmp_path, verify=True)
    synapses.write_bytes(bytes(data[:-3]))
    with pytest.raises(InputError, match="truncated or corrupt"):
        read_netlist(tmp_path)
    synapses.unlink()
    with pytest.raises(InputError, match="not found"):
        read_netlist(tmp_path)
    header = tmp_path / "netlist.json"
    header.write_text("{not json")
    with pytest.raises(InputError, match="not a readable netlist header"):
        read_netlist(tmp_path)
    header.write_text(json.dumps({"format": FORMAT, "version": 99}))
    with pytest.raises(InputError, match="version 99"):
        read_netlist(tmp_path)
    with pytest.raises(InputError, match="header not found"):
        read_netlist(tmp_path / "nowhere")


def test_unsupported_layers_are_named(rng, tmp_path):
    dense = Dense("hidden", rng.standard_normal((4, 3)).astype(np.float32), None)
    network = Network("x", (3,), "y", [dense, Activation("relu", "Relu"), Dense("out", np.ones((2, 4), np.float32),
                                                                                None)])
    with pytest.raises(UnsupportedModelError, match="'hidden'"):
        write_netlist(network, tmp_path)
    pool_first = Network("x", (1, 4, 4), "y", [MaxPool2d("pool", (2, 2), (2, 2)),
                                               Reshape("flat", (4,)), Dense("out", np.ones((2, 4), np.float32), None)])
    with pytest.raises(UnsupportedModelError, match="'pool'"):
        write_netlist(pool_first, tmp_path)
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- connectivity descriptors and the fast path


def _without_descriptors(netlist):
    """The same netlist with every connectivity descriptor removed: the simulator's CSR path."""
    header = json.loads(json.dumps(netlist.header))
    for projection in header["projections"]:
        projection.pop("connectivity", None)
    return dataclasses.replace(netlist, header=header)


def _assert_same_simulation(netlist, x, **kwargs):
    """Fast path and CSR path agree: spikes bit for bit, real values to float64 rounding, same ties."""
    fast_steps = compile_netlist(netlist)
    slow = _without_descriptors(netlist)
    assert all(step.path == "csr" for step in compile_netlist(slow))
    fast = simulate_netlist(netlist, x, steps=fast_steps, keep_potentials=True, **kwargs)
    csr = simulate_netlist(slow, x, keep_potentials=True)
    for step in fast_steps:
        name = step.name
        if step.threshold is not None:
            np.testing.assert_array_equal(fast.outputs[name], csr.outputs[name], err_msg=name)
        else:
            np.testing.assert_allclose(fast.outputs[name], csr.outputs[name], rtol=1e-12, atol=1e-12, err_msg=name)
        # Potentials: float32 sums (within their error bound) except near a threshold, where they are exact.
        np.testing.assert_allclose(fast.potentials[name], csr.potentials[name], rtol=1e-5, atol=1e-5, err_msg=name)
    assert fast.near_threshold == csr.near_threshold
    np.testing.assert_array_equal(fast.classes, csr.classes)
    assert fast.synops == pytest.approx(csr.synops, rel=1e-12) and fast.spike_rate == csr.spike_rate
    return fast_steps


def test_descriptors_round_trip_and_take_the_fast_path(converted):
    result, x, out, _ = converted
    netlist = read_netlist(out)
    kinds = {"spiking": ("dense", "conv2d"), "readout": ("dense",), "or": ("maxpool2d",), "linear": ("avgpool2d",)}
    for projection in netlist.projections:
        connectivity = projection["connectivity"]
        post = netlist.population(projection["post"])
        assert connectivity["kind"] in kinds[post["kind"]]
        assert connectivity["output_shape"] == post["shape"]
        pre = netlist.population(projection["pre"][0])
        assert int(np.prod(connectivity["input_shape"])) == pre["count"]
        if connectivity["kind"] == "conv2d":
            layer = result.spiking_network.layers[post["layer"] - 1]
            assert connectivity["kernel_shape"] == list(layer.weight.shape)
            assert connectivity["pads"] == list(layer.pads) and connectivity["group"] == layer.group
    steps = _assert_same_simulation(netlist, x, batch=50, workers=2)
    assert all(step.fallback is None for step in steps), [step.fallback for step in steps]


@pytest.mark.parametrize("strides,pads,dilations,group", [((1, 1), (1, 1, 1, 1), (1, 1), 1),
                                                           ((2, 1), (1, 2, 0, 1), (1, 2), 2),
                                                           ((1, 2), (0, 0, 2, 0), (2, 1), 4)])
def test_fast_conv_and_pooling_equal_the_csr_path(rng, tmp_path, strides, pads, dilations, group):
    weight = rng.standard_normal((4, 4 // group, 3, 3)).astype(np.float32)
    weight[1, 0, 1, 1] = 0.0                                   # a zero weight: no synapse
    conv = Conv2d("conv", weight, rng.standard_normal(4).astype(np.float32), strides, pads, dilations, group)
    shape = conv.output_shape((4, 9, 8))
    layers = [Transpose("hwc_to_chw", (2, 0, 1)), conv,
              Spike("spike", rng.uniform(-1, 1, (4, 1, 1)).astype(np.float32)),
              MaxPool2d("max", (2, 3), (2, 1), (1, 0, 0, 1), ceil_mode=True)]
    shape = layers[3].output_shape(shape)
    conv2 = Conv2d("conv2", rng.standard_normal((3, 4, 2, 2)).astype(np.float32), None, (1, 1), (1, 0, 0, 1))
    layers += [conv2, Spike("spike2", np.full((3, 1, 1), 0.3, np.float32)),
               AvgPool2d("avg", (2, 2), (1, 1), (0, 0, 1, 1), count_include_pad=False),
               Transpose("to_hwc", (1, 2, 0))]
    shape = layers[6].output_shape(conv2.output_shape(shape))
    flat = int(np.prod(shape))
    layers += [Reshape("flat", (flat,)), Dense("hidden", rng.standard_normal((6, flat)).astype(np.float32), None),
               Spike("spike3", np.zeros(6, np.float32)),
               Dense("out", rng.standard_normal((3, 6)).astype(np.float32), rng.standard_normal(3).astype(np.float32))]
    network = Network("x", (9, 8, 4), "y", layers)
    write_netlist(network, tmp_path)
    netlist = read_netlist(tmp_path)
    views = [p["connectivity"]["pre_view"] for p in netlist.projections]
    assert views[0] == [["transpose", [2, 0, 1]]] and views[4] == [["transpose", [1, 2, 0]], ["reshape", [flat]]]
    x = rng.standard_normal((23, 9, 8, 4)) * 2
    steps = _assert_same_simulation(netlist, x, batch=5, workers=2)
    assert [s.path for s in steps] == ["conv2d", "maxpool2d", "conv2d", "avgpool2d", "dense", "dense"]
    reference = network.forward(x, all_layers=True)
    simulated = simulate_netlist(netlist, x, steps=steps)
    np.testing.assert_array_equal(simulated.outputs["spike3"], reference[10])


def test_synapse_order_does_not_depend_on_the_writers_chunks(rng, tmp_path, monkeypatch):
    """Records ascend by (post, slot) however the writer splits a layer into chunks (the fast path needs it)."""
    network, _ = _tiny_conv_network(rng, strides=(1, 1), pads=(1, 1, 1, 1))
    write_netlist(network, tmp_path / "whole")
    monkeypatch.setattr(explicit, "CHUNK_SYNAPSES", 50)     # several row and channel blocks per group
    write_netlist(network, tmp_path / "chunked")
    whole, chunked = read_netlist(tmp_path / "whole"), read_netlist(tmp_path / "chunked")
    np.testing.assert_array_equal(np.asarray(whole.synapses), np.asarray(chunked.synapses))
    assert [step.path for step in compile_netlist(chunked)] == ["conv2d"]


def test_potentials_near_a_threshold_are_recomputed_exactly(rng, tmp_path):
    """Thresholds at float32 roundings of float64 potentials: float32 sums alone would decide some wrongly."""
    weight = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    conv = Conv2d("conv", weight, None, (1, 1), (1, 1, 1, 1))
    x = rng.random((40, 3, 6, 6))
    potential = conv.forward(x)                                            # float64
    threshold = potential[0].astype(np.float32)                            # per neuron: a tie for sample 0
    dense = rng.standard_normal((5, 8 * 36)).astype(np.float32)
    spikes = (potential >= threshold).reshape(len(x), -1)
    dense_threshold = (spikes[0] @ dense.T.astype(np.float64)).astype(np.float32)
    network = Network("x", (3, 6, 6), "y", [conv, Spike("spike", threshold), Reshape("flat", (8 * 36,)),
                                            Dense("dense", dense, None), Spike("code", dense_threshold)])
    write_netlist(network, tmp_path)
    netlist = read_netlist(tmp_path)
    steps = compile_netlist(netlist)
    recomputed = {}
    for step in steps:
        exact = step.op.exact

        def counting(values, rows, cols, exact=exact, name=step.name):
            recomputed[name] = recomputed.get(name, 0) + len(rows)
            return exact(values, rows, cols)
        step.op.exact = counting
    _assert_same_simulation(netlist, x, batch=8)
    simulate_netlist(netlist, x, steps=steps)
    assert recomputed["spike"] >= 8 * 36 and recomputed["code"] >= 5
    reference = network.forward(x, all_layers=True)
    np.testing.assert_array_equal(simulate_netlist(netlist, x, steps=steps).outputs["code"], reference[4])


def _tamper(netlist, tmp_path, edit):
    """A copy of the netlist's files with ``edit(records, header)`` applied (checksums left stale)."""
    copy = tmp_path / "tampered"
    shutil.copytree(netlist.path, copy)
    records = np.memmap(copy / "netlist.synapses.bin", dtype=SYNAPSE_DTYPE, mode="r+")
    header = json.loads((copy / "netlist.json").read_text())
    edit(records, header)
    records.flush()
    (copy / "netlist.json").write_text(json.dumps(header))
    return read_netlist(copy)


def _edit_weight(records, header):
    records["weight"][header["projections"][1]["synapse_offset"] + 7] *= 1.5


def _repeat_synapse(records, header):
    start = header["projections"][1]["synapse_offset"]
    records[start + 3] = records[start + 2]           # one slot twice, another missing: same count


def _edit_stride(records, header):
    header["projections"][1]["connectivity"]["strides"] = [2, 1]


@pytest.mark.parametrize("edit,reason", [(_edit_weight, "different weights"), (_repeat_synapse, "order"),
                                         (_edit_stride, "outside its output's window")])
def test_records_that_the_descriptor_does_not_reproduce_fall_back_to_csr(rng, tmp_path, edit, reason):
    conv = Conv2d("conv", rng.standard_normal((4, 2, 3, 3)).astype(np.float32), None, (1, 1), (1, 1, 1, 1))
    conv2 = Conv2d("conv2", rng.standard_normal((3, 4, 3, 3)).astype(np.float32), None, (1, 1), (1, 1, 1, 1))
    network = Network("x", (2, 6, 6), "y", [conv, Spike("s1", np.full((4, 1, 1), 0.2, np.float32)),
                                            conv2, Spike("s2", np.full((3, 1, 1), 0.1, np.float32))])
    write_netlist(network, tmp_path / "netlist")
    tampered = _tamper(read_netlist(tmp_path / "netlist"), tmp_path, edit)
    steps = compile_netlist(tampered)
    assert [s.path for s in steps] == ["conv2d", "csr"]
    assert reason in steps[1].fallback
    x = rng.standard_normal((30, 2, 6, 6))
    # The simulator runs what the records say, whatever the descriptor claims.
    _assert_same_simulation(tampered, x)


def test_forced_spikes_must_be_zero_or_one(converted):
    result, x, out, _ = converted
    netlist = read_netlist(out)
    spiking = next(p for p in netlist.populations if p["kind"] == "spiking")
    with pytest.raises(InputError, match="not spikes"):
        simulate_netlist(netlist, x[:4], forced={spiking["name"]: np.full((4, spiking["count"]), 0.5)})
