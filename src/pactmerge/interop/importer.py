"""Import public fine-tuned CLIP image encoders into a store: ``import_checkpoints``, the one
import function of ``pactmerge import`` and of a run config's ``pool:`` section.

A source is a local file (safetensors, torch state dict, or with ``legacy_pickle`` a
``torch.save(model)`` pickle), a local Hugging Face checkpoint directory, a PEFT LoRA adapter
directory (materialised into full weights, ``interop.lora``), or a Hub model id
(``owner/name``) fetched with ``huggingface_hub`` when there is a network (or found in its
local cache). Each encoder is converted to the open_clip layout and must have exactly the
pre-trained encoder's keys and shapes. One exception: a plain HF ``CLIPVisionModel`` (the
public merging benchmark's per-task checkpoints) carries no ``visual_projection``; its
projection was not fine-tuned, so ``proj`` is taken from the pre-trained encoder (the task
vector is zero there) and the import records it.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Mapping

from dataclasses import dataclass
from typing import Callable

import torch

from pactmerge.errors import CheckpointError
from pactmerge.interop.files import describe_differences, weights_file
from pactmerge.interop.geometry import VisionGeometry
from pactmerge.interop.layout import detect_layout

log = logging.getLogger(__name__)
Tensor = torch.Tensor

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*$")
# keys a HF vision checkpoint may lack because they were never fine-tuned
_FILLABLE_FROM_HF = ("proj",)
# the files of a Hub checkpoint an import reads (weights, configs, PEFT adapters)
_HUB_FILES = ["*.safetensors", "pytorch_model.bin", "*.json"]


def is_hub_id(source: str) -> bool:
    """Whether ``source`` is no local path but has the form of a Hub model id (``owner/name``)."""
    return not Path(source).expanduser().exists() and bool(_HUB_ID.match(source))


def cached_snapshot(source: str, *, cache_dir: str | None = None) -> Path | None:
    """The local snapshot of Hub model ``source`` when its files are in the Hugging Face cache, else None
    (looks only at the disk)."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=source, allow_patterns=_HUB_FILES, cache_dir=cache_dir,
                                      local_files_only=True))
    except Exception:  # not cached, huggingface_hub missing: not here either way
        return None


def fetch_command(source: str) -> str:
    """The command that puts Hub model ``source`` into the local cache."""
    return f"huggingface-cli download {source} --include {' '.join(repr(p) for p in _HUB_FILES)}"


def resolve_source(source: str, *, cache_dir: str | None = None) -> Path:
    """A local path for ``source``: the path itself when it exists, else a Hub snapshot of a model id.

    Raises ``CheckpointError`` for a path that does not exist and is no model id, and for a
    model id that cannot be fetched (offline, private, misspelt), saying how to get the files.
    """
    path = Path(source).expanduser()
    if path.exists():
        return path
    if not _HUB_ID.match(source):
        raise CheckpointError(f"{source}: no such file or directory (nor a Hugging Face model id 'owner/name')")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise CheckpointError(
            f"{source}: not a local path; fetching it from the Hugging Face Hub needs huggingface_hub "
            "(pip install huggingface_hub), or download it elsewhere and pass the local directory"
        ) from exc
    try:
        local = snapshot_download(
            repo_id=source,
            allow_patterns=_HUB_FILES,
            cache_dir=cache_dir,
        )
    except Exception as exc:  # offline mode, connection errors, unknown repos: all mean "not here"
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        why = "the Hub is disabled (HF_HUB_OFFLINE is set) and it is not in the local cache" if offline else str(exc)
        raise CheckpointError(
            f"{source}: cannot fetch this Hugging Face model ({why}). On a machine with a network run "
            f"`huggingface-cli download {source} --local-dir DIR` and pass DIR instead"
        ) from exc
    return Path(local)


def conform(
    state: dict[str, Tensor],
    layout: str,
    pretrained: Mapping[str, Tensor],
    *,
    name: str,
) -> tuple[dict[str, Tensor], list[str]]:
    """Check ``state`` against the pre-trained encoder; return it (with fillable keys filled) and the filled keys.

    Raises ``CheckpointError`` naming the architecture difference (sizes of both ViTs when both
    are ViTs) and the differing keys.
    """
    filled: list[str] = []
    if layout == "other" and _is_vit(pretrained):
        detect_layout(state, source=name)  # raises, naming the keys it found instead
    if layout == "hf":
        for key in _FILLABLE_FROM_HF:
            if key not in state and key in pretrained:
                state[key] = pretrained[key].clone()
                filled.append(key)
    parts = describe_differences(pretrained, state)
    if not parts:
        return state, filled
    arch = ""
    try:
        mine = VisionGeometry.from_open_clip_state(state, source=name)
        ref = VisionGeometry.from_open_clip_state(pretrained, source="the pre-trained encoder")
        if mine != ref:
            arch = f" It is a ViT of {_describe(mine)}; the pre-trained model is a ViT of {_describe(ref)}."
    except CheckpointError:
        pass
    raise CheckpointError(
        f"{name} ({layout} layout) does not fit the pre-trained encoder: {'; '.join(parts)}.{arch} "
        "Import checkpoints fine-tuned from the same model (--model / --pretrained / --weights)."
    )


