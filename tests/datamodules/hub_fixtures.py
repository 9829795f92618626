"""Hub-shaped fixtures of the 20 benchmark tasks: each source's card schema, and tiny copies built from it.

``CARDS`` records, per task, what the source's dataset card declares: repository and config, split
names (with the splits the task never reads), columns and feature types, and the label names in
the hub's order. ``build(root)`` writes a tiny copy of each (a few images per class) laid out like
the hub repository (``hub_repo.write_repo``), so ``hf:<folder>`` is read by the same code as the hub
id; FER2013, which has no hub source, is an ImageFolder tree as in the Kaggle release. Splits the
task never reads hold garbage bytes. Every image carries its hub label index in its first pixels
(``encoded_label``), so a test can check every label the data module hands out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from hub_repo import GARBAGE, write_repo
from pactmerge.datamodules.classnames import CLASSNAMES

CORRUPTED = ("contrast", "gaussian_noise", "impulse_noise", "jpeg_compression", "motion_blur", "pixelate", "spatter")
SIZE = 8  # pixels; the model resizes


def _snake(names: list[str]) -> list[str]:
    return [n.replace(" ", "_") for n in names]


@dataclass(frozen=True)
class Card:
    """One source's schema as its dataset card declares it.

    ``splits``: split name -> images per class in the fixture (0: a split the task never reads,
    written unreadable). ``label``: ``"classlabel"`` (names in ``names``, hub order) or ``"bool"``.
    ``extra``: other columns, name -> ``"string"`` or a ClassLabel names list. ``other_configs``:
    configs of the same repository the task does not use (written unreadable).
    """

    repo: str
    config: str | None
    splits: dict[str, int]
    names: list[str]
    label: str = "classlabel"
    mode: str = "RGB"
    extra: dict[str, object] = field(default_factory=dict)
    other_configs: tuple[str, ...] = ()
    imagefolder: bool = False


def _tanganke(task: str, names: list[str], corrupted: bool = False, mode: str = "RGB") -> Card:
    splits = {"train": 2, "test": 1, **({c: 0 for c in CORRUPTED} if corrupted else {})}
    return Card(f"tanganke/{task}", None, splits, names, mode=mode)


_FOOD101_HUB = (  # ethz/food101 "Class Label Mappings", 0..100
    "apple_pie baby_back_ribs baklava beef_carpaccio beef_tartare beet_salad beignets bibimbap bread_pudding "
    "breakfast_burrito bruschetta caesar_salad cannoli caprese_salad carrot_cake ceviche cheesecake cheese_plate "
    "chicken_curry chicken_quesadilla chicken_wings chocolate_cake chocolate_mousse churros clam_chowder "
    "club_sandwich crab_cakes creme_brulee croque_madame cup_cakes deviled_eggs donuts dumplings edamame "
    "eggs_benedict escargots falafel filet_mignon fish_and_chips foie_gras french_fries french_onion_soup "
    "french_toast fried_calamari fried_rice frozen_yogurt garlic_bread gnocchi greek_salad grilled_cheese_sandwich "
    "grilled_salmon guacamole gyoza hamburger hot_and_sour_soup hot_dog huevos_rancheros hummus ice_cream lasagna "
    "lobster_bisque lobster_roll_sandwich macaroni_and_cheese macarons miso_soup mussels nachos omelette "
    "onion_rings oysters pad_thai paella pancakes panna_cotta peking_duck pho pizza pork_chop poutine prime_rib "
    "pulled_pork_sandwich ramen ravioli red_velvet_cake risotto samosa sashimi scallops seaweed_salad "
    "shrimp_and_grits spaghetti_bolognese spaghetti_carbonara spring_rolls steak strawberry_shortcake sushi tacos "
    "takoyaki tiramisu tuna_tartare waffles"
).split()
_CIFAR100_HUB = (  # uoft-cs/cifar100 card, fine_label 0..99 (26 reads 'cra'); tanganke/cifar100 keeps them
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can "
    "castle caterpillar cattle chair chimpanzee clock cloud cockroach couch cra crocodile cup dinosaur dolphin "
    "elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster "
    "man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck "
    "pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk "
    "skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger "
    "tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm"
).split()
_PETS_HUB = (  # timm/oxford-iiit-pet card: label 0..36 (lower-case breed ids); label_cat_dog cat/dog
    "abyssinian american_bulldog american_pit_bull_terrier basset_hound beagle bengal birman bombay boxer "
    "british_shorthair chihuahua egyptian_mau english_cocker_spaniel english_setter german_shorthaired "
    "great_pyrenees havanese japanese_chin keeshond leonberger maine_coon miniature_pinscher newfoundland persian "
    "pomeranian pug ragdoll russian_blue saint_bernard samoyed scottish_terrier shiba_inu siamese sphynx "
    "staffordshire_bull_terrier wheaten_terrier yorkshire_terrier"
).split()
PET_CATS = {"abyssinian", "bengal", "birman", "bombay", "british_shorthair", "egyptian_mau", "maine_coon", "persian",
            "ragdoll", "russian_blue", "siamese", "sphynx"}
DIGITS = [str(i) for i in range(10)]

# task -> card. The tanganke/* sets are FusionBench's copies: train / test, image + label (ClassLabel
# in FusionBench's class-list order); four also carry seven corrupted copies of test. Where a card's
# exact wording is not reproduced (tanganke/*, flowers), the names are FusionBench's class list in the
# card's order: matching ignores case, '_' and spacing, and integer names are read as label indices.
CARDS: dict[str, Card] = {
    # https://huggingface.co/datasets/tanganke/sun397 : train / test; ClassLabel, 397 scene categories
    "sun397": _tanganke("sun397", _snake(CLASSNAMES["sun397"])),
    # https://huggingface.co/datasets/tanganke/stanford_cars : train / test + corrupted test copies; 196 models
    "stanford_cars": _tanganke("stanford_cars", list(CLASSNAMES["stanford_cars"]), corrupted=True),
    # https://huggingface.co/datasets/tanganke/resisc45 : train / test + corrupted test copies; 45 scene classes
    "resisc45": _tanganke("resisc45", _snake(CLASSNAMES["resisc45"]), corrupted=True),
    # https://huggingface.co/datasets/tanganke/eurosat : train / test + corrupted test copies; 10 land-use classes
    "eurosat": _tanganke("eurosat", _snake(CLASSNAMES["eurosat"]), corrupted=True),
    # https://huggingface.co/datasets/ufldl-stanford/svhn : configs cropped_digits (train / test / extra) and
    # full_numbers; cropped_digits label ClassLabel '0'..'9'
    "svhn": Card("ufldl-stanford/svhn", "cropped_digits", {"train": 2, "test": 1, "extra": 0}, DIGITS,
                 other_configs=("full_numbers",)),
    # https://huggingface.co/datasets/tanganke/gtsrb : train / test + corrupted test copies; 43 sign classes
    "gtsrb": _tanganke("gtsrb", list(CLASSNAMES["gtsrb"]), corrupted=True),
    # https://huggingface.co/datasets/ylecun/mnist : config mnist, train / test; image (L, 28x28), ClassLabel '0'..'9'
    "mnist": Card("ylecun/mnist", "mnist", {"train": 2, "test": 1}, DIGITS, mode="L"),
    # https://huggingface.co/datasets/tanganke/dtd : train / test; 47 texture classes
    "dtd": _tanganke("dtd", _snake(CLASSNAMES["dtd"])),
    # https://huggingface.co/datasets/tanganke/cifar100 : train / test; fine labels as on uoft-cs/cifar100
    "cifar100": _tanganke("cifar100", _CIFAR100_HUB),
    # https://huggingface.co/datasets/tanganke/stl10 : train / test
    "stl10": _tanganke("stl10", ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]),
    # https://huggingface.co/datasets/dpdl-benchmark/oxford_flowers102 : train / validation / test; 102 flowers
    "flowers102": Card("dpdl-benchmark/oxford_flowers102", None, {"train": 1, "validation": 1, "test": 1},
                       list(CLASSNAMES["flowers102"])),
    # https://huggingface.co/datasets/timm/oxford-iiit-pet : train / test; image, label, image_id, label_cat_dog
    "oxford_pets": Card("timm/oxford-iiit-pet", None, {"train": 2, "test": 1}, _PETS_HUB,
                        extra={"image_id": "string", "label_cat_dog": ["cat", "dog"]}),
    # https://huggingface.co/datasets/1aurent/PatchCamelyon : train / valid / test; image, label (bool)
    "pcam": Card("1aurent/PatchCamelyon", None, {"train": 3, "valid": 1, "test": 2}, ["False", "True"], label="bool"),
    # No hub source: the Kaggle FER2013 ImageFolder release, train/<emotion>/ and test/<emotion>/
    "fer2013": Card("fer2013", None, {"train": 2, "test": 1},
                    ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"], mode="L", imagefolder=True),
    # https://huggingface.co/datasets/tanganke/emnist_letters : train / test; ClassLabel 'A'..'Z'
    "emnist_letters": _tanganke("emnist_letters", [chr(ord("A") + i) for i in range(26)], mode="L"),
    # https://huggingface.co/datasets/tanganke/cifar10 : train / test
    "cifar10": _tanganke("cifar10", ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                                     "truck"]),
    # https://huggingface.co/datasets/ethz/food101 : train / validation (the official test set); ClassLabel 0..100
    "food101": Card("ethz/food101", None, {"train": 2, "validation": 1}, _FOOD101_HUB),
    # https://huggingface.co/datasets/zalando-datasets/fashion_mnist : config fashion_mnist, train / test;
    # image (L, 28x28), ClassLabel 'T - shirt / top' .. 'Ankle boot'
    "fashion_mnist": Card("zalando-datasets/fashion_mnist", "fashion_mnist", {"train": 2, "test": 1},
                          ["T - shirt / top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                           "Bag", "Ankle boot"], mode="L"),
    # https://huggingface.co/datasets/nateraw/rendered-sst2 : train / validation / test; ClassLabel negative/positive
    "rendered_sst2": Card("nateraw/rendered-sst2", None, {"train": 3, "validation": 1, "test": 2},
                          ["negative", "positive"]),
    # https://huggingface.co/datasets/tanganke/kmnist : train / test; ClassLabel '0'..'9' (the label index)
    "kmnist": _tanganke("kmnist", DIGITS, mode="L"),
}


def encoded_label(img: Image.Image) -> int:
    """The hub label index written into an image's first pixels."""
    a = np.asarray(img.convert("L") if img.mode == "L" else img.convert("RGB"))
    px = a[0, :2] if a.ndim == 2 else a[0, 0, :2]
    return int(px[0]) + 256 * int(px[1])


