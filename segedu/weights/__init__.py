"""Load public checkpoints into segedu models.

``convert(state_dict, source, name)`` renames (and where needed splits or fuses) the keys of a
checkpoint from another code base into segedu's layout; the result loads with
``build_model(name).load_state_dict(..., strict=True)``. Each family keeps its explicit key map in
``segedu/weights/<family>.py`` and registers one converter per source with :func:`register_converter`.

``load_checkpoint(model, state_dict, source)`` converts and loads with a readable report of
missing / unexpected / mis-shaped keys, and ``from_pretrained(name, path_or_hub_id)`` builds a model
and fills it from a local folder (``save_pretrained`` output, safetensors or .bin/.pth) or a hub id.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Mapping

import torch

from ..registry import build_model, get_spec

StateDict = dict[str, torch.Tensor]
_CONVERTERS: dict[tuple[str, str], Callable[[Mapping[str, torch.Tensor]], StateDict]] = {}
_MAY_BE_MISSING: dict[tuple[str, str], tuple[str, ...]] = {}


def register_converter(family: str, source: str, may_be_missing: tuple[str, ...] = ()):
    """Decorator: ``fn(state_dict) -> state_dict`` converting ``source`` checkpoints of ``family``.

    ``may_be_missing``: regexes of segedu encoder keys that this source's checkpoints can lack because the
    layer exists only in the segmentation form (e.g. Swin's per-output LayerNorms, absent from ImageNet
    classifiers). An ``encoder_only`` load leaves them at their initialisation and names them.
    """
    def deco(fn):
        _CONVERTERS[(family, source)] = fn
        _MAY_BE_MISSING[(family, source)] = tuple(may_be_missing)
        return fn
    return deco


def sources(name: str) -> list[str]:
    """The checkpoint sources ``convert`` understands for model ``name``."""
    family = get_spec(name).family
    return sorted(s for f, s in _CONVERTERS if f == family)


def convert(state_dict: Mapping[str, torch.Tensor], source: str, name: str) -> StateDict:
    """Convert a ``source`` checkpoint (e.g. ``"transformers"``, ``"official"``) for model ``name``."""
    family = get_spec(name).family
    if (family, source) not in _CONVERTERS:
        raise ValueError(f"no converter from {source!r} for {name}; known sources: {sources(name)}")
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], Mapping):  # mmcv-style wrapper
        state_dict = state_dict["state_dict"]
    return _CONVERTERS[(family, source)](state_dict)


def rename_keys(state_dict: Mapping[str, torch.Tensor], rules: list[tuple[str, str]], drop: tuple[str, ...] = ()):
    """Apply the first matching ``(regex, replacement)`` rule to every key; keys matching ``drop`` go.

    A key no rule matches is kept unchanged, so that ``load_checkpoint`` reports it as unexpected.
    """
    out = {}
    for key, value in state_dict.items():
        if any(re.fullmatch(d, key) for d in drop):
            continue
        for pattern, repl in rules:
            new, n = re.subn(f"^{pattern}$", repl, key)
            if n:
                key = new
                break
        out[key] = value
    return out


class CheckpointMismatchError(RuntimeError):
    """A checkpoint that does not fit the model; the message lists what is missing, extra or mis-shaped."""


def _report(model_name: str, missing, unexpected, mis_shaped, limit: int = 12) -> str:
    def fmt(title, items):
        items = list(items)
        if not items:
            return ""
        more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
        return f"\n  {title} ({len(items)}): " + ", ".join(items[:limit]) + more
    return (f"checkpoint does not fit {model_name}:" + fmt("missing keys", missing)
            + fmt("unexpected keys", unexpected) + fmt("shape mismatches", mis_shaped))


def load_checkpoint(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "segedu",
                    encoder_only: bool = False) -> list[str]:
    """Convert ``state_dict`` from ``source`` and load it strictly into ``model``; return what was not loaded.

    ``source="segedu"`` means the checkpoint already has segedu's keys. With ``encoder_only=True``
    only ``model.encoder`` is loaded (e.g. ImageNet weights): the returned list names the parameters
    that keep their initialisation, i.e. the decoder and the encoder keys the source's converter
    declares ``may_be_missing`` (and that this checkpoint indeed lacks). Any other mismatch raises
    :class:`CheckpointMismatchError` naming the keys.
    """
    name = getattr(model, "name", type(model).__name__)
    sd = dict(state_dict) if source == "segedu" else convert(state_dict, source, name)
    target = model.state_dict()
    not_loaded: list[str] = []
    if encoder_only:
        sd = {k: v for k, v in sd.items() if k.startswith("encoder.")}
        not_loaded = [k for k in target if not k.startswith("encoder.")]
        target = {k: v for k, v in target.items() if k.startswith("encoder.")}
        allowed = _MAY_BE_MISSING.get((get_spec(name).family, source), ()) if source != "segedu" else ()
        for key in set(target) - set(sd):
            if any(re.fullmatch(p, key) for p in allowed):
                sd[key] = target[key]  # keeps the model's own initial value
                not_loaded.append(key)
    missing = sorted(set(target) - set(sd))
    unexpected = sorted(set(sd) - set(target))
    mis_shaped = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(target[k].shape)}"
                  for k in sorted(set(sd) & set(target)) if sd[k].shape != target[k].shape]
    if missing or unexpected or mis_shaped:
        raise CheckpointMismatchError(_report(name, missing, unexpected, mis_shaped))
    if encoder_only:
        model.encoder.load_state_dict({k[len("encoder."):]: v for k, v in sd.items()}, strict=True)
    else:
        model.load_state_dict(sd, strict=True)
    return sorted(not_loaded)


def read_state_dict(path: str | Path) -> StateDict:
    """Read a checkpoint file or a ``save_pretrained`` folder (safetensors first, then .bin/.pth).

    Pickled files are read with ``weights_only=True`` (:func:`load_pickled`): tensors only, no code execution.
    """
    path = Path(path)
    if path.is_dir():
        candidates = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin")) + sorted(path.glob("*.pth"))
        if not candidates:
            raise FileNotFoundError(f"no *.safetensors, *.bin or *.pth checkpoint in folder {path}")
        sd: StateDict = {}
        for file in candidates:  # sharded checkpoints: merge the shards
            sd.update(read_state_dict(file))
        return sd
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(path)
    obj = load_pickled(path)
    for key in ("model", "state_dict"):  # segedu training checkpoints, mmcv checkpoints
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    return dict(obj)


# What a pickle names only to run a program (a file naming one is refused, with its name): functions of these
# modules, and these builtins. Everything else a release pickles (mmengine's HistoryBuffer, which pickles
# ``getattr(buffer, "min")``; numpy arrays) is replaced by an inert stand-in, so nothing runs in any case.
_REFUSED_MODULES = {"os", "posix", "nt", "subprocess", "shutil", "socket", "runpy", "pty", "webbrowser", "ctypes",
                    "importlib", "sys", "code", "pickle", "marshal", "torch.hub", "torch.serialization"}
_REFUSED_BUILTINS = {"eval", "exec", "open", "compile", "__import__", "breakpoint", "input", "exit", "quit"}


def _refused(name: str) -> bool:
    module, _, attr = name.rpartition(".")
    return (module in _REFUSED_MODULES or module.split(".")[0] in _REFUSED_MODULES
            or (module in ("builtins", "__builtin__", "io", "_io") and attr in _REFUSED_BUILTINS))  # open is io.open


class _Inert:
    """Stands in for a class a checkpoint pickles in its metadata (mmengine's ``MessageHub``, ``HistoryBuffer``,
    numpy scalars, ...): it accepts any arguments and state and does nothing with them."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state):
        self.state = state


