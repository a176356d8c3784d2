#!/usr/bin/env python3
"""Checks what `helm template` rendered from charts/shoal, and the example custom resources.

    validate.py rendered --manifest OUT.yaml --values SET.yaml --kube-version 1.25.0 [...]
    validate.py examples --crds charts/shoal/crds --examples charts/shoal/examples

`rendered` validates every built-in object against the Kubernetes JSON schemas of each given
version (kubernetes-validate, strict: unknown fields fail) and the fields of ServiceMonitors
(whose schema validate-servicemonitors.mjs checks), then checks that the objects say what
the values asked for (replicas, ports, keys, anti-affinity, monitors, RBAC, …), and runs the node start
script from the rendered ConfigMap with the rendered environment (shoal-node replaced by `echo`)
to see which flags pod 0 and the last pod would get.

`examples` validates each example against the openAPIV3Schema of its CRD (jsonschema, with the
apiserver's structural rules: no unknown fields, `nullable`), and checks that broken copies of the
examples are rejected, so that the validation can fail at all.

Needs PyYAML, jsonschema and kubernetes-validate (check.sh installs them into a venv).
"""

import argparse
import copy
import os
import subprocess
import sys
import tempfile

import jsonschema
import kubernetes_validate
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
CHART = os.path.normpath(os.path.join(HERE, "..", "..", "charts", "shoal"))

failures = []


def fail(msg):
    failures.append(msg)
    print(f"  FAIL {msg}", file=sys.stderr)


def check(cond, msg):
    if not cond:
        fail(msg)
    return cond


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def deep_merge(base, over):
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def name_of(obj):
    return f"{obj['kind']}/{obj['metadata']['name']}"


# ---------------------------------------------------------------------------- rendered chart


def validate_schemas(objs, versions):
    """Every built-in object against the Kubernetes schemas; ServiceMonitors are not built in."""
    for obj in objs:
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            check_service_monitor_shape(obj)
            continue
        for v in versions:
            # policy/v1beta1 PodDisruptionBudgets are rendered only for Kubernetes < 1.21, which
            # kubernetes-validate has no schemas for; the 1.20 apiserver checks them.
            if obj["apiVersion"] == "policy/v1beta1":
                continue
            try:
                kubernetes_validate.validate(obj, v, strict=True)
            except kubernetes_validate.ValidationError as e:
                fail(f"{name_of(obj)} is not a valid {obj['kind']} of Kubernetes {v}: "
                     f"{e.message} at {'.'.join(str(p) for p in e.path)}")
            except kubernetes_validate.SchemaNotFoundError as e:
                fail(f"{name_of(obj)}: no schema in Kubernetes {v}: {e}")


def check_service_monitor_shape(sm):
    """The fields Prometheus Operator's ServiceMonitor needs (its CRD is not available here)."""
    spec = sm.get("spec", {})
    check(set(spec) <= {"selector", "namespaceSelector", "endpoints"},
          f"{name_of(sm)}: unexpected spec fields {sorted(spec)}")
    check(spec.get("selector", {}).get("matchLabels"), f"{name_of(sm)}: no selector")
    for ep in spec.get("endpoints", []):
        check(set(ep) <= {"port", "path", "interval", "scrapeTimeout", "authorization"},
              f"{name_of(sm)}: unexpected endpoint fields {sorted(ep)}")
        auth = ep.get("authorization")
        if auth is not None:
            check(auth.get("type") == "Bearer" and {"name", "key"} <= set(auth.get("credentials", {})),
                  f"{name_of(sm)}: authorization needs type Bearer and credentials name/key")


def env_of(container):
    return {e["name"]: e for e in container.get("env", [])}


