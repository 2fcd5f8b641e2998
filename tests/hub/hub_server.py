"""A TEST DOUBLE of the Hugging Face Hub HTTP API, for tests only (never a real Hub, never for production).

It serves, from memory, exactly the endpoints that ``huggingface_hub`` 2.x calls for the operations hf_distill's
Hub integration uses, with the response fields and headers that client reads:

=========================================  =====================================================================
operation (huggingface_hub)                endpoints
=========================================  =====================================================================
``create_repo``                            ``POST /api/repos/create`` (409 with its url when it exists)
``whoami``                                 ``GET /api/whoami-v2``
``upload_folder`` / ``upload_file`` /      ``POST /api/models/{repo}/preupload/{rev}`` (every file "regular": no
``create_commit`` (``metadata_update``,    LFS/Xet), ``POST /api/models/{repo}/commit/{rev}`` (ndjson),
``ModelCard.push_to_hub``)                 ``POST /api/validate-yaml``
``model_info`` / ``repo_info``             ``GET /api/models/{repo}[/revision/{rev}]``
``list_repo_tree`` (``snapshot_download``) ``GET /api/models/{repo}/tree/{rev}[/{path}]``
``hf_hub_download`` (transformers, timm,   ``HEAD``/``GET /{repo}/resolve/{rev}/{path}`` with ``ETag``,
``ModelCard.load``)                        ``X-Repo-Commit``, ``Content-Length`` (and ``Range``)
=========================================  =====================================================================

Errors carry the ``X-Error-Code`` header (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``) that
``huggingface_hub`` maps to its typed exceptions. Write operations need an ``Authorization: Bearer`` header (any
token), as on the Hub. Repositories live in memory, with their commit history, until the server stops. Every
request is recorded in :attr:`HubTestServer.requests` so tests can check which API calls were made, and
:attr:`HubTestServer.cut_off` makes the next matching request fail as a dropped connection does.

Usage (see ``tests/hub/conftest.py``)::

    server = HubTestServer().start()        # 127.0.0.1, a free port
    os.environ["HF_ENDPOINT"] = server.url
    ...
    server.stop()
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

REPO = r"(?P<repo>[^/]+/[^/]+)"
TYPES = r"(?P<type>models|datasets|spaces)"


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob (what the Hub returns as the ETag / oid of a regular file)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    """One commit: its id, message and the whole file tree after it."""

    oid: str
    message: str
    files: dict[str, bytes]
    date: str


@dataclass
class Repo:
    """A repository: commits (oldest first) and branches (name -> commit id)."""

    repo_id: str
    repo_type: str
    private: bool = False
    commits: list[Commit] = field(default_factory=list)
    branches: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        oid = self.branches.get(revision, revision)
        for c in self.commits:
            if c.oid == oid or (len(revision) >= 7 and c.oid.startswith(revision)):
                return c
        return None


class HubTestServer:
    """In-memory Hub double on ``127.0.0.1`` (see the module docstring).

    Args:
        user: the user name ``whoami`` reports and the default namespace.
    """

    def __init__(self, user: str = "tester") -> None:
        self.user = user
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str]] = []
        #: (method, path regex): the next matching request is cut off (its connection closed without an answer),
        #: as a network failure half-way through an upload does
        self.cut_off: tuple[str, str] | None = None
        self.lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Base URL (``http://127.0.0.1:<port>``)."""
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubTestServer:
        """Bind a free port and serve in a daemon thread."""
        server = self

        class Handler(_Handler):
            hub = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="hub-test-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and free the port."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    # -- direct access for tests --------------------------------------------------------------------------------------
    def repo(self, repo_id: str, repo_type: str = "model") -> Repo | None:
        """The stored repository, or None."""
        return self.repos.get((repo_type, repo_id))

    def file(self, repo_id: str, path: str, revision: str = "main") -> bytes | None:
        """Content of a file at a revision (None when missing)."""
        repo = self.repo(repo_id)
        commit = repo.resolve(revision) if repo else None
        return None if commit is None else commit.files.get(path)

    def calls(self, method: str, pattern: str) -> int:
        """How many recorded requests had this method and a path matching the regex."""
        return sum(1 for m, p in self.requests if m == method and re.search(pattern, p))

    def create(self, repo_id: str, repo_type: str = "model", private: bool = False) -> Repo:
        """Create an empty repository with an initial commit (a ``.gitattributes``, as the Hub does)."""
        with self.lock:
            repo = Repo(repo_id, repo_type, private)
            self._commit(repo, "initial commit", {".gitattributes": b"*.safetensors filter=lfs diff=lfs\n"})
            self.repos[(repo_type, repo_id)] = repo
            return repo

    def _commit(self, repo: Repo, message: str, files: dict[str, bytes], branch: str = "main") -> Commit:
        parent = repo.branches.get(branch, "")
        h = hashlib.sha1(parent.encode() + message.encode())
        for p in sorted(files):
            h.update(p.encode() + git_blob_sha1(files[p]).encode())
        h.update(str(len(repo.commits)).encode())
        commit = Commit(h.hexdigest(), message, dict(files), _now())
        repo.commits.append(commit)
        repo.branches[branch] = commit.oid
        return commit


