"""Semi-dual unbalanced optimal transport: the math and the shared machinery.

phi       Psi* functions and their registry (select_phi, register_phi)
losses    transport costs, the potential and map losses, JSD losses, R1, GP, the toy regularizer
schedule  S-JKO phases, cosine learning rates, the loss-scheduler alpha, the data-noise std
ema       the generator EMA (a frozen copy updated with one foreach lerp)
dist      torch.distributed set-up, flat gradient all-reduce, gathers
fid       pytorch-fid's Inception and Frechet distance on in-memory uint8 samples; precision/recall
metrics   toy metrics: k-NN KL, W1, outlier fraction, mode coverage, energy distance
io        atomic files (checkpoints, JSON, logs) and weights-only checkpoint loading
plots     matplotlib figures written atomically
errors    UsageError: one line on stderr and exit code 2 for user mistakes
"""
