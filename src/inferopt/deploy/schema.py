"""Offline checks of Kubernetes manifests against the CustomResourceDefinitions they are
instances of, as strictly as the API server's strict field validation: every object schema
that lists `properties` and does not carry `x-kubernetes-preserve-unknown-fields` is closed,
so an unknown (misspelt) field at any depth is an error rather than silently dropped.

The CRDs leave `metadata` open (the API server checks it against ObjectMeta), so metadata is
checked here by hand: known keys only, names that are DNS labels, string labels and
annotations. A RayService's `serveConfigV2` is checked against Ray's own schema
(`ray.serve.schema.ServeDeploySchema`) and, since those pydantic models ignore unknown keys,
for keys none of its models declares.

jsonschema and Ray are imported on use: neither is needed to write manifests.
"""

from __future__ import annotations

import copy
import importlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import yaml

from inferopt.errors import InferoptError

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
# What KServe and KubeRay require beyond a DNS-1123 label (their admission webhooks): a
# DNS-1035 label, and for a RayService at most 47 characters (KubeRay appends a suffix).
_NAME_RULES: dict[str, tuple[re.Pattern[str], int]] = {
    "InferenceService": (_DNS1035_LABEL, 63),
    "RayService": (_DNS1035_LABEL, 47),
}
_METADATA_KEYS = frozenset({"name", "namespace", "labels", "annotations"})
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
_QUALIFIED_NAME = re.compile(r"([a-z0-9.-]{1,253}/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")


class ManifestError(InferoptError):
    """A manifest does not validate; the message lists every problem found."""


