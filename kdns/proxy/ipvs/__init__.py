"""kube-proxy's IPVS mode, pure: no I/O, no clock; nothing here runs a command or reads a file.

- `rules`: routes → the desired IPVS state, the ipset contents and the iptables companion rules.
- `state`: the IPVS table as values (virtual services, real servers, kube-ipvs0's addresses).
- `ipvsadm`: ipvsadm's command-line grammar, the argv of its commands and its `-Sn` text.
- `diff`: the commands that take one state to another, batched for `ipvsadm -R` / `ip -batch`.
- `ipset`: kube-proxy's sets, `ipset restore` input and `ipset save` parsing.
- `kernel`: whether the kernel has IPVS, and the dummy device kube-ipvs0.
"""
