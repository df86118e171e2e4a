"""Activations: the float originals, their sharpenable Whetstone replacements
and the binary Spike they become at sharpness 1.

  Relu, Clip(0, k), HardSigmoid  ->  BoundedRelu   (fires when input >= 0.5)
  Sigmoid                        ->  SharpSigmoid  (fires when input >= 0)
  Tanh                           ->  SharpSigmoid, exactly where the next linear layer
                                     takes tanh = 2 sigmoid(2x) - 1's affine (else as below)
  LeakyRelu, PRelu, Elu, Selu,   ->  BoundedRelu, approximated: at sharpness 0 it is
  Softplus, HardSwish, Mish,         a ReLU scaled from data, as Relu is
  GELU (erf or tanh form), SiLU

The project's own BoundedRelu / SharpSigmoid nodes lift as they are, and so do the
chains Keras' ONNX export writes for the ``whetstone_onnx.keras`` layers (their
sharpness frozen into the graph), recognised below. GELU and SiLU have no opset-18
op: exporters write them out as formulas, which onnx_passes/pointwise.py recognises by
what they compute (POINTWISE_FUNCTIONS) and replaces with the project-domain
Gelu / GeluTanh / Silu nodes lifted here.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir
from scipy import special


from ..errors import UnsupportedModelError
from ..network import Layer, OnnxBuilder
from ..onnx_graph import data_input, follow_chain, scalar_operand
from ..spiking_onnx import (BRELU_THRESHOLD, DOMAIN, SHARPNESS_EPSILON, SIGMOID_CLIP, SIGMOID_GAIN,
                            SIGMOID_THRESHOLD)
from .registry import LiftContext, Recognised, lifts, recognises


def _softplus(x):
    return np.logaddexp(0.0, x)


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))         # = 1 / (1 + exp(-x)), without overflow


def _elu(x, alpha):
    return np.where(x < 0, alpha * np.expm1(np.minimum(x, 0.0)), x)


# The float functions as ONNX defines them (float64 references), by op type; keyword
# arguments are the op's attributes, as ``Activation.params`` holds them.
FLOAT_FUNCTIONS = {
    "Relu": lambda x: np.maximum(x, 0.0),
    "Clip": lambda x, min, max: np.clip(x, min, max),
    "Sigmoid": _sigmoid,
    "HardSigmoid": lambda x, alpha, beta: np.clip(alpha * x + beta, 0.0, 1.0),
    "Tanh": np.tanh,
    "LeakyRelu": lambda x, alpha: np.where(x < 0, alpha * x, x),
    "Elu": _elu,
    "Selu": lambda x, alpha, gamma: gamma * _elu(x, alpha),
    "Softplus": _softplus,
    "HardSwish": lambda x: x * np.clip(x / 6.0 + 0.5, 0.0, 1.0),
    "Mish": lambda x: x * np.tanh(_softplus(x)),
    # No opset-18 op: ONNX's Gelu (opset 20, approximate "none" / "tanh") and x sigmoid(x).
    "Gelu": lambda x: 0.5 * x * (1.0 + special.erf(x / np.sqrt(2.0))),
    "GeluTanh": lambda x: 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3))),
    "Silu": lambda x: x * _sigmoid(x),
}
# The functions of one variable a chain of elementwise standard ops may compute
# (onnx_passes/pointwise.py): exporters write GELU and SiLU, and sometimes the others, that way.
POINTWISE_FUNCTIONS = ("Relu", "Sigmoid", "Tanh", "Softplus", "HardSwish", "Mish", "Gelu", "GeluTanh", "Silu")
# Those with no opset-18 op: recognised into project-domain nodes of these names.
FORMULA_ONLY = ("Gelu", "GeluTanh", "Silu")
# Keras' own activations computing the same function (a regression readout's keeps its own).
KERAS_ACTIVATIONS = {"Sigmoid": "sigmoid", "Tanh": "tanh", "Softplus": "softplus", "Silu": "silu",
                     "HardSwish": "hard_swish", "Mish": "mish"}
# ONNX's default attributes (Selu's are float32 roundings of the paper's constants).
SELU_ALPHA, SELU_GAMMA = 1.67326319217681884765625, 1.05070102214813232421875


@dataclass(eq=False)
class Activation(Layer):
    """A float activation as the source model has it."""

    name: str
    op_type: str                                   # a key of FLOAT_FUNCTIONS, or PRelu
    params: dict[str, float] = field(default_factory=dict)   # the op's attributes (Clip: its min and max inputs)
    slope: np.ndarray | None = None                # PRelu: its slope input, float32, broadcast as ONNX does

    kind = "activation"

    def __post_init__(self):
        if self.op_type not in FLOAT_FUNCTIONS and self.op_type != "PRelu":
            raise ValueError(f"activation '{self.name}': unknown op type {self.op_type!r}")

    def forward(self, x):
        if self.op_type == "PRelu":
            return np.where(x < 0, x * self.slope.astype(np.float64), x)
        return FLOAT_FUNCTIONS[self.op_type](x, **self.params)

    def emit(self, builder: OnnxBuilder, x: str) -> str:
        if self.op_type == "Clip":
            low = builder.constant(f"{self.name}.min", np.array(self.params["min"]))
            high = builder.constant(f"{self.name}.max", np.array(self.params["max"]))
            return builder.node("Clip", [x, low, high], self.name, name=self.name)
        if self.op_type == "PRelu":
            slope = builder.constant(f"{self.name}.slope", self.slope)
            return builder.node("PRelu", [x, slope], self.name, name=self.name)
        if self.op_type in FORMULA_ONLY:
            return self._emit_formula(builder, x)
        return builder.node(self.op_type, [x], self.name, name=self.name, **self.params)

    def _emit_formula(self, builder: OnnxBuilder, x: str) -> str:
        """GELU and SiLU in opset-18 ops, as PyTorch's exporter writes them."""
        def step(op_type: str, inputs: list[str], suffix: str) -> str:
            return builder.node(op_type, inputs, f"{self.name}.{suffix}", name=f"{self.name}.{suffix}")

        def const(suffix: str, value: float) -> str:
            return builder.constant(f"{self.name}.{suffix}", np.array(value))

        if self.op_type == "Silu":
            gate = step("Sigmoid", [x], "sigmoid")
        elif self.op_type == "Gelu":
            gate = step("Erf", [step("Div", [x, const("sqrt2", np.sqrt(2.0))], "scaled")], "erf")
        else:
            cube = step("Mul", [step("Pow", [x, const("three", 3.0)], "cube"), const("c", 0.044715)], "cubic")
            inner = step("Mul", [step("Add", [x, cube], "sum"), const("k", np.sqrt(2.0 / np.pi))], "inner")
            gate = step("Tanh", [inner], "tanh")
        if self.op_type != "Silu":
            gate = step("Mul", [step("Add", [gate, const("one", 1.0)], "plus1"), const("half", 0.5)], "gate")
        return builder.node("Mul", [x, gate], self.name, name=self.name)

    def readout_function(self) -> dict:
        """This activation as the netlists' metadata names it, when the host applies it to a
        regression network's readout: its op type and attributes (PRelu: its slope)."""
        extra = {} if self.slope is None else {"slope": self.slope.tolist()}
        return {"op_type": self.op_type, **self.params, **extra}

    @classmethod
    def from_readout_function(cls, function: dict) -> "Activation":
        """The activation a netlist's metadata names (see ``readout_function``)."""
        params = {k: v for k, v in function.items() if k not in ("op_type", "slope")}
        slope = np.asarray(function["slope"], np.float32) if "slope" in function else None
        return cls("readout_activation", function["op_type"], params, slope)

    def to_nir(self, builder, input_shape) -> None:
        """No NIR node: the host applies a regression readout's activation, named in the metadata."""
        if not builder.in_readout_tail:
            super().to_nir(builder, input_shape)
        builder.after_output(self.name, "readout_activation", self.readout_function())

    def to_netlist(self, planner, index: int) -> None:
        """No neurons: the header's output decoding names the function the host applies."""
        if not planner.network.regression or planner.source_kind != "readout":
            raise UnsupportedModelError(f"layer '{self.name}' ({self.op_type}): only a regression network's "
                                        "readout may end with a float activation")
        planner.decode = {"kind": "values", "activation": self.readout_function()}

    def to_keras(self, builder) -> None:
        import keras
        name = builder.name(self.name)
        if self.op_type in KERAS_ACTIVATIONS:
            builder.apply(keras.layers.Activation(KERAS_ACTIVATIONS[self.op_type], name=name))
        elif self.op_type == "Relu":
            builder.apply(keras.layers.ReLU(name=name))
        elif self.op_type == "Clip":
            builder.apply(keras.layers.ReLU(max_value=self.params["max"], name=name))
        elif self.op_type == "HardSigmoid":
            builder.apply(keras.layers.Rescaling(self.params["alpha"], self.params["beta"],
                                                 name=builder.name(f"{self.name}_affine")))
            builder.apply(keras.layers.ReLU(max_value=1.0, name=name))
        else:
            # Fine-tuning trains the sharpenable network, where every activation is a Whetstone unit.
            raise UnsupportedModelError(f"activation '{self.name}' ({self.op_type}) has no Keras form: only "
                                        "sharpenable networks are built in Keras")

    def describe(self):
        return {**super().describe(), "op_type": self.op_type, **self.params}


