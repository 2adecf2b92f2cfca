//go:build race

package assignments

// raceEnabled: the race detector slows the heap measurements tenfold, so
// they run on fewer guilds.
const raceEnabled = true