def close(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of an OpenAPI v3 schema with every object that lists `properties` and does not
    carry `x-kubernetes-preserve-unknown-fields` closed (`additionalProperties: false`)."""
    closed: dict[str, Any] = copy.deepcopy(dict(schema))
    _close(closed)
    return closed


def _close(node: Any) -> None:
    if isinstance(node, dict):
        if (
            "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        for value in node.values():
            _close(value)
    elif isinstance(node, list):
        for value in node:
            _close(value)


@dataclass(frozen=True)
class Crd:
    kind: str
    api_version: str  # group/version
    namespaced: bool
    schema: Mapping[str, Any]  # closed


@dataclass(frozen=True)
class CrdSchemas:
    """The closed schemas of every served version of the CRDs in a folder, by
    (apiVersion, kind)."""

    crds: Mapping[tuple[str, str], Crd]

    @staticmethod
    def load(folder: Path) -> CrdSchemas:
        """Every CustomResourceDefinition in `folder`'s *.yaml files.

        Raises:
            ManifestError: the folder holds no CRD, or a file is not readable YAML.
        """
        crds: dict[tuple[str, str], Crd] = {}
        for path in sorted(folder.glob("*.yaml")):
            for doc in _load_all(path):
                if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                    for crd in _versions(doc):
                        crds[(crd.api_version, crd.kind)] = crd
        if not crds:
            raise ManifestError(f"{folder}: no CustomResourceDefinition in its *.yaml files")
        return CrdSchemas(crds)

    def problems(self, manifest: Mapping[str, Any]) -> list[str]:
        """Every way `manifest` fails its CRD's schema or the metadata rules, one line each
        ("path: problem"); empty when it validates."""
        key = (str(manifest.get("apiVersion")), str(manifest.get("kind")))
        crd = self.crds.get(key)
        if crd is None:
            known = ", ".join(f"{v} {k}" for v, k in sorted(self.crds))
            return [f"no schema for apiVersion {key[0]} kind {key[1]} (known: {known})"]
        jsonschema = importlib.import_module("jsonschema")
        # Draft 4: OpenAPI 3.0's schema objects are its dialect (no const, integer is integral).
        validator = jsonschema.Draft4Validator(crd.schema)
        found = [
            f"{_path(error.absolute_path)}: {error.message}"
            for error in sorted(validator.iter_errors(manifest), key=lambda e: list(e.path))
        ]
        return found + metadata_problems(manifest, namespaced=crd.namespaced)


def _load_all(path: Path) -> list[Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 10x faster on 2 MB CRDs
    try:
        with path.open() as f:
            return list(yaml.load_all(f, Loader=loader))
    except (OSError, yaml.YAMLError) as exc:
        raise ManifestError(f"{path}: cannot read it as YAML: {exc}") from exc


def _versions(doc: Mapping[str, Any]) -> list[Crd]:
    spec = doc["spec"]
    group, kind = spec["group"], spec["names"]["kind"]
    return [
        Crd(
            kind=kind,
            api_version=f"{group}/{version['name']}",
            namespaced=spec.get("scope") == "Namespaced",
            schema=close(version["schema"]["openAPIV3Schema"]),
        )
        for version in spec["versions"]
        if version.get("served", True)
    ]


def _path(parts: Any) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.lstrip(".") or "(root)"


def metadata_problems(manifest: Mapping[str, Any], *, namespaced: bool = True) -> list[str]:
    """What is wrong with `manifest["metadata"]`: a missing or invalid name (a DNS-1123 label;
    stricter for InferenceService and RayService), unknown keys, a namespace on a
    cluster-scoped kind, labels or annotations that are not string maps."""
    meta = manifest.get("metadata")
    if not isinstance(meta, Mapping):
        return ["metadata: missing or not a mapping"]
    found = [f"metadata.{key}: unknown field" for key in sorted(set(meta) - _METADATA_KEYS)]
    name = meta.get("name")
    pattern, limit = _NAME_RULES.get(str(manifest.get("kind")), (_DNS1123_LABEL, 63))
    if not isinstance(name, str) or len(name) > limit or not pattern.fullmatch(name):
        found.append(
            f"metadata.name: {name!r} is not a valid name for {manifest.get('kind')} "
            f"(at most {limit} characters matching {pattern.pattern})"
        )
    namespace = meta.get("namespace")
    if namespace is not None and not namespaced:
        found.append("metadata.namespace: set on a cluster-scoped kind")
    elif namespace is not None and not (
        isinstance(namespace, str) and _DNS1123_LABEL.fullmatch(namespace)
    ):
        found.append(f"metadata.namespace: {namespace!r} is not a DNS-1123 label")
    for field in ("labels", "annotations"):
        found.extend(_string_map(meta.get(field), f"metadata.{field}", labels=field == "labels"))
    return found


def _string_map(value: Any, where: str, *, labels: bool) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, Mapping):
        return [f"{where}: not a mapping"]
    found = []
    for key, item in value.items():
        if not isinstance(key, str) or not _QUALIFIED_NAME.fullmatch(key):
            found.append(f"{where}: key {key!r} is not a qualified name")
        if not isinstance(item, str):
            found.append(f"{where}.{key}: {item!r} is not a string")
        elif labels and (len(item) > 63 or not _LABEL_VALUE.fullmatch(item)):
            found.append(f"{where}.{key}: {item!r} is not a valid label value")
    return found


def serve_config_problems(config: Any) -> list[str]:
    """What Ray Serve would refuse in a Serve config file (its `ServeDeploySchema`), and every
    key that no model of that schema declares (which Ray would silently ignore)."""
    schema = importlib.import_module("ray.serve.schema")
    pydantic = importlib.import_module("pydantic")
    try:
        schema.ServeDeploySchema.model_validate(config)
    except pydantic.ValidationError as exc:
        return [
            f"serveConfigV2.{_path(error['loc'])}: {error['msg']}"
            for error in exc.errors(include_url=False)
        ]
    return _unknown_keys(schema.ServeDeploySchema, config, "serveConfigV2", pydantic.BaseModel)


def _unknown_keys(model: Any, data: Any, where: str, base: type) -> list[str]:
    """Keys of `data` that `model` (a pydantic model) does not declare, recursively into the
    fields whose type is (or contains) another model. Models that allow extra keys and plain
    dict fields (an application's `args`) are left open, as Ray leaves them."""
    if not isinstance(data, Mapping) or model.model_config.get("extra") == "allow":
        return []
    fields = {(info.alias or name): info for name, info in model.model_fields.items()}
    found = []
    for key, value in data.items():
        info = fields.get(key)
        if info is None:
            found.append(f"{where}.{key}: unknown field")
            continue
        inner = _models_in(info.annotation, base)
        if not inner:
            continue
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            at = f"{where}.{key}[{i}]" if isinstance(value, list) else f"{where}.{key}"
            found.extend(_unknown_keys(inner[0], item, at, base))
    return found


def _models_in(annotation: Any, base: type) -> list[type]:
    if isinstance(annotation, type) and issubclass(annotation, base):
        return [annotation]
    return [model for arg in get_args(annotation) for model in _models_in(arg, base)]


# The top-level fields of kustomize's Kustomization (api/types/kustomization.go).
_KUSTOMIZATION_FIELDS = frozenset(
    {
        "apiVersion", "kind", "metadata", "openapi", "namePrefix", "nameSuffix", "namespace",
        "commonLabels", "labels", "commonAnnotations", "patchesStrategicMerge",
        "patchesJson6902", "patches", "images", "replacements", "replicas", "vars",
        "sortOptions", "resources", "components", "crds", "configMapGenerator",
        "secretGenerator", "helmGlobals", "helmCharts", "helmChartInflationGenerator",
        "generatorOptions", "configurations", "generators", "transformers", "validators",
        "buildMetadata",
    }
)  # fmt: skip


def kustomization_problems(manifest: Mapping[str, Any], files: set[str]) -> list[str]:
    """What is wrong with a kustomization whose folder holds `files`: its apiVersion,
    unknown top-level fields, resources that are not among the files."""
    found = [f"{key}: unknown field" for key in sorted(set(manifest) - _KUSTOMIZATION_FIELDS)]
    if manifest.get("apiVersion") != "kustomize.config.k8s.io/v1beta1":
        found.append(f"apiVersion: {manifest.get('apiVersion')!r} is not kustomize's v1beta1")
    resources = manifest.get("resources", [])
    if not isinstance(resources, list):
        return [*found, "resources: not a list"]
    found += [f"resources: {r!r} is not a file here" for r in resources if r not in files]
    return found


def check(manifests: Mapping[str, Mapping[str, Any]], schemas: CrdSchemas) -> None:
    """Validate manifests (file name -> manifest): custom resources against their CRDs and
    the metadata rules, a RayService's serveConfigV2 against Ray's schema, a kustomization's
    resources against the other file names.

    Raises:
        ManifestError: listing every problem, each with its file and path.
    """
    found: list[str] = []
    for filename, manifest in manifests.items():
        if manifest.get("kind") == "Kustomization":
            problems = kustomization_problems(manifest, set(manifests) - {filename})
        else:
            problems = schemas.problems(manifest)
        if manifest.get("kind") == "RayService" and not problems:
            serve = yaml.safe_load(manifest["spec"]["serveConfigV2"])
            problems = serve_config_problems(serve)
        found.extend(f"{filename}: {problem}" for problem in problems)
    if found:
        raise ManifestError(f"{len(found)} problem(s): " + "; ".join(found))
