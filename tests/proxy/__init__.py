"""The service proxy: routes, renderers, and (with root) the rules in network namespaces."""
