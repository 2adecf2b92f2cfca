// Package benchmarks measures the system end to end on loopback: real config
// nodes over TCP with fsync on, real HTTP, started by package systest.
// `make bench` runs them through cmd/modbotbench and prints tables;
// docs/benchmarks.md records the figures.
package benchmarks
