package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"

	"github.com/optiinfra/orchestrator/internal/auth"
)

// fakeClock is the coordination engine's clock, moved by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Add(d time.Duration) { c.mu.Lock(); defer c.mu.Unlock(); c.t = c.t.Add(d) }

// newCoordinationFixture is the service with the given auth, its
// coordination engine on a fake clock.
func newCoordinationFixture(t *testing.T, cfg auth.Config) (*fixture, *fakeClock) {
	t.Helper()
	clock := &fakeClock{t: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}
	f := newFixtureWith(t, defaultConfig, zapcore.InfoLevel, fixtureOptions{
		agents: testAgentsConfig, dispatch: testDispatchConfig, auth: cfg, now: clock.Now,
	})
	return f, clock
}

// recJSON is a recommendation of the batch, by id, on resources, of risk.
func recJSON(id, action, risk string, priority int, resources ...string) string {
	res, _ := json.Marshal(resources)
	return fmt.Sprintf(`{"id":%q,"agent_id":"cost-1","agent_type":"cost","action":%q,"risk_level":%q,`+
		`"priority":%d,"confidence":0.9,"estimated_savings":10,"affected_resources":%s}`, id, action, risk, priority, res)
}

func batchJSON(autoApprove bool, recs ...string) string {
	return fmt.Sprintf(`{"customer_id":"acme","auto_approve":%t,"recommendations":[%s]}`, autoApprove, strings.Join(recs, ","))
}

// decodeInto decodes rec's body into v, after checking the status is 200.
func decodeInto(t *testing.T, what string, rec *httptest.ResponseRecorder, v any) {
	t.Helper()
	if rec.Code != http.StatusOK {
		t.Fatalf("%s = %d %s, want 200", what, rec.Code, strings.TrimSpace(rec.Body.String()))
	}
	if err := json.Unmarshal(rec.Body.Bytes(), v); err != nil {
		t.Fatalf("%s: %v in %s", what, err, rec.Body)
	}
}

// keys are the keys of a JSON object.
func objectKeys(t *testing.T, raw json.RawMessage) []string {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("%s is no object: %v", raw, err)
	}
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func hasKeys(t *testing.T, what string, raw json.RawMessage, want ...string) {
	t.Helper()
	got := objectKeys(t, raw)
	for _, k := range want {
		if !slices.Contains(got, k) {
			t.Errorf("%s has no %q: %v", what, k, got)
		}
	}
}

type coordinated struct {
	ID              string            `json:"id"`
	Conflicts       []json.RawMessage `json:"conflicts"`
	Recommendations []struct {
		ID           string `json:"id"`
		RecordID     string `json:"record_id"`
		Status       string `json:"status"`
		SupersededBy string `json:"superseded_by"`
	} `json:"recommendations"`
	Approvals []struct {
		ID     string `json:"id"`
		Status string `json:"status"`
	} `json:"approvals"`
	ExecutionPlans []json.RawMessage `json:"execution_plans"`
}

// coordinate posts a batch and returns the answer.
func coordinate(t *testing.T, f *fixture, body string, header ...string) coordinated {
	t.Helper()
	var out coordinated
	decodeInto(t, "POST /coordination/coordinate", f.call(http.MethodPost, "/coordination/coordinate", body, header...), &out)
	return out
}

