"""Semi-dual unbalanced optimal transport: the math and the machinery of a training run.

phi       Psi* functions and their registry (select_phi, register_phi)
losses    transport costs; the semi-dual, JSD and GAN losses; R1, GP, the toy regularizer
steps     the potential step and the map step of a training iteration
state     TrainState: the networks, EMA, reference map, optimizers and step a resume restores
schedule  S-JKO phases, cosine learning rates, the loss-scheduler alpha, the data-noise std
monitor   step statistics, the divergence guard, rank 0's log files, stop signals, exit codes
ema       frozen copies: the generator's EMA and the JKO reference map
dist      torch.distributed set-up, flat gradient all-reduce, gathers, naming a rank that died
fid       pytorch-fid's Inception and Frechet distance on in-memory uint8 samples; precision/recall
metrics   toy metrics: k-NN KL, W1, outlier fraction, mode coverage, energy distance
samples   image grids and toy sample sets written with their metrics and plots
plots     matplotlib figures written atomically
io        atomic files (checkpoints, JSON, logs), one-line errors for a full disk, weights-only checkpoint loading
cli       argparse errors as one-line UsageErrors; flag checks naming the flag
errors    UsageError: one line on stderr and exit code 2 for user mistakes

Layering: uot imports only torch, numpy, scipy, matplotlib, tqdm, tensorboard and
pytorch-fid, never datasets_prep, score_sde or the scripts. Whatever depends on a dataset
or a network (which modes a toy has, what a source sample looks like) is passed in by the
caller. tests/test_repository.py checks the rule.
"""
