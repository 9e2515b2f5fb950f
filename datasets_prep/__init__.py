"""Data: image datasets by name, the LMDB image format, and (toy.py) synthetic toy samplers.

Preparation and checking commands: folder_to_lmdb.py, celeba_to_lmdb.py, check_dataset.py
(run `python -m datasets_prep.<name> --help`).
"""
from datasets_prep.images import (  # noqa: F401
    IMAGE_DATASETS,
    OUTLIER_LABEL,
    as_uint8_tensor,
    build_image_dataset,
    dataset_num_channels,
)