func TestCoordinateAnswer(t *testing.T) {
	f, _ := newCoordinationFixture(t, auth.Config{})
	rec := f.call(http.MethodPost, "/coordination/coordinate", batchJSON(true,
		recJSON("a", "scale_down", "medium", 5, "i-1"),
		recJSON("b", "scale_up", "low", 1, "i-1"),
		recJSON("c", "tune", "low", 1, "i-9"),
	))
	if rec.Code != http.StatusOK {
		t.Fatalf("POST /coordination/coordinate = %d %s", rec.Code, rec.Body)
	}
	raw := json.RawMessage(rec.Body.Bytes())
	hasKeys(t, "the answer", raw, "id", "total_recommendations", "conflicts_detected", "conflicts_resolved",
		"recommendations_kept", "approvals_required", "auto_approved", "conflicts", "recommendations", "approvals",
		"execution_plans", "created_at")
	var out struct {
		coordinated
		Total, Detected, Kept, Required, Auto int
	}
	var counts struct {
		Total    int `json:"total_recommendations"`
		Detected int `json:"conflicts_detected"`
		Kept     int `json:"recommendations_kept"`
		Required int `json:"approvals_required"`
		Auto     int `json:"auto_approved"`
	}
	decodeInto(t, "answer", rec, &out.coordinated)
	decodeInto(t, "answer", rec, &counts)
	if counts != (struct {
		Total    int `json:"total_recommendations"`
		Detected int `json:"conflicts_detected"`
		Kept     int `json:"recommendations_kept"`
		Required int `json:"approvals_required"`
		Auto     int `json:"auto_approved"`
	}{3, 1, 2, 1, 1}) {
		t.Errorf("counts = %+v, want 3 recommendations, 1 conflict, 2 kept, 1 approval (medium), 1 auto-approved (c)", counts)
	}
	hasKeys(t, "a conflict", out.Conflicts[0], "id", "type", "recommendation_ids", "description", "severity", "resolved", "detected_at")
	hasKeys(t, "a plan", out.ExecutionPlans[0], "id", "recommendation_id", "customer_id", "steps", "status", "current_step", "created_at")
	var plan struct {
		Steps []json.RawMessage `json:"steps"`
	}
	_ = json.Unmarshal(out.ExecutionPlans[0], &plan)
	hasKeys(t, "a step", plan.Steps[0], "id", "action", "agent_type", "critical", "reversible", "status")
	for _, r := range out.Recommendations {
		if r.ID == "b" && (r.Status != "superseded" || r.SupersededBy != "a") {
			t.Errorf("b = %+v, want superseded by a", r)
		}
		if r.RecordID == "" {
			t.Errorf("%s has no record_id", r.ID)
		}
	}
}

func TestCoordinateErrors(t *testing.T) {
	f, _ := newCoordinationFixture(t, auth.Config{})
	big := make([]string, 101)
	for i := range big {
		big[i] = recJSON(fmt.Sprint("r", i), "tune", "low", 1, fmt.Sprint("i-", i))
	}
	for _, tc := range []struct {
		name, body string
		code       int
		field      string
	}{
		{"empty body", "", http.StatusBadRequest, "body"},
		{"not JSON", "{", http.StatusBadRequest, ""},
		{"missing id", batchJSON(false, recJSON("", "tune", "low", 1, "x")), http.StatusBadRequest, "recommendations[0].id"},
		{"duplicate id", batchJSON(false, recJSON("a", "tune", "low", 1, "x"), recJSON("a", "tune", "low", 1, "y")), http.StatusBadRequest, "recommendations[1].id"},
		{"unknown risk", batchJSON(false, recJSON("a", "tune", "extreme", 1, "x")), http.StatusBadRequest, "recommendations[0].risk_level"},
		{"confidence", batchJSON(false, strings.Replace(recJSON("a", "tune", "low", 1, "x"), `"confidence":0.9`, `"confidence":1.5`, 1)), http.StatusBadRequest, "recommendations[0].confidence"},
		{"other customer", batchJSON(false, strings.Replace(recJSON("a", "tune", "low", 1, "x"), `{"id"`, `{"customer_id":"globex","id"`, 1)), http.StatusBadRequest, "recommendations[0].customer_id"},
		{"unknown dependency", batchJSON(false, strings.Replace(recJSON("a", "tune", "low", 1, "x"), `{"id"`, `{"dependencies":["zz"],"id"`, 1)), http.StatusBadRequest, "recommendations[0].dependencies"},
		{"batch too large", batchJSON(false, big...), http.StatusRequestEntityTooLarge, "recommendations"},
		{"execute_now with a bad batch", strings.Replace(batchJSON(false, recJSON("a", "tune", "extreme", 1, "x")), `"auto_approve"`, `"execute_now":true,"auto_approve"`, 1), http.StatusBadRequest, "recommendations[0].risk_level"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msg := expectError(t, tc.name, f.call(http.MethodPost, "/coordination/coordinate", tc.body), tc.code)
			if !strings.Contains(msg, tc.field) {
				t.Errorf("message %q does not name %s", msg, tc.field)
			}
		})
	}
	// Nothing of the refused batches was stored.
	var list struct{ Count int }
	decodeInto(t, "GET /coordination/recommendations", f.get("/coordination/recommendations"), &list)
	if list.Count != 0 {
		t.Errorf("%d recommendations stored by refused batches", list.Count)
	}
}

