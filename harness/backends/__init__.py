"""How a Tinker ServiceClient is obtained: the cloud, the local backend, or a recording."""