@dataclass(eq=False)
class Sharpenable(Layer):
    """Whetstone's sharpenable activation: bounded ReLU or sharpened sigmoid."""

    name: str
    function: str            # "bounded_relu" or "sharp_sigmoid"
    sharpness: float = 0.0
    source: str = ""         # the op it replaced, for the report
    approximation: str = ""  # why it only approximates that op at sharpness 0; "" where it is exact

    kind = "sharpenable"

    @property
    def op_type(self) -> str:
        return "BoundedRelu" if self.function == "bounded_relu" else "SharpSigmoid"

    @property
    def threshold(self) -> np.float32:
        """Input level at which the fully sharpened unit fires."""
        return BRELU_THRESHOLD if self.function == "bounded_relu" else SIGMOID_THRESHOLD

    def forward(self, x):
        # float32 arithmetic in the op's order, so results match the ONNX function.
        x32 = x.astype(np.float32)
        span = np.float32(1.0) - np.float32(self.sharpness) + SHARPNESS_EPSILON
        if self.sharpness == 1.0:
            return (x32 >= self.threshold).astype(np.float64)
        if self.function == "bounded_relu":
            ramp = (x32 - BRELU_THRESHOLD) / span + BRELU_THRESHOLD
            return np.clip(ramp, 0.0, 1.0).astype(np.float64)
        gain = np.clip(x32 * (SIGMOID_GAIN / span), -SIGMOID_CLIP, SIGMOID_CLIP).astype(np.float64)
        return 1.0 / (1.0 + np.exp(-gain))

    def emit(self, builder: OnnxBuilder, x: str) -> str:
        sharpness = builder.constant(f"{self.name}.sharpness", np.array(self.sharpness))
        return builder.node(self.op_type, [x, sharpness], self.name, name=self.name, custom=True)

    def to_keras(self, builder) -> None:
        from ..keras.layers import BoundedRelu, SharpSigmoid
        layer_class = BoundedRelu if self.function == "bounded_relu" else SharpSigmoid
        builder.apply(layer_class(self.sharpness, name=builder.name(self.name)), owner=self)

    def from_keras(self, keras_layer) -> None:
        self.sharpness = keras_layer.get_sharpness()

    def describe(self):
        return {**super().describe(), "op_type": self.op_type, "sharpness": self.sharpness, "replaces": self.source,
                **({"approximated": self.approximation} if self.approximation else {})}