type decision struct {
	Message  string          `json:"message"`
	Approval json.RawMessage `json:"approval"`
	Plan     json.RawMessage `json:"plan"`
}

// approvalJSON is the approval of a decision, the fields the tests read.
type approvalJSON struct {
	ID              string `json:"id"`
	Status          string `json:"status"`
	ApprovedBy      string `json:"approved_by"`
	RejectedBy      string `json:"rejected_by"`
	RejectionReason string `json:"rejection_reason"`
}

func (d decision) approval(t *testing.T) (a approvalJSON) {
	t.Helper()
	if err := json.Unmarshal(d.Approval, &a); err != nil {
		t.Fatal(err)
	}
	return a
}

// TestApprovalsWithAuthOff: the body's user_id decides; without it, 400
// naming user_id; self-approval 403; twice 409; unknown 404.
func TestApprovalsWithAuthOff(t *testing.T) {
	f, _ := newCoordinationFixture(t, auth.Config{})
	out := coordinate(t, f, batchJSON(false,
		recJSON("a", "tune", "medium", 1, "i-1"), recJSON("b", "tune", "high", 1, "i-2"), recJSON("c", "tune", "critical", 1, "i-3")))
	if len(out.Approvals) != 3 {
		t.Fatalf("%d approvals, want 3", len(out.Approvals))
	}
	var list struct {
		Approvals []json.RawMessage `json:"approvals"`
		Count     int               `json:"count"`
	}
	decodeInto(t, "GET /coordination/approvals", f.get("/coordination/approvals?customer_id=acme"), &list)
	if list.Count != 3 || len(list.Approvals) != 3 {
		t.Fatalf("pending approvals: %d (%d), want 3", list.Count, len(list.Approvals))
	}
	hasKeys(t, "an approval", list.Approvals[0], "id", "recommendation_id", "customer_id", "risk_level", "status",
		"requested_by", "requested_at", "expires_at", "required_approvals")
	decodeInto(t, "other customer", f.get("/coordination/approvals?customer_id=globex"), &list)
	if list.Count != 0 {
		t.Errorf("globex has %d approvals", list.Count)
	}
	a, b, c := out.Approvals[0].ID, out.Approvals[1].ID, out.Approvals[2].ID
	path := func(id, verb string) string { return "/coordination/approvals/" + id + "/" + verb }

	msg := expectError(t, "approve without user_id", f.call(http.MethodPost, path(a, "approve"), `{}`), http.StatusBadRequest)
	if !strings.Contains(msg, "user_id") {
		t.Errorf("message %q does not name user_id", msg)
	}
	expectError(t, "approve with no body", f.call(http.MethodPost, path(a, "approve"), ""), http.StatusBadRequest)
	expectError(t, "self-approval", f.call(http.MethodPost, path(a, "approve"), `{"user_id":"cost-1"}`), http.StatusForbidden)

	var d decision
	decodeInto(t, "approve a", f.call(http.MethodPost, path(a, "approve"), `{"user_id":"alice"}`), &d)
	if got := d.approval(t); d.Message != "Recommendation approved" || got.Status != "approved" || got.ApprovedBy != "alice" || len(d.Plan) == 0 {
		t.Errorf("approve a = %s %+v plan %s", d.Message, got, d.Plan)
	}
	hasKeys(t, "the plan", d.Plan, "id", "recommendation_id", "steps", "status")
	expectError(t, "approve a twice", f.call(http.MethodPost, path(a, "approve"), `{"user_id":"bob"}`), http.StatusConflict)
	expectError(t, "reject a after approval", f.call(http.MethodPost, path(a, "reject"), `{"user_id":"bob"}`), http.StatusConflict)

	d = decision{}
	decodeInto(t, "reject b", f.call(http.MethodPost, path(b, "reject"), `{"user_id":"bob","reason":"too risky"}`), &d)
	if got := d.approval(t); d.Message != "Recommendation rejected" || got.Status != "rejected" || got.RejectedBy != "bob" ||
		got.RejectionReason != "too risky" || d.Plan != nil {
		t.Errorf("reject b = %s %+v plan %s", d.Message, got, d.Plan)
	}

	// Critical: two different approvers.
	d = decision{}
	decodeInto(t, "first approval of c", f.call(http.MethodPost, path(c, "approve"), `{"user_id":"alice"}`), &d)
	if got := d.approval(t); got.Status != "pending" || d.Plan != nil || strings.Contains(d.Message, "Recommendation approved") {
		t.Errorf("first approval of c = %s %+v plan %s, want still pending", d.Message, got, d.Plan)
	}
	expectError(t, "same approver again", f.call(http.MethodPost, path(c, "approve"), `{"user_id":"alice"}`), http.StatusConflict)
	d = decision{}
	decodeInto(t, "second approval of c", f.call(http.MethodPost, path(c, "approve"), `{"user_id":"bob"}`), &d)
	if got := d.approval(t); got.Status != "approved" || d.Message != "Recommendation approved" || len(d.Plan) == 0 {
		t.Errorf("second approval of c = %s %+v", d.Message, got)
	}

	for _, p := range []string{path("nope", "approve"), path("nope", "reject")} {
		msg := expectError(t, p, f.call(http.MethodPost, p, `{"user_id":"alice"}`), http.StatusNotFound)
		if !strings.Contains(msg, "approval") {
			t.Errorf("%s: %q does not say what was not found", p, msg)
		}
	}
	var one struct{ ID, Status string }
	decodeInto(t, "GET approval", f.get("/coordination/approvals/"+b), &one)
	if one.ID != b || one.Status != "rejected" {
		t.Errorf("GET approval b = %+v", one)
	}
	expectError(t, "GET unknown approval", f.get("/coordination/approvals/nope"), http.StatusNotFound)
	decodeInto(t, "approved list", f.get("/coordination/approvals?status=approved"), &list)
	if list.Count != 2 {
		t.Errorf("%d approved, want 2", list.Count)
	}
	expectError(t, "bad status", f.get("/coordination/approvals?status=maybe"), http.StatusBadRequest)
}

