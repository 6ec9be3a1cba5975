"""The Linux-bridge back end, composed of a send check and a receive filter (see `backend`)."""
