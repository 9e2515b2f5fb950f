"""Data: the dataset table (catalog.py), image datasets by name (images.py), the batch
feeder (loader.py), the LMDB image format, FID reference sets (reference.py) and the
synthetic toy samplers (toy.py).

Preparation and checking commands: folder_to_lmdb.py, celeba_to_lmdb.py, check_dataset.py,
fetch.py (MNIST and Fashion-MNIST, md5-checked, from torchvision or a package registry)
(run `python -m datasets_prep.<name> --help`).

Layering: datasets_prep may use uot (errors, plumbing); uot never imports datasets_prep.
"""
from datasets_prep.catalog import DATASETS, IMAGE_DATASETS, dataset_info, default_image_size  # noqa: F401
from datasets_prep.images import OUTLIER_LABEL, as_uint8_tensor, build_image_dataset  # noqa: F401
