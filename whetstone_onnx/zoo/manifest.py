"""The zoo manifest: reading it, and every model's convert options normalised (the resume key's part)."""
from __future__ import annotations

import glob
import os
import re
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:                                   # the same parser, as a package, before Python 3.11
    import tomli as tomllib

from ..conversion import ConvertOptions
from ..data import parse_normalize
from ..errors import InputError, WhetstoneError
from ..finetune import FinetuneOptions

# The manifest's per-model options are api.convert's (conversion.ConvertOptions and
# ``data``, bar ``progress``); their defaults are ConvertOptions', their TOML types are here.
OPTION_TYPES: dict[str, tuple[type, ...]] = {
    "data": (str,), "normalize": (list, str), "task": (str,), "levels": (int,), "output": (str,),
    "output_name": (str,), "key_width": (int,),
    "seed": (int,),
    "finetune": (bool, dict), "calibration_percentile": (int, float), "netlist": (bool,),
    "nir_profile": (str,), "nir_dt": (int, float), "weight_bits": (int,), "hardware": (str,),
    "max_loss": (int, float), "max_error_ratio": (int, float), "accept_loss": (bool,), "max_elements": (int,), "max_synapses": (int,),
}
# A [[model]] table's own keys: not convert options, and not part of the resume key
# (a limit changes whether a run finishes, never what a finished run computes).
MODEL_KEYS = ("path", "name", "timeout", "memory_limit")
MANIFEST_KEYS = ("defaults", "model")
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_GLOB_CHARACTERS = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class ZooModel:
    name: str        # the model's directory under the output directory
    path: str        # relative to the manifest's directory, or absolute as the manifest wrote it (POSIX)
    options: dict    # every api.convert option, normalised (JSON types): part of the resume key
    timeout_s: float | None = None        # this model's limits, overriding the batch's
    memory_limit_mb: int | None = None


@dataclass(frozen=True)
class Manifest:
    source: Path     # the TOML file, or the directory of .onnx files
    base_dir: Path   # absolute; model paths and data specs are relative to it
    models: list[ZooModel]


