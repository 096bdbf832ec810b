"""Kubernetes objects for a plan: names, labels, Deployments, Services, a ConfigMap (no torch).

Everything here builds plain dicts (what ``kubectl`` reads); nothing imports the ``kubernetes``
client, which the tests use to check the objects against the API schema.

What is built from one plan (see docs/export.md):

* one ``Deployment`` per placed component: each upstream, and each replica of each combiner, pinned
  to its server by required node affinity on ``kubernetes.io/hostname``, ``replicas: 1`` and the
  ``Recreate`` strategy (a rolling update would need a second copy's memory on a server the plan
  filled);
* one headless ``Service`` per placed component, selecting all of its replicas; each pod sets
  ``hostname``/``subdomain`` so ``<server>.<service>`` reaches the replica on one server;
* one ``ConfigMap`` holding ``plan.json``, ``fallback.json``, ``family.json`` and
  ``endpoints.json`` (component -> Service, and per server its Deployment and pod address) for the
  runtime selector;
* one gateway ``Deployment`` and a ``ClusterIP`` ``Service`` in front of it: clients send their Open
  Inference Protocol requests there.

The containers run the programs of ``melplan serve``: a component pod runs ``python -m
melplan.serve.component`` for its component, the gateway pod ``python -m melplan.serve.gateway``
with the plan and one ``--component COMPONENT@SERVER=URL`` per placed replica (the URL is the
replica's pod DNS name).  Arguments refer to the container's environment as ``$(NAME)``, which
the kubelet expands.  The weights are baked into the image (see the Dockerfile) at
``/models/<weights file>``, and the component checks their SHA-256 before loading them.

Names are DNS-1035 labels (lower-case letters, digits and '-', starting with a letter, at most 63
characters), so they are valid for every kind.  They are ``<family>-<component>-<server>`` for a
Deployment, ``<family>-<component>`` for a Service and ``<family>-plan`` for the ConfigMap, each part
lower-cased with other characters turned into '-' (``u1+u2`` -> ``u1-u2``).  A name longer than 63
characters keeps its readable start and ends in a short hash of what it names; names that would
coincide (a combiner ``u1+u2`` beside an upstream ``u1-u2``) all get a hash of their own identity,
so two objects of one kind never share a name.  Label values follow the same rules; the original
strings are kept in annotations.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from melplan.core.catalog import MIB, Family
from melplan.core.errors import ExportError, InputError, PlanFileError
from melplan.core.plan import Plan

MAX_NAME = 63
DNS1035_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1123_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
IMAGE_RE = re.compile(r"^[^\s]+$")
HOSTNAME_LABEL = "kubernetes.io/hostname"
PREFIX = "melplan"  # label and annotation key prefix
DEFAULT_IMAGE = "melplan-runtime:latest"
DEFAULT_PORT = 8080
CONTAINER_NAME = "runtime"
CONFIG_VOLUME = "melplan-plan"
HASH_LEN = 8
K = TypeVar("K", bound=Hashable)
POD_HOST = "0.0.0.0"  # the containers bind every interface because these manifests say so (MELPLAN_HOST)

# Measured memory (see docs/export.md, "Memory requests"). A component process of the shipped example
# plan, loaded and warmed up, was 716.9 MiB resident (all four of them, 716.6 to 716.9 MiB), against
# catalog memory_bytes under 1 MiB: `melplan plan --servers examples/cluster-4.yaml --out plan.json &&
# melplan serve --plan plan.json --port 0`, the "resident" figure each component prints (its
# /proc/self/statm), torch 2.14.1 (a CUDA build) on the development machine; a CPU-only wheel is smaller.
RUNTIME_OVERHEAD_MIB = 717.0
# The standalone gateway (no torch) peaked at 44.7 MiB resident (VmHWM) after answering 400 images twice
# (binary and JSON tensors, batches of 50): `pytest tests/test_k8s_replay.py -s` prints it.  Component
# processes peaked at 718.2 to 746.4 MiB in the same run, within their requests.
GATEWAY_RSS_MIB = 45.0
MEMORY_MARGIN = 0.25  # requests are the measured figure plus 25 % (allocator growth, batches over 1)


@dataclass(frozen=True)
class K8sOptions:
    """How to render a plan for Kubernetes.

    ``overhead_mib`` is added to every component's catalog ``memory_bytes`` (weights plus peak
    activations at batch 1): the memory of the serving process itself (interpreter, torch), which the
    catalog does not count; by default the measured :data:`RUNTIME_OVERHEAD_MIB`.  The sum, times
    ``1 + memory_margin``, is the memory request.  Raises :class:`InputError` for an invalid
    namespace, image, port, overhead or margin.
    """

    image: str = DEFAULT_IMAGE
    namespace: str | None = None
    overhead_mib: float = RUNTIME_OVERHEAD_MIB
    port: int = DEFAULT_PORT
    weights_dir: str = "/models"
    config_mount: str = "/etc/melplan"
    memory_margin: float = MEMORY_MARGIN
    gateway_mib: float = GATEWAY_RSS_MIB

    def __post_init__(self) -> None:
        ns = self.namespace
        if ns is not None and (len(ns) > MAX_NAME or not DNS1123_LABEL_RE.match(ns)):
            raise InputError(
                f"invalid namespace {ns!r}",
                field="--namespace",
                fix="use at most 63 lower-case letters, digits and '-', starting and ending with a letter or digit",
            )
        if not self.image or not IMAGE_RE.match(self.image):
            raise InputError(
                f"invalid image {self.image!r}",
                field="--image",
                fix="give an image reference without spaces, e.g. registry.local/melplan-runtime:0.1",
            )
        if (
            isinstance(self.overhead_mib, bool)
            or not isinstance(self.overhead_mib, (int, float))
            or not math.isfinite(self.overhead_mib)
            or self.overhead_mib < 0
        ):
            raise InputError(
                f"invalid runtime overhead {self.overhead_mib!r}",
                field="--overhead-mib",
                fix="give a number of MiB >= 0",
            )
        m = self.memory_margin
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not math.isfinite(m) or not 0 <= m <= 10:
            raise InputError(f"invalid memory margin {m!r}", field="memory_margin", fix="give a fraction >= 0")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 1 <= self.port <= 65535:
            raise InputError(f"invalid port {self.port!r}", field="port", fix="use a port between 1 and 65535")


# -- names and label values --------------------------------------------------------------------


def short_hash(*parts: str) -> str:
    """First ``HASH_LEN`` hex digits of the SHA-256 of the parts (NUL-separated)."""
    return hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()[:HASH_LEN]


def slug(text: str) -> str:
    """Lower-case, every run of characters other than ``[a-z0-9]`` turned into one '-', trimmed."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _with_hash(readable: str, identity: str, limit: int = MAX_NAME) -> str:
    h = short_hash(identity)
    room = limit - len(h) - 1
    head = readable[:room].rstrip("-")
    return f"{head}-{h}" if head else h