// TestApprovalExpired: past its expiry the sweep marks an approval
// expired, and deciding it is 410.
func TestApprovalExpired(t *testing.T) {
	f, clock := newCoordinationFixture(t, auth.Config{})
	out := coordinate(t, f, batchJSON(false, recJSON("a", "tune", "critical", 1, "i-1")))
	clock.Add(5 * time.Hour) // critical waits 4h
	if err := f.coordination.Sweep(context.Background()); err != nil {
		t.Fatal(err)
	}
	expectError(t, "approve expired", f.call(http.MethodPost, "/coordination/approvals/"+out.Approvals[0].ID+"/approve",
		`{"user_id":"alice"}`), http.StatusGone)
	var r struct{ Status string }
	decodeInto(t, "GET recommendation", f.get("/coordination/recommendations/"+out.Recommendations[0].RecordID), &r)
	if r.Status != "expired" {
		t.Errorf("recommendation is %s, want expired", r.Status)
	}
}

// TestApprovalsWithOperatorAuth: the operator's name decides, whatever
// user_id says; without a token, 401.
func TestApprovalsWithOperatorAuth(t *testing.T) {
	f, _ := newCoordinationFixture(t, auth.Config{OperatorTokens: "alice=" + operatorToken + ",bob=" + otherToken})
	alice, bob := bearer(operatorToken), bearer(otherToken)
	want401(t, "coordinate without a token", f.call(http.MethodPost, "/coordination/coordinate", batchJSON(false, recJSON("a", "tune", "low", 1, "x"))))
	want401(t, "list without a token", f.get("/coordination/approvals"))
	out := coordinate(t, f, batchJSON(false, recJSON("a", "tune", "low", 1, "x"), recJSON("b", "tune", "low", 1, "y")), alice...)
	want401(t, "approve without a token", f.call(http.MethodPost, "/coordination/approvals/"+out.Approvals[0].ID+"/approve", `{"user_id":"mallory"}`))
	// alice submitted the batch: she requested the approvals.
	expectError(t, "alice approves her own request", f.call(http.MethodPost,
		"/coordination/approvals/"+out.Approvals[0].ID+"/approve", `{"user_id":"carol"}`, alice...), http.StatusForbidden)
	var d decision
	decodeInto(t, "bob approves, claiming to be mallory", f.call(http.MethodPost,
		"/coordination/approvals/"+out.Approvals[0].ID+"/approve", `{"user_id":"mallory"}`, bob...), &d)
	if got := d.approval(t); got.ApprovedBy != "bob" {
		t.Errorf("approved_by = %q, want the operator's name bob", got.ApprovedBy)
	}
	d = decision{}
	decodeInto(t, "bob rejects via the portal, no body", f.call(http.MethodPost,
		"/api/v1/recommendations/"+out.Recommendations[1].RecordID+"/reject", "", bob...), &d)
	if got := d.approval(t); got.RejectedBy != "bob" || got.Status != "rejected" {
		t.Errorf("portal reject = %+v, want rejected by bob", got)
	}
	var events struct {
		Events []struct{ Kind, Actor, RequestID string } `json:"events"`
	}
	rec := f.call(http.MethodGet, "/coordination/events?customer_id=acme", "", append(alice, "X-Request-Id", "req-xyz")...)
	decodeInto(t, "events", rec, &events)
	var approved bool
	for _, e := range events.Events {
		approved = approved || e.Kind == "approval.approved" && e.Actor == "bob"
	}
	if !approved {
		t.Errorf("no approval.approved by bob in %+v", events.Events)
	}
}

