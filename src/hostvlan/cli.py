"""`hostvlan …`: the command line. (Management commands talk to the manager API only.)"""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hostvlan")
def main() -> None:
    """HostVLAN: isolate tenants on one flat L2 network at the hypervisor's virtual switch."""


if __name__ == "__main__":  # pragma: no cover
    main()