def name_part(text: str) -> str:
    """A readable DNS-safe piece of a name: the slug of ``text`` (hashed when empty or too long).

    Different texts can share a slug (``u1+u2`` and ``u1-u2``); :func:`unique_names` resolves that.
    """
    s = slug(text)
    if s and len(s) <= MAX_NAME:
        return s
    return _with_hash(s, text)


def dns_name(parts: Sequence[str], identity: str) -> str:
    """Join name parts with '-' into a DNS-1035 label; starts with a letter, hashed when too long."""
    name = "-".join(p for p in parts if p)
    if not name or not name[0].isalpha():
        name = "m-" + name
    if len(name) > MAX_NAME:
        name = _with_hash(name, identity)  # keeps the leading letter
    return name


def label_value(text: str) -> str:
    """``text`` when it is a valid label value, else a valid readable form plus a hash of ``text``."""
    if len(text) <= MAX_NAME and LABEL_VALUE_RE.match(text):
        return text
    s = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-_.")
    s = _with_hash(s, text)
    return s


def subset_label(key: str) -> str:
    """A subset key as a label value: ``u1+u2`` -> ``u1-u2`` (the key itself goes in an annotation)."""
    return label_value(key.replace("+", "-"))


def unique_names(wanted: Mapping[K, tuple[str, str]]) -> dict[K, str]:
    """Resolve ``{key: (name, identity)}`` into distinct names.

    Names that more than one key wants are all replaced by their readable text plus a hash of the
    key's identity, so the result does not depend on order.  Raises :class:`ExportError` if names
    still coincide (two identities with the same hash prefix).
    """
    count: dict[str, int] = {}
    for name, _ in wanted.values():
        count[name] = count.get(name, 0) + 1
    out = {key: (name if count[name] == 1 else _with_hash(name, identity)) for key, (name, identity) in wanted.items()}
    if len(set(out.values())) != len(out):
        dup = sorted(n for n in set(out.values()) if list(out.values()).count(n) > 1)
        raise ExportError(
            f"could not give distinct Kubernetes names to {dup}",
            fix="rename the colliding components or servers and export again",
        )
    return out


