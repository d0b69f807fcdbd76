"""`hf://[datasets/]ORG/NAME[@REVISION][/FOLDER/]`: a Hugging Face Hub
repository (or a folder of one), always a folder, from one API request
that pins the revision to its commit. Its files are read from that
commit's `resolve/` URLs over https (stores/http.py), which never change:
no ETag to pin. HF_ENDPOINT and HF_TOKEN as the Hub's own tools read them;
the token goes to the Hub's own host only."""

from __future__ import annotations

import os
from datetime import datetime
from urllib.parse import quote

from .base import RemoteError, RemoteObject, Store, store_for

HF_ENDPOINT = "https://huggingface.co"
#: the longest Hub API answer read (a listing of 100,000 files is about 20 MB)
MAX_API_ANSWER = 256 << 20


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", HF_ENDPOINT).rstrip("/")


def hub_auth(url: str) -> dict[str, str]:
    """The Hub token (HF_TOKEN), sent to the Hub's own host only."""
    token = os.environ.get("HF_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token and url.startswith(endpoint() + "/") else {}


class HubStore(Store):
    """The Hub: repositories as folders, read through the web server store."""

    kind = "the Hub"
    folders_only = True
    nothing = "no files there"

    def stat(self, url: str) -> RemoteObject:
        raise RemoteError(f"{url}: a Hub repository is a folder, never one object")

    def folder(self, url: str) -> tuple[str, dict[str, RemoteObject]]:
        """(the URL with the revision pinned to its commit, every file below
        FOLDER by relative path), from one API request."""
        rest = url[len("hf://"):]
        kind = "datasets" if rest.startswith("datasets/") else "models"
        rest = rest.removeprefix("datasets/")
        parts = rest.split("/")
        if len(parts) < 2 or not parts[0] or not parts[1]:
            raise RemoteError(f"{url}: name a repository, hf://ORG/NAME[@REVISION][/FOLDER/]")
        name, _, revision = parts[1].partition("@")
        repo, folder = f"{parts[0]}/{name}", "/".join(parts[2:])
        inside = folder.rstrip("/")
        host = endpoint()
        info = store_for(host + "/").json(f"{host}/api/{kind}/{repo}/revision/{quote(revision or 'main', safe='')}"
                                          "?blobs=true")
        sha = info.get("sha") if isinstance(info, dict) else None
        siblings = info.get("siblings") if isinstance(info, dict) else None
        if not isinstance(sha, str) or not isinstance(siblings, list):
            raise RemoteError(f"{url}: the Hub's answer names no commit and files")
        prefix = "" if kind == "models" else "datasets/"
        modified = _iso_time(info.get("lastModified"))
        objects = {}
        for sibling in siblings:
            path, size = (sibling.get("rfilename"), sibling.get("size")) if isinstance(sibling, dict) else (None, None)
            if not isinstance(path, str) or not isinstance(size, int) or size < 0:
                continue
            if folder and not path.startswith(inside + "/"):
                continue
            relative = path[len(inside) + 1:] if folder else path
            objects[relative] = RemoteObject(f"{host}/{prefix}{repo}/resolve/{sha}/{quote(path)}", size, "", modified)
        return f"hf://{prefix}{repo}@{sha}/" + (inside + "/" if folder else ""), objects

    def get(self, obj: RemoteObject, start: int, end: int) -> bytes:
        return store_for(obj.url).get(obj, start, end)  # a commit's resolve/ URL, on the web


def _iso_time(text) -> float:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0
