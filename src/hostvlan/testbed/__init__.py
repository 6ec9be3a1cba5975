"""The emulated data center: topology as data, built from real kernel parts in
network namespaces that always carry a per-run prefix and are always torn down."""
