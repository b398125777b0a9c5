// Package orchestrator is the wire protocol of the OptiInfra Orchestrator
// and a Go SDK for it: the JSON types that cross the wire, a Client of its
// HTTP API, and the agent side of task delivery.
//
// The types are the orchestrator's contract with existing agents, written
// in several languages: their field names, types and omitempty choices are
// exactly what the server sends and accepts, and never change. The
// OpenAPI document (GET /openapi.yaml) describes the same API; a test
// holds these types to its examples, and another runs the Client against
// the real server.
//
// # Agents
//
// An agent serves POST /task, where the orchestrator delivers tasks (a
// Delivery), and keeps itself registered with a Heartbeater:
//
//	client, err := orchestrator.NewClient("http://orchestrator:8080", orchestrator.WithToken(agentToken))
//	if err != nil { ... }
//	http.Handle("POST /task", orchestrator.TaskFunc(func(ctx context.Context, d orchestrator.Delivery) (any, error) {
//		var p struct{ Account string `json:"account"` }
//		if err := json.Unmarshal(d.Parameters, &p); err != nil {
//			return nil, orchestrator.Reject(err) // 400: failed at once, not retried
//		}
//		return analyze(ctx, p.Account) // an error is retried; a result completes the task
//	}))
//	hb := &orchestrator.Heartbeater{Client: client, Registration: orchestrator.Registration{
//		Name: "cost-1", Type: orchestrator.AgentTypeCost, Host: podIP, Port: 8000,
//		Capabilities: []string{"analyze_costs"},
//	}}
//	go hb.Run(ctx) // registers, heartbeats, unregisters when ctx ends
//
// # Operators
//
// An operator submits tasks and reads their outcome:
//
//	accepted, err := client.SubmitTask(ctx, orchestrator.TaskRequest{
//		TaskType: "analyze_costs", AgentType: orchestrator.AgentTypeCost,
//		Parameters: json.RawMessage(`{"account":"prod"}`),
//	})
//	if err != nil { ... } // an *APIError: 503 when no healthy agent can run it
//	task, err := client.WaitTask(ctx, accepted.TaskID, time.Second)
//
// # Errors
//
// An answer with an unexpected status code is an *APIError carrying the
// code and the server's {"error": "..."} message; use errors.As, or
// IsNotFound for a 404. No error, and no Client's String, shows the
// bearer token.
package orchestrator
