"""Source labels read against a task's class list: matched by name, never assumed to be in order.

A source that names its classes (a ``datasets.ClassLabel`` column, class-name strings, class
folders) is matched to the task's ``classnames`` by normalised name (case and every character
other than letters and digits ignored: ``cheese_plate`` = ``Cheese Plate``) and through the
task's aliases (``classnames.ALIASES``: other wordings of a class, e.g. SVHN's ``'0'`` for
``zero``); names that are integers are label indices. The same classes in another order are remapped by name; a class the task does not
have stops the run with a ``DataError`` that shows where the two lists part.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from pactmerge.errors import DataError


def norm(name: object) -> str:
    """A class name for matching: lower case, letters and digits only."""
    return "".join(ch for ch in str(name).lower() if ch.isalnum())


def name_index(classnames: Sequence[str], aliases: Mapping[str, str] | None = None) -> dict[str, int]:
    """Normalised class name or alias -> task label."""
    by_name = {norm(c): i for i, c in enumerate(classnames)}
    for alias, target in (aliases or {}).items():
        by_name.setdefault(norm(alias), list(classnames).index(target))
    return by_name


def lookup(name: object, by_name: dict[str, int], num_classes: int) -> int | None:
    """The task label of a source class name: by name or alias, else an integer name is the label
    itself (``'7'``, ``'00007'``: a source that numbers its classes, as class folders may)."""
    found = by_name.get(norm(name))
    if found is None and str(name).strip().isdigit() and int(name) < num_classes:
        found = int(name)
    return found


def class_label_order(names: Sequence[str], classnames: Sequence[str], aliases: Mapping[str, str] | None,
                      where: str) -> np.ndarray | None:
    """The task label of each source class (``order[source label]``), or None when the source
    lists the task's classes in the task's order. ``DataError`` when the classes differ."""
    by_name = name_index(classnames, aliases)
    found = [lookup(n, by_name, len(classnames)) for n in names]
    if len(names) != len(classnames) or None in found or len(set(found)) != len(found):
        raise DataError(_mismatch(list(names), list(classnames), found, where))
    order = np.asarray(found, dtype=np.int64)
    return None if np.array_equal(order, np.arange(len(order))) else order


def describe_order(order: np.ndarray, names: Sequence[str], classnames: Sequence[str]) -> str:
    """One line on a remapping: how many classes move, with the first one as an example."""
    moved = np.flatnonzero(order != np.arange(len(order)))
    i = int(moved[0])
    return (f"{len(moved)} of {len(order)} classes are listed in another order than the task's; labels remapped by "
            f"name (e.g. source label {i} {names[i]!r} -> task label {int(order[i])} {classnames[int(order[i])]!r})")


def _mismatch(names: list[str], classnames: list[str], found: list[int | None], where: str) -> str:
    unknown = [n for n, f in zip(names, found) if f is None]
    twice = sorted({classnames[f] for f in found if f is not None and found.count(f) > 1})
    n = max(len(names), len(classnames))
    differ = [k for k in range(n) if k >= len(names) or k >= len(found) or found[k] != k][:3]

    def at(seq: list[str], k: int) -> str:
        return repr(seq[k]) if k < len(seq) else "(none)"

    shown = "; ".join(f"[{k}] source {at(names, k)} / task {at(classnames, k)}" for k in differ)
    problems = [f"{len(names)} source classes for {len(classnames)} task classes"] if len(names) != len(classnames) else []
    if unknown:
        problems.append(f"not classes of this task: {unknown[:5]}" + (" ..." if len(unknown) > 5 else ""))
    if twice:
        problems.append(f"task classes named twice: {twice[:5]}")
    return (f"{where}: the source's class names do not match the task's ({'; '.join(problems)}). "
            f"First differing positions: {shown}. This source does not hold this task's labels: point the task "
            "at the right data; if the source only words a class differently, add that wording to the task's "
            "aliases (pactmerge.datamodules.classnames.ALIASES)")
