"""Development tooling: a real local control plane and a kubelet stand-in.

Not part of the agent. The integration tests, the benchmarks and the one-command local run
(`scripts/run-local.sh`) share it: a real etcd and kube-apiserver on loopback ports
(``controlplane``), and a process that plays this machine's kubelet (``kubelet``): it
registers a Node, binds Pods to it, creates their containers' cgroups in the layout the
real kubelet and container runtime would, starts processes in them and reports container
IDs in the pod status, so the agent meets exactly what it meets in a cluster.
"""
