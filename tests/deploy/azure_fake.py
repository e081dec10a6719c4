"""A small fake Azure Resource Manager on 127.0.0.1: the Microsoft.Compute scale-set REST calls
the Azure provider makes, answered in ARM's shapes, driven by the real azure-mgmt-compute client.

PUT creates (201) or updates (200) a scale set, PATCH merges (200), DELETE answers 202, or 204
when there is nothing to delete (as ARM does); each answers with an `Azure-AsyncOperation` URL
that reports `InProgress` once, then `Succeeded` or (an injected allocation failure) `Failed`
with the ARM error. ARM finishes an operation whether or not anyone polls it, so a pending one
also finishes when its scale set is next read (a client killed mid-poll finds the outcome after
its restart). Capacity N "launches" N VM instances; a failed allocation launches none. GET never
returns `customData`; lists page with `nextLink`; errors are `{"error": {"code", "message"}}`.
Every request is recorded for assertions; `refuse` / `fail_allocation` inject capacity and quota
refusals, chosen by a predicate on the scale set's body.
"""

from __future__ import annotations

import base64
import binascii
import copy
import itertools
import json
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tests.http_servers import serving

_PROVIDER = r"/providers/Microsoft\.Compute"
_SCALE_SETS = re.compile(
    rf"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+){_PROVIDER}"
    r"/virtualMachineScaleSets(?:/(?P<name>[^/]+)(?:/(?P<child>virtualMachines|instanceView))?)?$",
    re.I,
)
_OPERATION = re.compile(
    rf"^/subscriptions/[^/]+{_PROVIDER}/locations/[^/]+/operations/(?P<op>[^/]+)$", re.I
)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}[A-Za-z0-9_]$|^[A-Za-z0-9]$")
_TAG_NAME_RESERVED = re.compile(r"[<>%&\\?/\x00-\x1f]")
API_VERSION = "2026-04-01"
Body = dict[str, Any]
Answer = tuple[int, dict[str, str], Any]  # status, headers, JSON body


def _all(body: Body) -> bool:
    return True


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    body: Any


@dataclass
class _Fault:
    code: str
    message: str
    when: Callable[[Body], bool]
    status: int | None  # an immediate refusal's HTTP status; None: the operation fails
    hits: list[Body] = field(default_factory=list)


@dataclass
class _Operation:
    id: str
    scale_set: str
    kind: str  # put, patch, delete
    error: dict[str, str] | None = None
    polls_left: int = 1  # answers InProgress this many times before it ends
    done: bool = False


class ArmError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(status, code, message)
        self.status, self.code, self.message = status, code, message


