package api

// The coordination routes: /coordination/* for operators, and the three
// /api/v1/recommendations routes the OptiInfra portal calls, over the same
// engine. Who decides is the operator's name when operator auth is on,
// else the user_id the caller gives (deciderOf).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gorilla/mux"

	"github.com/optiinfra/orchestrator/internal/auth"
	"github.com/optiinfra/orchestrator/internal/coordination"
	"github.com/optiinfra/orchestrator/pkg/orchestrator"
)

// Coordination is what the HTTP layer needs of the coordination engine
// (coordination.Engine).
type Coordination interface {
	Coordinate(ctx context.Context, actor coordination.Actor, req orchestrator.CoordinateRequest) (orchestrator.CoordinateResponse, error)
	Recommendations(ctx context.Context, q coordination.RecommendationQuery) ([]orchestrator.Recommendation, string, error)
	Recommendation(ctx context.Context, id string) (orchestrator.Recommendation, error)
	Approvals(ctx context.Context, q coordination.ApprovalQuery) ([]orchestrator.Approval, string, error)
	Approval(ctx context.Context, id string) (orchestrator.Approval, error)
	Approve(ctx context.Context, id string, actor coordination.Actor) (orchestrator.Approval, *orchestrator.Plan, error)
	Reject(ctx context.Context, id string, actor coordination.Actor, reason string) (orchestrator.Approval, error)
	ApproveRecommendation(ctx context.Context, recordID string, actor coordination.Actor) (orchestrator.Approval, *orchestrator.Plan, error)
	RejectRecommendation(ctx context.Context, recordID string, actor coordination.Actor, reason string) (orchestrator.Approval, error)
	Plans(ctx context.Context, q coordination.PlanQuery) ([]orchestrator.Plan, string, error)
	Plan(ctx context.Context, id string) (orchestrator.Plan, error)
	CancelPlan(ctx context.Context, id string, actor coordination.Actor) (orchestrator.Plan, error)
	ExecutePlan(ctx context.Context, id string, actor coordination.Actor) (orchestrator.Plan, error)
	Events(ctx context.Context, q coordination.EventQuery) ([]orchestrator.Event, uint64, error)
}

// mountCoordination registers the coordination routes, all of them the
// operator role's (the portal's included: deciding is an operator's act).
// The routes without variables come first: mux tries routes in order.
func mountCoordination(rt *router, c Coordination, a *auth.Authenticator) {
	op := func(h http.Handler) http.Handler { return requireRole(a, h, auth.Operator) }
	rt.handle("/coordination/coordinate", loud, op(coordinateHandler(c)), http.MethodPost)
	rt.handle("/coordination/recommendations", loud, op(listRecommendationsHandler(c)), readMethods...)
	rt.handle("/coordination/approvals", loud, op(listApprovalsHandler(c)), readMethods...)
	rt.handle("/coordination/plans", loud, op(listPlansHandler(c)), readMethods...)
	rt.handle("/coordination/events", loud, op(listEventsHandler(c)), readMethods...)
	rt.handle("/coordination/recommendations/{id}", loud, op(getRecommendationHandler(c)), readMethods...)
	rt.handle("/coordination/approvals/{id}", loud, op(getApprovalHandler(c)), readMethods...)
	rt.handle("/coordination/approvals/{id}/approve", loud, op(approveHandler(c)), http.MethodPost)
	rt.handle("/coordination/approvals/{id}/reject", loud, op(rejectHandler(c)), http.MethodPost)
	rt.handle("/coordination/plans/{id}", loud, op(getPlanHandler(c)), readMethods...)
	rt.handle("/coordination/plans/{id}/cancel", loud, op(cancelPlanHandler(c)), http.MethodPost)
	rt.handle("/coordination/plans/{id}/execute", loud, op(executePlanHandler(c)), http.MethodPost)

	rt.handle("/api/v1/recommendations", loud, op(listRecommendationsHandler(c)), readMethods...)
	rt.handle("/api/v1/recommendations/{id}/approve", loud, op(portalApproveHandler(c)), http.MethodPost)
	rt.handle("/api/v1/recommendations/{id}/reject", loud, op(portalRejectHandler(c)), http.MethodPost)
}

// The messages of the decisions.
const (
	msgApproved = "Recommendation approved"
	msgRejected = "Recommendation rejected"
	// A critical change approved by its first approver waits for a
	// second: saying "approved" then would tell the caller a change may
	// proceed that may not.
	msgFirstVote = "Approval recorded; a second, different approver is required"
)

