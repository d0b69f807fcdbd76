"""The FUSE side: inodes, handles and errno over a tree of nodes. Knows no
format."""
