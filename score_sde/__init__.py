"""Networks: NCSN++ transport map, residual potentials, the S-JKO tables' "Small" pair
(otm.py), a small DCGAN-like pair, toy MLPs (toy.py). Built from the run's options by
config.py, which also says what a source sample looks like for each map.

Layering: score_sde may use uot.errors; uot never imports score_sde.
"""
from .config import (MODEL_NAMES, add_model_args, build_generator, build_potential, check_image_size,
                     count_parameters, initial_reference, source_shape)

__all__ = ["MODEL_NAMES", "add_model_args", "build_generator", "build_potential", "check_image_size",
           "count_parameters", "initial_reference", "source_shape"]
