"""The task registry: class names, prompt templates and data sources of every task, and benchmark lists.

Hub sources were checked against each dataset's card / viewer (split names, row counts, label column)
before being listed here; the comment beside each says what was verified, and the tests keep each
card's schema (tests/datamodules/hub_fixtures.py). Only the splits a task uses are opened (other
splits, such as corrupted test copies or SVHN's ``extra``, are never downloaded), and ClassLabel
names are matched to the class names (classnames.ALIASES holds the cards' other wordings). Any source can be
overridden (``DataConfig.source``, ``DataConfig.sources[task]``, or a ``<data_dir>/<task>`` folder).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from pactmerge.datamodules.classnames import ALIASES, CLASSNAMES
from pactmerge.datamodules.offline import INSTALL as OFFLINE_INSTALL
from pactmerge.datamodules.sources import SourceSpec, hub
from pactmerge.datamodules.templates import TEMPLATES
from pactmerge.errors import ConfigError


@dataclass(frozen=True, eq=False)
class TaskInfo:
    """A classification task.

    ``sources`` are tried in order: the first one that is available is used (offline data before the
    hub copy of the same images). ``hflip`` says whether a horizontal flip keeps the label (false for
    digits, letters, characters, text and traffic signs).
    """

    key: str
    display_name: str
    classnames: list[str]
    templates: list[str]
    sources: tuple[SourceSpec, ...]
    hflip: bool = True
    folder_aliases: dict[str, str] = field(default_factory=dict)  # other wordings of classes (classnames.ALIASES)

    @property
    def source(self) -> SourceSpec:
        return self.sources[0]

    @property
    def source_description(self) -> str:
        return " | ".join(s.describe() for s in self.sources)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)


def _offline(name: str) -> SourceSpec:
    return SourceSpec("offline", name, install=OFFLINE_INSTALL[name])


# key: (display name, sources, hflip)
_SPECS: dict[str, tuple[str, tuple[SourceSpec, ...], bool]] = {
    # tanganke/*: dataset cards list splits train/test, columns image + label (ClassLabel).
    "sun397": ("SUN397", (hub("tanganke/sun397"),), True),  # train 19.9k / test 19.9k
    "stanford_cars": ("Stanford Cars", (hub("tanganke/stanford_cars"),), True),  # train 8144 / test 8041
    "resisc45": ("RESISC45", (hub("tanganke/resisc45"),), True),
    "eurosat": ("EuroSAT", (hub("tanganke/eurosat"),), True),  # ClassLabel names match our order
    # ufldl-stanford/svhn, config cropped_digits: train 73,257 / test 26,032 / extra (unused); image, label.
    "svhn": ("SVHN", (hub("ufldl-stanford/svhn", name="cropped_digits"),), False),
    # tanganke/gtsrb: train 26,640 / test 12,630 (+ corrupted copies of test, unused); image, label.
    "gtsrb": ("GTSRB", (hub("tanganke/gtsrb"),), False),
    # Offline first (canonical IDX files), then ylecun/mnist: train 60k / test 10k; image, label 0..9.
    "mnist": ("MNIST", (_offline("mnist"), hub("ylecun/mnist")), False),
    "dtd": ("DTD", (hub("tanganke/dtd"),), True),  # train/test; we carve validation out of train
    "cifar100": ("CIFAR-100", (hub("tanganke/cifar100"),), True),  # train 50k / test 10k (fine labels)
    "stl10": ("STL-10", (hub("tanganke/stl10"),), True),  # train 5k / test 8k
    # dpdl-benchmark/oxford_flowers102: train 1,020 / validation 1,020 / test 6,149; image, label.
    "flowers102": ("Oxford Flowers 102", (hub("dpdl-benchmark/oxford_flowers102", val_split="validation"),), True),
    # timm/oxford-iiit-pet: train 3,680 / test 3,669; columns image, label (37 breeds), image_id, label_cat_dog.
    "oxford_pets": ("Oxford-IIIT Pets", (hub("timm/oxford-iiit-pet"),), True),
    # 1aurent/PatchCamelyon: train 262,144 / valid 32,768 / test 32,768; image, label (bool).
    "pcam": ("PatchCamelyon", (hub("1aurent/PatchCamelyon", val_split="valid"),), True),
    # No clean hub copy: a local ImageFolder (train/<emotion>/, test/<emotion>/) under <data_dir>/fer2013.
    "fer2013": ("FER2013", (SourceSpec(
        "imagefolder", "fer2013",
        install="the FER2013 images (e.g. the Kaggle 'fer2013' ImageFolder release with train/ and test/ "
        "folders); put them in <data_dir>/fer2013 or pass DataConfig.sources={'fer2013': '/path'}",
    ),), True),
    # tanganke/emnist_letters: train 124,800 / test 20,800; label ClassLabel 'A'..'Z' (26 classes).
    "emnist_letters": ("EMNIST Letters", (hub("tanganke/emnist_letters"),), False),
    "cifar10": ("CIFAR-10", (hub("tanganke/cifar10"),), True),  # train 50k / test 10k
    # ethz/food101: train 75,750 / validation 25,250; 'validation' is the official test set.
    "food101": ("Food-101", (hub("ethz/food101", test_split="validation"),), True),
    # Offline first (Debian package), then zalando-datasets/fashion_mnist: train 60k / test 10k, same labels.
    "fashion_mnist": ("Fashion-MNIST", (_offline("fashion_mnist"), hub("zalando-datasets/fashion_mnist")), True),
    # nateraw/rendered-sst2: train 6,920 / validation 872 / test 1,821; label negative/positive.
    "rendered_sst2": ("Rendered SST-2", (hub("nateraw/rendered-sst2", val_split="validation"),), False),
    "kmnist": ("Kuzushiji-MNIST", (hub("tanganke/kmnist"),), False),  # train 60k / test 10k
    "digits": ("Optical digits (scikit-learn)", (_offline("digits"),), False),
    "faces": ("LFW faces vs background (scikit-image)", (_offline("faces"),), True),
}

_EIGHT = ["sun397", "stanford_cars", "resisc45", "eurosat", "svhn", "gtsrb", "mnist", "dtd"]
_FOURTEEN = _EIGHT + ["cifar100", "stl10", "flowers102", "oxford_pets", "pcam", "fer2013"]
_TWENTY = _FOURTEEN + ["emnist_letters", "cifar10", "food101", "fashion_mnist", "rendered_sst2", "kmnist"]
BENCHMARKS: dict[str, list[str]] = {
    "8": _EIGHT,
    "14": _FOURTEEN,
    "20": _TWENTY,
    "offline": ["mnist", "fashion_mnist", "digits", "faces"],
}


def list_tasks() -> list[str]:
    """All registered task keys, in registry order."""
    return list(_SPECS)


def get_task(key: str) -> TaskInfo:
    """The TaskInfo of ``key``; ConfigError listing the known keys (and close matches) otherwise."""
    norm = str(key).strip().lower().replace("-", "_")
    if norm not in _SPECS:
        close = difflib.get_close_matches(norm, list(_SPECS), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown task {key!r}.{hint} Known tasks: {', '.join(_SPECS)}")
    name, sources, hflip = _SPECS[norm]
    return TaskInfo(
        key=norm, display_name=name, classnames=list(CLASSNAMES[norm]), templates=list(TEMPLATES[norm]),
        sources=sources, hflip=hflip, folder_aliases=dict(ALIASES.get(norm, {})),
    )


def benchmark_tasks(name: str | int) -> list[str]:
    """Task keys of a benchmark: ``"8"``, ``"14"``, ``"20"`` or ``"offline"``."""
    key = str(name).strip().lower()
    if key not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {name!r}; known benchmarks: {', '.join(BENCHMARKS)}")
    return list(BENCHMARKS[key])
