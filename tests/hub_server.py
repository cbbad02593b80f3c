"""A local Hugging Face Hub for the push tests: a loopback HTTP server (127.0.0.1, a free port) that speaks the
part of the Hub's HTTP API that `huggingface_hub` 2.4 uses to push and to download a model repo.

Why our own: the PyPI packages that call themselves local Hubs do not serve uploads. `hf-local-hub` (0.1.0, 0.2.0,
3.0.0) ships only a Python client and CLI that start a Go binary built from its source tree, and no wheel carries
that binary; `olah` (0.5.4) is a read-only mirror (no repo creation, pre-upload, LFS or commit endpoints).

What it serves (model repos; JSON unless said):
- `POST /api/repos/create` (private or public), `POST /api/validate-yaml`, `GET /api/whoami-v2`;
- `POST /api/models/{repo}/preupload/{rev}` (weights and files over 10 MiB go by LFS, as on the Hub, and the
  remote oid lets the client skip unchanged files), `POST /{repo}.git/info/lfs/objects/batch` (the "basic"
  transfer) and `PUT /lfs/{oid}` (the server checks the sha256), `POST /api/models/{repo}/commit/{rev}` (the
  ndjson commit: regular files, LFS files, deletions; atomic);
- `POST /api/models/{repo}/branch/{name}`, `GET /api/models/{repo}/refs`;
- `GET /api/models/{repo}[/revision/{rev}]` (sha, private, siblings), `GET /api/models/{repo}/tree/{rev}[/path]`;
- `HEAD` / `GET /{repo}/resolve/{rev}/{path}` with `X-Repo-Commit`, `ETag` and the Hub's `X-Error-Code` on a missing
  repo, revision or file, which `huggingface_hub` turns into its typed errors.

Not served: the Xet storage protocol (the Hub's default for large files when `hf_xet` is installed): clients must
set `HF_HUB_DISABLE_XET=1`, which makes `huggingface_hub` upload large files through LFS. Pull requests (a commit
with `create_pr` answers 400), tags, deletions of repos and anything else answer 404 (and are listed in
`unhandled`); a route that fails answers 500 (listed in `errors`). Writes need the token
`LocalHub.token`; so do reads of a private repo (401, as the Hub answers for a repo you may not see).

`LocalHub(stop_on="commit")` makes the server stop when that request arrives: it reads the request, closes the
connection without answering and stops listening, as a Hub that goes down in the middle of a push.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import huggingface_hub
import transformers.utils.hub
from huggingface_hub import HfApi

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".npy", ".gguf", ".onnx")
LFS_MIN_SIZE = 10 * 1024 * 1024
REPO = r"(?P<repo>[^/]+/[^/]+?)"
ROUTES = [  # (method, name, pattern); names are what `stop_on` and `requests` use
    ("POST", "create_repo", r"/api/repos/create"),
    ("POST", "validate_yaml", r"/api/validate-yaml"),
    ("GET", "whoami", r"/api/whoami-v2"),
    ("POST", "preupload", rf"/api/models/{REPO}/preupload/(?P<rev>[^/]+)"),
    ("POST", "commit", rf"/api/models/{REPO}/commit/(?P<rev>[^/]+)"),
    ("POST", "create_branch", rf"/api/models/{REPO}/branch/(?P<rev>[^/]+)"),
    ("GET", "refs", rf"/api/models/{REPO}/refs"),
    ("GET", "tree", rf"/api/models/{REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?"),
    ("GET", "model_info", rf"/api/models/{REPO}(?:/revision/(?P<rev>[^/]+))?"),
    ("POST", "lfs_batch", rf"/{REPO}\.git/info/lfs/objects/batch"),
    ("PUT", "lfs_upload", r"/lfs/(?P<oid>[0-9a-f]{64})"),
    ("GET", "resolve", rf"/{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)"),
    ("HEAD", "resolve", rf"/{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)"),
]


class HubError(Exception):
    """An HTTP error answer: status, the Hub's `X-Error-Code` (if any) and a message."""

    def __init__(self, status: int, message: str, code: str | None = None, **extra) -> None:
        super().__init__(message)
        self.status, self.code, self.extra = status, code, extra