# -- objects -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Naming:
    """Every name and label value of one export, decided once so builders agree."""

    family_part: str
    family_label: str
    component: Mapping[str, str]  # component -> name part (also its label value)
    service: Mapping[str, str]  # component -> Service name
    deployment: Mapping[tuple[str, str], str]  # (component, server) -> Deployment name
    host: Mapping[str, str]  # server -> pod hostname (a DNS-1123 label)
    configmap: str


def make_naming(family: Family, placement: Mapping[str, Sequence[str]]) -> Naming:
    """Names for every placed component and replica of ``placement`` (raises :class:`ExportError`)."""
    fam = slug(family.id) or "family"
    if len(fam) > 30:  # leave room for component and server in the 63 characters
        fam = _with_hash(fam, family.id, limit=30)
    comps = [c for c in family.component_names() if c in placement]
    comp_part = unique_names({c: (name_part(c), f"component\0{c}") for c in comps})
    services = unique_names({c: (dns_name([fam, comp_part[c]], f"{family.id}\0{c}"), f"service\0{c}") for c in comps})
    pairs = [(c, s) for c in comps for s in placement[c]]
    servers = list(dict.fromkeys(s for _, s in pairs))
    server_part = unique_names({s: (name_part(s), f"server\0{s}") for s in servers})
    deployments = unique_names(
        {
            (c, s): (dns_name([fam, comp_part[c], server_part[s]], f"{family.id}\0{c}\0{s}"), f"deployment\0{c}\0{s}")
            for c, s in pairs
        }
    )
    configmap = dns_name([fam, "plan"], f"{family.id}\0configmap")
    return Naming(fam, label_value(family.id), comp_part, services, deployments, server_part, configmap)


def memory_request(memory_bytes: int, overhead_mib: float, margin: float = 0.0) -> str:
    """(``memory_bytes`` plus ``overhead_mib`` MiB) times ``1 + margin``, rounded up to whole MiB (at
    least 1), as ``"<n>Mi"``."""
    return f"{max(1, math.ceil((memory_bytes + overhead_mib * MIB) * (1 + margin) / MIB - 1e-9))}Mi"


def endpoint_arg(component: str, server: str, url: str) -> str:
    """One ``--component`` value of the gateway: ``COMPONENT@SERVER=URL``
    (parsed by :func:`melplan.serve.launcher.parse_endpoint`)."""
    return f"{component}@{server}={url}"


def _http_probe(path: str, period_s: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period_s,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


SECURITY_CONTEXT = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
}


def _metadata(
    name: str, labels: Mapping[str, str], annotations: Mapping[str, str], namespace: str | None
) -> dict[str, Any]:
    md: dict[str, Any] = {"name": name}
    if namespace:
        md["namespace"] = namespace
    md["labels"] = dict(labels)
    if annotations:
        md["annotations"] = dict(annotations)
    return md


def _base_labels(naming: Naming) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "melplan-runtime",
        "app.kubernetes.io/part-of": "melplan",
        "app.kubernetes.io/managed-by": "melplan",
        f"{PREFIX}/family": naming.family_label,
    }


def _component_labels(naming: Naming, entry: Mapping[str, Any]) -> dict[str, str]:
    labels = {"app.kubernetes.io/component": entry["kind"], **_base_labels(naming)}
    labels[f"{PREFIX}/kind"] = entry["kind"]
    labels[f"{PREFIX}/component"] = naming.component[entry["component"]]
    labels[f"{PREFIX}/subset"] = subset_label(entry["subset"])
    return labels


def _selector(naming: Naming, component: str, server: str | None = None) -> dict[str, str]:
    sel = {f"{PREFIX}/family": naming.family_label, f"{PREFIX}/component": naming.component[component]}
    if server is not None:
        sel[f"{PREFIX}/server"] = label_value(server)
    return sel


def endpoints(naming: Naming, placement: Mapping[str, Sequence[str]], port: int) -> dict[str, Any]:
    """Component -> its (headless) Service, and per server its Deployment and the DNS name of its pod.

    ``host`` (``<hostname>.<service>``, resolvable inside the namespace) reaches one replica: the
    runtime selector uses it to send every upstream's features of one request to the same combiner
    replica, which the Service name alone (any ready replica) would not guarantee.
    """
    return {
        c: {
            "service": naming.service[c],
            "port": port,
            "replicas": {
                s: {"deployment": naming.deployment[(c, s)], "host": f"{naming.host[s]}.{naming.service[c]}"}
                for s in placement[c]
            },
        }
        for c in naming.component
    }


