"""A writable mount's edit session, above the formats: the on-disk overlay
and journal of edits, resume, and the repack that hands a format's writer
the edited tree (plain values; writers never see the overlay); exports."""