// TestPortalRoutes: /api/v1/recommendations lists, and approve/reject
// decide by the recommendation's record_id with no body.
func TestPortalRoutes(t *testing.T) {
	f, _ := newCoordinationFixture(t, auth.Config{})
	out := coordinate(t, f, batchJSON(false, recJSON("a", "tune", "low", 1, "x"), recJSON("b", "tune", "low", 1, "y"),
		recJSON("c", "scale_up", "low", 0, "x")))
	var list struct {
		Recommendations []json.RawMessage `json:"recommendations"`
		Count           int               `json:"count"`
	}
	decodeInto(t, "GET /api/v1/recommendations", f.get("/api/v1/recommendations?customer_id=acme&status=pending"), &list)
	if list.Count != 2 {
		t.Fatalf("%d pending, want a and b", list.Count)
	}
	hasKeys(t, "a recommendation", list.Recommendations[0], "id", "record_id", "agent_type", "action", "risk_level",
		"estimated_savings", "priority", "confidence", "created_at", "status")
	ids := map[string]string{}
	for _, r := range out.Recommendations {
		ids[r.ID] = r.RecordID
	}
	p := func(id, verb string) string { return "/api/v1/recommendations/" + id + "/" + verb }
	msg := expectError(t, "portal approve, auth off, nobody named", f.call(http.MethodPost, p(ids["a"], "approve"), ""), http.StatusBadRequest)
	if !strings.Contains(msg, "user_id") {
		t.Errorf("%q does not name user_id", msg)
	}
	var d decision
	decodeInto(t, "portal approve", f.call(http.MethodPost, p(ids["a"], "approve")+"?user_id=alice", ""), &d)
	if got := d.approval(t); d.Message != "Recommendation approved" || got.ApprovedBy != "alice" || len(d.Plan) == 0 {
		t.Errorf("portal approve = %s %+v", d.Message, got)
	}
	d = decision{}
	decodeInto(t, "portal reject", f.call(http.MethodPost, p(ids["b"], "reject")+"?user_id=bob&reason=later", ""), &d)
	if got := d.approval(t); d.Message != "Recommendation rejected" || got.RejectedBy != "bob" || got.RejectionReason != "later" {
		t.Errorf("portal reject = %s %+v", d.Message, got)
	}
	expectError(t, "portal approve twice", f.call(http.MethodPost, p(ids["a"], "approve")+"?user_id=bob", ""), http.StatusConflict)
	expectError(t, "portal approve superseded", f.call(http.MethodPost, p(ids["c"], "approve")+"?user_id=bob", ""), http.StatusConflict)
	expectError(t, "portal approve unknown", f.call(http.MethodPost, p("nope", "approve")+"?user_id=bob", ""), http.StatusNotFound)
}

