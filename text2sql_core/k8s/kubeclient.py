"""Connecting to the Kubernetes API: an explicit kubeconfig, the pod's service account, or the
default kubeconfig (``$KUBECONFIG`` / ``~/.kube/config``), in that order."""

from __future__ import annotations

import os
from typing import Any

from ..errors import BadInput

__all__ = ["load_api_client"]


def load_api_client(kubeconfig: str | None = None) -> Any:
    """A ``kubernetes.client.ApiClient`` with its own configuration (the global default is left alone)."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    cfg = client.Configuration()
    try:
        if kubeconfig:
            config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        elif os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=cfg)
        else:
            config.load_kube_config(client_configuration=cfg)
    except (ConfigException, OSError, TypeError, ValueError) as exc:
        where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config or the in-cluster service account"
        raise BadInput(f"no usable Kubernetes credentials: {exc}", uri=where) from None
    return client.ApiClient(cfg)