// decisionRequest is the body of approve and reject. Both fields are
// optional in the body: user_id is used only with operator auth off.
type decisionRequest struct {
	UserID string `json:"user_id"`
	Reason string `json:"reason"`
}

// decisionResponse is the answer of approve and reject.
type decisionResponse struct {
	Message  string                `json:"message"`
	Approval orchestrator.Approval `json:"approval"`
	// Plan is the plan the approval created, when it completed.
	Plan *orchestrator.Plan `json:"plan,omitempty"`
}

// requestIDOf is the request's X-Request-Id, as the middleware set it on
// the answer.
func requestIDOf(w http.ResponseWriter) string {
	if v := w.Header()[RequestIDHeader]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// operatorOf is who an authenticated operator is: the token's name, or
// the token's fingerprint for a token without a name (never the token).
// ok is false without operator auth: the caller names itself.
func operatorOf(r *http.Request) (name string, ok bool) {
	p, _ := auth.PrincipalFrom(r.Context())
	if !p.HasToken() {
		return "", false
	}
	if n := p.Name(); n != "" {
		return n, true
	}
	return p.Fingerprint(), true
}

// deciderOf is who decides: with operator auth on, the operator, whatever
// userID says (a caller cannot decide in another's name); with it off,
// userID, which the engine requires.
func deciderOf(w http.ResponseWriter, r *http.Request, userID string) coordination.Actor {
	name, ok := operatorOf(r)
	if !ok {
		name = strings.TrimSpace(userID)
	}
	return coordination.Actor{Name: name, RequestID: requestIDOf(w)}
}

// decodeOptionalBody is decodeBody where a body may be left out.
func decodeOptionalBody(r *http.Request, v any) error {
	if err := decodeBody(r, v); err != nil && !errors.Is(err, errEmptyBody) {
		return err
	}
	return nil
}

// coordinateHandler serves POST /coordination/coordinate. The submitter
// is the operator when operator auth is on; otherwise the approvals are
// requested by each recommendation's agent.
func coordinateHandler(c Coordination) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req orchestrator.CoordinateRequest
		if err := decodeBody(r, &req); err != nil {
			writeDomainError(w, r, err)
			return
		}
		name, _ := operatorOf(r)
		resp, err := c.Coordinate(r.Context(), coordination.Actor{Name: name, RequestID: requestIDOf(w)}, req)
		if err != nil {
			writeDomainError(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, resp)
	}
}

// decided is the answer of a decision.
func decided(a orchestrator.Approval, plan *orchestrator.Plan) decisionResponse {
	switch a.Status {
	case orchestrator.ApprovalRejected:
		return decisionResponse{Message: msgRejected, Approval: a}
	case orchestrator.ApprovalPending:
		return decisionResponse{Message: msgFirstVote, Approval: a}
	}
	return decisionResponse{Message: msgApproved, Approval: a, Plan: plan}
}

// decision reads who decides a request on /coordination/approvals, and
// why: the operator, or with operator auth off the body's user_id (the
// engine answers 400 without one), and the body's reason.
func decision(w http.ResponseWriter, r *http.Request) (coordination.Actor, string, bool) {
	var req decisionRequest
	if err := decodeOptionalBody(r, &req); err != nil {
		writeDomainError(w, r, err)
		return coordination.Actor{}, "", false
	}
	return deciderOf(w, r, req.UserID), req.Reason, true
}

// portalDecision reads who decides a portal request, and why: the portal
// sends no body, so with operator auth off the user is named by
// ?user_id= (or a body's user_id); the reason by ?reason= or the body.
// Without a name, the answer is a 400 saying how to give one.
func portalDecision(w http.ResponseWriter, r *http.Request) (coordination.Actor, string, bool) {
	var req decisionRequest
	if err := decodeOptionalBody(r, &req); err != nil {
		writeDomainError(w, r, err)
		return coordination.Actor{}, "", false
	}
	q := r.URL.Query()
	if req.UserID == "" {
		req.UserID = q.Get("user_id")
	}
	if req.Reason == "" {
		req.Reason = q.Get("reason")
	}
	actor := deciderOf(w, r, req.UserID)
	if actor.Name == "" {
		writeError(w, http.StatusBadRequest, "user_id: is required: with operator auth off, "+
			"name who decides with ?user_id= or a JSON body {\"user_id\": ...}")
		return coordination.Actor{}, "", false
	}
	return actor, req.Reason, true
}

