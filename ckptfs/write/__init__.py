"""Writable mounts: the on-disk overlay and journal of edits, and the edit
session that repacks them through a format's writer."""