def check_invariants(objs, values, release, namespace):
    by_kind = {}
    for o in objs:
        by_kind.setdefault(o["kind"], []).append(o)
    node = values["node"]
    op = values["operator"]
    keyed = bool(values["apiKey"]["value"] or values["apiKey"]["existingSecret"])
    ro_keyed = bool(values["apiKey"]["readOnlyValue"] or values["apiKey"]["existingSecret"])

    [sts] = by_kind.get("StatefulSet", [None]) or [None]
    if not check(sts is not None, "no StatefulSet"):
        return
    # The StatefulSet is named by the chart's full name, as are the other objects.
    fullname = sts["metadata"]["name"]
    secret_name = values["apiKey"]["existingSecret"] or f"{fullname}-api-key"

    for o in objs:
        md = o["metadata"]
        if o["kind"] not in ("ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"):
            check(md.get("namespace") == namespace, f"{name_of(o)}: namespace is {md.get('namespace')}")
        check(md.get("labels", {}).get("app.kubernetes.io/instance") == release or o["kind"] == "CustomResourceDefinition",
              f"{name_of(o)}: no app.kubernetes.io/instance label")

    spec = sts["spec"]
    pod = spec["template"]["spec"]
    [c] = pod["containers"]
    env = env_of(c)
    check(spec["replicas"] == node["replicaCount"], f"StatefulSet replicas {spec['replicas']} != {node['replicaCount']}")
    check(spec["podManagementPolicy"] == node["podManagementPolicy"], "podManagementPolicy")
    check(pod.get("automountServiceAccountToken") is False, "node pods mount a ServiceAccount token")

    # The node's ports by name: REST, Qdrant's client gRPC (absent when node.ports.grpc is 0, which
    # turns it off) and p2p. The container, both Services and the environment must agree on them.
    want_ports = {"http": node["ports"]["http"], "p2p": node["ports"]["p2p"]}
    if node["ports"]["grpc"]:
        want_ports["grpc"] = node["ports"]["grpc"]

    # Services: the headless one governs the StatefulSet and publishes pods that are not ready.
    services = {s["metadata"]["name"]: s for s in by_kind.get("Service", [])}
    headless = services.get(spec["serviceName"])
    if check(headless is not None, f"no Service {spec['serviceName']} for serviceName"):
        check(headless["spec"].get("clusterIP") == "None", "governing Service is not headless")
        check(headless["spec"].get("publishNotReadyAddresses") is True,
              "headless Service must publish not-ready pods (joining peers are not ready)")
    client = services.get(sts["metadata"]["name"])
    check(client is not None, "no client Service named like the StatefulSet")
    for what, svc in (("client", client), ("headless", headless)):
        if svc is None:
            continue
        ports = {p["name"]: p["port"] for p in svc["spec"]["ports"]}
        check(ports == want_ports, f"{what} Service ports {ports}, want {want_ports}")
        for p in svc["spec"]["ports"]:
            check(p.get("targetPort") == p["name"], f"{what} Service port {p['name']} targets {p.get('targetPort')}")
            if p["name"] in ("grpc", "p2p"):
                check(p.get("appProtocol") == "grpc", f"{what} Service port {p['name']} has no appProtocol grpc")

    # Probes on the node's health endpoints, on the REST port.
    check(c.get("readinessProbe", {}).get("httpGet", {}).get("path") == "/readyz", "readiness probe is not /readyz")
    check(c.get("livenessProbe", {}).get("httpGet", {}).get("path") == "/livez", "liveness probe is not /livez")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        if probe in c:
            check(c[probe].get("httpGet", {}).get("port") in ("http", node["ports"]["http"]),
                  f"{probe} is not on the REST port: {c[probe]}")
    cports = {p["name"]: p["containerPort"] for p in c["ports"]}
    check(cports == want_ports, f"container ports {cports}, want {want_ports}")
    # The gRPC variable is set even when 0: without it the node would listen on its default 6334.
    for var, port in (("SHOAL__SERVICE__HTTP_PORT", "http"), ("SHOAL__SERVICE__GRPC_PORT", "grpc"),
                      ("SHOAL__CLUSTER__P2P_PORT", "p2p")):
        got = env.get(var, {}).get("value")
        check(got == str(node["ports"][port]), f"{var} is {got!r}, want {str(node['ports'][port])!r} (node.ports.{port})")

    # Storage.
    claims = spec.get("volumeClaimTemplates", [])
    if node["persistence"]["enabled"]:
        check(len(claims) == 1 and claims[0]["metadata"]["name"] == "data", "no volumeClaimTemplate `data`")
        if claims:
            check(claims[0]["spec"]["resources"]["requests"]["storage"] == node["persistence"]["size"], "volume size")
    else:
        check(not claims, "volumeClaimTemplates without persistence")
        check(any(v["name"] == "data" and "emptyDir" in v for v in pod["volumes"]), "no emptyDir data volume")

    # API keys: a Secret (unless existing), referenced by the nodes and the operator.
    secrets = {s["metadata"]["name"]: s for s in by_kind.get("Secret", [])}
    if keyed or values["apiKey"]["readOnlyValue"]:
        if not values["apiKey"]["existingSecret"]:
            check(secret_name in secrets, f"no Secret {secret_name}")
    else:
        check(not secrets, f"Secrets without an API key: {sorted(secrets)}")
    for var, on, key in (("SHOAL__SERVICE__API_KEY", keyed, values["apiKey"]["secretKey"]),
                         ("SHOAL__SERVICE__READ_ONLY_API_KEY", ro_keyed, values["apiKey"]["readOnlySecretKey"])):
        if on:
            ref = env.get(var, {}).get("valueFrom", {}).get("secretKeyRef", {})
            check(ref.get("name") == secret_name and ref.get("key") == key, f"{var} does not come from {secret_name}/{key}")
            if not values["apiKey"]["existingSecret"] and secret_name in secrets:
                check(key in secrets[secret_name]["data"], f"Secret {secret_name} has no key {key}")
        else:
            check(var not in env, f"{var} set without a key")

    # Anti-affinity.
    aff = pod.get("affinity", {}).get("podAntiAffinity", {})
    mode = node["antiAffinity"]
    if node["affinity"]:
        check(pod.get("affinity") == node["affinity"], "affinity is not the one from the values")
    elif mode == "required":
        terms = aff.get("requiredDuringSchedulingIgnoredDuringExecution", [])
        check(len(terms) == 1 and terms[0]["topologyKey"] == node["antiAffinityTopologyKey"]
              and terms[0]["labelSelector"]["matchLabels"] == spec["selector"]["matchLabels"],
              "no required anti-affinity over the node pods")
    elif mode == "preferred":
        check(len(aff.get("preferredDuringSchedulingIgnoredDuringExecution", [])) == 1, "no preferred anti-affinity")
    else:
        check("affinity" not in pod, "affinity with antiAffinity none")

    # PodDisruptionBudget over exactly the node pods.
    pdbs = by_kind.get("PodDisruptionBudget", [])
    if node["podDisruptionBudget"]["enabled"]:
        if check(len(pdbs) == 1, "no PodDisruptionBudget"):
            check(pdbs[0]["spec"]["selector"]["matchLabels"] == spec["selector"]["matchLabels"], "PDB selects other pods")
    else:
        check(not pdbs, "PodDisruptionBudget although disabled")

    # Monitors.
    monitors = by_kind.get("ServiceMonitor", [])
    want = (1 + bool(op["enabled"])) if values["serviceMonitor"]["enabled"] else 0
    check(len(monitors) == want, f"{len(monitors)} ServiceMonitors, want {want}")
    for m in monitors:
        if m["metadata"]["labels"]["app.kubernetes.io/component"] != "node":
            continue
        auth = m["spec"]["endpoints"][0].get("authorization")
        if keyed or values["apiKey"]["readOnlyValue"]:
            want_key = (values["apiKey"]["readOnlySecretKey"] if values["apiKey"]["readOnlyValue"]
                        else values["apiKey"]["secretKey"])
            check(auth and auth["credentials"] == {"name": secret_name, "key": want_key},
                  "node ServiceMonitor does not scrape with the API key")
        else:
            check(auth is None, "node ServiceMonitor has authorization without a key")
        sel = m["spec"]["selector"]["matchLabels"]
        matched = [s for s in by_kind.get("Service", [])
                   if all(s["metadata"]["labels"].get(k) == v for k, v in sel.items())]
        check([s["metadata"]["name"] for s in matched] == [client["metadata"]["name"]],
              f"node ServiceMonitor selects {[s['metadata']['name'] for s in matched]}")

    check_operator(by_kind, values, release, namespace, keyed, secret_name)
    check_start_script(by_kind, sts, env, node)


