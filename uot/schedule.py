"""Schedules that are pure functions of the global step: JKO phases, learning rate,
the loss scheduler's alpha and the S-JKO data noise. Being pure functions, they resume
exactly from a step number, with no scheduler state to save."""
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Phase:
    index: int          # k: 0 for the first JKO step (identity reference map)
    start: int          # global step at which the phase begins
    iterations: int
    h: float            # JKO step size; None for a UOTM phase, whose cost uses tau

    @property
    def end(self):
        return self.start + self.iterations


def jko_phases(num_phase, init_h, h, init_num_iterations, num_iterations):
    """Phase 0 runs `init_num_iterations` with `init_h`; phases 1.. run `num_iterations` with `h`."""
    phases, start = [], 0
    for k in range(num_phase):
        iters = init_num_iterations if k == 0 else num_iterations
        phases.append(Phase(k, start, iters, init_h if k == 0 else h))
        start += iters
    return phases


def phase_at(phases, step):
    """The phase that global `step` (0-based) belongs to; the last one past the end."""
    for phase in phases:
        if step < phase.end:
            return phase
    return phases[-1]


def cosine(base, eta_min, t, period):
    """CosineAnnealingLR's closed form at time t."""
    return eta_min + (base - eta_min) * (1 + math.cos(math.pi * t / period)) / 2


def alpha_at(kind, phase_index, num_phase, alpha_min, alpha_max, step_every=10, gamma=0.5):
    """Loss-scheduler alpha for phase k, moving from alpha_min (phase 0) to alpha_max (last).

    steplr multiplies alpha_min by 1/gamma every `step_every` phases, capped at alpha_max.
    """
    if kind == "none":
        return 1.0
    frac = phase_index / max(num_phase - 1, 1)
    if kind == "linear":
        return alpha_min + (alpha_max - alpha_min) * frac
    if kind == "cosine":
        return alpha_max - (alpha_max - alpha_min) * (1 + math.cos(math.pi * frac)) / 2
    if kind == "steplr":
        return min(alpha_max, alpha_min / gamma ** (phase_index // step_every))
    raise ValueError(f"unknown loss scheduler {kind}")


def data_noise_std(phase_index):
    """Std of the Gaussian noise the S-JKO code adds to real data in phase k."""
    return 1.0 / (32 * (phase_index + 1))
