"""infomax.data imports Lightning only for its data modules: reading a data set, checking a name or
decoding a folder does not pay for it (the service and the commands read data sets too)."""

import json
import subprocess
import sys


def _modules_after(code: str) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            code + "\nimport json, sys\nprint(json.dumps({m: m in sys.modules for m in ('pytorch_lightning', 'torch')}))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_reading_data_does_not_import_lightning():
    loaded = _modules_after(
        "import infomax.data.readers, infomax.data.registry, infomax.data.folder, "
        "infomax.data.sources, infomax.data.datasets\n"
        "from infomax.data import load_dataset, load_image_folder, resolve_source, CLASS_NAMES"
    )
    assert loaded["pytorch_lightning"] is False


def test_the_registry_imports_neither_torch_nor_lightning():
    assert _modules_after("import infomax.data.registry") == {"pytorch_lightning": False, "torch": False}


def test_the_data_modules_still_resolve_as_infomax_data_names():
    # class_path: infomax.data.CIFAR10 in the training configs and in saved hyper-parameters.
    loaded = _modules_after(
        "import infomax.data\n"
        "from infomax.data.datamodules import CIFAR10, FashionMNIST, ImageFolder, MNIST\n"
        "assert (infomax.data.CIFAR10, infomax.data.FashionMNIST, infomax.data.MNIST, "
        "infomax.data.ImageFolder) == (CIFAR10, FashionMNIST, MNIST, ImageFolder)"
    )
    assert loaded["pytorch_lightning"] is True
