"""Writes and bytes written, counted by the API server itself, split by writer.

The benchmarks read the API server's own metrics rather than count in their clients: the
controller is another process (its client cannot be wrapped), and what the server
counted is what it received, retries and 404s included. Two families, both exact
(counters, not samples):

* ``apiserver_request_total{verb, group, resource, subresource}``: requests, by verb;
* ``apiserver_request_body_size_bytes`` (a histogram by ``resource`` and lowercase
  ``verb``): its ``_sum`` is the exact total of request bodies received. It has no
  ``subresource`` label, so a policy's status patch (the controller: PATCH) is told from a
  spec change (the benchmark, a user: PUT) by its verb.

A writer is a set of resources only it writes in the benchmark: the agents write
TracingPolicyNodeReports and node Leases, the controller policy status and Events. The
API server writes a Lease of its own (its identity, every 10 s) unless started with
``--feature-gates=APIServerIdentity=false``, which :data:`APISERVER_ARGS` does.
"""

from __future__ import annotations

import re
import ssl
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

APISERVER_ARGS: Final = ("--feature-gates=APIServerIdentity=false",)
MUTATING: Final = frozenset({"POST", "PUT", "PATCH", "DELETE", "APPLY"})

# writer -> ((resource, subresource, body-size verb or "" for any), ...)
WRITERS: Final[dict[str, tuple[tuple[str, str, str], ...]]] = {
    "agents: reports": (("tracingpolicynodereports", "", ""),),
    "agents: Leases": (("leases", "", ""),),
    "controller: status": (("tracingpolicies", "status", "patch"),),
    "controller: Events": (("events", "", ""),),
}

_LINE = re.compile(r"^(\w+)\{([^}]*)\} (\S+)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


@dataclass(frozen=True, slots=True)
class Snapshot:
    requests: Mapping[tuple[str, str, str], float]  # (resource, subresource, VERB) -> count
    bodies: Mapping[tuple[str, str], float]  # (resource, verb) -> bytes


def parse(text: str) -> Snapshot:
    requests: dict[tuple[str, str, str], float] = {}
    bodies: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        name, labels_text, value = match.groups()
        labels = dict(_LABEL.findall(labels_text))
        resource = labels.get("resource", "").split(".")[0]  # "x.group" or "x"
        if name == "apiserver_request_total" and labels.get("verb") in MUTATING:
            key = (resource, labels.get("subresource", ""), labels["verb"])
            requests[key] = requests.get(key, 0.0) + float(value)
        elif name == "apiserver_request_body_size_bytes_sum":
            key2 = (resource, labels.get("verb", ""))
            bodies[key2] = bodies.get(key2, 0.0) + float(value)
    return Snapshot(requests, bodies)


def scrape(url: str, token: str) -> Snapshot:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the local API server's self-signed certificate
    request = urllib.request.Request(f"{url}/metrics", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, context=context, timeout=30) as response:
        return parse(response.read().decode())


def by_writer(before: Snapshot, after: Snapshot) -> dict[str, tuple[int, int]]:
    """Writer -> (write requests, request body bytes) between two snapshots."""
    out: dict[str, tuple[int, int]] = {}
    for writer, parts in WRITERS.items():
        writes = 0.0
        sent = 0.0
        for resource, subresource, body_verb in parts:
            for key, count in after.requests.items():
                if key[0] == resource and key[1] == subresource:
                    writes += count - before.requests.get(key, 0.0)
            for key2, size in after.bodies.items():
                if key2[0] == resource and (not body_verb or key2[1] == body_verb):
                    sent += size - before.bodies.get(key2, 0.0)
        out[writer] = (round(writes), round(sent))
    return out