def configmap(
    naming: Naming, plan: Plan, family: Family, placement: Mapping[str, Sequence[str]], options: K8sOptions
) -> dict[str, Any]:
    """The ConfigMap the runtime selector reads: plan, fallback table, family entry, endpoints."""
    data = {
        "plan.json": json.dumps(plan.to_dict(), indent=2) + "\n",
        "fallback.json": json.dumps([dict(f) for f in plan.fallback], indent=2) + "\n",
        "family.json": json.dumps(family.to_dict(), indent=2) + "\n",
        "endpoints.json": json.dumps(endpoints(naming, placement, options.port), indent=2) + "\n",
    }
    ann = {f"{PREFIX}/family": family.id}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(naming.configmap, _base_labels(naming), ann, options.namespace),
        "data": data,
    }


def config_digest(cm: Mapping[str, Any]) -> str:
    """SHA-256 of the ConfigMap data: a pod-template annotation, so pods restart when the plan changes."""
    return hashlib.sha256(json.dumps(cm["data"], sort_keys=True).encode("utf-8")).hexdigest()


def _env(
    entry: Mapping[str, Any], server: str, family: Family, naming: Naming, options: K8sOptions
) -> list[dict[str, str]]:
    mount = options.config_mount.rstrip("/")
    env = {
        "MELPLAN_FAMILY": family.id,
        "MELPLAN_COMPONENT": entry["component"],
        "MELPLAN_KIND": entry["kind"],
        "MELPLAN_SUBSET": entry["subset"],
        "MELPLAN_SERVES": ",".join(entry["serves"]),
        "MELPLAN_SERVER": server,
        "MELPLAN_HOST": POD_HOST,
        "MELPLAN_PORT": str(options.port),
        "MELPLAN_PLAN": f"{mount}/plan.json",
        "MELPLAN_FALLBACK": f"{mount}/fallback.json",
        "MELPLAN_FAMILY_FILE": f"{mount}/family.json",
        "MELPLAN_ENDPOINTS": f"{mount}/endpoints.json",
    }
    weights = entry.get("weights")
    if weights:
        env["MELPLAN_WEIGHTS"] = f"{options.weights_dir.rstrip('/')}/{weights['file']}"
        if weights.get("sha256"):
            env["MELPLAN_WEIGHTS_SHA256"] = weights["sha256"]
    if entry["kind"] == "upstream":  # addresses of these components: endpoints.json
        env["MELPLAN_FEEDS"] = ",".join(f["combiner"] for f in entry.get("feeds", []))
    else:
        env["MELPLAN_INPUTS"] = ",".join(i["upstream"] for i in entry.get("inputs", []))
    return [{"name": k, "value": v} for k, v in env.items()]


def deployment(
    naming: Naming, entry: Mapping[str, Any], server: str, family: Family, options: K8sOptions, digest: str
) -> dict[str, Any]:
    """One Deployment running ``entry`` (a component entry of the manifest) on ``server``."""
    comp = entry["component"]
    selector = _selector(naming, comp, server)
    labels = {**_component_labels(naming, entry), **selector}
    ann = {
        f"{PREFIX}/family": family.id,
        f"{PREFIX}/component": comp,
        f"{PREFIX}/subset": entry["subset"],
        f"{PREFIX}/serves": ",".join(entry["serves"]),
        f"{PREFIX}/server": server,
        f"{PREFIX}/memory-bytes": str(entry["memory_bytes"]),
        f"{PREFIX}/macs": str(entry["macs"]),
    }
    weights = entry.get("weights")
    if weights and weights.get("sha256"):
        ann[f"{PREFIX}/weights-sha256"] = weights["sha256"]
    pod_ann = {**ann, f"{PREFIX}/config-sha256": digest}
    env = _env(entry, server, family, naming, options)
    names = {e["name"] for e in env}
    args = ["--family-file", "$(MELPLAN_FAMILY_FILE)", "--component", "$(MELPLAN_COMPONENT)"]
    args += ["--server", "$(MELPLAN_SERVER)", "--host", "$(MELPLAN_HOST)", "--port", "$(MELPLAN_PORT)"]
    if "MELPLAN_WEIGHTS" in names:
        args += ["--weights", "$(MELPLAN_WEIGHTS)"]
    if "MELPLAN_WEIGHTS_SHA256" in names:  # the component refuses weights whose digest differs
        args += ["--weights-sha256", "$(MELPLAN_WEIGHTS_SHA256)"]
    memory = memory_request(entry["memory_bytes"], options.overhead_mib, options.memory_margin)
    container = {
        "name": CONTAINER_NAME,
        "image": options.image,
        "command": ["python", "-m", "melplan.serve.component"],
        "args": args,
        "env": env,
        "ports": [{"name": "http", "containerPort": options.port, "protocol": "TCP"}],
        "resources": {"requests": {"memory": memory}},
        # live while loading (the server binds first), ready once loaded and warmed up
        "livenessProbe": _http_probe("/v2/health/live", 10, 3),
        "readinessProbe": _http_probe("/v2/health/ready", 2, 2),
        "securityContext": dict(SECURITY_CONTEXT),
        "volumeMounts": [{"name": CONFIG_VOLUME, "mountPath": options.config_mount, "readOnly": True}],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(naming.deployment[(comp, server)], labels, ann, options.namespace),
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": labels, "annotations": pod_ann},
                "spec": {
                    "hostname": naming.host[server],
                    "subdomain": naming.service[comp],
                    "affinity": _pinned_to(server),
                    "containers": [container],
                    "volumes": [{"name": CONFIG_VOLUME, "configMap": {"name": naming.configmap}}],
                },
            },
        },
    }


