"""The lab: a Sluice cluster on one machine, in network namespaces.

Every node is a namespace with its own `sluice agent` process, bpffs pin directory and
cgroup; pods are namespaces wired by the real `sluice-cni`, each running a small server
(`podserver`) on its declared ports; an external namespace sits outside the cluster; an
underlay namespace with a bridge joins them. `sluice lab ...` drives it (see
`sluice.cli.lab`); the modules:

    names       every host-visible name, derived from the lab name
    plan        addresses, CIDRs and options: pure
    state       the state directory and state.json
    topology    underlay, node and external namespaces
    agents      starting the agents and waiting for /healthz
    cni         running sluice-cni as a runtime does
    podserver   the pod server program; servers: starting it
    pods        a pod's sandbox, server and datastore record
    objects     Nodes, pod status, Service clusterIPs and LoadBalancer IPs for the datastore
    manifests   lab apply / delete
    lifecycle   lab up; cleanup: lab down
    targets     NS/POD, node/NODE, svc/NS/NAME, nodeport/..., lb/... on the command line
    probe       lab probe (a forked child in the source's cgroup and namespace);
                shell: lab exec; views: lab get
"""
