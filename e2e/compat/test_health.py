"""Service endpoints: /, /healthz, /readyz, /livez, /metrics."""

import re

import pytest
from qdrant_client.common.version_check import is_compatible, parse_version

CLIENT_VERSION = "1.18.0"

# Prometheus text exposition format (0.0.4)
METRIC_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*"'
SAMPLE_RE = re.compile(
    rf"^({METRIC_NAME})(\{{\s*(?:{LABEL}\s*(?:,\s*{LABEL}\s*)*,?)?\s*\}})?\s+"
    r"([-+]?(?:[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?|NaN|[+-]?Inf))(\s+-?[0-9]+)?$"
)
TYPE_RE = re.compile(rf"^# TYPE ({METRIC_NAME}) (counter|gauge|histogram|summary|untyped)$")
HELP_RE = re.compile(rf"^# HELP ({METRIC_NAME}) .*$")


def test_root_version_info(http, client):
    r = http.get("/")
    assert r.status_code == 200, r.text
    assert r.headers.get("content-type", "").startswith("application/json")
    body = r.json()
    assert isinstance(body.get("title"), str) and body["title"]
    version = body.get("version")
    assert isinstance(version, str)
    parse_version(version)  # must be x.y.z
    # qdrant-client warns unless major matches and minor is within 1 of its own.
    assert is_compatible(CLIENT_VERSION, version), f"server version {version} incompatible with client {CLIENT_VERSION}"
    info = client.info()
    assert info.version == version
    assert info.title == body["title"]


def test_client_compatibility_check_is_silent(node):
    """What QdrantClient(check_compatibility=True) does in its background thread must not warn."""
    import warnings

    from qdrant_client.qdrant_remote import QdrantRemote

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        QdrantRemote._check_compatibility(node.base_url, {}, None, 5)
    msgs = [str(w.message) for w in caught]
    assert not msgs, msgs


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/livez"])
def test_health_endpoints(http, path):
    r = http.get(path)
    assert r.status_code == 200, r.text
    assert r.text.strip(), "health endpoint body should not be empty"


def test_metrics_prometheus_format(http, client, collection):
    # make sure there is something to report
    collection(size=4)
    r = http.get("/metrics")
    assert r.status_code == 200, r.text
    ctype = r.headers.get("content-type", "")
    assert ctype.startswith("text/plain"), ctype
    lines = [ln for ln in r.text.splitlines() if ln.strip()]
    assert lines, "empty /metrics"
    typed = {}
    samples = []
    for ln in lines:
        if ln.startswith("# TYPE"):
            m = TYPE_RE.match(ln)
            assert m, f"bad TYPE line: {ln!r}"
            assert m.group(1) not in typed, f"duplicate TYPE for {m.group(1)}"
            typed[m.group(1)] = m.group(2)
        elif ln.startswith("# HELP"):
            assert HELP_RE.match(ln), f"bad HELP line: {ln!r}"
        elif ln.startswith("#"):
            continue
        else:
            m = SAMPLE_RE.match(ln)
            assert m, f"line is not a valid Prometheus sample: {ln!r}"
            samples.append(m.group(1))
    assert typed, "no '# TYPE' lines in /metrics"
    assert samples, "no samples in /metrics"
    # every sample belongs to a declared family (histogram/summary suffixes allowed)
    for name in samples:
        base = re.sub(r"_(bucket|sum|count|total|created)$", "", name)
        assert name in typed or base in typed, f"sample {name} has no # TYPE declaration"


def test_unknown_path_is_404(http):
    r = http.get("/definitely/not/an/endpoint")
    assert r.status_code == 404
