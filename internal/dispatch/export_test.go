package dispatch

// What the external tests inspect of the dispatcher's scheduling state.

// InFlightAgents is how many agents the dispatcher holds a slot count for.
func (d *Dispatcher) InFlightAgents() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.inFlight)
}

// RoundRobinRoutes is how many routes the dispatcher keeps a round-robin
// position for.
func (d *Dispatcher) RoundRobinRoutes() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.turns)
}
