"""Deploying artifacts and model repositories to Kubernetes: KServe and KubeRay manifests
and the Dockerfile of the image they run (`inferopt deploy kserve`).

    from inferopt.deploy import KServeConfig, manifests, write

    config = KServeConfig(image="registry.example.com/team/inferopt:0.1.0")
    found = manifests(Path("build"), config)    # {file name: manifest dict}
    write(Path("build"), Path("deploy"), config)  # the YAML files and the Dockerfile
"""

from __future__ import annotations

from inferopt.deploy.dockerfile import dockerfile
from inferopt.deploy.kserve import KServeConfig, manifests
from inferopt.deploy.output import render, storage_layout, to_yaml, write
from inferopt.deploy.source import DeployError, Source, inspect

__all__ = [
    "DeployError",
    "KServeConfig",
    "Source",
    "dockerfile",
    "inspect",
    "manifests",
    "render",
    "storage_layout",
    "to_yaml",
    "write",
]
