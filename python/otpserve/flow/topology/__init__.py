"""The machinery of a pipeline: one stage a file, wired by ``topology.Topology`` (Broadway's topology/)."""
