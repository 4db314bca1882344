"""The node agent: datastore + CNI endpoint records -> compile -> apply, in a loop, with
/healthz, /metrics and /state over HTTP. Started by `sluice agent` (see sluice.cli.agent)."""
