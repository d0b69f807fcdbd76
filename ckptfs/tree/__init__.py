"""The format-blind tree every format builds: directories and files made of
byte ranges, tensors as `.npy` files, dtypes, and the names of paths."""