// decideFunc decides record id as actor, for reason (a rejection's), and
// returns the approval and, when the decision completed an approval, the
// new plan.
type decideFunc func(ctx context.Context, id string, actor coordination.Actor, reason string) (orchestrator.Approval, *orchestrator.Plan, error)

// decisionHandler serves a decision: read (decision, or portalDecision)
// says who decides and why, decide decides the {id} of the path, a
// record of kind what (a 404 names it), and the answer is decided's.
func decisionHandler(read func(http.ResponseWriter, *http.Request) (coordination.Actor, string, bool), what string, decide decideFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		actor, reason, ok := read(w, r)
		if !ok {
			return
		}
		id := mux.Vars(r)["id"]
		a, plan, err := decide(r.Context(), id, actor, reason)
		if err != nil {
			writeDomainError(w, r, notFoundAs(err, what, id))
			return
		}
		writeJSON(w, http.StatusOK, decided(a, plan))
	}
}

// approveHandler serves POST /coordination/approvals/{id}/approve.
func approveHandler(c Coordination) http.HandlerFunc {
	return decisionHandler(decision, "approval", func(ctx context.Context, id string, actor coordination.Actor, _ string) (orchestrator.Approval, *orchestrator.Plan, error) {
		return c.Approve(ctx, id, actor)
	})
}

// rejectHandler serves POST /coordination/approvals/{id}/reject.
func rejectHandler(c Coordination) http.HandlerFunc {
	return decisionHandler(decision, "approval", func(ctx context.Context, id string, actor coordination.Actor, reason string) (orchestrator.Approval, *orchestrator.Plan, error) {
		a, err := c.Reject(ctx, id, actor, reason)
		return a, nil, err
	})
}

// portalApproveHandler serves POST /api/v1/recommendations/{id}/approve:
// {id} is the recommendation's record_id.
func portalApproveHandler(c Coordination) http.HandlerFunc {
	return decisionHandler(portalDecision, "recommendation", func(ctx context.Context, id string, actor coordination.Actor, _ string) (orchestrator.Approval, *orchestrator.Plan, error) {
		return c.ApproveRecommendation(ctx, id, actor)
	})
}

// portalRejectHandler serves POST /api/v1/recommendations/{id}/reject.
func portalRejectHandler(c Coordination) http.HandlerFunc {
	return decisionHandler(portalDecision, "recommendation", func(ctx context.Context, id string, actor coordination.Actor, reason string) (orchestrator.Approval, *orchestrator.Plan, error) {
		a, err := c.RejectRecommendation(ctx, id, actor, reason)
		return a, nil, err
	})
}

// getRecommendationHandler serves GET /coordination/recommendations/{id},
// by record_id.
func getRecommendationHandler(c Coordination) http.HandlerFunc {
	return getAs(c.Recommendation, "recommendation")
}

// getApprovalHandler serves GET /coordination/approvals/{id}.
func getApprovalHandler(c Coordination) http.HandlerFunc {
	return getAs(c.Approval, "approval")
}

// getPlanHandler serves GET /coordination/plans/{id}.
func getPlanHandler(c Coordination) http.HandlerFunc {
	return getAs(c.Plan, "plan")
}

func getAs[T any](get func(context.Context, string) (T, error), what string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id := mux.Vars(r)["id"]
		v, err := get(r.Context(), id)
		if err != nil {
			writeDomainError(w, r, notFoundAs(err, what, id))
			return
		}
		writeJSON(w, http.StatusOK, v)
	}
}

// cancelPlanHandler serves POST /coordination/plans/{id}/cancel: 200 with
// the cancelled plan, 409 for a plan neither pending nor running.
func cancelPlanHandler(c Coordination) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id := mux.Vars(r)["id"]
		actor, ok := planActor(w, r)
		if !ok {
			return
		}
		p, err := c.CancelPlan(r.Context(), id, actor)
		if err != nil {
			writeDomainError(w, r, notFoundAs(err, "plan", id))
			return
		}
		writeJSON(w, http.StatusOK, p)
	}
}

