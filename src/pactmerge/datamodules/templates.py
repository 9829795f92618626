"""CLIP prompt templates per task: format strings with one ``{}`` for the class name.

They are the zero-shot templates of task_vectors / open_clip / CLIP_benchmark (and, for the tasks
those do not cover, of the public merging benchmarks that added them).
"""

from __future__ import annotations

_CIFAR = [
    "a photo of a {}.", "a blurry photo of a {}.", "a black and white photo of a {}.",
    "a low contrast photo of a {}.", "a high contrast photo of a {}.", "a bad photo of a {}.",
    "a good photo of a {}.", "a photo of a small {}.", "a photo of a big {}.", "a photo of the {}.",
    "a blurry photo of the {}.", "a black and white photo of the {}.", "a low contrast photo of the {}.",
    "a high contrast photo of the {}.", "a bad photo of the {}.", "a good photo of the {}.",
    "a photo of the small {}.", "a photo of the big {}.",
]

# Keep the published order: imagery, imagery, photo, photo, view, view for each article.
_RESISC45 = [
    f"{kind} {view} of {article}{{}}."
    for article in ("", "a ", "the ")
    for view in ("imagery", "photo", "view")
    for kind in ("satellite", "aerial")
]

_NUMBER = ['a photo of the number: "{}".']

TEMPLATES: dict[str, list[str]] = {
    "sun397": ["a photo of a {}.", "a photo of the {}."],
    "stanford_cars": [
        "a photo of a {}.", "a photo of the {}.", "a photo of my {}.", "i love my {}!",
        "a photo of my dirty {}.", "a photo of my clean {}.", "a photo of my new {}.", "a photo of my old {}.",
    ],
    "resisc45": _RESISC45,
    "eurosat": [
        "a centered satellite photo of {}.", "a centered satellite photo of a {}.",
        "a centered satellite photo of the {}.",
    ],
    "svhn": list(_NUMBER),
    "gtsrb": [
        'a zoomed in photo of a "{}" traffic sign.', 'a centered photo of a "{}" traffic sign.',
        'a close up photo of a "{}" traffic sign.',
    ],
    "mnist": list(_NUMBER),
    "dtd": [
        "a photo of a {} texture.", "a photo of a {} pattern.", "a photo of a {} thing.",
        "a photo of a {} object.", "a photo of the {} texture.", "a photo of the {} pattern.",
        "a photo of the {} thing.", "a photo of the {} object.",
    ],
    "cifar100": list(_CIFAR),
    "stl10": ["a photo of a {}.", "a photo of the {}."],
    "flowers102": ["a photo of a {}, a type of flower."],
    "oxford_pets": ["a photo of a {}, a type of pet."],
    "pcam": ["this is a photo of {}"],
    "fer2013": [
        "a photo of a {} looking face.", "a photo of a face showing the emotion: {}.",
        "a photo of a face looking {}.", "a face that looks {}.", "they look {}.", "look at how {} they are.",
    ],
    "emnist_letters": ['a photo of the digit character: "{}".'],
    "cifar10": list(_CIFAR),
    "food101": ["a photo of {}, a type of food."],
    "fashion_mnist": ["a photo of a {}.", "a photo of the {}."],
    "rendered_sst2": ["a {} review of a movie."],
    "kmnist": ["a photo of the character {}."],
    "digits": list(_NUMBER),
    "faces": ["a photo of a {}.", "a low resolution photo of a {}."],
}
