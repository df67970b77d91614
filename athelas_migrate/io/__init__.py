"""Safe reading and atomic writing of checkpoints; tensors stay lazy references."""
