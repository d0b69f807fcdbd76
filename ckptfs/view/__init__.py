"""The read-only `.ckptfs/` view of a checkpoint (info.yaml, tensors.tsv,
raw/, export/, pretrained/) and `ckptfs ls`/`cat` over it: built from the
tree alone, usable with or without a mount."""
