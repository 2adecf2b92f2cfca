// Package systest starts the whole of modbot inside one process, on
// loopback only, for the end-to-end tests (e2e/) and the benchmarks
// (benchmarks/, cmd/modbotbench):
//
//   - real config nodes (confignode) over Raft on TCP, with fsync on;
//   - the fake Discord (fakediscord), speaking the real gateway and REST
//     protocols;
//   - gateway pods (gatewaynode), each with its own SQLite file;
//   - optionally the proxy, routing by its own watcher of the map.
//
// StartCluster starts config nodes alone; StartSystem starts a cluster, the
// fake Discord and gateway pods. Every listener binds 127.0.0.1.
//
// Ports are picked free and then bound by the component, so another process
// can take one in between, and a restarted node may find its previous
// incarnation's port not yet released. A start is therefore retried, a
// bounded number of times, when — and only when — it failed with
// address-in-use (syscall.EADDRINUSE anywhere in the error's chain); a first
// start retries on fresh ports, a restart on the same ones. Any other start
// error is returned at once.
package systest