def read_manifest(source: str | Path) -> Manifest:
    """A TOML manifest, or a directory whose .onnx files are converted with default options.

    Raises ``InputError`` naming the file and the problem (exit code 2 on the command line).
    """
    source = Path(source)
    if source.is_dir():
        base_dir = source.resolve()
        paths = _expand(base_dir, "*.onnx", source)
        return Manifest(source, base_dir, [ZooModel(Path(p).stem, p, normalise_options({}, source)) for p in paths])
    if not source.is_file():
        raise InputError(f"{source}: file not found")
    try:
        document = tomllib.loads(source.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{source}: not a valid TOML manifest ({str(exc).splitlines()[0]})") from None
    _reject_unknown(document, MANIFEST_KEYS, source, "top-level key")
    defaults = document.get("defaults", {})
    entries = document.get("model", [])
    if not isinstance(defaults, dict) or not isinstance(entries, list) or \
            not all(isinstance(entry, dict) for entry in entries):
        raise InputError(f"{source}: expected a [defaults] table and [[model]] tables")
    if not entries:
        raise InputError(f"{source}: lists no models (add [[model]] tables with a path)")
    _reject_unknown(defaults, OPTION_TYPES, source, "option in [defaults]")
    base_dir = source.resolve().parent
    models = [model for index, entry in enumerate(entries, 1)
              for model in _entry_models(entry, index, defaults, base_dir, source)]
    _reject_duplicate_names(models, source)
    return Manifest(source, base_dir, models)


def _entry_models(entry: dict, index: int, defaults: dict, base_dir: Path, source: Path) -> list[ZooModel]:
    where = f"{source}: model {index}"
    _reject_unknown(entry, (*MODEL_KEYS, *OPTION_TYPES), where, "option")
    pattern = entry.get("path")
    if not isinstance(pattern, str) or not pattern:
        raise InputError(f"{where}: needs a path (a file, a directory or a glob such as models/*.onnx)")
    paths = _expand(base_dir, pattern, source)
    name = entry.get("name")
    if name is not None and (len(paths) != 1 or _is_pattern(base_dir, pattern)):
        raise InputError(f"{where}: name {name!r} needs a path naming one file, not {pattern!r}")
    options = normalise_options({**defaults, **{k: v for k, v in entry.items() if k not in MODEL_KEYS}},
                                f"{where} ({pattern})")
    timeout, memory_limit = _limits(entry, where)
    return [ZooModel(name if name is not None else Path(path).stem, path, options, timeout, memory_limit)
            for path in paths]


def _limits(entry: dict, where: str) -> tuple[float | None, int | None]:
    timeout, memory_limit = entry.get("timeout"), entry.get("memory_limit")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise InputError(f"{where}: timeout must be a positive number of seconds, not {timeout!r}")
    if memory_limit is not None and (isinstance(memory_limit, bool) or not isinstance(memory_limit, int)
                                     or memory_limit < 1):
        raise InputError(f"{where}: memory_limit must be a positive integer (MB), not {memory_limit!r}")
    return (None if timeout is None else float(timeout)), memory_limit


def _is_pattern(base_dir: Path, pattern: str) -> bool:
    return bool(_GLOB_CHARACTERS.search(pattern)) or (base_dir / pattern).is_dir()


def _expand(base_dir: Path, pattern: str, source: Path) -> list[str]:
    """The .onnx files a manifest path names, relative to ``base_dir``, sorted."""
    if (base_dir / pattern).is_dir():
        pattern = str(Path(pattern) / "*.onnx")
    if not _GLOB_CHARACTERS.search(pattern):
        if not (base_dir / pattern).is_file():
            raise InputError(f"{source}: {pattern}: file not found")
        return [Path(pattern).as_posix()]
    # Matches under the manifest's directory are written relative to it, others (an absolute pattern) in full.
    matches = sorted((Path(match).relative_to(base_dir) if Path(match).is_relative_to(base_dir) else Path(match))
                     .as_posix() for match in glob.glob(str(base_dir / pattern)) if os.path.isfile(match))
    if not matches:
        raise InputError(f"{source}: {pattern}: matches no file")
    return matches


def _reject_unknown(table: dict, allowed, where: str | Path, what: str) -> None:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise InputError(f"{where}: unknown {what} {unknown[0]!r} (expected one of {', '.join(allowed)})")


def _reject_duplicate_names(models: list[ZooModel], source: Path) -> None:
    seen: dict[str, str] = {}
    for model in models:
        if not _SAFE_NAME.fullmatch(model.name):
            raise InputError(f"{source}: model name {model.name!r} is not a plain directory name")
        if model.name in seen:
            raise InputError(f"{source}: duplicate model name {model.name!r} ({seen[model.name]} and {model.path}; "
                             "give one a name)")
        seen[model.name] = model.path


def convert_defaults() -> dict:
    """The convert options a manifest may set, with their defaults: ``data`` and every
    ``ConvertOptions`` field but ``progress``, ``model_dir`` (a manifest's models are
    files, read from their own folders) and ``force`` (the zoo owns its folders)."""
    return {"data": None, **{f.name: f.default for f in fields(ConvertOptions)
                             if f.name not in ("progress", "model_dir", "force")}}


def normalise_options(given: dict, where: str | Path) -> dict:
    """Every convert option, with defaults filled in and one spelling per value, so that
    equal settings hash equally however the manifest wrote them."""
    options = convert_defaults()
    for key, value in given.items():
        expected = OPTION_TYPES[key]
        if not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected):
            names = " or ".join({"str": "a string", "list": "a list", "int": "an integer", "float": "a number",
                                 "bool": "true/false", "dict": "a table"}[t.__name__] for t in expected)
            raise InputError(f"{where}: option {key!r} must be {names}, not {value!r}")
        options[key] = value
    try:
        options["normalize"] = _normalise_normalize(options["normalize"])
        options["finetune"] = _normalise_finetune(options["finetune"], options["seed"])
    except WhetstoneError as exc:
        raise InputError(f"{where}: {exc.message}") from None
    return options


def _normalise_normalize(value) -> list[float] | None:
    if value is None:
        return None
    if isinstance(value, list):
        value = ",".join(str(number) for number in value)
    return list(parse_normalize(value))


def _normalise_finetune(value: bool | dict, seed: int) -> dict | bool:
    """False, or every FinetuneOptions field (True means the defaults, seeded like convert does)."""
    if value is False:
        return False
    table = {} if value is True else value
    known = [f.name for f in fields(FinetuneOptions)]
    _reject_unknown(table, known, "finetune", "field")
    try:
        options = FinetuneOptions(**{"seed": seed, **table})
        options.validate()
    except TypeError as exc:
        raise InputError(f"finetune: {exc}") from None
    return asdict(options)


def convert_arguments(options: dict) -> tuple[str | None, ConvertOptions]:
    """Normalised manifest options -> (the data spec, the ConvertOptions) ``api.convert_with_options`` takes."""
    finetune = options["finetune"]
    fields_given = {key: value for key, value in options.items() if key != "data"}
    return options["data"], ConvertOptions(**{
        **fields_given, "normalize": tuple(options["normalize"]) if options["normalize"] else None,
        "finetune": FinetuneOptions(**finetune) if finetune else False})
