//go:build race

package guildtable

// raceEnabled: the race detector slows the long random sequences tenfold,
// so they are shortened.
const raceEnabled = true
