"""Pickles without running them: an inert interpreter of the opcodes, torch's
pickled classes as plain values, the objects as trees and YAML, and a writer
that pickles them again. Knows no checkpoint format."""
