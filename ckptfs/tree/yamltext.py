"""YAML text of plain values, written fast.

libyaml's emitter (PyYAML's `CSafeDumper`, where PyYAML was built with it)
writes three times faster than the pure-Python one, which matters for a
`__metadata__` of 100 MB. It cannot write a lone surrogate (a key a pickle or
a JSON header may hold); such a value is written by the Python emitter.
"""

from __future__ import annotations

import yaml


class Dumper(yaml.SafeDumper):
    pass


FastDumper = type("FastDumper", (yaml.CSafeDumper,), {}) if yaml.__with_libyaml__ else Dumper
DUMPERS = (Dumper, FastDumper) if FastDumper is not Dumper else (Dumper,)


def dump(value: object) -> str:
    """Block-style YAML of `value`, keys in their order, Unicode as it is."""
    options = dict(sort_keys=False, allow_unicode=True, default_flow_style=False)
    try:
        return yaml.dump(value, Dumper=FastDumper, **options)
    except UnicodeEncodeError:
        return yaml.dump(value, Dumper=Dumper, **options)
