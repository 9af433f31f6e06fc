"""Users' servers as Kubernetes pods ([spawner] class = "kubernetes"): settings, profiles
and manifests here import nothing of the client; `cluster` does, when the spawner is used."""
