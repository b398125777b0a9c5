package api

import (
	"context"
	"net/http"
	"strconv"
	"time"

	"github.com/gorilla/mux"

	"github.com/optiinfra/orchestrator/internal/dispatch"
	"github.com/optiinfra/orchestrator/pkg/orchestrator"
)

// Tasks is what the HTTP layer needs of the dispatcher.
type Tasks interface {
	Submit(ctx context.Context, req dispatch.Request) (dispatch.Task, error)
	Get(ctx context.Context, id string) (dispatch.Task, error)
	List(ctx context.Context, q dispatch.Query) ([]dispatch.Task, error)
	Cancel(ctx context.Context, id string) (dispatch.Task, error)
}

// Paging of GET /tasks.
const (
	defaultTaskPage = 100
	maxTaskPage     = 1000
)

// toTaskJSON is a Task as the wire protocol shows it.
func toTaskJSON(t dispatch.Task) orchestrator.Task {
	optional := func(at time.Time) *time.Time {
		if at.IsZero() {
			return nil
		}
		return &at
	}
	return orchestrator.Task{
		TaskID: t.ID, TaskType: t.TaskType, AgentType: orchestrator.AgentType(t.AgentType),
		Status: orchestrator.TaskStatus(t.Status), AgentID: t.AgentID, Parameters: t.Parameters,
		Priority: t.Priority, TimeoutSeconds: t.TimeoutSeconds, MaxRetries: t.MaxRetries,
		Metadata: t.Metadata, Result: t.Result, Error: t.Error, CreatedAt: t.CreatedAt,
		StartedAt: optional(t.StartedAt), CompletedAt: optional(t.CompletedAt), RetryCount: t.RetryCount,
	}
}

// submitTaskHandler serves POST /tasks.
func submitTaskHandler(tasks Tasks) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req orchestrator.TaskRequest
		if err := decodeBody(r, &req); err != nil {
			writeDomainError(w, r, err)
			return
		}
		t, err := tasks.Submit(r.Context(), dispatch.Request{
			TaskType: req.TaskType, AgentType: string(req.AgentType), AgentID: req.AgentID,
			Parameters: req.Parameters, Priority: req.Priority,
			TimeoutSeconds: req.TimeoutSeconds, MaxRetries: req.MaxRetries, Metadata: req.Metadata,
		})
		if err != nil {
			writeDomainError(w, r, err)
			return
		}
		w.Header().Set("Location", "/tasks/"+t.ID)
		writeJSON(w, http.StatusCreated, orchestrator.TaskAccepted{
			TaskID: t.ID, Status: orchestrator.TaskStatus(t.Status), AgentID: t.AgentID,
			CreatedAt: t.CreatedAt, StatusURL: "/tasks/" + t.ID,
		})
	}
}

// getTaskHandler serves GET /tasks/{id}.
func getTaskHandler(tasks Tasks) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id := mux.Vars(r)["id"]
		t, err := tasks.Get(r.Context(), id)
		if err != nil {
			writeDomainError(w, r, notFoundAs(err, "task", id))
			return
		}
		writeJSON(w, http.StatusOK, toTaskJSON(t))
	}
}

// cancelTaskHandler serves DELETE /tasks/{id}: 200 with the cancelled
// task, 409 when it had already finished.
func cancelTaskHandler(tasks Tasks) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id := mux.Vars(r)["id"]
		t, err := tasks.Cancel(r.Context(), id)
		if err != nil {
			writeDomainError(w, r, finishedAs(notFoundAs(err, "task", id), t))
			return
		}
		writeJSON(w, http.StatusOK, toTaskJSON(t))
	}
}

// listTasksHandler serves GET /tasks?status=&limit=&cursor=, oldest first.
// next_cursor, when present, fetches the following page.
func listTasksHandler(tasks Tasks) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		q := dispatch.Query{Limit: defaultTaskPage}
		params := r.URL.Query()
		if s := params.Get("status"); s != "" {
			st, err := dispatch.ParseStatus(s)
			if err != nil {
				writeError(w, http.StatusBadRequest, "status: "+err.Error())
				return
			}
			q.Status = st
		}
		if s := params.Get("limit"); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < 1 || n > maxTaskPage {
				writeError(w, http.StatusBadRequest, "limit: must be an integer from 1 to "+strconv.Itoa(maxTaskPage))
				return
			}
			q.Limit = n
		}
		if s := params.Get("cursor"); s != "" {
			after, err := strconv.ParseUint(s, 10, 64)
			if err != nil {
				writeError(w, http.StatusBadRequest, "cursor: not a cursor this service returned (use next_cursor)")
				return
			}
			q.After = after
		}
		list, err := tasks.List(r.Context(), q)
		if err != nil {
			writeDomainError(w, r, err)
			return
		}
		out := orchestrator.TaskList{Tasks: make([]orchestrator.Task, len(list)), Count: len(list)}
		for i, t := range list {
			out.Tasks[i] = toTaskJSON(t)
		}
		if len(list) == q.Limit {
			out.NextCursor = strconv.FormatUint(list[len(list)-1].Seq, 10)
		}
		writeJSON(w, http.StatusOK, out)
	}
}