class FakeArm:
    """The state of one subscription's resource group, and the faults to inject."""

    def __init__(self, subscription_id: str, resource_group: str, page_size: int = 2) -> None:
        self.subscription_id = subscription_id
        self.resource_group = resource_group
        self.page_size = page_size
        self.url = ""  # set when served
        self._lock = threading.RLock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.requests: list[Recorded] = []
            self.scale_sets: dict[str, Body] = {}  # lowercased name → stored resource
            self.vms: dict[str, list[Body]] = {}
            self.operations: dict[str, _Operation] = {}
            self.faults: list[_Fault] = []
            self.rejected_tokens: set[str] = set()
            self._instance_ids: dict[str, Iterator[int]] = {}

    def refuse(
        self, code: str, message: str, *, status: int = 409, when: Callable[[Body], bool] = _all
    ) -> list[Body]:
        """Answer a PUT or PATCH whose resulting scale set satisfies `when` with an immediate
        ARM error; returns the list the refused bodies are recorded in."""
        self.faults.append(_Fault(code, message, when, status))
        return self.faults[-1].hits

    def fail_allocation(
        self, code: str, message: str, *, when: Callable[[Body], bool] = _all
    ) -> list[Body]:
        """Accept a PUT or PATCH that needs new VMs for a scale set satisfying `when`, then end
        its operation `Failed` with this error and launch nothing (the set is left Failed)."""
        self.faults.append(_Fault(code, message, when, None))
        return self.faults[-1].hits

    def instances(self, name: str | None = None) -> list[Body]:
        with self._lock:
            names = [name.lower()] if name is not None else list(self.vms)
            return [vm for n in names for vm in self.vms.get(n, [])]

    def handle(self, method: str, target: str, headers: dict[str, str], raw: bytes) -> Answer:
        parts = urlsplit(target)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        body = json.loads(raw) if raw else None
        with self._lock:
            self.requests.append(Recorded(method, parts.path, query, body))
            try:
                return self._route(method, parts.path, query, headers, body)
            except ArmError as err:
                return err.status, {}, {"error": {"code": err.code, "message": err.message}}

    def _route(
        self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: Any
    ) -> Answer:
        auth = headers.get("authorization", "")
        if not auth.startswith("Bearer "):
            raise ArmError(401, "AuthenticationFailed", "The 'Authorization' header is missing.")
        if auth.removeprefix("Bearer ") in self.rejected_tokens:
            raise ArmError(401, "InvalidAuthenticationToken", "The access token is invalid.")
        if "api-version" not in query:
            raise ArmError(400, "MissingApiVersionParameter", "The api-version is missing.")
        if (op := _OPERATION.match(path)) and method == "GET":
            return self._poll(op["op"])
        match = _SCALE_SETS.match(path)
        if match is None:
            raise ArmError(404, "InvalidResourceType", f"No route for {method} {path}.")
        ours = (self.subscription_id, self.resource_group.lower())
        if (match["sub"], match["rg"].lower()) != ours:
            message = f"Resource group '{match['rg']}' could not be found."
            raise ArmError(404, "ResourceGroupNotFound", message)
        name, child = match["name"], match["child"]
        if name is None and method == "GET":
            self._settle()
            items = [self._view(k) for k in sorted(self.scale_sets)]
            return 200, {}, self._page(path, items, query)
        if name is None:
            raise ArmError(405, "MethodNotAllowed", f"{method} is not allowed on the collection.")
        key = name.lower()
        self._settle(key)
        if method == "PUT" and child is None:
            return self._put(name, body)
        if method == "DELETE" and child is None:
            return self._delete(key)
        if key not in self.scale_sets:
            code = "ParentResourceNotFound" if child else "ResourceNotFound"
            what = f"'Microsoft.Compute/virtualMachineScaleSets/{name}'"
            raise ArmError(404, code, f"The Resource {what} was not found.")
        if method == "PATCH" and child is None:
            return self._patch(key, body)
        if method == "GET" and child is None:
            return 200, {}, self._view(key)
        if method == "GET" and child.lower() == "virtualmachines":
            return 200, {}, self._page(path, copy.deepcopy(self.vms[key]), query)
        if method == "GET":
            return 200, {}, self._instance_view(key)
        raise ArmError(405, "MethodNotAllowed", f"{method} is not allowed on {path}.")

    def _put(self, name: str, body: Any) -> Answer:
        _validate(name, body)
        key = name.lower()
        existing = self.scale_sets.get(key)
        if existing is not None and existing["location"] != body["location"]:
            where = existing["location"]
            message = f"The resource '{name}' already exists in location '{where}'."
            raise ArmError(409, "InvalidResourceLocation", message)
        resource = copy.deepcopy(body)
        resource["name"] = existing["name"] if existing else name
        unique = existing["properties"]["uniqueId"] if existing else str(uuid.uuid4())
        resource["properties"]["uniqueId"] = unique
        return self._write(key, resource, "Updating" if existing else "Creating", existing is None)

    def _patch(self, key: str, body: Any) -> Answer:
        return self._write(key, _merge(self.scale_sets[key], body), "Updating", created=False)

    def _write(self, key: str, resource: Body, state: str, created: bool) -> Answer:
        grows = resource["sku"]["capacity"] > len(self.vms.get(key, []))
        error = None
        for fault in self.faults:
            if (fault.status is not None or grows) and fault.when(resource):
                fault.hits.append(copy.deepcopy(resource))
                if fault.status is not None:
                    raise ArmError(fault.status, fault.code, fault.message)
                error = {"code": fault.code, "message": fault.message}
                break
        resource["properties"]["provisioningState"] = state
        resource["properties"].pop("failure", None)
        self.scale_sets[key] = resource
        self.vms.setdefault(key, [])
        self._instance_ids.setdefault(key, itertools.count())
        op = self._start(key, "put" if created else "patch", error)
        return 201 if created else 200, {"Azure-AsyncOperation": self._op_url(op)}, self._view(key)

    def _delete(self, key: str) -> Answer:
        if key not in self.scale_sets:
            return 204, {}, None
        self.scale_sets[key]["properties"]["provisioningState"] = "Deleting"
        url = self._op_url(self._start(key, "delete", None))
        return 202, {"Azure-AsyncOperation": url, "Location": url}, None

    def _start(self, key: str, kind: str, error: dict[str, str] | None) -> _Operation:
        op = _Operation(str(uuid.uuid4()), key, kind, error)
        self.operations[op.id] = op
        return op

    def _op_url(self, op: _Operation) -> str:
        location = self.scale_sets[op.scale_set]["location"]
        return (
            f"{self.url}/subscriptions/{self.subscription_id}/providers/Microsoft.Compute/"
            f"locations/{location}/operations/{op.id}?api-version={API_VERSION}"
        )

    def _poll(self, op_id: str) -> Answer:
        op = self.operations.get(op_id)
        if op is None:
            raise ArmError(404, "OperationNotFound", f"The operation '{op_id}' was not found.")
        if op.polls_left > 0:
            op.polls_left -= 1
        elif not op.done:
            self._finish(op)
        if not op.done:
            return 200, {}, {"name": op.id, "status": "InProgress"}
        if op.error:
            return 200, {}, {"name": op.id, "status": "Failed", "error": op.error}
        return 200, {}, {"name": op.id, "status": "Succeeded"}

    def _settle(self, key: str | None = None) -> None:
        """Finish what ARM would have finished by now: pending operations on `key` (or all)."""
        for op in list(self.operations.values()):
            if not op.done and (key is None or op.scale_set == key):
                self._finish(op)

    def _finish(self, op: _Operation) -> None:
        op.done = True
        key = op.scale_set
        if op.kind == "delete":
            self.scale_sets.pop(key, None)
            self.vms.pop(key, None)
            return
        resource = self.scale_sets[key]
        vms = self.vms[key]
        if op.error is not None:
            resource["properties"].update(provisioningState="Failed", failure=op.error)
            return
        wanted = resource["sku"]["capacity"]
        del vms[wanted:]
        while len(vms) < wanted:
            vms.append(self._vm(resource, next(self._instance_ids[key])))
        resource["properties"]["provisioningState"] = "Succeeded"

    def _resource_id(self, name: str) -> str:
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
            f"/providers/Microsoft.Compute/virtualMachineScaleSets/{name}"
        )

    def _view(self, key: str) -> Body:
        resource = copy.deepcopy(self.scale_sets[key])
        resource["properties"].pop("failure", None)  # the fake's own record
        os_profile = resource["properties"]["virtualMachineProfile"]["osProfile"]
        os_profile.pop("customData", None)  # write-only in ARM
        resource["id"] = self._resource_id(resource["name"])
        return resource

    def _vm(self, resource: Body, instance: int) -> Body:
        name, vm_id = resource["name"], str(uuid.uuid4())
        return {
            "instanceId": str(instance),
            "name": f"{name}_{instance}",
            "id": f"{self._resource_id(name)}/virtualMachines/{instance}",
            "location": resource["location"],
            "sku": {"name": resource["sku"]["name"], "tier": "Standard"},
            "properties": {"provisioningState": "Succeeded", "vmId": vm_id},
        }

    def _instance_view(self, key: str) -> Body:
        failure = self.scale_sets[key]["properties"].get("failure")
        if failure is None:
            return {"statuses": [{"code": "ProvisioningState/succeeded", "level": "Info"}]}
        code, message = f"ProvisioningState/failed/{failure['code']}", failure["message"]
        return {"statuses": [{"code": code, "level": "Error", "message": message}]}

    def _page(self, path: str, items: list[Body], query: dict[str, str]) -> Body:
        start = int(query.get("$skiptoken", "0"))
        page: Body = {"value": items[start : start + self.page_size]}
        if start + self.page_size < len(items):
            page["nextLink"] = (
                f"{self.url}{path}?api-version={query['api-version']}"
                f"&$skiptoken={start + self.page_size}"
            )
        return page