// planActor is who executes or cancels a plan, recorded like a decision:
// the operator, or without operator auth the user_id of an optional body
// or of the query, else "anonymous". It answers 400 for a bad body and
// returns false.
func planActor(w http.ResponseWriter, r *http.Request) (coordination.Actor, bool) {
	name, ok := operatorOf(r)
	if !ok {
		var req decisionRequest
		if err := decodeOptionalBody(r, &req); err != nil {
			writeDomainError(w, r, err)
			return coordination.Actor{}, false
		}
		name = cmpOr(strings.TrimSpace(req.UserID), r.URL.Query().Get("user_id"), "anonymous")
	}
	return coordination.Actor{Name: name, RequestID: requestIDOf(w)}, true
}

func cmpOr(values ...string) string {
	for _, v := range values {
		if v != "" {
			return v
		}
	}
	return ""
}

// executeResponse is the 202 answer of POST /coordination/plans/{id}/execute,
// in the old engine's shape, with the plan as started (an addition).
type executeResponse struct {
	Message string            `json:"message"`
	PlanID  string            `json:"plan_id"`
	Plan    orchestrator.Plan `json:"plan"`
}

// executePlanHandler serves POST /coordination/plans/{id}/execute: 202
// once the plan is running (its steps run in the background: poll GET
// /coordination/plans/{id}), 404 for an unknown plan, 409 for one that
// is not pending (executed already, cancelled).
func executePlanHandler(c Coordination) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id := mux.Vars(r)["id"]
		actor, ok := planActor(w, r)
		if !ok {
			return
		}
		p, err := c.ExecutePlan(r.Context(), id, actor)
		if err != nil {
			writeDomainError(w, r, notFoundAs(err, "plan", id))
			return
		}
		writeJSON(w, http.StatusAccepted, executeResponse{Message: "Execution started", PlanID: p.ID, Plan: p})
	}
}

// Statuses a list may filter by.
var (
	recommendationStatuses = []orchestrator.RecommendationStatus{
		orchestrator.RecommendationPending, orchestrator.RecommendationAutoApproved, orchestrator.RecommendationApproved,
		orchestrator.RecommendationRejected, orchestrator.RecommendationSuperseded, orchestrator.RecommendationExpired,
		orchestrator.RecommendationExecuting, orchestrator.RecommendationCompleted, orchestrator.RecommendationFailed,
		orchestrator.RecommendationRolledBack, orchestrator.RecommendationCancelled,
	}
	approvalStatuses = []orchestrator.ApprovalStatus{
		orchestrator.ApprovalPending, orchestrator.ApprovalApproved, orchestrator.ApprovalRejected, orchestrator.ApprovalExpired,
	}
	planStatuses = []orchestrator.PlanStatus{
		orchestrator.PlanPending, orchestrator.PlanRunning, orchestrator.PlanCompleted, orchestrator.PlanFailed,
		orchestrator.PlanRollingBack, orchestrator.PlanRolledBack, orchestrator.PlanRollbackFailed, orchestrator.PlanCancelled,
	}
)

// page is a list query's common parameters: ?customer_id=, ?status= (one
// of statuses), ?limit= (1 to coordination.MaxPage, default
// coordination.DefaultPage) and ?cursor= (a next_cursor this service
// returned), as GET /tasks takes them.
type page[S ~string] struct {
	customer string
	status   S
	limit    int
	cursor   string
}

// parsePage reads a page's parameters, or answers 400 naming the bad one.
func parsePage[S ~string](w http.ResponseWriter, r *http.Request, statuses []S) (page[S], bool) {
	q := r.URL.Query()
	p := page[S]{customer: q.Get("customer_id"), cursor: q.Get("cursor")}
	if s := q.Get("status"); s != "" {
		if !slices.Contains(statuses, S(s)) {
			names := make([]string, len(statuses))
			for i, st := range statuses {
				names[i] = string(st)
			}
			writeError(w, http.StatusBadRequest, fmt.Sprintf("status: %.64q is none of %s", s, strings.Join(names, ", ")))
			return p, false
		}
		p.status = S(s)
	}
	p.limit = coordination.DefaultPage
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > coordination.MaxPage {
			writeError(w, http.StatusBadRequest, "limit: must be an integer from 1 to "+strconv.Itoa(coordination.MaxPage))
			return p, false
		}
		p.limit = n
	}
	return p, true
}

// cursorError is a cursor the store refused, said as GET /tasks says it.
func cursorError(err error) error {
	var field *coordination.FieldError
	if errors.As(err, &field) && field.Field == "after" {
		return &bodyError{http.StatusBadRequest, "cursor: not a cursor this service returned (use next_cursor)"}
	}
	return err
}

