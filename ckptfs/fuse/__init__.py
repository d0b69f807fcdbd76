"""The FUSE side: inodes, handles and errno over a tree of nodes, and the
`.ckptfs/` view. Knows no format."""
