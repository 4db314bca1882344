"""What the datapath holds and does, read back for operators (maps, counters, events)."""
