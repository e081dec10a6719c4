"""An in-process fake of the Compute Engine REST API, which the real `google-cloud-compute`
SDK talks to over HTTP on 127.0.0.1 as to GCP, serving exactly what `deploy.clouds.gcp` uses
in Compute's JSON shapes (camelCase, uint64 ids as decimal strings, Compute's error body):
regional instance templates and MIGs (insert, get, list with a `name eq "regex"` filter,
delete, resize, listErrors, listManagedInstances), region operations, project get. Like GCP
it answers each insert, resize and delete with an Operation that is RUNNING and DONE on a
later poll, honours `requestId` (a repeat gets the first operation, with no second effect),
answers 409 `alreadyExists` and 404 `notFound`, refuses to delete a template in use, checks
names and labels; a MIG of target size N has N RUNNING instances. Injected: capacity and
quota refusals (`refuse`), lost answers (`fail_once`), rejected credentials. Every request
is recorded (`requests`)."""

from __future__ import annotations

import json
import re
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from tests.http_servers import serving

API = "https://www.googleapis.com/compute/v1"  # selfLinks are absolute, as GCP writes them
TEMPLATES, GROUPS = "instanceTemplates", "instanceGroupManagers"
_NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
_LABEL_KEY, _LABEL_VALUE = re.compile(r"[a-z][a-z0-9_-]{0,62}"), re.compile(r"[a-z0-9_-]{0,63}")
_ROUTE = re.compile(
    rf"/compute/v1/projects/(?P<project>[^/]+)(/regions/(?P<region>[^/]+)/(?P<collection>"
    rf"{TEMPLATES}|{GROUPS}|operations)(/(?P<name>[^/]+)(/(?P<verb>resize|listErrors|"
    r"listManagedInstances))?)?)?"
)
_UUID = re.compile(r"[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}")
_FILTER = re.compile(r"\s*name\s+(eq|ne)\s+(?:\"([^\"]*)\"|'([^']*)'|(\S+))\s*")
_PACIFIC = timezone(timedelta(hours=-7))  # GCP writes timestamps with its zone's offset
Stage = Literal["insert", "answer", "resize", "instances"]
Key = tuple[str, str]  # (region, name)


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    body: dict[str, Any] | None


@dataclass(frozen=True)
class _Refusal:
    matches: Callable[[str], bool]
    code: str
    message: str
    stage: Stage
    region: str | None


@dataclass
class _Operation:
    resource: dict[str, Any]
    polls_left: int
    errors: list[dict[str, str]]


