"""docs/policies.md's coverage tables against the CRD and the code.

Every value the CRD's schema allows (argument types, matchArgs and matchBinaries operators,
selector filters, actions, spec and kprobe fields) has one row saying whether tpfilter
builds it. This test keeps the rows true:

* no value of the CRD is missing and no row names a value the CRD lacks;
* a row's verdict is the controller's: a sample policy using the value is Accepted
  (tpfilter.accept, the made-up node that offers every kernel feature) exactly when the
  row says ``yes`` or ``part``; when it says ``no`` the refusal names the value;
* a ``yes``/``part`` row names the tests that prove it, at least one of them on a real
  kernel (tests/kernel on this host, tests/vm in the QEMU guest, tests/e2e on the real
  node), and each named test exists.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tpfilter.accept import accept

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "policies.md"
CRD = ROOT / "crds" / "tracingpolicies.cilium.io.yaml"
STATUSES = ("yes", "part", "no")
# real parts: this host's kernel, the guest's, the real node, a real API server + etcd
REAL_TESTS = ("tests/kernel/", "tests/vm/", "tests/e2e/", "tests/integration/")


@cache
def spec_schema() -> Mapping[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema["properties"]["spec"]


def kprobe_schema() -> Mapping[str, Any]:
    return spec_schema()["properties"]["kprobes"]["items"]["properties"]


def selector_schema() -> Mapping[str, Any]:
    return kprobe_schema()["selectors"]["items"]["properties"]


def crd_values(table: str) -> list[str]:
    """What the CRD allows at the place a table covers."""
    if table == "types":
        return list(kprobe_schema()["args"]["items"]["properties"]["type"]["enum"])
    if table == "operators":
        return list(selector_schema()["matchArgs"]["items"]["properties"]["operator"]["enum"])
    if table == "binaries":
        return list(selector_schema()["matchBinaries"]["items"]["properties"]["operator"]["enum"])
    if table == "selectors":
        return list(selector_schema())
    if table == "actions":
        return list(selector_schema()["matchActions"]["items"]["properties"]["action"]["enum"])
    if table == "spec":
        return list(spec_schema()["properties"])
    if table == "kprobe":
        return list(kprobe_schema())
    raise KeyError(table)


TABLES = ("types", "operators", "binaries", "selectors", "actions", "spec", "kprobe")


def doc_rows(table: str) -> dict[str, tuple[str, str, list[str]]]:
    """value -> (status, what the row says, the tests it names), from the table after the
    ``<!-- coverage:<table> -->`` marker."""
    text = DOC.read_text()
    marker = f"<!-- coverage:{table} -->"
    assert marker in text, f"docs/policies.md has no {marker}"
    rows: dict[str, tuple[str, str, list[str]]] = {}
    for line in text.split(marker, 1)[1].lstrip().splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == 4, f"{table}: a row needs 4 cells: {line}"
        names = re.findall(r"`([^`]+)`", cells[0])
        proofs = re.findall(r"`(tests/[^`]+)`", cells[3])
        for name in names:
            assert name not in rows, f"{table}: {name} has two rows"
            rows[name] = (cells[1], cells[2], proofs)
    return rows


# -- sample policies: the smallest use of each value -----------------------------------------


def kprobe(args: list[Any], selectors: list[Any] | None = None, **extra: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"call": "security_file_open", "args": args, **extra}
    if selectors is not None:
        entry["selectors"] = selectors
    return {"kprobes": [entry]}


def exec_tp(selector: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "tracepoints": [
            {
                "subsystem": "sched",
                "event": "sched_process_exec",
                "args": [{"index": 4, "type": "string"}],
                "selectors": [selector],
            }
        ]
    }


def type_sample(value: str) -> dict[str, Any]:
    if value == "auto":  # a tracepoint field's type taken from its format
        tp = {"subsystem": "syscalls", "event": "sys_enter_lseek", "args": [{"index": 7}]}
        tp["args"][0]["type"] = "auto"
        return {"tracepoints": [tp]}
    if value == "data_loc":  # the exec tracepoint's filename
        return exec_tp({})
    arg: dict[str, Any] = {"index": 0, "type": value}
    if value in ("char_buf", "const_buf", "char_iovec"):
        arg["sizeArgIndex"] = 2
    return kprobe([arg])


_INT = ("int", ["1"])
_STR = ("string", ["/etc/"])
_ADDR = ("sock", ["10.0.0.0/8"])
_PORT = ("sock", ["80"])
OPERATOR_SAMPLES: Mapping[str, tuple[str, list[str]]] = {
    **dict.fromkeys(["Equal", "NotEqual", "GT", "GreaterThan", "LT", "LessThan", "Mask"], _INT),
    **dict.fromkeys(["Prefix", "NotPrefix", "Postfix", "NotPostfix"], _STR),
    **dict.fromkeys(["SubString", "SubStringIgnCase"], _STR),
    **dict.fromkeys(["SAddr", "NotSAddr", "DAddr", "NotDAddr"], _ADDR),
    **dict.fromkeys(["SPort", "NotSPort", "DPort", "NotDPort"], _PORT),
    **dict.fromkeys(["SPortPriv", "NotSportPriv", "DPortPriv", "NotDPortPriv"], ("sock", [])),
    "Protocol": ("sock", ["IPPROTO_TCP"]),
    "Family": ("sock", ["AF_INET"]),
    "State": ("sock", ["TCP_SYN_SENT"]),
    **dict.fromkeys(["InMap", "NotInMap"], _INT),
    **dict.fromkeys(["InRange", "NotInRange"], ("int", ["1:5"])),
    "CapabilitiesGained": ("int", ["CAP_SYS_ADMIN"]),
    "CelExpr": ("int", ["args[0] == 1"]),
    **dict.fromkeys(["FileType", "NotFileType"], ("file", ["reg"])),
}


def operator_sample(value: str) -> dict[str, Any]:
    arg_type, values = OPERATOR_SAMPLES[value]
    match = {"index": 0, "operator": value, "values": values}
    return kprobe([{"index": 0, "type": arg_type}], [{"matchArgs": [match]}])


def binaries_sample(value: str) -> dict[str, Any]:
    return exec_tp({"matchBinaries": [{"operator": value, "values": ["/usr/bin/"]}]})


SELECTOR_SAMPLES: Mapping[str, Any] = {
    "matchArgs": [{"index": 0, "operator": "Equal", "values": ["1"]}],
    "matchActions": [{"action": "Post"}],
    "matchBinaries": [{"operator": "In", "values": ["/usr/bin/cat"], "followChildren": True}],
    "matchPIDs": [{"operator": "NotIn", "values": [1], "isNamespacePID": True}],
    "matchNamespaces": [{"namespace": "Net", "operator": "In", "values": ["host_ns"]}],
    "matchCapabilities": [{"type": "Effective", "operator": "In", "values": ["CAP_SYS_ADMIN"]}],
    "matchNamespaceChanges": [{"operator": "In", "values": ["Mnt"]}],
    "matchCapabilityChanges": [{"operator": "In", "values": ["CAP_SYS_ADMIN"]}],
    "matchReturnArgs": [{"index": 0, "operator": "LT", "values": ["0"]}],
    "matchReturnActions": [{"action": "Post"}],
    "matchParentBinaries": [{"operator": "In", "values": ["/usr/bin/bash"]}],
    "matchData": [{"index": 0, "operator": "Equal", "values": ["1"]}],
    "macros": ["m"],
}


def selector_sample(value: str) -> dict[str, Any]:
    selector = {value: SELECTOR_SAMPLES[value]}
    ret = {"return": True, "returnArg": {"index": 0, "type": "int"}}
    return kprobe([{"index": 0, "type": "int"}], [selector], **ret)


ACTION_SAMPLES: Mapping[str, Mapping[str, Any]] = {
    "Override": {"argError": -1},
    "Signal": {"argSig": 10},
    "FollowFD": {"argFd": 0, "argName": 1},
    "UnfollowFD": {"argFd": 0},
    "CopyFD": {"argFd": 0, "argName": 1},
    "GetUrl": {"argUrl": "http://example.com"},
    "DnsLookup": {"argFqdn": "example.com"},
    "TrackSock": {"argSock": 0},
    "UntrackSock": {"argSock": 0},
    "Set": {"argIndex": 0, "argValue": 1},
}


def action_sample(value: str) -> dict[str, Any]:
    action = {"action": value, **ACTION_SAMPLES.get(value, {})}
    return kprobe([{"index": 0, "type": "int"}], [{"matchActions": [action]}])


_TP = {"subsystem": "syscalls", "event": "sys_enter_lseek"}
SPEC_SAMPLES: Mapping[str, Any] = {
    "kprobes": kprobe([])["kprobes"],
    "tracepoints": [_TP],
    "lsmhooks": [{"hook": "file_open", "args": [{"index": 0, "type": "file"}]}],
    "uprobes": [{"path": "/usr/bin/bash", "symbols": ["readline"]}],
    "usdts": [{"path": "/usr/bin/python3", "provider": "python", "name": "function__entry"}],
    "fentries": [{"call": "security_file_open"}],
    "enforcers": [{"calls": ["sys_openat"]}],
    "lists": [{"name": "l", "type": "syscalls", "values": ["sys_openat"]}],
    "loader": True,
    "options": [{"name": "disable-kprobe-multi", "value": "1"}],
    "selectorsMacros": {"m": {"matchActions": [{"action": "Post"}]}},
    "podSelector": {"matchLabels": {"app": "x"}},
    "containerSelector": {"matchExpressions": [{"key": "name", "operator": "In", "values": ["c"]}]},
    "hostSelector": {},
    "nodeSelector": {"matchLabels": {"kubernetes.io/os": "linux"}},
}


def spec_sample(value: str) -> dict[str, Any]:
    return {"tracepoints": [_TP], value: SPEC_SAMPLES[value]}


KPROBE_SAMPLES: Mapping[str, Any] = {
    "call": "security_file_open",
    "args": [{"index": 0, "type": "file"}],
    "selectors": [{"matchActions": [{"action": "Post"}]}],
    "syscall": False,
    "return": True,
    "returnArg": {"index": 0, "type": "int"},
    "returnArgAction": "Post",
    "message": "opened",
    "tags": ["files"],
    "data": [{"index": 0, "type": "int", "source": "current_task"}],
    "ignore": {"callNotFound": True},
}


def kprobe_sample(value: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"call": "security_file_open", value: KPROBE_SAMPLES[value]}
    if value in ("returnArg", "returnArgAction"):
        entry["return"] = True
        entry["returnArg"] = KPROBE_SAMPLES["returnArg"]
    return {"kprobes": [entry]}


SAMPLES: Mapping[str, Callable[[str], dict[str, Any]]] = {
    "types": type_sample,
    "operators": operator_sample,
    "binaries": binaries_sample,
    "selectors": selector_sample,
    "actions": action_sample,
    "spec": spec_sample,
    "kprobe": kprobe_sample,
}


def cases() -> list[tuple[str, str]]:
    return [(table, value) for table in TABLES for value in crd_values(table)]


@pytest.mark.parametrize("table", TABLES)
def test_every_value_of_the_crd_has_exactly_one_row(table: str) -> None:
    rows = doc_rows(table)
    values = crd_values(table)
    assert sorted(set(values) - rows.keys()) == [], f"{table}: rows missing"
    assert sorted(rows.keys() - set(values)) == [], f"{table}: rows the CRD has no value for"
    for value, (status, what, _) in rows.items():
        assert status in STATUSES, f"{table} {value}: status {status!r}"
        assert what, f"{table} {value}: says nothing"


@pytest.mark.parametrize(("table", "value"), cases())
def test_the_row_is_the_controllers_verdict(table: str, value: str) -> None:
    status, _, _ = doc_rows(table)[value]
    verdict = accept(SAMPLES[table](value))
    if status == "no":
        assert not verdict.accepted, f"{table} {value}: the row says no, the controller accepts"
        assert value.lower() in verdict.message.lower(), verdict.message
    else:
        assert verdict.accepted, f"{table} {value}: the row says {status}: {verdict.message}"


@pytest.mark.parametrize(("table", "value"), cases())
def test_what_is_built_names_existing_tests_of_real_parts(table: str, value: str) -> None:
    status, _, proofs = doc_rows(table)[value]
    if status == "no":
        return
    assert proofs, f"{table} {value}: built, but the row names no test"
    assert any(p.startswith(REAL_TESTS) for p in proofs), (
        f"{table} {value}: no test of real parts among {proofs}"
    )
    for proof in proofs:
        path, _, name = proof.partition("::")
        source = ROOT / path
        assert source.is_file(), f"{table} {value}: {path} does not exist"
        if name:
            function = name.split("[", 1)[0]
            assert re.search(rf"^(async )?def {re.escape(function)}\(", source.read_text(), re.M), (
                f"{table} {value}: {path} has no {function}"
            )