@dataclass
class Repo:
    private: bool
    branches: dict[str, str] = field(default_factory=dict)  # branch -> commit sha
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit sha -> {path: content}
    lfs_paths: dict[str, set[str]] = field(default_factory=dict)  # commit sha -> paths stored through LFS


def git_blob_sha(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class LocalHub:
    """The server and its state. Use as a context manager; `url` is the endpoint to set as `HF_ENDPOINT`."""

    token = "hf_local_hub_test_token"
    user = "tester"

    def __init__(self, stop_on: str | None = None) -> None:
        self.stop_on = stop_on
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}  # sha256 -> content
        self.requests: list[tuple[str, str]] = []  # (route name, path) of every request served
        self.unhandled: list[tuple[str, str]] = []  # requests no route serves
        self.errors: list[str] = []  # tracebacks of routes that failed (bugs of this server)
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.stopped = False

    def __enter__(self) -> LocalHub:
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.server.shutdown()
            self.server.server_close()

    # ---- what the tests read -----------------------------------------------------------------------------------

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """The files of `repo_id` at `revision` (a branch or commit sha)."""
        repo = self._repo(repo_id, authorized=True)
        return dict(repo.commits[self._resolve(repo, revision)])

    def lfs_files(self, repo_id: str, revision: str = "main") -> set[str]:
        repo = self._repo(repo_id, authorized=True)
        return set(repo.lfs_paths[self._resolve(repo, revision)])

    # ---- state -------------------------------------------------------------------------------------------------

    def _repo(self, repo_id: str, authorized: bool) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and not authorized):
            raise HubError(401, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    @staticmethod
    def _resolve(repo: Repo, revision: str) -> str:
        if revision in repo.branches:
            return repo.branches[revision]
        if revision in repo.commits:
            return revision
        raise HubError(404, f"Revision {revision} not found", "RevisionNotFound")

    def _new_commit(self, repo: Repo, files: dict[str, bytes], lfs_paths: set[str], parent: str | None) -> str:
        digest = hashlib.sha1(f"{parent}:{len(repo.commits)}".encode())
        for path in sorted(files):
            digest.update(path.encode() + b"\0" + hashlib.sha256(files[path]).digest())
        sha = digest.hexdigest()
        repo.commits[sha], repo.lfs_paths[sha] = files, lfs_paths
        return sha

    # ---- routes: each takes the match groups, the JSON or raw body and whether the token was given -----------

    def create_repo(self, body: dict, authorized: bool, **_) -> dict:
        _require(authorized, "creating a repo")
        if body.get("type", "model") != "model":
            raise HubError(400, f"Only model repos are served here, got type {body.get('type')!r}")
        repo_id = f"{body.get('organization') or self.user}/{body['name']}"
        url = f"{self.url}/{repo_id}"
        if repo_id in self.repos:
            raise HubError(409, "You already created this model repo", None, url=url)  # the Hub's answer has the url
        private = body.get("visibility") == "private" or body.get("private") is True
        repo = self.repos[repo_id] = Repo(private=private)
        repo.branches["main"] = self._new_commit(repo, {".gitattributes": b"*.safetensors filter=lfs\n"}, set(), None)
        return {"url": url, "name": repo_id, "id": repo_id}

    def validate_yaml(self, body: dict, **_) -> dict:
        if not body.get("content", "").startswith("---\n"):
            return {"errors": [], "warnings": [{"message": "empty or missing yaml metadata in repo card"}]}
        return {"errors": [], "warnings": []}

    def whoami(self, authorized: bool, **_) -> dict:
        _require(authorized, "whoami")
        return {"type": "user", "name": self.user, "orgs": [], "auth": {"accessToken": {"role": "write"}}}

    def preupload(self, repo: str, rev: str, body: dict, authorized: bool, **_) -> dict:
        _require(authorized, "uploading")
        state = self._repo(repo, authorized)
        current = state.commits[self._resolve(state, rev)]
        answers = []
        for item in body["files"]:
            path, size = item["path"], item["size"]
            lfs = path.endswith(LFS_SUFFIXES) or size >= LFS_MIN_SIZE
            oid = None
            if path in current:
                content = current[path]
                oid = hashlib.sha256(content).hexdigest() if lfs else git_blob_sha(content)
            answers.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        return {"files": answers}

    def lfs_batch(self, repo: str, body: dict, authorized: bool, **_) -> dict:
        _require(authorized, "uploading")
        self._repo(repo, authorized)
        objects = []
        for item in body["objects"]:
            entry = {"oid": item["oid"], "size": item["size"]}
            if item["oid"] not in self.lfs:
                entry["actions"] = {"upload": {"href": f"{self.url}/lfs/{item['oid']}"}}
            objects.append(entry)
        return {"transfer": "basic", "objects": objects}

    def lfs_upload(self, oid: str, raw: bytes, **_) -> dict:
        if hashlib.sha256(raw).hexdigest() != oid:
            raise HubError(400, f"The uploaded content does not hash to {oid}")
        self.lfs[oid] = raw
        return {}

    def commit(self, repo: str, rev: str, raw: bytes, authorized: bool, query: str, **_) -> dict:
        _require(authorized, "committing")
        if "create_pr=1" in query:
            raise HubError(400, "Pull requests are not served by the local Hub")
        state = self._repo(repo, authorized)
        parent = self._resolve(state, rev)
        if rev not in state.branches:
            raise HubError(400, f"Can only commit to a branch, got {rev}")
        files, lfs_paths = dict(state.commits[parent]), set(state.lfs_paths[parent])
        lines = [json.loads(line) for line in raw.splitlines() if line.strip()]
        summary = ""
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "header":
                summary = value["summary"]
            elif key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
                lfs_paths.discard(value["path"])
            elif key == "lfsFile":
                if value["oid"] not in self.lfs:
                    raise HubError(400, f"LFS object {value['oid']} of {value['path']} was never uploaded")
                files[value["path"]] = self.lfs[value["oid"]]
                lfs_paths.add(value["path"])
            elif key in ("deletedFile", "deletedFolder"):
                prefix = value["path"].rstrip("/") + "/"
                doomed = [p for p in files if p == value["path"] or (key == "deletedFolder" and p.startswith(prefix))]
                for path in doomed:
                    del files[path]
                    lfs_paths.discard(path)
            else:
                raise HubError(400, f"Unknown commit operation {key!r}")
        sha = self._new_commit(state, files, lfs_paths, parent)
        state.branches[rev] = sha
        return {"commitUrl": f"{self.url}/{repo}/commit/{sha}", "commitOid": sha, "summary": summary}

    def create_branch(self, repo: str, rev: str, body: dict | None, authorized: bool, **_) -> dict:
        _require(authorized, "creating a branch")
        state = self._repo(repo, authorized)
        if rev in state.branches:
            raise HubError(409, f"Reference refs/heads/{rev} already exists")
        start = (body or {}).get("startingPoint") or "main"
        state.branches[rev] = self._resolve(state, start)
        return {}

    def refs(self, repo: str, authorized: bool, **_) -> dict:
        state = self._repo(repo, authorized)
        branches = [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": sha} for b, sha in state.branches.items()]
        return {"branches": branches, "converts": [], "tags": [], "pullRequests": []}

    def model_info(self, repo: str, rev: str | None, authorized: bool, **_) -> dict:
        state = self._repo(repo, authorized)
        sha = self._resolve(state, rev or "main")
        siblings = [{"rfilename": path, "size": len(content)} for path, content in state.commits[sha].items()]
        return {"id": repo, "modelId": repo, "sha": sha, "private": state.private, "siblings": siblings, "tags": []}

    def tree(self, repo: str, rev: str, path: str | None, authorized: bool, **_) -> list:
        state = self._repo(repo, authorized)
        files = state.commits[self._resolve(state, rev)]
        prefix = (path or "").strip("/")
        inside = {p: c for p, c in files.items() if not prefix or p.startswith(prefix + "/")}
        if prefix and not inside:
            raise HubError(404, f"{path} does not exist", "EntryNotFound")
        return [{"type": "file", "path": p, "size": len(c), "oid": git_blob_sha(c)} for p, c in inside.items()]

    def resolve(self, repo: str, rev: str, path: str, authorized: bool, **_) -> tuple[bytes, dict]:
        state = self._repo(repo, authorized)
        sha = self._resolve(state, rev)
        content = state.commits[sha].get(path)
        if content is None:
            raise HubError(404, f"{path} does not exist at {rev}", "EntryNotFound")
        lfs = path in state.lfs_paths[sha]
        etag = hashlib.sha256(content).hexdigest() if lfs else git_blob_sha(content)
        return content, {"X-Repo-Commit": sha, "ETag": f'"{etag}"'}


def point_huggingface_hub_at(hub: LocalHub, monkeypatch, cache: Path) -> LocalHub:
    """Points this process's huggingface_hub (and transformers' shared client) at `hub`, as `HF_ENDPOINT` does
    when it is set before the import; Xet off (the local Hub speaks LFS); the token in `HF_TOKEN`; downloads go to
    `cache`."""
    constants = huggingface_hub.constants
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", hub.url)
    monkeypatch.setattr(transformers.utils.hub, "_hf_api", HfApi(endpoint=hub.url, library_name="transformers"))
    monkeypatch.setenv("HF_TOKEN", hub.token)
    return hub


@contextmanager
def only_loopback_connections() -> Iterator[None]:
    """Inside, a connection to an address other than 127.0.0.1 / ::1 fails (OSError): the tests talk to the local Hub
    and nothing else."""
    connect = socket.socket.connect

    def loopback_connect(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1"):
            raise OSError(f"the Hub tests only connect to 127.0.0.1, not {address}")
        return connect(sock, address)

    socket.socket.connect = loopback_connect
    try:
        yield
    finally:
        socket.socket.connect = connect


def _require(authorized: bool, action: str) -> None:
    if not authorized:
        raise HubError(401, f"Invalid credentials in Authorization header: {action} needs the token")


def _handler(hub: LocalHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            self._serve("GET")

        def do_HEAD(self) -> None:
            self._serve("HEAD")

        def do_POST(self) -> None:
            self._serve("POST")

        def do_PUT(self) -> None:
            self._serve("PUT")

        def _serve(self, method: str) -> None:
            split = urlsplit(self.path)
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            route = _match(method, split.path)
            if route is None:
                hub.unhandled.append((method, self.path))
                return self._answer(404, b'{"error": "not served by the local Hub"}', {})
            name, groups = route
            hub.requests.append((name, split.path))
            if name == hub.stop_on:  # the Hub goes down in the middle of a push
                self.close_connection = True
                threading.Thread(target=hub.stop, daemon=True).start()
                return
            authorized = self.headers.get("Authorization") == f"Bearer {hub.token}"
            try:
                is_json = re.search(r"(^|[/+])json\b", self.headers.get("Content-Type", "")) is not None
                body = json.loads(raw) if raw and is_json else None
                with hub.lock:
                    result = getattr(hub, name)(body=body, raw=raw, authorized=authorized, query=split.query, **groups)
            except HubError as error:
                headers = {"X-Error-Message": str(error)} | ({"X-Error-Code": error.code} if error.code else {})
                return self._answer(error.status, json.dumps({"error": str(error), **error.extra}).encode(), headers)
            except Exception:  # noqa: BLE001 - a bug here: answered, and kept for the tests to see
                hub.errors.append(traceback.format_exc())
                return self._answer(500, b'{"error": "local Hub failure"}', {})
            if isinstance(result, tuple):  # a file: raw bytes
                content, headers = result
                return self._answer(200, content, headers, "application/octet-stream")
            self._answer(200, json.dumps(result).encode(), {})

        def _answer(self, status: int, content: bytes, headers: dict, kind: str = "application/json") -> None:
            self.send_response(status)
            for key, value in {"Content-Type": kind, "Content-Length": str(len(content)), **headers}.items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(content)

    return Handler


def _match(method: str, path: str) -> tuple[str, dict] | None:
    for route_method, name, pattern in ROUTES:
        found = re.fullmatch(pattern, path)
        if route_method == method and found:
            return name, {key: unquote(value) for key, value in found.groupdict().items() if value is not None} | {
                key: None for key, value in found.groupdict().items() if value is None
            }
    return None
