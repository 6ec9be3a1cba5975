"""The data-path back ends the shared tests (`test_backend_*.py`) run on, by name."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

from . import hostnet, macvtapnet, ovsnet
from .switchhost import SwitchHost

Factory = Callable[[str], AbstractContextManager[Callable[..., SwitchHost]]]

# name → (the factory of its hosts, given a namespace prefix; the class of its hosts)
BACKENDS: dict[str, tuple[Factory, type[SwitchHost]]] = {
    "bridge": (hostnet.bridge_hosts, hostnet.Host),
    "bridge-closed": (hostnet.closed_hosts, hostnet.ClosedHost),
    "bridge-locked": (hostnet.locked_hosts, hostnet.LockedHost),
    "bridge-nft": (hostnet.nft_send_hosts, hostnet.NftSendHost),
    "ovs": (ovsnet.ovs_hosts, ovsnet.OvsHost),
    "macvtap": (macvtapnet.macvtap_hosts, macvtapnet.Host),
}
UNICAST = [name for name, (_, cls) in BACKENDS.items() if cls.MODELS_UNICAST]  # not the learning bridge
STALE = [(name, case) for name, (_, cls) in BACKENDS.items() for case in cls.STALE]
