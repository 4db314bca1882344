"""The only layer that mutates: diff desired state (from `compile`) against what the kernel
holds and write the difference. BPF maps, tcx links pinned in bpffs, netlink objects.

Every function here acts in the calling thread's network namespace; the agent moves its
whole process into the node's namespace before it calls any of them.
"""
