"""The Dockerfile of the image the manifests run, for the user's own `docker build DIR`.

inferopt is installed from its wheel, by file path, never by name from an index: the name
`inferopt` on PyPI belongs to an unrelated project, so `pip install inferopt[serve,ray]`
would install that. Ray is pinned to the version the RayService declares (`rayVersion`
must match the image's Ray).
"""

from __future__ import annotations

import json

from inferopt import __version__
from inferopt.deploy.kserve import (
    BAKED_REPOSITORY,
    GRPC_PORT,
    HTTP_PORT,
    KSERVE_MOUNT,
    RAY_GRPC_PORT,
    RAY_HTTP_PORT,
    USER_ID,
    KServeConfig,
)
from inferopt.deploy.source import Source

BASE_IMAGE = "python:3.11-slim"
WHEELS = "wheels"  # folder of the build context holding the inferopt wheel
MODELS = "models"  # folder of the build context holding the baked repository


def dockerfile(source: Source, config: KServeConfig) -> str:
    """The Dockerfile's text: inferopt (serve and ray extras) from the wheel in `wheels/`,
    a non-root user, the repository baked in at /models when `config.bake`, and
    `inferopt serve` as the entrypoint.

    Raises:
        DeployError: no Ray version is known (see `KServeConfig.resolved_ray_version`).
    """
    wheel = config.wheel_name()
    ray = config.resolved_ray_version()
    served = BAKED_REPOSITORY if config.bake else KSERVE_MOUNT
    command = [served, "--host", "0.0.0.0", "--http-port", str(HTTP_PORT)]
    command += ["--grpc-port", str(GRPC_PORT)]
    lines = [
        f"# The image {source.name}'s manifests run, written by `inferopt deploy kserve`",
        f"# (inferopt {__version__}). Build it from this folder and push it:",
        f"#   docker build -t {config.image} .",
        f"#   docker push {config.image}",
        f"# It needs {WHEELS}/{wheel} here first (see the comment above COPY below).",
        f"FROM {BASE_IMAGE}",
        "",
        "ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1",
        "",
        "# wget: KubeRay's readiness probe of a Ray worker asks its Serve proxy with wget.",
        "RUN apt-get update \\",
        " && apt-get install -y --no-install-recommends wget \\",
        " && rm -rf /var/lib/apt/lists/*",
        "",
        "# inferopt from its wheel, by path: on PyPI the name `inferopt` is another project.",
        f"# Make the wheel with `pip wheel --no-deps -w {WHEELS} <inferopt source folder>`,",
        "# or give it to `inferopt deploy kserve --wheel`, which copies it here.",
        f"# Ray is pinned to the RayService's rayVersion ({ray}): the two must match.",
        f"COPY {WHEELS}/{wheel} /tmp/{WHEELS}/",
        f'RUN pip install "/tmp/{WHEELS}/{wheel}[serve,ray]" "ray[serve]=={ray}" \\',
        f" && rm -rf /tmp/{WHEELS}",
        "",
        f"RUN useradd --create-home --uid {USER_ID} --user-group inferopt",
    ]
    if config.bake:
        lines += [
            "# The repository, owned by root: the server only reads it.",
            f"COPY {MODELS}/ {BAKED_REPOSITORY}/",
        ]
    lines += [
        "# Numeric, so Kubernetes' runAsNonRoot can check it.",
        f"USER {USER_ID}:{USER_ID}",
        "WORKDIR /home/inferopt",
        "",
        f"# inferopt serve: HTTP {HTTP_PORT}, gRPC {GRPC_PORT} (KServe's ports).",
        f"# Ray Serve's proxies in the RayService: HTTP {RAY_HTTP_PORT}, gRPC {RAY_GRPC_PORT}.",
        f"EXPOSE {HTTP_PORT} {GRPC_PORT} {RAY_HTTP_PORT} {RAY_GRPC_PORT}",
        "",
        "# KServe's runtime and KubeRay set their own command; this one is for `docker run`"
        + ("." if config.bake else f",\n# with the repository mounted at {KSERVE_MOUNT}."),
        'ENTRYPOINT ["inferopt", "serve"]',
        f"CMD {json.dumps(command)}",
    ]
    return "\n".join(lines) + "\n"
