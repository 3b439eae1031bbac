"""Kubernetes side of a run: the stage controller and ``t2s status``.

- ``decide``: the pure decision (observed Jobs + published steps + recorded Events -> actions);
- ``controller``: watch / work queue / observe / apply around it (field manager ``t2s-controller``);
- ``metrics``: Prometheus metrics and the ``/metrics`` + ``/healthz`` server;
- ``status``: a run's steps with state, duration and key metrics, from the store and optionally Jobs;
- ``kubeclient``: kubeconfig / in-cluster credentials.

Nothing here imports ``kubernetes`` at module import time except inside the functions that talk
to the API, so ``t2s status`` on a local run never needs a cluster.
"""