@dataclass(eq=False)
class Spike(Layer):
    """Binary spikes: 1 where the potential >= the neuron's threshold."""

    name: str
    threshold: np.ndarray    # float32, broadcastable to the per-sample shape (dense: (n,); conv: (c, 1, 1))

    kind = "spike"

    def forward(self, x):
        return (x >= self.threshold.astype(np.float64)).astype(np.float64)

    def emit(self, builder: OnnxBuilder, x: str) -> str:
        threshold = builder.constant(f"{self.name}.threshold", self.threshold)
        return builder.node("Spike", [x, threshold], self.name, name=self.name, custom=True)

    def to_nir(self, builder, input_shape) -> None:
        builder.spiking_unit(self.name, self.threshold, tuple(input_shape))

    def describe(self):
        return {**super().describe(), "threshold_min": float(self.threshold.min()),
                "threshold_max": float(self.threshold.max())}


@lifts("Relu", "Sigmoid", "Tanh", "Softplus", "HardSwish", "Mish")
def lift_plain(node, ctx: LiftContext) -> Activation:
    return Activation(node.name, node.op_type)


@lifts(*FORMULA_ONLY, domain=DOMAIN)
def lift_formula(node, ctx: LiftContext) -> Activation:
    return Activation(node.name, node.op_type)


@lifts("LeakyRelu")
def lift_leaky_relu(node, ctx: LiftContext) -> Activation:
    return Activation(node.name, "LeakyRelu", {"alpha": ctx.float("alpha", 0.01)})


@lifts("Elu")
def lift_elu(node, ctx: LiftContext) -> Activation:
    return Activation(node.name, "Elu", {"alpha": ctx.float("alpha", 1.0)})


@lifts("Selu")
def lift_selu(node, ctx: LiftContext) -> Activation:
    return Activation(node.name, "Selu", {"alpha": ctx.float("alpha", SELU_ALPHA),
                                          "gamma": ctx.float("gamma", SELU_GAMMA)})


@lifts("PRelu")
def lift_prelu(node, ctx: LiftContext) -> Activation:
    return Activation(node.name, "PRelu", slope=ctx.constant(1, "slope").astype(np.float32))


