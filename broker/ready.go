package broker

// LeaderMessage is logged when this replica takes over the background work
// that one replica at a time does (the store's lease).
const LeaderMessage = "this replica now runs the background work"
