package orchestrator_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/optiinfra/orchestrator/pkg/orchestrator"
)

// An agent's POST /task: the parameters are decoded, a result completes
// the task, and a rejected error fails it without retries. Here the
// orchestrator's deliveries are played with httptest.
func ExampleTaskFunc() {
	analyze := orchestrator.TaskFunc(func(ctx context.Context, d orchestrator.Delivery) (any, error) {
		var p struct {
			Hours []float64 `json:"hours"`
			Rate  float64   `json:"rate"`
		}
		if err := json.Unmarshal(d.Parameters, &p); err != nil || p.Rate <= 0 {
			return nil, orchestrator.Reject(errors.New("want hours and a positive rate"))
		}
		var total float64
		for _, h := range p.Hours {
			total += h
		}
		return map[string]float64{"cost_usd": total * p.Rate}, nil
	})
	mux := http.NewServeMux()
	mux.Handle("POST /task", analyze)

	for _, params := range []string{`{"hours":[10,2.5],"rate":0.4}`, `{"hours":[1]}`} {
		body := `{"task_id":"t-1","task_type":"analyze_costs","parameters":` + params + `,"timeout_seconds":30,"priority":0}`
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/task", strings.NewReader(body)))
		var reply orchestrator.DeliveryReply
		if err := json.Unmarshal(rec.Body.Bytes(), &reply); err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%d %s result=%s error=%q\n", rec.Code, reply.Status, reply.Result, reply.Error)
	}
	// Output:
	// 200 completed result={"cost_usd":5} error=""
	// 400 failed result= error="want hours and a positive rate"
}

// An agent keeps itself registered while it serves its tasks.
func ExampleHeartbeater() {
	ctx := context.Background() // in a real agent: signal.NotifyContext(..., syscall.SIGTERM)
	client, err := orchestrator.NewClient("http://orchestrator:8080", orchestrator.WithToken("agent-token-from-a-secret"))
	if err != nil {
		log.Fatal(err)
	}
	hb := &orchestrator.Heartbeater{
		Client: client,
		Registration: orchestrator.Registration{
			Name: "cost-agent-1", Type: orchestrator.AgentTypeCost, Host: "10.0.1.15", Port: 8000,
			Capabilities: []string{"analyze_costs"}, Version: "1.0.0",
		},
		Logf: log.Printf,
	}
	// Run returns once ctx ends and the agent has unregistered.
	if err := hb.Run(ctx); err != nil {
		log.Print(err)
	}
}

// An operator submits a task and waits for its outcome.
func ExampleClient_SubmitTask() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	client, err := orchestrator.NewClient("http://orchestrator:8080", orchestrator.WithToken("operator-token-from-a-secret"))
	if err != nil {
		log.Fatal(err)
	}
	accepted, err := client.SubmitTask(ctx, orchestrator.TaskRequest{
		TaskType:   "analyze_costs",
		AgentType:  orchestrator.AgentTypeCost,
		Parameters: json.RawMessage(`{"account":"prod"}`),
		MaxRetries: new(1),
	})
	var apiErr *orchestrator.APIError
	if errors.As(err, &apiErr) && apiErr.StatusCode == http.StatusServiceUnavailable {
		log.Fatalf("no agent can run it now: %s", apiErr.Message)
	} else if err != nil {
		log.Fatal(err)
	}
	task, err := client.WaitTask(ctx, accepted.TaskID, time.Second)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(task.Status, string(task.Result), task.Error)
}
