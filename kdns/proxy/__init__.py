"""The service proxy: model → routes → data-path rules (iptables, …), and the code applying them."""