def check_operator(by_kind, values, release, namespace, keyed, secret_name):
    op = values["operator"]
    deployments = by_kind.get("Deployment", [])
    rbac = by_kind.get("Role", []) + by_kind.get("ClusterRole", [])
    if not op["enabled"]:
        check(not deployments and not rbac, "operator objects rendered although operator.enabled is false")
        return
    if not check(len(deployments) == 1, "no operator Deployment"):
        return
    dep = deployments[0]
    pod = dep["spec"]["template"]["spec"]
    [c] = pod["containers"]
    env = env_of(c)
    check(dep["spec"]["replicas"] == op["replicaCount"], "operator replicas")
    check(c["ports"] == [{"name": "metrics", "containerPort": op["metricsPort"], "protocol": "TCP"}], "operator ports")
    check(env["SHOAL_OPERATOR_METRICS_PORT"]["value"] == str(op["metricsPort"]), "operator metrics port env")
    if keyed:
        ref = env.get("SHOAL_API_KEY", {}).get("valueFrom", {}).get("secretKeyRef", {})
        check(ref.get("name") == secret_name, "operator gets no API key")
    else:
        check("SHOAL_API_KEY" not in env, "operator API key without a key")

    sa = pod["serviceAccountName"]
    # Least privilege: no wildcards, nothing that writes pods, Services, Secrets or CRDs, and
    # every verb on the CRs is one the operator needs.
    allowed = {
        ("shoal.dev", "shardplacements"): {"get", "list", "watch", "patch", "update"},
        ("shoal.dev", "reshardings"): {"get", "list", "watch", "patch", "update"},
        ("shoal.dev", "shardplacements/status"): {"get", "patch", "update"},
        ("shoal.dev", "reshardings/status"): {"get", "patch", "update"},
        ("shoal.dev", "shardplacements/finalizers"): {"update"},
        ("shoal.dev", "reshardings/finalizers"): {"update"},
        ("", "events"): {"create", "patch"},
        ("events.k8s.io", "events"): {"create", "patch"},
        ("", "services"): {"get", "list", "watch"},
        ("", "endpoints"): {"get", "list", "watch"},
        ("coordination.k8s.io", "leases"): {"create", "get", "update", "patch"},
    }
    granted = {}
    roles = {(r["kind"], r["metadata"]["name"]): r for r in by_kind.get("Role", []) + by_kind.get("ClusterRole", [])}
    bindings = by_kind.get("RoleBinding", []) + by_kind.get("ClusterRoleBinding", [])
    for b in bindings:
        if not any(s["kind"] == "ServiceAccount" and s["name"] == sa and s["namespace"] == namespace for s in b["subjects"]):
            continue
        role = roles.get((b["roleRef"]["kind"], b["roleRef"]["name"]))
        if not check(role is not None, f"{name_of(b)} binds a role the chart does not render"):
            continue
        for rule in role["rules"]:
            for g in rule["apiGroups"]:
                for res in rule["resources"]:
                    check("*" not in rule["verbs"] and g != "*" and res != "*", f"{name_of(role)}: wildcard rule")
                    extra = set(rule["verbs"]) - allowed.get((g, res), set())
                    check(not extra, f"{name_of(role)}: {sorted(extra)} on {g or 'core'}/{res} is more than the operator needs")
                    granted.setdefault((g, res), set()).update(rule["verbs"])
                    if res == "leases":
                        if set(rule["verbs"]) - {"create"}:
                            check(rule.get("resourceNames") == [env["SHOAL_OPERATOR_LEASE_NAME"]["value"]],
                                  "lease rule is not limited to the operator's Lease")
                        check(role["kind"] == "Role" and role["metadata"]["namespace"] == namespace,
                              "leases granted outside the release namespace")
    needed = {k: v for k, v in allowed.items() if k[1] != "leases" or op["leaderElection"]["enabled"]}
    for key, verbs in needed.items():
        check(verbs <= granted.get(key, set()), f"operator lacks {sorted(verbs - granted.get(key, set()))} on {key}")
    kinds = {r["kind"] for r in rbac if not r["metadata"]["name"].endswith("-leader-election")}
    check(kinds == ({"ClusterRole"} if op["watchAllNamespaces"] else {"Role"}), f"operator RBAC kinds {kinds}")
    check(env["SHOAL_OPERATOR_WATCH_NAMESPACE"]["value"] == ("" if op["watchAllNamespaces"] else namespace),
          "watch namespace env")


