"""The maths: tensors in, numbers out. The empirical NTK (``ntk``), the block Krylov
eigensolver, Hessian-vector products, kernel–target alignment and the losses. Nothing here
knows about runs, configurations or files."""
