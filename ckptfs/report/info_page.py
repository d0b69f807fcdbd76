"""`ckptfs info --html`: one checkpoint as a self-contained page, drawn from
the info report dict (ckptfs/info_report.py says its keys): the summary,
parameters by top-level module and by dtype, the tree as an outline whose
folders are built when opened, every tensor's stats with its histogram on
demand, the pickle globals and the scan's verdict. `fragment` is the
summary alone, what a notebook shows for `ckptfs.open(...)`."""

from __future__ import annotations

import os

from ..humanize import plural
from . import page, stats_page
from .page import Column, Markup, element

#: the outline's columns (the first is the name of each folder or file)
OUTLINE = (Column("path", "name", "code"), Column("dtype", "dtype", "code"), Column("shape", "shape", "shape"),
           Column("size", "size", "bytes"), Column("nonfinite", "NaN + inf", "int"))
#: scan findings listed; the rest are counted
MAX_FINDINGS = 200
#: rows of the tables by module and by dtype, and of the globals; the rest summed or counted
MAX_ROWS = 50


def _writable(info: dict) -> Markup:
    if info["writable"]:
        return element("span", "writable: edits are written back in the same format")
    return element("span", "read-only: ", info["read_only_because"] or "ckptfs cannot write this format back")


def _summary_list(info: dict, stats: dict | None, scan: dict | None) -> Markup:
    described = f": {info['format_description']}" if info["format_description"] else ""
    items = [("source", element("code", info["source"])), ("format", element("span", info["format"], described)),
             ("size", page.number(info["source_bytes"], "bytes")), ("tensors", page.number(info["tensors"], "int")),
             ("parameters", page.number(info["parameters"], "int")),
             ("tensor bytes", page.number(info["tensor_bytes"], "bytes")), ("edits", _writable(info))]
    if stats is not None:
        bad = stats_page.flagged(stats)
        items.append(("NaN / inf", element("span", f"{plural(len(bad), 'tensor', spec=',')} with NaN, infinities or an error",
                                           class_="ri-bad") if bad else "none"))
    if scan is not None:
        items.append(("scan", _verdict(scan)))
    return page.summary_list(items)


def _verdict(scan: dict) -> Markup:
    words = {"safe": "safe: every global on the allowlist", "dangerous": "dangerous: globals outside the allowlist",
             "error": "no verdict: parts could not be scanned", "not scanned": "not scanned"}
    return element("span", words.get(scan["verdict"], scan["verdict"]), class_="ri-verdict-" + "-".join(scan["verdict"].split()),
                   data_verdict=scan["verdict"])


def _breakdown(title: str, rows: dict[str, dict], parameters: int, anchor: str) -> Markup:
    """A table of tensors, parameters and bytes per name, each with a bar of
    its share of the parameters: the MAX_ROWS largest, the rest summed in a
    last row (a flat checkpoint has a top-level name per tensor)."""
    ranked = sorted(rows.items(), key=lambda item: -item[1]["parameters"])
    largest = max([row["parameters"] for row in rows.values()] + [1])
    shown = [(element("code", name), *_shares(row, parameters, largest)) for name, row in ranked[:MAX_ROWS]]
    if len(ranked) > MAX_ROWS:
        rest = {key: sum(row[key] for _, row in ranked[MAX_ROWS:]) for key in ("tensors", "parameters", "bytes")}
        shown.append((element("span", f"and {plural(len(ranked) - MAX_ROWS, 'other', spec=',')} "
                              "(ckptfs info --json lists them)", class_="ri-others"),
                      *_shares(rest, parameters, largest)))
    return page.table([title, "tensors", "parameters", "bytes", "share of the parameters"], shown,
                      numeric=[False, True, True, True, False], id=anchor)


def _shares(row: dict, parameters: int, largest: int) -> tuple:
    return (page.number(row["tensors"], "int"), page.number(row["parameters"], "int"),
            page.number(row["bytes"], "bytes"),
            page.bar(row["parameters"] / largest, width=160, title=f"{row['parameters'] / max(parameters, 1):.1%}"))


def _globals(info: dict) -> Markup:
    """The globals the pickles name, those outside the allowlist first; the
    first MAX_ROWS, the others counted."""
    unsafe = set(info["unsafe_globals"])
    named = sorted(info["pickle_globals"], key=lambda name: name not in unsafe)
    if not named:
        return element("p", "The checkpoint's pickles name no global (or it has no pickle).")
    shown = [(element("code", name), element("span", "outside the allowlist: see ckptfs scan", class_="ri-bad")
              if name in unsafe else "on the allowlist") for name in named[:MAX_ROWS]]
    more = [element("p", f"and {len(named) - MAX_ROWS:,} more (ckptfs info --json lists them all)")] \
        if len(named) > MAX_ROWS else []
    return page.join([
        element("p", f"{plural(len(named), 'global', spec=',')} named by its pickles, none imported or run: what "
                "torch.load(weights_only=False) would import or call."),
        page.table(["global", "allowed"], shown, id="ri-globals-table"), *more,
    ])