def check_start_script(by_kind, sts, env, node):
    """Runs the rendered start script with the rendered environment, shoal-node replaced by echo."""
    cms = {c["metadata"]["name"]: c for c in by_kind.get("ConfigMap", [])}
    vol = next(v for v in sts["spec"]["template"]["spec"]["volumes"] if v["name"] == "config")
    cm = cms.get(vol["configMap"]["name"])
    if not check(cm is not None, "no ConfigMap with the start script"):
        return
    with open(os.path.join(CHART, "files", "start-node.sh")) as f:
        check(cm["data"]["start-node.sh"] == f.read(), "ConfigMap start-node.sh differs from files/start-node.sh")
    check(yaml.safe_load(cm["data"]["config.yaml"]) == node["config"], "config.yaml differs from node.config")
    sts_name = sts["metadata"]["name"]
    headless = sts["spec"]["serviceName"]
    ns = sts["metadata"]["namespace"]
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "start-node.sh")
        with open(script, "w") as f:
            f.write(cm["data"]["start-node.sh"])
        last = node["replicaCount"] - 1
        for ordinal in sorted({0, last}):
            pod = f"{sts_name}-{ordinal}"
            run_env = {k: v["value"] for k, v in env.items() if "value" in v}
            run_env.update(SHOAL_POD_NAME=pod, SHOAL_NODE_BIN="echo", PATH=os.environ["PATH"],
                           SHOAL_DATA_DIR=os.path.join(tmp, "data"))
            out = subprocess.run(["sh", script], env=run_env, capture_output=True, text=True)
            if not check(out.returncode == 0, f"start script for {pod} failed: {out.stderr}"):
                continue
            args = out.stdout.split()
            flags = dict(zip(args[0::2], args[1::2]))
            p2p = node["ports"]["p2p"]
            uri = f"http://{pod}.{headless}.{ns}.svc.{'cluster.local'}:{p2p}"
            check(flags.get("--uri", "").startswith(f"http://{pod}.{headless}.{ns}.svc.")
                  and flags["--uri"].endswith(f":{p2p}"), f"{pod}: --uri {flags.get('--uri')}, want like {uri}")
            check(flags.get("--peer-name") == pod, f"{pod}: --peer-name {flags.get('--peer-name')}")
            if ordinal == 0:
                check("--bootstrap" not in flags, f"{pod} must found the cluster, got --bootstrap")
            else:
                want = flags["--uri"].replace(pod, f"{sts_name}-0", 1)
                check(flags.get("--bootstrap") == want, f"{pod}: --bootstrap {flags.get('--bootstrap')}, want {want}")


