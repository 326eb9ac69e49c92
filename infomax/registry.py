"""What is known of the standard data sets without loading them (no torch, no Lightning: the
service reads it): their class names, in label order."""

from __future__ import annotations

CLASS_NAMES: dict[str, list[str]] = {
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
    "fmnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot"],
    "mnist": [str(i) for i in range(10)],
}


def recorded_classes(record: dict | None) -> list[str] | None:
    """The class names of the labels of an index, from what its ``index.json`` records of the
    embedded data (``infomax index build`` copies them from the embeddings): its own ``classes``
    (a folder's subfolders), else the registry's names of the data set it names, else None."""
    record = record or {}
    classes = record.get("classes")
    if isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes):
        return classes
    data = record.get("data")
    return CLASS_NAMES.get(data) if isinstance(data, str) else None