def load_pickled(path: str | Path):
    """``torch.load(path, weights_only=True)``, also for mmseg / mmengine releases that pickle objects of their
    own next to the tensors (``meta``, ``message_hub``): each such class is replaced by an inert stand-in, so
    nothing from the file is ever executed (no ``weights_only=False``). A file that names ``os.system``,
    ``subprocess``, ``builtins.exec``, ... is refused by name. Errors are one line naming the file and the reason."""
    import pickle
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass
    except Exception as exc:  # truncated, not a torch file, ...
        raise ValueError(f"could not read checkpoint {path}: {str(exc).splitlines()[0]}") from None
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as exc:
        raise ValueError(f"could not read checkpoint {path}: {str(exc).splitlines()[0]}") from None
    refused = [n for n in names if _refused(n)]
    if refused:
        raise ValueError(f"refusing to read {path}: it would call {refused[0]} when unpickled (a program, not a "
                         f"checkpoint)")
    stand_ins = [(type(n.rsplit(".", 1)[-1], (_Inert,), {"__module__": __name__}), n) for n in names]
    try:
        with torch.serialization.safe_globals(stand_ins):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # e.g. a stand-in's result called in turn: torch's unpickler refuses that too
        raise ValueError(f"could not read checkpoint {path}: {_reason(exc)}") from None


def _reason(exc: Exception) -> str:
    """The line of a weights-only load error that says what was refused (torch's first line is generic)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if "WeightsUnpickler error" in line:
            rest = line.split("WeightsUnpickler error:", 1)[-1].strip()
            return rest or (lines[i + 1] if i + 1 < len(lines) else line)
    return lines[0] if lines else type(exc).__name__


def locate(path_or_hub_id: str | Path, **hub_kwargs) -> Path:
    """A local checkpoint file or folder, or a Hugging Face hub id downloaded to the local cache (safetensors,
    .bin and config files; needs network access)."""
    path = Path(path_or_hub_id)
    if path.exists():
        return path
    if str(path_or_hub_id).startswith((".", "/")) or path.suffix:
        raise FileNotFoundError(f"checkpoint {path_or_hub_id} does not exist")
    from huggingface_hub import snapshot_download
    return Path(snapshot_download(str(path_or_hub_id), allow_patterns=["*.safetensors", "*.json", "*.bin"],
                                  **hub_kwargs))


def _classifier_classes(sd: Mapping[str, torch.Tensor]) -> int | None:
    """Number of classes of a converted checkpoint, read from its last decoder layer."""
    pred = [v for k, v in sd.items() if k.startswith("decoder.") and k.endswith("linear_pred.weight")]
    return int(pred[0].shape[0]) if pred else None


def from_pretrained(name: str, path_or_hub_id: str | Path, source: str = "transformers",
                    num_classes: int | None = None, **hub_kwargs) -> torch.nn.Module:
    """Build model ``name`` and load a public checkpoint into it.

    ``path_or_hub_id`` is a local file/folder (e.g. written by ``save_pretrained``) or a Hugging Face
    hub id such as ``"nvidia/segformer-b0-finetuned-ade-512-512"`` (downloaded with huggingface_hub;
    needs network access). ``num_classes`` defaults to the checkpoint's.
    """
    path = locate(path_or_hub_id, **hub_kwargs)
    sd = convert(read_state_dict(path), source, name) if source != "segedu" else read_state_dict(path)
    model = build_model(name, num_classes=num_classes or _classifier_classes(sd) or 150)
    load_checkpoint(model, sd, source="segedu")
    return model


# Each family's key maps register their converters on import.
from . import segformer, segnext, setr, swin  # noqa: E402,F401

__all__ = ["convert", "load_checkpoint", "from_pretrained", "read_state_dict", "load_pickled", "locate", "sources",
           "rename_keys", "register_converter", "CheckpointMismatchError"]