def cmd_rendered(args):
    objs = load_all(args.manifest)
    with open(os.path.join(CHART, "values.yaml")) as f:
        values = yaml.safe_load(f)
    with open(args.values) as f:
        values = deep_merge(values, yaml.safe_load(f) or {})
    print(f"  {len(objs)} objects: " + ", ".join(sorted({o['kind'] for o in objs})))
    if args.service_monitors_json:
        import json
        with open(args.service_monitors_json, "w") as f:
            json.dump([o for o in objs if o["kind"] == "ServiceMonitor"], f)
    validate_schemas(objs, args.kube_version)
    check_invariants(objs, values, args.release, args.namespace)


# ---------------------------------------------------------------------------- examples


def structural(schema):
    """An apiserver structural schema as plain JSON Schema: `nullable` allows null, and objects
    with `properties` reject unknown fields (the apiserver would prune them: a typo would be
    silently dropped, which is what this check is for)."""
    if isinstance(schema, list):
        return [structural(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    s = {k: structural(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if s.pop("nullable", False) and "type" in s:
        s["type"] = [s["type"], "null"]
    if "properties" in s and not schema.get("x-kubernetes-preserve-unknown-fields"):
        s.setdefault("additionalProperties", False)
    return s


def crd_validators(crd_dir):
    validators = {}
    for name in sorted(os.listdir(crd_dir)):
        for crd in load_all(os.path.join(crd_dir, name)):
            group = crd["spec"]["group"]
            kind = crd["spec"]["names"]["kind"]
            for v in crd["spec"]["versions"]:
                schema = structural(v["schema"]["openAPIV3Schema"])
                # metadata is validated by the apiserver itself, not by the CRD schema.
                schema.setdefault("properties", {})
                schema["properties"]["apiVersion"] = {"const": f"{group}/{v['name']}"}
                schema["properties"]["kind"] = {"const": kind}
                schema["properties"]["metadata"] = {
                    "type": "object", "required": ["name"],
                    "properties": {"name": {"type": "string", "minLength": 1}},
                }
                schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata"})
                jsonschema.Draft7Validator.check_schema(schema)
                validators[(f"{group}/{v['name']}", kind)] = jsonschema.Draft7Validator(schema)
    return validators


def errors_of(validators, obj):
    v = validators.get((obj.get("apiVersion"), obj.get("kind")))
    if v is None:
        return [f"no CRD for {obj.get('apiVersion')} {obj.get('kind')}"]
    return [f"{e.message} at .{'.'.join(str(p) for p in e.absolute_path)}" for e in v.iter_errors(obj)]


def broken_copies(obj):
    """Copies of a valid example that the CRD schema must reject, with what is wrong."""
    spec = obj["spec"]

    def mutated(desc, fn):
        o = copy.deepcopy(obj)
        fn(o["spec"])
        return desc, o

    out = [
        mutated("unknown spec field", lambda s: s.update(colection="typo")),
        mutated("no collection", lambda s: s.pop("collection")),
        mutated("cluster with neither service+port nor url", lambda s: s.update(cluster={"service": "shoal"})),
        mutated("port out of range", lambda s: s["cluster"].update(port=70000)),
    ]
    if obj["kind"] == "ShardPlacement":
        out += [
            mutated("unknown method", lambda s: s.update(method="Rsync")),
            mutated("empty replicas", lambda s: s.update(replicas=[])),
            mutated("both shardId and shardKey", lambda s: s.update(shardKey="eu")),
            mutated("neither shardId nor shardKey", lambda s: s.pop("shardId")),
            mutated("empty rateLimit", lambda s: s.update(rateLimit={})),
        ]
    if obj["kind"] == "Resharding":
        out += [
            mutated("zero shards", lambda s: s.update(shards=0)),
            mutated("unknown commitRead gate", lambda s: s.update(commitRead="Later")),
        ]
    assert spec  # the example itself is untouched
    return out


def cmd_examples(args):
    validators = crd_validators(args.crds)
    examples = sorted(f for f in os.listdir(args.examples) if f.endswith(".yaml"))
    check(examples, f"no examples in {args.examples}")
    kinds = set()
    for name in examples:
        for obj in load_all(os.path.join(args.examples, name)):
            kinds.add(obj["kind"])
            errs = errors_of(validators, obj)
            if check(not errs, f"{name}: {obj['kind']} does not match its CRD: {errs}"):
                print(f"  ok   {name}: {obj['kind']}/{obj['metadata']['name']}")
            for desc, bad in broken_copies(obj):
                check(errors_of(validators, bad), f"{name}: a copy with {desc} passes the CRD schema")
    check({"ShardPlacement", "Resharding"} <= kinds, f"examples cover {sorted(kinds)}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("rendered")
    r.add_argument("--manifest", required=True)
    r.add_argument("--values", required=True)
    r.add_argument("--kube-version", action="append", required=True)
    r.add_argument("--release", default="shoal")
    r.add_argument("--namespace", default="default")
    r.add_argument("--service-monitors-json", help="also write the ServiceMonitors here, as a JSON array")
    e = sub.add_parser("examples")
    e.add_argument("--crds", required=True)
    e.add_argument("--examples", required=True)
    args = p.parse_args()
    {"rendered": cmd_rendered, "examples": cmd_examples}[args.cmd](args)
    if failures:
        print(f"  {len(failures)} problem(s)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
