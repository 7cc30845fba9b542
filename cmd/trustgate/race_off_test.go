//go:build !race

package main

// raceEnabled reports that the race detector slows this test binary (and
// the trustgate binary it builds) several times over, so timing bounds
// that hold on a normal build get more room.
const raceEnabled = false
