"""hostvlan: host-based logical isolation (HostVLAN) for flat L2 cloud networks."""

__version__ = "0.1.0"
