"""Reading image files and resizing them: the one place that decodes and resamples.

Every resize is bilinear with antialiasing (the filter widens with the scale when it
shrinks): PIL's for image files, as torchvision's `Resize` does on PIL images, and torch's
uint8 equivalent for whole tensors of square images. Non-square images are resized
so that the shorter side matches and then center-cropped, like DDGAN's
`Resize(size)` + `CenterCrop(size)`.
"""
import os

import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image

from uot.errors import UsageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def list_image_files(folder, recursive=True):
    """Sorted paths of the images in `folder` (and its subfolders when `recursive`)."""
    if not os.path.isdir(folder):
        raise UsageError(f"image folder {folder} does not exist; give the folder that holds the images")
    if recursive:
        paths = [os.path.join(parent, name) for parent, _, names in os.walk(folder) for name in names]
    else:
        paths = [os.path.join(folder, name) for name in os.listdir(folder)]
    paths = sorted(p for p in paths if p.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(p))
    if not paths:
        raise UsageError(f"image folder {folder} holds no images ({'/'.join(IMAGE_EXTENSIONS)}); "
                         "give the folder that holds the images")
    return paths


def decode_image(source, name):
    """Open a file path or a file-like object as an RGB PIL image; `name` goes in the error."""
    try:
        with Image.open(source) as img:
            return img.convert("RGB")  # convert() decodes fully, so a truncated file fails here
    except (OSError, SyntaxError, ValueError) as err:  # what PIL raises for unreadable data
        raise UsageError(f"{name} is not a readable image ({err}); replace or delete it, then check "
                         "the set with python -m datasets_prep.check_dataset") from err


def pil_to_uint8(img):
    """PIL image -> uint8 tensor C x H x W (C = 1 for greyscale, 3 for RGB)."""
    return TF.pil_to_tensor(img)


def resize_center_crop(img, size):
    """Resize a PIL image so its shorter side is `size`, then crop the central size x size."""
    if img.size != (size, size):
        img = TF.resize(img, size, interpolation=TF.InterpolationMode.BILINEAR)
        img = TF.center_crop(img, [size, size])
    return img


def resize_square(images, size):
    """Resize a uint8 N x C x h x w tensor of square images to N x C x size x size.

    torch's uint8 bilinear resize with antialias reproduces PIL's bilinear (to within one
    grey level) and is much faster than a PIL loop over tens of thousands of images."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True)