def _pinned_to(server: str) -> dict[str, Any]:
    """Required node affinity on ``kubernetes.io/hostname`` = ``server``: the pod runs there or nowhere."""
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": HOSTNAME_LABEL, "operator": "In", "values": [server]}]}
                ]
            }
        }
    }


def gateway_name(naming: Naming, family: Family) -> str:
    """Name of the gateway's Deployment and Service: ``<family>-gateway``."""
    return dns_name([naming.family_part, "gateway"], f"{family.id}\0gateway")


def _gateway_labels(naming: Naming) -> dict[str, str]:
    return {"app.kubernetes.io/component": "gateway", **_base_labels(naming), f"{PREFIX}/kind": "gateway"}


def _gateway_selector(naming: Naming) -> dict[str, str]:
    return {f"{PREFIX}/family": naming.family_label, "app.kubernetes.io/component": "gateway"}


def gateway_deployment(
    naming: Naming, plan: Plan, family: Family, placement: Mapping[str, Sequence[str]], options: K8sOptions, digest: str
) -> dict[str, Any]:
    """The gateway: ``python -m melplan.serve.gateway`` with the plan (from the ConfigMap) and the pod
    address of every placed replica; pinned to the plan's ingress server when the cluster names one.

    Its readiness probe is ``/v2/health/live``, not ``/v2/health/ready``: the gateway's ``ready`` means
    every placed component is up (DESIGN §8), and a gateway taken out of its Service whenever one
    server fails could not answer from the fallback table, which is what MEL is for."""
    mount = options.config_mount.rstrip("/")
    env = {
        "MELPLAN_FAMILY": family.id,
        "MELPLAN_PLAN": f"{mount}/plan.json",
        "MELPLAN_HOST": POD_HOST,
        "MELPLAN_PORT": str(options.port),
    }
    args = ["--plan", "$(MELPLAN_PLAN)", "--host", "$(MELPLAN_HOST)", "--port", "$(MELPLAN_PORT)"]
    eps = endpoints(naming, placement, options.port)
    for comp in naming.component:
        for server, rep in eps[comp]["replicas"].items():
            args += ["--component", endpoint_arg(comp, server, f"http://{rep['host']}:{options.port}")]
    name = gateway_name(naming, family)
    labels = _gateway_labels(naming)
    ann = {f"{PREFIX}/family": family.id}
    container = {
        "name": "gateway",
        "image": options.image,
        "command": ["python", "-m", "melplan.serve.gateway"],
        "args": args,
        "env": [{"name": k, "value": v} for k, v in env.items()],
        "ports": [{"name": "http", "containerPort": options.port, "protocol": "TCP"}],
        "resources": {"requests": {"memory": memory_request(0, options.gateway_mib, options.memory_margin)}},
        "livenessProbe": _http_probe("/v2/health/live", 10, 3),
        "readinessProbe": _http_probe("/v2/health/live", 2, 2),
        "securityContext": dict(SECURITY_CONTEXT),
        "volumeMounts": [{"name": CONFIG_VOLUME, "mountPath": options.config_mount, "readOnly": True}],
    }
    pod: dict[str, Any] = {}
    ingress = plan.cluster.ingress if plan.cluster is not None else None
    if ingress:
        pod["affinity"] = _pinned_to(ingress)
    pod["containers"] = [container]
    pod["volumes"] = [{"name": CONFIG_VOLUME, "configMap": {"name": naming.configmap}}]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(name, labels, ann, options.namespace),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": _gateway_selector(naming)},
            "template": {
                "metadata": {"labels": labels, "annotations": {**ann, f"{PREFIX}/config-sha256": digest}},
                "spec": pod,
            },
        },
    }