class ApiError(Exception):
    """An HTTP error answer, in Compute's error shape."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        error = {"message": message, "domain": "global", "reason": reason}
        self.payload = {"error": {"code": status, "message": message, "errors": [error]}}


def _now() -> str:
    return datetime.now(_PACIFIC).isoformat(timespec="milliseconds")


class GcpFake:
    """The fake's state and behaviour; `gcp_fake()` serves it over HTTP."""

    def __init__(self, project: str = "moeserve-test") -> None:
        self.project, self.url, self._lock = project, "", threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.stores: dict[str, dict[Key, dict[str, Any]]] = {TEMPLATES: {}, GROUPS: {}}
            self.instances: dict[Key, list[dict[str, Any]]] = {}
            self.errors: dict[Key, list[dict[str, Any]]] = {}
            self.operations: dict[Key, _Operation] = {}
            self._by_request_id: dict[str, Key] = {}
            self._refusals: list[_Refusal] = []
            self._fail_once: list[tuple[str, str, int]] = []
            self._requests: list[Recorded] = []
            self._ids = 7_000_000_000_000_000_000
            self.polls_until_done, self.reject_credentials = 1, False

    # --- what tests arrange and read ------------------------------------------------------

    def refuse(
        self,
        machine_type: str | Callable[[str], bool],
        code: str,
        message: str,
        stage: Stage = "insert",
        region: str | None = None,
    ) -> None:
        """Refuse a machine type (a name or a predicate), in `region` or every region, for
        capacity or quota: the group insert's operation ends with `code` and nothing is
        created ("insert"), the insert is refused at once with HTTP 403 and `code` as reason
        ("answer"), a resize up ends with `code` and changes nothing ("resize"), or the group
        is created but its instances are not, each reported by listErrors ("instances")."""
        matches = machine_type if callable(machine_type) else machine_type.__eq__
        with self._lock:
            self._refusals.append(_Refusal(matches, code, message, stage, region))

    def fail_once(self, method: str, path_suffix: str, status: int = 503) -> None:
        """Answer the next matching request with a transient error after doing its work,
        as when GCP acted but its answer was lost."""
        with self._lock:
            self._fail_once.append((method, path_suffix, status))

    @property
    def requests(self) -> list[Recorded]:
        with self._lock:
            return list(self._requests)

    def mutations(self) -> list[Recorded]:
        """The requests that asked for a change: inserts, resizes, deletes."""
        return [r for r in self.requests if r.method != "GET" and "listManaged" not in r.path]

    # --- serving -----------------------------------------------------------------------

    def handle(self, method: str, target: str, body: Any) -> tuple[int, dict[str, Any]]:
        split = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        with self._lock:
            self._requests.append(Recorded(method, split.path, query, body))
            try:
                answer = self._route(method, split.path, query, body or {})
            except ApiError as exc:
                return exc.status, exc.payload
            for pending in self._fail_once:
                if pending[0] == method and split.path.endswith(pending[1]):
                    self._fail_once.remove(pending)
                    return pending[2], ApiError(pending[2], "backendError", "Backend Error").payload
            return 200, answer

    def _route(
        self, method: str, path: str, query: dict[str, str], body: dict[str, Any]
    ) -> dict[str, Any]:
        match = _ROUTE.fullmatch(path)
        if match is None or match["project"] != self.project:
            raise ApiError(404, "notFound", f"The resource '{path}' was not found")
        region, collection, name, verb = match.group("region", "collection", "name", "verb")
        if region is None:
            return self._project()
        if collection == "operations" and name and method == "GET":
            return self._poll((region, name))
        rid = query.get("requestId")
        if rid is not None and rid in self._by_request_id:
            return self.operations[self._by_request_id[rid]].resource  # no second effect
        if rid is not None and (not _UUID.fullmatch(rid) or not rid.strip("0-")):
            raise ApiError(400, "invalid", f"Invalid value for field 'requestId': '{rid}'")
        key: Key = (region, name or "")
        if method == "GET" and name is None:
            return self._list(region, collection, query.get("filter", ""))
        if method == "GET" and verb is None:
            return self._found(collection, key)
        if method == "GET" and verb == "listErrors" and self._found(collection, key):
            return {"items": self.errors.get(key, [])}
        if method == "POST" and verb == "listManagedInstances" and self._found(collection, key):
            return {"managedInstances": self.instances.get(key, [])}
        if method == "POST" and name is None and collection == TEMPLATES:
            return self._insert_template(region, body, rid)
        if method == "POST" and name is None and collection == GROUPS:
            return self._insert_group(region, body, rid)
        if method == "POST" and verb == "resize":
            return self._resize(key, int(query["size"]), rid)
        if method == "DELETE" and verb is None and collection != "operations":
            return self._delete(collection, key, rid)
        raise ApiError(400, "invalid", f"the fake does not serve {method} {path}")

    def _project(self) -> dict[str, Any]:
        if self.reject_credentials:
            raise ApiError(401, "authError", "Request had invalid authentication credentials.")
        return {"kind": "compute#project", "id": "4242424242424242", "name": self.project}

    def _found(self, collection: str, key: Key) -> dict[str, Any]:
        if key not in self.stores[collection]:
            link = self._link(collection, key)
            raise ApiError(404, "notFound", f"The resource '{link}' was not found")
        return self.stores[collection][key]

    def _list(self, region: str, collection: str, expression: str) -> dict[str, Any]:
        wanted = _name_filter(expression)
        store = self.stores[collection]
        items = [r for (reg, name), r in sorted(store.items()) if reg == region and wanted(name)]
        kind = "instanceTemplateList" if collection == TEMPLATES else "instanceGroupManagerList"
        where = f"projects/{self.project}/regions/{region}/{collection}"
        answer = {"kind": f"compute#{kind}", "id": where, "selfLink": f"{API}/{where}"}
        return {**answer, "items": items} if items else answer  # GCP leaves out empty items

    def _create(self, collection: str, key: Key, body: dict[str, Any]) -> dict[str, Any]:
        link = self._link(collection, key)
        if not _NAME.fullmatch(key[1]):
            raise ApiError(400, "invalid", f"Invalid value for field 'resource.name': '{key[1]}'")
        if key in self.stores[collection]:
            raise ApiError(409, "alreadyExists", f"The resource '{link}' already exists")
        created = {"id": self._new_id(), "creationTimestamp": _now(), "selfLink": link}
        return {**body, **created, "region": link.split(f"/{collection}/")[0]}

    def _insert_template(self, region: str, body: dict[str, Any], rid: str | None) -> Any:
        properties = body.get("properties") or {}
        if not properties.get("machineType"):
            raise ApiError(400, "required", "Required field 'properties.machineType' not set")
        for label, value in (properties.get("labels") or {}).items():
            if not _LABEL_KEY.fullmatch(label) or not _LABEL_VALUE.fullmatch(value):
                raise ApiError(400, "invalid", f"Invalid value for label '{label}': '{value}'")
        key = (region, str(body.get("name")))
        template = self._create(TEMPLATES, key, {**body, "kind": "compute#instanceTemplate"})
        self.stores[TEMPLATES][key] = template
        return self._operation(region, "insert", template, rid)

    def _insert_group(self, region: str, body: dict[str, Any], rid: str | None) -> Any:
        key = (region, str(body.get("name")))
        template = self._template_of(region, str(body.get("instanceTemplate", "")))
        group = self._create(GROUPS, key, {**body, "kind": "compute#instanceGroupManager"})
        if (refusal := self._refusal(template, "answer")) is not None:
            raise ApiError(403, refusal.code, refusal.message)
        refusal = self._refusal(template, "insert")
        if refusal is not None:  # the operation fails; the group is never made
            return self._operation(region, "insert", group, rid, refusal)
        group.update(fingerprint=uuid.uuid4().hex[:12], targetSize=int(body.get("targetSize", 0)))
        group["instanceGroup"] = group["selfLink"].replace(GROUPS, "instanceGroups")
        self.stores[GROUPS][key] = group
        self.instances[key], self.errors[key] = [], []
        self._launch(key)
        return self._operation(region, "insert", group, rid)

    def _resize(self, key: Key, size: int, rid: str | None) -> dict[str, Any]:
        group = self._found(GROUPS, key)
        refusal = self._refusal(self._template_of(key[0], group["instanceTemplate"]), "resize")
        operation_type = "compute.instanceGroupManagers.resize"
        if refusal is not None and size > group["targetSize"]:
            return self._operation(key[0], operation_type, group, rid, refusal)
        # The fingerprint stays: GCP documents it changing with updates, not with resizes,
        # so request ids cannot count on it to tell a resize from an earlier equal one.
        group["targetSize"] = size
        self._launch(key)
        return self._operation(key[0], operation_type, group, rid)

    def _delete(self, collection: str, key: Key, rid: str | None) -> dict[str, Any]:
        resource = self._found(collection, key)
        link, groups = resource["selfLink"], self.stores[GROUPS].values()
        users = [g["selfLink"] for g in groups if g["instanceTemplate"] == link]
        if users:
            message = f"The resource '{link}' is already being used by '{users[0]}'"
            raise ApiError(400, "resourceInUseByAnotherResource", message)
        del self.stores[collection][key]
        self.instances.pop(key, None)
        self.errors.pop(key, None)
        return self._operation(key[0], "delete", resource, rid)

    def _launch(self, key: Key) -> None:
        """Bring the group's instances to its target size: new ones RUNNING, or, for a
        refused machine type, CREATING for ever with an error in listErrors."""
        group, instances = self.stores[GROUPS][key], self.instances[key]
        del instances[group["targetSize"] :]
        refusal = self._refusal(self._template_of(key[0], group["instanceTemplate"]), "instances")
        while len(instances) < group["targetSize"]:
            name = f"{group['baseInstanceName']}-{uuid.uuid4().hex[:4]}"
            zone = f"{key[0]}-{'abc'[len(instances) % 3]}"
            link = f"{API}/projects/{self.project}/zones/{zone}/instances/{name}"
            instance: dict[str, Any] = {"instance": link, "name": name}
            if refusal is None:
                instance.update(id=self._new_id(), instanceStatus="RUNNING", currentAction="NONE")
            else:  # GCP keeps trying to create it, and says why it cannot
                error = {"code": refusal.code, "message": refusal.message}
                tried = {"action": "CREATING", "instance": link}
                instance.update(
                    currentAction="CREATING", lastAttempt={"errors": {"errors": [error]}}
                )
                failed = {"error": error, "timestamp": _now(), "instanceActionDetails": tried}
                self.errors[key].append(failed)
            instances.append(instance)

    def _operation(
        self, region: str, kind: str, target: Any, rid: str | None, refusal: _Refusal | None = None
    ) -> dict[str, Any]:
        name = f"operation-{self._ids}-{uuid.uuid4().hex[:8]}"
        where = f"{API}/projects/{self.project}/regions/{region}"
        resource: dict[str, Any] = {"kind": "compute#operation", "id": self._new_id(), "name": name}
        resource.update(operationType=kind, status="RUNNING", progress=0, region=where)
        resource.update(targetLink=target["selfLink"], targetId=target["id"], insertTime=_now())
        resource["selfLink"] = f"{where}/operations/{name}"
        errors = [] if refusal is None else [{"code": refusal.code, "message": refusal.message}]
        self.operations[(region, name)] = _Operation(resource, self.polls_until_done, errors)
        if rid is not None:
            self._by_request_id[rid] = (region, name)
        return resource

    def _poll(self, key: Key) -> dict[str, Any]:
        if key not in self.operations:
            raise ApiError(404, "notFound", f"The resource '{key[1]}' was not found")
        operation = self.operations[key]
        operation.polls_left -= 1
        if operation.polls_left <= 0 and operation.resource["status"] != "DONE":
            operation.resource.update(status="DONE", progress=100, endTime=_now())
            if operation.errors:  # GCP gives capacity errors the status 503
                failed = {"errors": operation.errors}
                operation.resource.update(error=failed, httpErrorStatusCode=503)
        return operation.resource

    def _template_of(self, region: str, link: str) -> dict[str, Any]:
        match = re.search(rf"projects/([^/]+)/regions/([^/]+)/{TEMPLATES}/([^/]+)$", link)
        if match is None or match[1] != self.project or match[2] != region:
            raise ApiError(400, "invalid", f"Invalid value for field 'instanceTemplate': {link}")
        return self._found(TEMPLATES, (region, match[3]))

    def _refusal(self, template: dict[str, Any], stage: Stage) -> _Refusal | None:
        machine_type = template["properties"]["machineType"]
        region = template["region"].rsplit("/", 1)[1]
        wanted = (stage, region)
        found = (r for r in self._refusals if (r.stage, r.region or region) == wanted)
        return next((r for r in found if r.matches(machine_type)), None)

    def _link(self, collection: str, key: Key) -> str:
        return f"{API}/projects/{self.project}/regions/{key[0]}/{collection}/{key[1]}"

    def _new_id(self) -> str:
        self._ids += 1
        return str(self._ids)


def _name_filter(expression: str) -> Callable[[str], bool]:
    """Compute's regular-expression filter in the form the provider sends, `name eq "RE2"`
    (or `ne`, whole-name match); other filters are refused, never silently ignored."""
    if not expression.strip():
        return lambda _: True
    match = _FILTER.fullmatch(expression)
    if match is None:
        raise ApiError(400, "invalid", f"Invalid list filter expression '{expression}'.")
    pattern = re.compile(next(v for v in match.groups()[1:] if v is not None))
    return lambda name: (pattern.fullmatch(name) is not None) == (match[1] == "eq")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: GcpFake  # set on the subclass `gcp_fake` serves

    def setup(self) -> None:
        super().setup()
        # Headers and body are two writes: Nagle would hold the body for the delayed ACK.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw.strip() else None
        status, payload = self.fake.handle(self.command, self.path, body)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def gcp_fake(project: str = "moeserve-test") -> Iterator[GcpFake]:
    """Serve a `GcpFake` on a free port of 127.0.0.1 (its `url`) until the block ends."""
    fake = GcpFake(project)
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (_Handler,), {"fake": fake}))
    with serving(server, "gcp-fake") as url:
        fake.url = url
        yield fake