def _is_vit(state: Mapping[str, Tensor]) -> bool:
    try:
        return detect_layout(state).layout == "open_clip"
    except CheckpointError:
        return False


def _describe(g: VisionGeometry) -> str:
    return (f"width {g.width}, {g.layers} layers, patch {g.patch_size}, image size {g.image_size}, "
            f"MLP {g.mlp_width}, output {g.output_dim}")


@dataclass(frozen=True)
class ImportOptions:
    """How sources are read: ``trust_pickle`` (full pickles of state dicts), ``legacy_pickle``
    (``torch.save(model)`` pickles, read without their code), the Hub ``cache_dir``, and
    ``replace`` (overwrite entries imported from other files)."""

    trust_pickle: bool = False
    legacy_pickle: bool = False
    cache_dir: str | None = None
    replace: bool = False


def load_checkpoint(path: Path, pretrained: Mapping[str, Tensor], *, name: str,
                    options: ImportOptions = ImportOptions()) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """One encoder from a resolved source, in the pre-trained encoder's layout and checked against it.

    Returns ``(state, meta)``: the layout it came in (``open_clip``, ``hf``, ``lora``, ``other``)
    and the keys filled from the pre-trained encoder."""
    from pactmerge.interop.legacy import load_encoder
    from pactmerge.interop.lora import is_lora_adapter, materialise_lora

    if is_lora_adapter(path):
        state, layout = materialise_lora(path, pretrained), "lora"
    else:
        state, layout = load_encoder(path, trust_pickle=options.trust_pickle, legacy_pickle=options.legacy_pickle)
    state, filled = conform(state, layout, pretrained, name=name)
    if filled:
        log.info("%s: %s not in the checkpoint (not fine-tuned); taken from the pre-trained encoder", name, filled)
    return state, {"layout": layout, "filled_from_pretrained": filled}


def source_sha256(path: Path) -> str:
    """sha256 of the file a resolved source is read from (the adapter weights of a LoRA directory)."""
    from pactmerge.fileio import sha256_file
    from pactmerge.interop.lora import adapter_file, is_lora_adapter

    return sha256_file(adapter_file(path) if is_lora_adapter(path) else weights_file(path))


def _entry_meta(name: str) -> dict[str, Any]:
    if name.startswith("finetuned/"):
        return {"kind": "finetuned", "task": name.split("/", 1)[1]}
    if name in ("joint", "sequential"):
        return {"kind": name}
    raise CheckpointError(f"cannot import into {name!r}: entries are finetuned/<task>, joint or sequential")


def import_checkpoints(store: Any, sources: Mapping[str, str], pretrained: Mapping[str, Tensor], *,
                       options: ImportOptions = ImportOptions(),
                       echo: Callable[[str], None] | None = None) -> dict[str, str]:
    """Import ``sources`` (store entry -> source: ``{"finetuned/<task>": ..., "joint": ...}``) into ``store``.

    Every source is resolved first (Hub ids fetched or found in the cache). With ``store=None``
    each checkpoint is only loaded and checked against ``pretrained`` (nothing is written), so a
    caller can refuse a bad pool before it creates anything. With a store, an entry already
    imported from the same file is kept; one from another file (or fine-tuned) is a
    ``CheckpointError`` unless ``options.replace``. Each entry is written atomically with its
    provenance (``imported``: source, resolved path, layout, source sha256, filled keys).
    Returns entry -> ``"imported"``, ``"kept"`` or ``"checked"``; ``echo`` gets one line per entry.
    """
    echo = echo or log.info
    resolved = {name: resolve_source(src, cache_dir=options.cache_dir) for name, src in sources.items()}
    out: dict[str, str] = {}
    for name, path in resolved.items():
        meta = _entry_meta(name)
        label = f"{name} checkpoint {sources[name]}"
        if store is None:
            load_checkpoint(path, pretrained, name=label, options=options)
            out[name] = "checked"
            continue
        digest = source_sha256(path)
        if store.has(name):
            old = store.entry(name).get("imported", {})
            if old.get("source_sha256") == digest:
                echo(f"{name}: already imported from this file; kept")
                out[name] = "kept"
                continue
            if not options.replace:
                raise CheckpointError(f"{store.root}: {name} exists (from {old.get('source', 'fine-tuning')}); "
                                      "pass --replace to overwrite it with the new checkpoint")
        state, info = load_checkpoint(path, pretrained, name=label, options=options)
        meta["imported"] = {"source": sources[name], "resolved": str(path), "source_sha256": digest, **info}
        store.save_state(name, state, meta)
        filled = info["filled_from_pretrained"]
        echo(f"{name}: imported from {sources[name]} ({info['layout']} layout"
             + (f"; {', '.join(filled)} from the pre-trained encoder" if filled else "") + ")")
        out[name] = "imported"
    return out
