"""Provenance: what a result was computed with (versions, devices, threads, seeds, input hashes).

``environment()`` describes this process: pactmerge's version and git commit (when run from a
checkout), Python and the numeric packages, the devices, the thread counts and the
determinism settings. A study adds its seeds and the sha256 of its pre-trained weights and
of every data split (see ``pactmerge.pipeline``). ``changed_fields`` compares two records,
``footer`` renders one as the single line printed under a results table.

Nothing here imports Lightning or open_clip eagerly: their versions are read from the
installed distributions' metadata.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

# distributions whose versions decide the digits of a result
PACKAGES = ("torch", "torchvision", "pytorch-lightning", "open_clip_torch", "torchmetrics", "numpy", "scipy",
            "safetensors", "timm", "datasets", "transformers")
# environment variables that set thread pools (and so the order of floating-point reductions)
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "CUBLAS_WORKSPACE_CONFIG")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def git_commit(start: str | os.PathLike | None = None) -> str | None:
    """The commit of the git checkout holding ``start`` (default: this package), read from ``.git``
    without running git; ``None`` outside a checkout (an installed wheel)."""
    here = Path(start or __file__).resolve()
    for parent in [here, *here.parents]:
        git = parent / ".git"
        if git.is_file():  # a worktree: "gitdir: <path>"
            text = git.read_text().strip()
            if not text.startswith("gitdir:"):
                return None
            git = Path(text.split(":", 1)[1].strip())
        if not git.is_dir():
            continue
        try:
            head = (git / "HEAD").read_text().strip()
            if not head.startswith("ref:"):
                return head
            ref = head.split(":", 1)[1].strip()
            ref_file = git / ref
            if ref_file.is_file():
                return ref_file.read_text().strip()
            packed = git / "packed-refs"
            if packed.is_file():
                for line in packed.read_text().splitlines():
                    if line.endswith(" " + ref):
                        return line.split(" ", 1)[0]
        except OSError:
            return None
        return None
    return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def environment() -> dict[str, Any]:
    """This process: versions, devices, thread counts and determinism settings (JSON-able)."""
    import torch

    from pactmerge import __version__

    devices: dict[str, Any] = {"cpu": _cpu_name(), "cpu_cores": _cores()}
    if torch.cuda.is_available():
        devices["cuda"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        devices["cuda_version"] = torch.version.cuda
    return {
        "pactmerge": __version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {p: v for p in PACKAGES if (v := _version(p)) is not None},
        "devices": devices,
        "threads": {"torch_intra_op": torch.get_num_threads(), "torch_inter_op": torch.get_num_interop_threads(),
                    **{k: os.environ[k] for k in THREAD_ENV if k in os.environ}},
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
    }


def changed_fields(old: Mapping[str, Any] | None, new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the fields that differ between two provenance records (sorted)."""
    if not isinstance(old, Mapping):
        return [prefix.rstrip(".") or "provenance"] if old != new else []
    out: list[str] = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += changed_fields(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


def footer(prov: Mapping[str, Any]) -> str:
    """One line: ``pactmerge 0.1.0 (abc1234) · torch 2.14.1 · ... · cpu ... · 2 threads · seed 0 · ...``."""
    env = prov.get("environment", prov)
    pk = env.get("packages", {})
    commit = env.get("git_commit")
    parts = [f"pactmerge {env.get('pactmerge', '?')}" + (f" ({commit[:10]})" if commit else "")]
    for dist, label in (("torch", "torch"), ("pytorch-lightning", "lightning"), ("open_clip_torch", "open_clip")):
        if dist in pk:
            parts.append(f"{label} {pk[dist]}")
    parts.append(f"python {env.get('python', '?')}")
    dev = env.get("devices", {})
    cuda = dev.get("cuda")
    parts.append(", ".join(cuda) if cuda else f"cpu {dev.get('cpu', '?')}")
    threads = env.get("threads", {})
    if "torch_intra_op" in threads:
        parts.append(f"{threads['torch_intra_op']} threads")
    if "seed" in prov:
        parts.append(f"seed {prov['seed']}")
    weights = prov.get("pretrained_sha256")
    if weights:
        parts.append(f"weights {weights[:12]}")
    data = prov.get("data_sha256")
    if data:
        import hashlib
        import json

        digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
        parts.append(f"data {digest[:12]} ({len(data)} tasks)")
    return " · ".join(parts)


def study_record(ctx: Any) -> dict[str, Any]:
    """The provenance of a study (a resolved ``pipeline.context.RunContext``): ``environment()``, the
    seeds, the sha256 of the pre-trained encoder state and of the data splits the context has opened."""
    cfg = ctx.cfg
    seeds = {"study": cfg.seed, "recipe": cfg.recipe.seed, "data": cfg.data.seed,
             "merge_svd": (cfg.merge.params or {}).get("seed", 0)}
    data = {t: {role: fp["sha256"] for role, fp in dm.fingerprint().items()}
            for t, dm in sorted(ctx.opened_datamodules().items())}
    return {"environment": environment(), "seed": cfg.seed, "seeds": seeds,
            "pretrained_sha256": ctx.loaded.weights_sha256, "data_sha256": data}
