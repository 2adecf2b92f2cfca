//go:build race

package fsm

// raceEnabled: the race detector slows the long random sequences tenfold,
// so they are shortened.
const raceEnabled = true