// TestPlansAndRecommendations: lists page with limit and next_cursor,
// get by id, execute (202, then 409), cancel, bad parameters are 400.
func TestPlansAndRecommendations(t *testing.T) {
	f, _ := newCoordinationFixture(t, auth.Config{})
	out := coordinate(t, f, batchJSON(true, recJSON("a", "migrate_to_spot", "low", 1, "x"), recJSON("b", "tune", "low", 1, "y"),
		recJSON("c", "tune", "low", 1, "z")))
	if len(out.ExecutionPlans) != 3 {
		t.Fatalf("%d plans, want 3 auto-approved", len(out.ExecutionPlans))
	}
	type planList struct {
		Plans []struct {
			ID, Status string
			Steps      []struct{ Action string }
		} `json:"plans"`
		Count      int    `json:"count"`
		NextCursor string `json:"next_cursor"`
	}
	var first, second planList
	decodeInto(t, "plans page 1", f.get("/coordination/plans?customer_id=acme&limit=2"), &first)
	if first.Count != 2 || first.NextCursor == "" {
		t.Fatalf("page 1 = %+v, want 2 and a next_cursor", first)
	}
	decodeInto(t, "plans page 2", f.get("/coordination/plans?customer_id=acme&limit=2&cursor="+first.NextCursor), &second)
	if second.Count != 1 || second.NextCursor != "" || second.Plans[0].ID == first.Plans[0].ID || second.Plans[0].ID == first.Plans[1].ID {
		t.Fatalf("page 2 = %+v after %+v", second, first)
	}
	if steps := first.Plans[0].Steps; len(steps) != 3 || steps[0].Action != "take_snapshot" {
		t.Errorf("migrate_to_spot steps = %+v", steps)
	}
	id := first.Plans[0].ID
	var plan struct{ ID, Status string }
	decodeInto(t, "GET plan", f.get("/coordination/plans/"+id), &plan)
	if plan.ID != id || plan.Status != "pending" {
		t.Errorf("GET plan = %+v", plan)
	}
	rec := f.call(http.MethodPost, "/coordination/plans/"+id+"/execute", "")
	if rec.Code != http.StatusAccepted {
		t.Fatalf("execute = %d %s, want 202", rec.Code, rec.Body)
	}
	var started struct {
		Message string `json:"message"`
		PlanID  string `json:"plan_id"`
		Plan    struct{ Status string }
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &started); err != nil {
		t.Fatal(err)
	}
	if started.Message != "Execution started" || started.PlanID != id || started.Plan.Status != "running" {
		t.Errorf("execute answered %s", rec.Body)
	}
	msg := expectError(t, "execute twice", f.call(http.MethodPost, "/coordination/plans/"+id+"/execute", ""), http.StatusConflict)
	if !strings.Contains(msg, "running") {
		t.Errorf("second execute says %q", msg)
	}
	expectError(t, "execute unknown", f.call(http.MethodPost, "/coordination/plans/nope/execute", ""), http.StatusNotFound)
	// No agent serves take_snapshot: the running plan waits for one, and
	// an operator cancels it.
	decodeInto(t, "cancel", f.call(http.MethodPost, "/coordination/plans/"+id+"/cancel", ""), &plan)
	if plan.Status != "cancelled" {
		t.Errorf("cancelled plan is %s", plan.Status)
	}
	expectError(t, "cancel twice", f.call(http.MethodPost, "/coordination/plans/"+id+"/cancel", ""), http.StatusConflict)
	expectError(t, "cancel unknown", f.call(http.MethodPost, "/coordination/plans/nope/cancel", ""), http.StatusNotFound)
	decodeInto(t, "cancelled plans", f.get("/coordination/plans?status=cancelled"), &first)
	if first.Count != 1 {
		t.Errorf("%d cancelled plans, want 1", first.Count)
	}

	var r struct{ ID, Status string }
	decodeInto(t, "GET recommendation", f.get("/coordination/recommendations/"+out.Recommendations[1].RecordID), &r)
	if r.ID != "b" || r.Status != "auto_approved" {
		t.Errorf("GET recommendation = %+v", r)
	}
	expectError(t, "GET unknown recommendation", f.get("/coordination/recommendations/nope"), http.StatusNotFound)
	expectError(t, "GET unknown plan", f.get("/coordination/plans/nope"), http.StatusNotFound)
	for _, bad := range []string{
		"/coordination/plans?limit=0", "/coordination/plans?limit=1001", "/coordination/plans?limit=x",
		"/coordination/plans?status=done", "/coordination/recommendations?status=done", "/coordination/plans?cursor=zzz",
		"/coordination/recommendations?cursor=zzz", "/coordination/events?since=yesterday", "/coordination/events?cursor=x",
	} {
		msg := expectError(t, bad, f.get(bad), http.StatusBadRequest)
		param := bad[strings.Index(bad, "?")+1 : strings.Index(bad, "=")]
		if !strings.HasPrefix(msg, param+":") {
			t.Errorf("%s: %q does not name %s", bad, msg, param)
		}
	}
	var events struct {
		Events []json.RawMessage `json:"events"`
		Count  int               `json:"count"`
	}
	decodeInto(t, "events", f.get("/coordination/events?customer_id=acme&since=2026-12-01T00:00:00Z"), &events)
	if events.Count == 0 {
		t.Fatal("no events")
	}
	hasKeys(t, "an event", events.Events[0], "seq", "at", "customer_id", "kind", "subject_id")
	decodeInto(t, "events later", f.get("/coordination/events?since=2027-01-01T00:00:00Z"), &events)
	if events.Count != 0 {
		t.Errorf("%d events after 2027", events.Count)
	}
}