def gateway_service(naming: Naming, family: Family, options: K8sOptions) -> dict[str, Any]:
    """A ``ClusterIP`` Service in front of the gateway: where clients send requests."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(
            gateway_name(naming, family), _gateway_labels(naming), {f"{PREFIX}/family": family.id}, options.namespace
        ),
        "spec": {
            "type": "ClusterIP",
            "selector": _gateway_selector(naming),
            "ports": [{"name": "http", "port": options.port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def service(naming: Naming, entry: Mapping[str, Any], family: Family, options: K8sOptions) -> dict[str, Any]:
    """The headless Service of one component: its name resolves to every ready replica, and
    ``<hostname>.<service>`` to the replica on one server (pods set ``hostname`` and ``subdomain``)."""
    comp = entry["component"]
    ann = {
        f"{PREFIX}/family": family.id,
        f"{PREFIX}/component": comp,
        f"{PREFIX}/subset": entry["subset"],
        f"{PREFIX}/serves": ",".join(entry["serves"]),
    }
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(naming.service[comp], _component_labels(naming, entry), ann, options.namespace),
        "spec": {
            "clusterIP": "None",
            "selector": _selector(naming, comp),
            "ports": [{"name": "http", "port": options.port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def check_server_names(plan: Plan, *, source: str | None = None) -> None:
    """Every server must be usable as a ``kubernetes.io/hostname`` value; raises :class:`PlanFileError`."""
    for comp, servers in plan.placement.items():
        for s in servers:
            if not s or len(s) > MAX_NAME or not LABEL_VALUE_RE.match(s):
                raise PlanFileError(
                    f"server '{s}' cannot be a Kubernetes node hostname",
                    file=source,
                    field=f"placement.{comp}",
                    fix="name servers after their nodes (at most 63 letters, digits, '-', '.', '_') and re-plan",
                )


def build_objects(plan: Plan, family: Family, manifest: Mapping[str, Any], options: K8sOptions) -> list[dict[str, Any]]:
    """ConfigMap, then a Service per placed component and the gateway's, then a Deployment per placed
    replica and the gateway's.

    ``manifest`` is the deployable view from :func:`melplan.deploy.export.build_manifest`; objects follow
    its order so the same plan always gives the same objects.  Raises :class:`ExportError` when
    names cannot be made distinct.
    """
    placement = {c: tuple(v) for c, v in plan.placement.items()}
    naming = make_naming(family, placement)
    cm = configmap(naming, plan, family, placement, options)
    digest = config_digest(cm)
    services: dict[str, dict[str, Any]] = {}
    deployments = []
    for srv in manifest["servers"]:
        for entry in srv["components"]:
            if entry["component"] not in services:
                services[entry["component"]] = service(naming, entry, family, options)
            deployments.append(deployment(naming, entry, srv["name"], family, options, digest))
    ordered = [services[c] for c in naming.component if c in services]
    gw = [
        gateway_service(naming, family, options),
        gateway_deployment(naming, plan, family, placement, options, digest),
    ]
    objects = [cm] + ordered + gw[:1] + deployments + gw[1:]
    seen: set[tuple[str, str]] = set()
    for obj in objects:
        key = (obj["kind"], obj["metadata"]["name"])
        if key in seen:
            raise ExportError(f"two objects named {key[0]}/{key[1]}", fix="rename the components or servers")
        seen.add(key)
    return objects


def file_name(obj: Mapping[str, Any]) -> str:
    """``<kind>-<name>.yaml`` in lower case, e.g. ``deployment-fam-u1-edge-a.yaml``."""
    return f"{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"


def kustomization(files: Sequence[str], namespace: str | None) -> dict[str, Any]:
    """A kustomization listing ``files`` (so ``kubectl apply -k DIR`` applies exactly these)."""
    k: dict[str, Any] = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization"}
    if namespace:
        k["namespace"] = namespace
    k["resources"] = list(files)
    return k