@lifts("Clip")
def lift_clip(node, ctx: LiftContext) -> Activation:
    low, high = ctx.optional_constant(1), ctx.optional_constant(2)
    if low is None or high is None or float(low) != 0.0 or not float(high) > 0.0:
        raise ctx.fail("only Clip(0, k) with constant k > 0 (a bounded ReLU) is supported")
    return Activation(node.name, "Clip", {"min": 0.0, "max": float(high)})


@lifts("HardSigmoid")
def lift_hard_sigmoid(node, ctx: LiftContext) -> Activation:
    return Activation(node.name, "HardSigmoid", {"alpha": ctx.float("alpha", 0.2), "beta": ctx.float("beta", 0.5)})


FUNCTIONS = {"BoundedRelu": "bounded_relu", "SharpSigmoid": "sharp_sigmoid"}


@lifts(*FUNCTIONS, domain=DOMAIN)
def lift_sharpenable(node, ctx: LiftContext) -> Sharpenable:
    sharpness = float(ctx.constant(1, "sharpness"))
    if not 0.0 <= sharpness <= 1.0:
        raise ctx.fail(f"sharpness {sharpness} is outside [0, 1]")
    return Sharpenable(node.name, FUNCTIONS[node.op_type], sharpness, source=node.op_type)


def _sharpness(span: float) -> float:
    """The sharpness s whose span 1 - s + 1e-3 is ``span``, to the 6 decimals the export keeps."""
    return round(1.0 + float(SHARPNESS_EPSILON) - span, 6)


def _recognised(chain: list[ir.Node], data: ir.Value, op_type: str, sharpness: float) -> Recognised | None:
    if not 0.0 <= sharpness <= 1.0:
        return None
    return Recognised(chain, data, op_type, [("sharpness", np.array(sharpness, np.float32))])


def _clips_to(chain: list[ir.Node], low: float, high: float) -> bool:
    """The last two nodes of ``chain`` are Min(high) and Max(low), in either order."""
    bounds = {node.op_type: scalar_operand(node, before.outputs[0]) for before, node in zip(chain[-3:-1], chain[-2:])}
    return bounds == {"Min": high, "Max": low}


@recognises("GreaterOrEqual")
def recognise_exported_step(node: ir.Node) -> Recognised | None:
    """Cast(x >= 0.5) or Cast(x >= 0): a BoundedRelu or SharpSigmoid at sharpness 1."""
    chain, data = follow_chain(node, ("GreaterOrEqual", "Cast")), node.inputs[0]
    if chain is None or chain[1].attributes.get_int("to", 0) != ir.DataType.FLOAT:
        return None
    threshold = scalar_operand(node, data) if node.inputs[1] is not data else None
    op_type = {float(BRELU_THRESHOLD): "BoundedRelu", float(SIGMOID_THRESHOLD): "SharpSigmoid"}.get(threshold)
    return None if op_type is None else _recognised(chain, data, op_type, 1.0)


@recognises("Sub")
def recognise_exported_bounded_ramp(node: ir.Node) -> Recognised | None:
    """clip((x - 0.5) * k + 0.5, 0, 1) with k = 1 / (1 - s + 1e-3): a BoundedRelu at sharpness s < 1."""
    chain, data = follow_chain(node, ("Sub", "Mul", "Add", ("Min", "Max"), ("Min", "Max"))), node.inputs[0]
    if chain is None or scalar_operand(node, data) != BRELU_THRESHOLD \
            or scalar_operand(chain[2], chain[1].outputs[0]) != BRELU_THRESHOLD or not _clips_to(chain, 0.0, 1.0):
        return None
    gain = scalar_operand(chain[1], node.outputs[0])
    return None if not gain or gain <= 0 else _recognised(chain, data, "BoundedRelu", _sharpness(1.0 / gain))


@recognises("Mul")
def recognise_exported_sigmoid(node: ir.Node) -> Recognised | None:
    """sigmoid(clip(x * k, -40, 40)) with k = 4 ln(2 + sqrt 3) / (1 - s + 1e-3): a SharpSigmoid at sharpness s < 1."""
    chain = follow_chain(node, ("Mul", ("Min", "Max"), ("Min", "Max"), "Sigmoid"))
    data = data_input(node)
    if chain is None or data is None or not _clips_to(chain[:3], -float(SIGMOID_CLIP), float(SIGMOID_CLIP)):
        return None
    gain = scalar_operand(node, data)
    return None if not gain or gain <= 0 else _recognised(chain, data, "SharpSigmoid",
                                                          _sharpness(float(SIGMOID_GAIN) / gain))
