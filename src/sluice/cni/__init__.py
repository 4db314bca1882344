"""`sluice-cni`: the CNI plugin that wires pods into a Sluice node.

`spec` parses what the runtime hands over (environment, network config) and formats results
and errors; `ipam` keeps persistent address allocations; `podnet` builds the veth pair and
the pod's addresses, routes and neighbours; `registry` writes the endpoint records the node
agent reads; `plugin` is the entry point that ties them together per CNI command.
"""