// TestCoordinateFull: past COORDINATION_MAX_RECORDS a batch is 503 with
// Retry-After, and nothing of it is stored.
func TestCoordinateFull(t *testing.T) {
	cfg := loadTestEnv().Coordination
	cfg.MaxRecords = 1000
	f := newFixtureWith(t, defaultConfig, zapcore.InfoLevel, fixtureOptions{
		agents: testAgentsConfig, dispatch: testDispatchConfig, coordination: &cfg,
	})
	batch := func(n int) string {
		recs := make([]string, 100)
		for i := range recs {
			recs[i] = recJSON(fmt.Sprint("r", i), "tune", "low", 1, fmt.Sprint("b", n, "-i", i))
		}
		return batchJSON(true, recs...) // 100 recommendations and 100 plans: 200 records
	}
	for n := range 5 {
		coordinate(t, f, batch(n))
	}
	rec := f.call(http.MethodPost, "/coordination/coordinate", batch(5))
	expectError(t, "the sixth batch", rec, http.StatusServiceUnavailable)
	if rec.Header().Get("Retry-After") == "" {
		t.Error("503 without Retry-After")
	}
	var list struct{ Count int }
	decodeInto(t, "plans", f.get("/coordination/plans?limit=1000"), &list)
	if list.Count != 500 {
		t.Errorf("%d plans stored, want the first five batches' 500", list.Count)
	}
}
