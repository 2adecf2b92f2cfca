//go:build !race

package guildtable

const raceEnabled = false