def _validate(name: str, body: Any) -> None:
    """What ARM checks of a scale set PUT before accepting it (the parts this fake reads)."""
    if not _NAME.match(name):
        raise ArmError(400, "InvalidParameter", f"The resource name '{name}' is invalid.")
    try:
        sku, profile = body["sku"], body["properties"]["virtualMachineProfile"]
        os_profile = profile["osProfile"]
        if not (isinstance(body["location"], str) and isinstance(sku["capacity"], int)):
            raise TypeError("location or sku.capacity")
        _ = (sku["name"], profile["storageProfile"]["imageReference"], os_profile["adminUsername"])
    except (KeyError, TypeError) as exc:
        raise ArmError(400, "InvalidParameter", f"Required parameter {exc} is invalid.") from None
    ssh = (os_profile.get("linuxConfiguration") or {}).get("ssh", {}).get("publicKeys")
    if not ssh and not os_profile.get("adminPassword"):
        message = "Required parameter 'adminPassword' is missing (null)."
        raise ArmError(400, "InvalidParameter", message)
    try:
        base64.b64decode(os_profile.get("customData", ""), validate=True)
    except binascii.Error:
        raise ArmError(400, "InvalidParameter", "Custom data is not valid base64.") from None
    for tag, value in (body.get("tags") or {}).items():
        if _TAG_NAME_RESERVED.search(tag) or len(tag) > 512 or len(str(value)) > 256:
            message = f"The tag name '{tag}' has reserved characters or is too long."
            raise ArmError(400, "InvalidTagNameCharacters", message)


def _merge(target: Body, patch: Body) -> Body:
    """A JSON merge patch, as ARM applies a PATCH."""
    merged = copy.deepcopy(target)
    for key, value in patch.items():
        both = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _merge(merged[key], value) if both else copy.deepcopy(value)
    return merged


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms stalls
    server: _Server

    def _serve(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, extra, body = self.server.fake.handle(self.command, self.path, headers, raw)
        payload = b"" if body is None else json.dumps(body).encode()
        extra |= {"Content-Type": "application/json", "Content-Length": str(len(payload))}
        self.send_response(status)
        for header, value in extra.items():
            self.send_header(header, value)
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_PUT = do_PATCH = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests read `FakeArm.requests` instead."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeArm


@contextmanager
def fake_arm(subscription_id: str, resource_group: str) -> Iterator[FakeArm]:
    """Serve a `FakeArm` on a free 127.0.0.1 port; its `url` is the `base_url` to use."""
    fake = FakeArm(subscription_id, resource_group)
    server = _Server(("127.0.0.1", 0), _Handler)
    server.fake = fake
    with serving(server, "fake-arm") as url:
        fake.url = url
        yield fake
