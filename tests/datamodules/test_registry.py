import pytest

from pactmerge.datamodules import BENCHMARKS, benchmark_tasks, get_task, list_tasks
from pactmerge.errors import ConfigError

EXPECTED_CLASSES = {
    "sun397": 397, "stanford_cars": 196, "resisc45": 45, "eurosat": 10, "svhn": 10, "gtsrb": 43, "mnist": 10,
    "dtd": 47, "cifar100": 100, "stl10": 10, "flowers102": 102, "oxford_pets": 37, "pcam": 2, "fer2013": 7,
    "emnist_letters": 26, "cifar10": 10, "food101": 101, "fashion_mnist": 10, "rendered_sst2": 2, "kmnist": 10,
    "digits": 10, "faces": 2,
}


def test_benchmark_lists_match_the_issue():
    eight = ["sun397", "stanford_cars", "resisc45", "eurosat", "svhn", "gtsrb", "mnist", "dtd"]
    assert benchmark_tasks("8") == eight
    assert benchmark_tasks(14) == eight + ["cifar100", "stl10", "flowers102", "oxford_pets", "pcam", "fer2013"]
    assert benchmark_tasks("20")[14:] == ["emnist_letters", "cifar10", "food101", "fashion_mnist", "rendered_sst2", "kmnist"]
    assert benchmark_tasks("offline") == ["mnist", "fashion_mnist", "digits", "faces"]
    assert set(BENCHMARKS) == {"8", "14", "20", "offline"}


@pytest.mark.parametrize("key", list_tasks())
def test_every_task_is_complete(key):
    task = get_task(key)
    assert task.key == key and task.display_name
    assert len(task.classnames) == EXPECTED_CLASSES[key]
    assert len(set(task.classnames)) == len(task.classnames), "class names must be unique"
    assert task.templates and all(t.count("{}") == 1 for t in task.templates)
    assert all(t.format(c) for t in task.templates for c in task.classnames[:3])
    assert task.sources and task.source_description


def test_digit_like_tasks_do_not_flip():
    for key in ("mnist", "svhn", "digits", "emnist_letters", "kmnist", "rendered_sst2", "gtsrb"):
        assert get_task(key).hflip is False
    assert get_task("cifar10").hflip is True


def test_offline_and_hub_sources_share_one_class_list():
    for key in ("mnist", "fashion_mnist"):
        kinds = [s.kind for s in get_task(key).sources]
        assert kinds == ["offline", "hub"]  # one TaskInfo, one class order for both sources


def test_unknown_task_lists_known_and_close_matches():
    with pytest.raises(ConfigError) as err:
        get_task("mnsit")
    assert "mnist" in str(err.value) and "sun397" in str(err.value) and "Did you mean" in str(err.value)


def test_unknown_benchmark_lists_known():
    with pytest.raises(ConfigError, match="known benchmarks: 8, 14, 20, offline"):
        benchmark_tasks("12")
