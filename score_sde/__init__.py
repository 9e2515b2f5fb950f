"""Networks: NCSN++ transport map, residual potentials, small DCGAN pair, toy MLPs (score_sde.toy)."""
from .config import add_model_args, build_generator, build_potential, check_image_size, count_parameters

__all__ = ["add_model_args", "build_generator", "build_potential", "check_image_size", "count_parameters"]