def _now() -> str:
    """The Hub's timestamp format (``2024-05-01T12:00:00.000Z``)."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class _Error(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, **fields: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.fields = status, message, code, fields


class _Handler(BaseHTTPRequestHandler):
    hub: HubTestServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        return

    # -- plumbing ----------------------------------------------------------------------------------------------------
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(
        self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, head: bool = False
    ) -> None:
        self.send_response(status)
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        hdrs.setdefault("Content-Length", str(len(body)))
        for k, v in hdrs.items():
            self.send_header(k, v)
        self.end_headers()
        if body and not head:
            self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode())

    def _error(self, e: _Error, head: bool = False) -> None:
        headers = {"X-Error-Message": e.message}
        if e.code:
            headers["X-Error-Code"] = e.code
        self._send(e.status, json.dumps({"error": e.message, **e.fields}).encode(), headers, head=head)

    def _need_auth(self) -> None:
        if not self.headers.get("Authorization", "").startswith("Bearer "):
            raise _Error(401, "Invalid credentials in Authorization header")

    def _repo(self, repo_id: str, type_plural: str = "models") -> Repo:
        repo = self.hub.repo(unquote(repo_id), type_plural.rstrip("s"))
        if repo is None:
            raise _Error(404, f"Repository Not Found for url: {self.path}.", "RepoNotFound")
        return repo

    def _commit_at(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(unquote(revision))
        if commit is None:
            raise _Error(404, f"Invalid rev id: {unquote(revision)}", "RevisionNotFound")
        return commit

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        self.hub.requests.append((method, url.path))
        cut = self.hub.cut_off
        if cut is not None and cut[0] == method and re.search(cut[1], url.path):
            self.hub.cut_off = None
            self._body()  # the request arrived whole; the answer never leaves
            self.close_connection = True
            self.connection.shutdown(2)
            return
        routes = _ROUTES.get(method, [])
        try:
            for pattern, name in routes:
                m = re.fullmatch(pattern, url.path)
                if m:
                    getattr(self, name)(m, parse_qs(url.query), head=(method == "HEAD"))
                    return
            raise _Error(404, f"{method} {url.path} is not implemented by the Hub test double")
        except _Error as e:
            self._error(e, head=(method == "HEAD"))

    def do_GET(self) -> None:  # noqa: N802  (http.server API)
        self._dispatch("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch("HEAD")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    # -- endpoints -----------------------------------------------------------------------------------------------------
    def whoami(self, m: re.Match, q: dict, head: bool = False) -> None:
        self._need_auth()
        self._json(
            200, {"type": "user", "name": self.hub.user, "fullname": "Test User", "orgs": [], "auth": {}}
        )

    def create_repo(self, m: re.Match, q: dict, head: bool = False) -> None:
        self._need_auth()
        payload = json.loads(self._body() or b"{}")
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or self.hub.user}/{payload['name']}"
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{self.hub.url}/{prefix}{repo_id}"
        if self.hub.repo(repo_id, repo_type) is not None:
            # the Hub names the existing repository in its 409, and create_repo(exist_ok=True) returns it
            raise _Error(409, "You already created this model repo", url=url)
        self.hub.create(repo_id, repo_type, private=payload.get("visibility") == "private")
        self._json(200, {"url": url, "name": repo_id, "id": repo_id})

    def validate_yaml(self, m: re.Match, q: dict, head: bool = False) -> None:
        payload = json.loads(self._body() or b"{}")
        content = payload.get("content", "")
        block = re.match(r"^\s*---\r?\n([\s\S]*?)\r?\n---[ \t]*(\r?\n|$)", content)
        try:
            data = yaml.safe_load(block.group(1)) if block else {}
        except yaml.YAMLError as e:
            self._json(400, {"errors": [{"message": f"Invalid YAML: {e}"}], "warnings": []})
            return
        if data is not None and not isinstance(data, dict):
            self._json(400, {"errors": [{"message": "metadata must be a mapping"}], "warnings": []})
            return
        self._json(200, {"errors": [], "warnings": []})

    def repo_info(self, m: re.Match, q: dict, head: bool = False) -> None:
        repo = self._repo(m["repo"], m["type"])
        commit = self._commit_at(repo, m["rev"] or "main")
        card: dict[str, Any] = {}
        readme = commit.files.get("README.md")
        if readme:
            block = re.match(r"^\s*---\r?\n([\s\S]*?)\r?\n---", readme.decode("utf-8", "replace"))
            try:
                card = (yaml.safe_load(block.group(1)) if block else {}) or {}
            except yaml.YAMLError:
                card = {}
        info = {
            "_id": repo.repo_id,
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": commit.oid,
            "lastModified": commit.date,
            "createdAt": repo.commits[0].date,
            "private": repo.private,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": list(card.get("tags") or []) if isinstance(card, dict) else [],
            "pipeline_tag": card.get("pipeline_tag") if isinstance(card, dict) else None,
            "library_name": card.get("library_name") if isinstance(card, dict) else None,
            "siblings": [{"rfilename": p} for p in sorted(commit.files)],
        }
        self._json(200, info)

    def tree(self, m: re.Match, q: dict, head: bool = False) -> None:
        repo = self._repo(m["repo"], m["type"])
        commit = self._commit_at(repo, m["rev"])
        base = unquote(m["path"] or "").strip("/")
        recursive = (q.get("recursive") or ["false"])[0].lower() in ("1", "true")
        prefix = base + "/" if base else ""
        if base and base not in commit.files and not any(p.startswith(prefix) for p in commit.files):
            raise _Error(404, f"{base} does not exist", "EntryNotFound")
        entries: dict[str, dict[str, Any]] = {}
        for p, data in sorted(commit.files.items()):
            if not p.startswith(prefix):
                continue
            rest = p[len(prefix) :]
            if recursive or "/" not in rest:
                entries[p] = {"type": "file", "oid": git_blob_sha1(data), "size": len(data), "path": p}
            if "/" in rest:
                parts = rest.split("/")[:-1]
                for i in range(1, len(parts) + 1 if recursive else 2):
                    d = prefix + "/".join(parts[:i])
                    entries.setdefault(d, {"type": "directory", "oid": "0" * 40, "size": 0, "path": d})
        self._json(200, list(entries.values()))

    def preupload(self, m: re.Match, q: dict, head: bool = False) -> None:
        self._need_auth()
        repo = self._repo(m["repo"], m["type"])
        self._commit_at(repo, m["rev"])
        payload = json.loads(self._body() or b"{}")
        files = [
            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
            for f in payload.get("files", [])
        ]
        self._json(200, {"files": files, "commitOid": repo.branches.get("main")})

    def commit(self, m: re.Match, q: dict, head: bool = False) -> None:
        self._need_auth()
        repo = self._repo(m["repo"], m["type"])
        branch = unquote(m["rev"])
        if branch not in repo.branches:
            raise _Error(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        if q.get("create_pr"):
            raise _Error(400, "pull requests are not implemented by the Hub test double")
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        with self.hub.lock:
            files = dict(repo.resolve(branch).files)
            message = "commit"
            for item in lines:
                key, value = item["key"], item["value"]
                if key == "header":
                    message = value.get("summary") or message
                    parent = value.get("parentCommit")
                    if parent and parent != repo.branches[branch]:
                        raise _Error(412, "A commit has happened since. Please refresh and try again.")
                elif key == "file":
                    if value.get("encoding") != "base64":
                        raise _Error(400, "only base64 file content is supported")
                    files[value["path"]] = base64.b64decode(value["content"])
                elif key == "deletedFile":
                    if value["path"] not in files:
                        raise _Error(404, "A file with this name doesn't exist", "EntryNotFound")
                    del files[value["path"]]
                elif key == "deletedFolder":
                    folder = value["path"].rstrip("/") + "/"
                    files = {p: d for p, d in files.items() if not p.startswith(folder)}
                else:
                    raise _Error(400, f"commit operation {key!r} is not implemented by the Hub test double")
            commit = self.hub._commit(repo, message, files, branch)
        self._json(
            200,
            {
                "success": True,
                "commitOid": commit.oid,
                "commitUrl": f"{self.hub.url}/{repo.repo_id}/commit/{commit.oid}",
                "hookOutput": "",
            },
        )

    def resolve(self, m: re.Match, q: dict, head: bool = False) -> None:
        type_plural = {"datasets/": "datasets", "spaces/": "spaces"}.get(m["prefix"] or "", "models")
        repo = self._repo(m["repo"], type_plural)
        commit = self._commit_at(repo, m["rev"])
        path = unquote(m["path"])
        data = commit.files.get(path)
        if data is None:
            raise _Error(404, f"Entry not found: {path}", "EntryNotFound")
        headers = {
            "Content-Type": "application/octet-stream",
            "ETag": f'"{git_blob_sha1(data)}"',
            "X-Repo-Commit": commit.oid,
            "Accept-Ranges": "bytes",
        }
        status, body = 200, data
        rng = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", "") or "")
        if rng and not head:
            start = int(rng.group(1))
            end = int(rng.group(2)) if rng.group(2) else len(data) - 1
            body = data[start : end + 1]
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        headers["Content-Length"] = str(len(body))
        self._send(status, body, headers, head=head)


_ROUTES: dict[str, list[tuple[str, str]]] = {
    "GET": [
        (r"/api/whoami-v2", "whoami"),
        (rf"/api/{TYPES}/{REPO}(?:/revision/(?P<rev>[^/]+))?", "repo_info"),
        (rf"/api/{TYPES}/{REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?", "tree"),
        (rf"/(?P<prefix>datasets/|spaces/)?{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
    ],
    "HEAD": [
        (rf"/(?P<prefix>datasets/|spaces/)?{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
    ],
    "POST": [
        (r"/api/repos/create", "create_repo"),
        (r"/api/validate-yaml", "validate_yaml"),
        (rf"/api/{TYPES}/{REPO}/preupload/(?P<rev>[^/]+)", "preupload"),
        (rf"/api/{TYPES}/{REPO}/commit/(?P<rev>[^/]+)", "commit"),
    ],
}

__all__ = ["Commit", "HubTestServer", "Repo", "git_blob_sha1"]
