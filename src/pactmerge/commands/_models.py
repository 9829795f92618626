"""Encoders for the commands that take models from a run directory's store or from plain files
(``analyze``, ``transfer``, ``export``): one way to open the store, read an entry and read a file, each
returned as an image-tower state dict (``interop.files.encoder_state``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pactmerge.errors import ConfigError, StageError


class ModelSource:
    """Encoders read from ``store_dir`` (a run directory, optional) and from files.

    ``from_store(name)``: the store entry ``name`` (``pretrained``, ``finetuned/<task>``, ...);
    ``from_file(path, like=...)``: a file in any layout ``load_encoder_file`` reads, conformed to
    the keys of ``like`` (a Hugging Face vision tower has no projection: ``like``'s is used);
    ``pretrained(path)``: the file when given, else the store's ``pretrained`` (read once).
    """

    def __init__(self, store_dir: str | Path | None = None, *, trust_pickle: bool = False,
                 legacy_pickle: bool = False) -> None:
        self.store_dir, self.trust_pickle, self.legacy_pickle = store_dir, trust_pickle, legacy_pickle
        self.store = None
        if store_dir is not None:
            from pactmerge.checkpoints import CheckpointStore

            self.store = CheckpointStore(store_dir, create=False)
        self._pretrained = None

    def require_store(self, why: str) -> Any:
        if self.store is None:
            raise ConfigError(f"{why} needs --store RUN_DIR")
        return self.store

    def has(self, name: str) -> bool:
        return self.store is not None and self.store.has(name)

    def from_store(self, name: str) -> dict[str, Any]:
        from pactmerge.interop.files import encoder_state

        store = self.require_store(f"the store entry {name!r}")
        if store.has(name) and not store.weights_kept(name):  # a merge evaluated, then not kept: made again
            from pactmerge.pipeline.context import open_run_dir
            from pactmerge.pipeline.merge_stage import rebuild_merged

            state = rebuild_merged(open_run_dir(self.store_dir), name)
        else:
            state = store.load_state(name)
        return encoder_state(state, source=f"{self.store_dir}:{name}")[0]

    def read_file(self, path: str | Path) -> tuple[dict[str, Any], str]:
        """(state, the layout it was read in) of an encoder file."""
        from pactmerge.interop.files import load_encoder_file

        return load_encoder_file(path, trust_pickle=self.trust_pickle, legacy_pickle=self.legacy_pickle)

    def from_file(self, path: str | Path, *, like: dict[str, Any] | None = None, name: str | None = None
                  ) -> dict[str, Any]:
        state, layout = self.read_file(path)
        if like is None:
            return state
        from pactmerge.interop.importer import conform

        return conform(state, layout, like, name=name or str(path))[0]

    def pretrained(self, path: str | Path | None = None, *, why: str = "the pre-trained encoder",
                   hint: str = "give the file") -> dict[str, Any]:
        if path:
            return self.from_file(path)
        if self._pretrained is None:
            if self.store is None:
                raise StageError(f"{why}: no pre-trained file given and no --store to take it from; {hint}")
            if not self.store.has("pretrained"):
                raise StageError(f"{self.store_dir}: no pre-trained encoder ('pretrained') in this store; {why} needs "
                                 "it: run `pactmerge run`/`finetune` or `pactmerge import` first")
            self._pretrained = self.from_store("pretrained")
        return self._pretrained

    def finetuned_tasks(self) -> list[str]:
        """Tasks with a stored fine-tune."""
        store = self.require_store("reading fine-tuned models")
        return [n.removeprefix("finetuned/") for n in store.names("finetuned/") if store.has(n)]
