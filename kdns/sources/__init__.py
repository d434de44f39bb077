"""Sources feed the store: manifest files or the Kubernetes API."""
