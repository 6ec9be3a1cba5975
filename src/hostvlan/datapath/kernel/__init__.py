"""Kernel and switch libraries the back ends program through, one per interface: libnftables
(`nft`), libbpf (`bpf`), netlink bridge ports (`brports`), Open vSwitch's tools (`ovs_proc`) and
OVSDB (`ovsdb`). They know no facts and no verdicts. May import `hostvlan.datapath.base` and
`hostvlan.model` only."""