// listRecommendationsHandler serves GET /coordination/recommendations and
// GET /api/v1/recommendations, oldest first.
func listRecommendationsHandler(c Coordination) http.HandlerFunc {
	return listHandler("recommendations", recommendationStatuses,
		func(ctx context.Context, p page[orchestrator.RecommendationStatus]) ([]orchestrator.Recommendation, string, error) {
			return c.Recommendations(ctx, coordination.RecommendationQuery{
				CustomerID: p.customer, Status: p.status, After: p.cursor, Limit: p.limit})
		})
}

// listApprovalsHandler serves GET /coordination/approvals: the pending
// ones unless ?status= says otherwise.
func listApprovalsHandler(c Coordination) http.HandlerFunc {
	return listHandler("approvals", approvalStatuses,
		func(ctx context.Context, p page[orchestrator.ApprovalStatus]) ([]orchestrator.Approval, string, error) {
			return c.Approvals(ctx, coordination.ApprovalQuery{
				CustomerID: p.customer, Status: p.status, After: p.cursor, Limit: p.limit})
		})
}

// listPlansHandler serves GET /coordination/plans.
func listPlansHandler(c Coordination) http.HandlerFunc {
	return listHandler("plans", planStatuses,
		func(ctx context.Context, p page[orchestrator.PlanStatus]) ([]orchestrator.Plan, string, error) {
			return c.Plans(ctx, coordination.PlanQuery{
				CustomerID: p.customer, Status: p.status, After: p.cursor, Limit: p.limit})
		})
}

// listHandler serves a page of records read by list, filtered by the
// page's parameters (a status among statuses), as {key: [...], "count",
// "next_cursor"}.
func listHandler[T any, S ~string](key string, statuses []S, list func(context.Context, page[S]) ([]T, string, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		p, ok := parsePage(w, r, statuses)
		if !ok {
			return
		}
		items, next, err := list(r.Context(), p)
		if err != nil {
			writeDomainError(w, r, cursorError(err))
			return
		}
		writeJSON(w, http.StatusOK, listBody[T]{key: key, items: items, next: next})
	}
}

// listBody is a page of a list as the coordination routes answer it: the
// records under key (never null), their count, and the cursor of the next
// page when there is one.
type listBody[T any] struct {
	key   string
	items []T
	next  string
}

// MarshalJSON writes {key: items, "count": n, "next_cursor": next}.
func (b listBody[T]) MarshalJSON() ([]byte, error) {
	key, err := json.Marshal(b.key)
	if err != nil {
		return nil, err
	}
	items, err := json.Marshal(nonNil(b.items))
	if err != nil {
		return nil, err
	}
	out := append([]byte{'{'}, key...)
	out = append(out, ':')
	out = append(out, items...)
	out = append(out, `,"count":`...)
	out = strconv.AppendInt(out, int64(len(b.items)), 10)
	if b.next != "" {
		next, err := json.Marshal(b.next)
		if err != nil {
			return nil, err
		}
		out = append(out, `,"next_cursor":`...)
		out = append(out, next...)
	}
	return append(out, '}'), nil
}

// listEventsHandler serves GET /coordination/events?customer_id=&since=
// &limit=&cursor=: the audit log in order; since is an RFC 3339 time.
func listEventsHandler(c Coordination) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		p, ok := parsePage[string](w, r, nil)
		if !ok {
			return
		}
		q := coordination.EventQuery{CustomerID: p.customer, Limit: p.limit}
		if s := r.URL.Query().Get("since"); s != "" {
			since, err := time.Parse(time.RFC3339Nano, s)
			if err != nil {
				writeError(w, http.StatusBadRequest, fmt.Sprintf("since: %.64q is not an RFC 3339 time such as 2026-12-01T00:00:00Z", s))
				return
			}
			q.Since = since
		}
		if p.cursor != "" {
			after, err := strconv.ParseUint(p.cursor, 10, 64)
			if err != nil {
				writeError(w, http.StatusBadRequest, "cursor: not a cursor this service returned (use next_cursor)")
				return
			}
			q.After = after
		}
		list, next, err := c.Events(r.Context(), q)
		if err != nil {
			writeDomainError(w, r, err)
			return
		}
		out := listBody[orchestrator.Event]{key: "events", items: list}
		if next != 0 {
			out.next = strconv.FormatUint(next, 10)
		}
		writeJSON(w, http.StatusOK, out)
	}
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
