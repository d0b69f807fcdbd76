"""Reports as self-contained HTML (and, with matplotlib, PNG) made from the
plain dicts the `--json` outputs print (docs/reports.md).

Every module here renders data it is handed and reads nothing: no
checkpoint, no file, no network. page.py is the shell every report shares
(styles, escaping, tables, colour scales, the embedded data and the small
script that shows it lazily); each report is a module of its own beside it.
"""
