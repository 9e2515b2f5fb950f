"""Semi-dual unbalanced optimal transport: the math and the shared machinery.

phi      Psi* functions and their registry (select_phi, register_phi)
losses   transport costs, the potential and map losses, R1 and the toy regularizer
"""
