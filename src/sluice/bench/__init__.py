"""`sluice bench`: the bpf dataplane against the iptables one, side by side in one run."""
