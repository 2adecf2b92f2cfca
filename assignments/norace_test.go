//go:build !race

package assignments

const raceEnabled = false