def _image(label: int, row: int, mode: str) -> Image.Image:
    rng = np.random.default_rng([label, row])
    if mode == "L":
        a = rng.integers(0, 256, size=(SIZE, SIZE), dtype=np.uint8)
        a[0, 0], a[0, 1] = label % 256, label // 256
    else:
        a = rng.integers(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)
        a[0, 0, :2] = label % 256, label // 256
    return Image.fromarray(a, mode)


def _labels(card: Card, per_class: int, seed: int) -> np.ndarray:
    """Hub label indices of a split, ``per_class`` of each class in a seeded shuffled order."""
    labels = np.repeat(np.arange(len(card.names)), per_class)
    return np.random.default_rng(seed).permutation(labels)


def _dataset(card: Card, labels: np.ndarray, first_row: int):
    import datasets

    label = datasets.Value("bool") if card.label == "bool" else datasets.ClassLabel(names=list(card.names))
    feats = {"image": datasets.Image(), "label": label}
    cols = {"image": [_image(int(k), first_row + i, card.mode) for i, k in enumerate(labels)],
            "label": [bool(k) for k in labels] if card.label == "bool" else labels.tolist()}
    for name, kind in card.extra.items():
        if kind == "string":
            feats[name], cols[name] = datasets.Value("string"), [f"{card.names[k]}_{first_row + i}"
                                                                 for i, k in enumerate(labels)]
        else:  # the timm pets card's cat/dog ClassLabel
            feats[name] = datasets.ClassLabel(names=list(kind))
            cols[name] = [0 if card.names[k] in PET_CATS else 1 for k in labels]
    return datasets.Dataset.from_dict(cols, features=datasets.Features(feats))


def build_one(task: str, root: Path) -> str:
    """Write the fixture of ``task`` under ``root``; returns its source string (``hf:...`` or a folder)."""
    card, folder = CARDS[task], root / task
    if card.imagefolder:
        for s, (split, per_class) in enumerate(card.splits.items()):
            for i, k in enumerate(_labels(card, per_class, s)):
                d = folder / split / card.names[k]
                d.mkdir(parents=True, exist_ok=True)
                _image(int(k), 1000 * s + i, card.mode).save(d / f"{i:05d}.png")
        return str(folder)
    splits: dict[str, object] = {}
    for s, (split, per_class) in enumerate(card.splits.items()):
        splits[split] = _dataset(card, _labels(card, per_class, s), 1000 * s) if per_class else GARBAGE
    configs = {card.config or "default": splits, **{c: {"train": GARBAGE, "test": GARBAGE} for c in card.other_configs}}
    write_repo(folder, configs)
    return f"hf:{folder}"  # the config comes from the task's registry source, as for the hub id


def build(root: Path) -> dict[str, str]:
    """Every task's fixture under ``root``: ``{task: source string}`` for ``DataConfig.sources``."""
    return {task: build_one(task, root) for task in CARDS}
