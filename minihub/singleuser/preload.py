"""What every user server would import, build or read for itself, done once in the hub's fork
server (spawner/forkserver.py) before it forks them: its pages are then shared by all servers.

Only what does not depend on the user: nothing here may read a home, the environment or a
server's config.
"""

from __future__ import annotations

import contextlib

from . import lean


def warm() -> None:
    """The server's modules, then what it builds at its first notebook and its first kernel
    (those two optional: a server does what failed here itself)."""
    lean.install()
    from ..spawner import logpump  # noqa: F401 - the server's __main__ takes it over
    from . import app  # noqa: F401 - the imports every server shares

    _notebooks()
    _kernel_start()


def _notebooks() -> None:
    """What a server imports when it first opens a notebook: nbformat, jsonschema (less its
    format checkers: lean.py) and the validator built for the schema, 12.7 MiB resident,
    measured."""
    with contextlib.suppress(Exception):
        from . import contents

        nbf = contents.nbf()
        nbf.validate(nbf.v4.new_notebook())


def _kernel_start() -> None:
    """What a server's first kernel start reads: ipykernel's kernelspec resources (jupyter_client
    imports them for python3, also with a user environment) and the entry points of every
    installed distribution, which jupyter_client's provisioner factory, a process-wide
    singleton, scans once and keeps (~150 distributions' metadata parsed: 0.9 MiB of each
    server's private pages, measured)."""
    with contextlib.suppress(Exception):
        import ipykernel.kernelspec  # noqa: F401
    with contextlib.suppress(Exception):
        from jupyter_client.provisioning.factory import KernelProvisionerFactory

        KernelProvisionerFactory.instance()