def _scan(scan: dict) -> Markup:
    dangerous = scan.get("dangerous", [])
    found = [(element("code", f["global"]), element("code", f["location"]), element("span", f["reason"],
              class_="ri-bad")) for f in dangerous[:MAX_FINDINGS]]
    parts = [element("p", "Verdict: ", _verdict(scan), f" ({len(scan.get('globals', [])):,} globals in "
                     f"{len(scan.get('pickles', [])):,} pickles)" if "pickles" in scan else "")]
    if found:
        parts.append(page.table(["global", "where", "why"], found, id="ri-dangerous"))
    if len(dangerous) > MAX_FINDINGS:
        parts.append(element("p", f"and {len(dangerous) - MAX_FINDINGS:,} more: ckptfs scan -v lists them all"))
    parts += [element("p", problem, class_="ri-bad") for problem in scan.get("problems", [])[:MAX_FINDINGS]]
    return page.join(parts)


def summary_parts(info: dict, stats: dict | None = None, scan: dict | None = None) -> list[Markup]:
    """The top of the report: the summary, the parameters by module and by
    dtype, and the globals (the notebook's fragment is these alone)."""
    parts = [_summary_list(info, stats, scan),
             page.section("Parameters by top-level module", _breakdown("module", info["by_prefix"],
                                                                       info["parameters"], "ri-by-module")),
             page.section("Parameters by dtype", _breakdown("dtype", info["by_dtype"], info["parameters"],
                                                            "ri-by-dtype"))]
    if info["notes"]:
        parts.append(page.section("Notes", *(element("p", note) for note in info["notes"])))
    return parts


def outline_rows(outline: list[dict], stats: dict | None) -> dict:
    """The outline's rows by columns (`page.columnar`): the tree's entries,
    a tensor's with its NaN and infinities counted and `stat`, the index of
    its stats row, where the stats have it."""
    at = {t["path"]: i for i, t in enumerate(stats["tensors"])} if stats else {}
    rows = []
    for entry in outline:
        row = {key: entry.get(key) for key in ("path", "dtype", "shape")}
        row["size"] = entry["size"] if entry["type"] != "dir" else None
        row["stat"] = at.get(entry["path"])
        row["nonfinite"] = stats_page.nonfinite(stats["tensors"][row["stat"]]) if row["stat"] is not None else None
        rows.append(row)
    return page.columnar(rows, ("path", "dtype", "shape", "size", "nonfinite") + (("stat",) if stats else ()))


def _outline(report: dict) -> Markup:
    stats = report["stats"]
    how = " Click a tensor for its stats and histogram." if stats else ""
    return page.join([
        element("p", "Folders open on a click; their rows are made then." + how),
        page.json_script("ckptfs-outline", outline_rows(report["outline"], stats)),
        element("div", page.outline("ckptfs-outline", OUTLINE, name_key="path", separator="/"), class_="ri-pick",
                data_stats="ckptfs-stats", data_rows="ckptfs-outline") if stats else
        page.outline("ckptfs-outline", OUTLINE, name_key="path", separator="/"),
        element("div", "", class_="ri-detail", hidden=True),
    ])


def document(report: dict) -> str:
    """The whole page of an info report."""
    info, stats, scan = report["info"], report["stats"], report["scan"]
    parts = [element("style", Markup(stats_page.STYLE)), *summary_parts(info, stats, scan)]
    if stats is not None and stats_page.flagged(stats):
        parts.append(page.section("Tensors with NaN, infinities or errors", stats_page.flagged_table(stats),
                                  anchor="ri-flagged"))
    parts.append(page.section("Tree", _outline(report), anchor="ri-tree"))
    parts.append(page.section("Statistics per tensor", stats_page.section(stats) if stats is not None
                              else element("p", f"Statistics: {report['stats_note']}."), anchor="ri-stats"))
    parts.append(page.section("Pickle globals", _globals(info), anchor="ri-globals"))
    parts.append(page.section("Scan", _scan(scan), anchor="ri-scan"))
    return page.document(f"ckptfs info: {os.path.basename(info['source'].rstrip('/')) or info['source']}", *parts)


def fragment(info: dict) -> Markup:
    """What a notebook shows for an opened checkpoint: the summary, the
    parameters by module and by dtype, the globals; from metadata alone."""
    heading = element("p", element("strong", f"ckptfs.Checkpoint {info['format']}"))
    return page.fragment(element("style", Markup(stats_page.STYLE)), heading, *summary_parts(info),
                         page.section("Pickle globals", _globals(info)))
