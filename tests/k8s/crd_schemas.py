"""Strict JSON Schemas for the custom resources the overlays use.

kubernetes-validate ships schemas for built-in kinds only. These cover the fields of the CRDs we
use, with ``additionalProperties: false`` everywhere, so a typo is an error exactly as it is for a
Deployment. They are subsets of the upstream CRDs (Prometheus operator ``monitoring.coreos.com/v1``,
External Secrets Operator ``external-secrets.io/v1``, cert-manager ``cert-manager.io/v1``): using a
field not listed here fails with "Additional properties are not allowed"; add it here after
checking the upstream CRD.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

_STR: Schema = {"type": "string"}
_STR_MAP: Schema = {"type": "object", "additionalProperties": {"type": "string"}}
_DURATION: Schema = {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?(ms|s|m|h|d|w|y))+$"}


def _obj(properties: dict[str, Schema], required: tuple[str, ...] = ()) -> Schema:
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


_METADATA = _obj(
    {"name": _STR, "namespace": _STR, "labels": _STR_MAP, "annotations": _STR_MAP}, ("name",)
)
_LABEL_SELECTOR = _obj(
    {
        "matchLabels": _STR_MAP,
        "matchExpressions": {
            "type": "array",
            "items": _obj(
                {"key": _STR, "operator": _STR, "values": {"type": "array", "items": _STR}},
                ("key", "operator"),
            ),
        },
    }
)


def _resource(api_version: str, kind: str, spec: Schema) -> Schema:
    return _obj(
        {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": _METADATA,
            "spec": spec,
        },
        ("apiVersion", "kind", "metadata", "spec"),
    )


_RELABEL = _obj(
    {
        "action": _STR,
        "sourceLabels": {"type": "array", "items": _STR},
        "separator": _STR,
        "targetLabel": _STR,
        "regex": _STR,
        "replacement": _STR,
        "modulus": {"type": "integer"},
    }
)

SERVICE_MONITOR = _resource(
    "monitoring.coreos.com/v1",
    "ServiceMonitor",
    _obj(
        {
            "selector": _LABEL_SELECTOR,
            "namespaceSelector": _obj(
                {"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": _STR}}
            ),
            "jobLabel": _STR,
            "targetLabels": {"type": "array", "items": _STR},
            "podTargetLabels": {"type": "array", "items": _STR},
            "endpoints": {
                "type": "array",
                "minItems": 1,
                "items": _obj(
                    {
                        "port": _STR,
                        "targetPort": {"type": ["string", "integer"]},
                        "path": _STR,
                        "scheme": {"enum": ["http", "https"]},
                        "interval": _DURATION,
                        "scrapeTimeout": _DURATION,
                        "honorLabels": {"type": "boolean"},
                        "relabelings": {"type": "array", "items": _RELABEL},
                        "metricRelabelings": {"type": "array", "items": _RELABEL},
                    },
                ),
            },
        },
        ("selector", "endpoints"),
    ),
)

_RULE = {
    "type": "object",
    "properties": {
        "alert": _STR,
        "record": _STR,
        "expr": {"type": ["string", "integer"]},
        "for": _DURATION,
        "keep_firing_for": _DURATION,
        "labels": _STR_MAP,
        "annotations": _STR_MAP,
    },
    "required": ["expr"],
    "additionalProperties": False,
    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
}

PROMETHEUS_RULE = _resource(
    "monitoring.coreos.com/v1",
    "PrometheusRule",
    _obj(
        {
            "groups": {
                "type": "array",
                "minItems": 1,
                "items": _obj(
                    {
                        "name": _STR,
                        "interval": _DURATION,
                        "limit": {"type": "integer"},
                        "labels": _STR_MAP,
                        "rules": {"type": "array", "minItems": 1, "items": _RULE},
                    },
                    ("name", "rules"),
                ),
            }
        },
        ("groups",),
    ),
)

_STORE_REF = _obj(
    {"name": _STR, "kind": {"enum": ["SecretStore", "ClusterSecretStore"]}}, ("name",)
)
_REMOTE_REF = _obj(
    {
        "key": _STR,
        "property": _STR,
        "version": _STR,
        "decodingStrategy": {"enum": ["Auto", "Base64", "Base64URL", "None"]},
        "conversionStrategy": {"enum": ["Default", "Unicode"]},
        "metadataPolicy": {"enum": ["None", "Fetch"]},
    },
    ("key",),
)

EXTERNAL_SECRET = _resource(
    "external-secrets.io/v1",
    "ExternalSecret",
    _obj(
        {
            "refreshInterval": _DURATION,
            "secretStoreRef": _STORE_REF,
            "target": _obj(
                {
                    "name": _STR,
                    "creationPolicy": {"enum": ["Owner", "Orphan", "Merge", "None"]},
                    "deletionPolicy": {"enum": ["Delete", "Merge", "Retain"]},
                    "immutable": {"type": "boolean"},
                }
            ),
            "data": {
                "type": "array",
                "items": _obj(
                    {"secretKey": _STR, "remoteRef": _REMOTE_REF}, ("secretKey", "remoteRef")
                ),
            },
            "dataFrom": {
                "type": "array",
                "items": _obj({"extract": _REMOTE_REF}, ("extract",)),
            },
        },
        ("secretStoreRef",),
    ),
)

_ISSUER_REF = _obj(
    {"name": _STR, "kind": {"enum": ["Issuer", "ClusterIssuer"]}, "group": _STR}, ("name",)
)
_PRIVATE_KEY = _obj(
    {
        "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
        "size": {"type": "integer"},
        "encoding": {"enum": ["PKCS1", "PKCS8"]},
        "rotationPolicy": {"enum": ["Never", "Always"]},
    }
)
_STR_LIST: Schema = {"type": "array", "items": _STR}

CERTIFICATE = _resource(
    "cert-manager.io/v1",
    "Certificate",
    _obj(
        {
            "secretName": _STR,
            "issuerRef": _ISSUER_REF,
            "isCA": {"type": "boolean"},
            "commonName": _STR,
            "dnsNames": _STR_LIST,
            "uris": _STR_LIST,
            "ipAddresses": _STR_LIST,
            "duration": _DURATION,
            "renewBefore": _DURATION,
            "usages": {
                "type": "array",
                "items": {
                    "enum": [
                        "server auth",
                        "client auth",
                        "digital signature",
                        "key encipherment",
                        "cert sign",
                    ]
                },
            },
            "privateKey": _PRIVATE_KEY,
        },
        ("secretName", "issuerRef"),
    ),
)

ISSUER = _resource(
    "cert-manager.io/v1",
    "Issuer",
    {
        "type": "object",
        "properties": {
            "selfSigned": _obj({}),
            "ca": _obj({"secretName": _STR}, ("secretName",)),
        },
        "additionalProperties": False,
        "minProperties": 1,
        "maxProperties": 1,
    },
)

CRD_SCHEMAS: dict[tuple[str, str], Schema] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR,
    ("monitoring.coreos.com/v1", "PrometheusRule"): PROMETHEUS_RULE,
    ("external-secrets.io/v1", "ExternalSecret"): EXTERNAL_SECRET,
    ("cert-manager.io/v1", "Certificate"): CERTIFICATE,
    ("cert-manager.io/v1", "Issuer"): ISSUER,
}
