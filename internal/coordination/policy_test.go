package coordination_test

import (
	"errors"
	"testing"
	"time"

	"github.com/optiinfra/orchestrator/internal/coordination"
	"github.com/optiinfra/orchestrator/pkg/orchestrator"
)

func TestNeedsApproval(t *testing.T) {
	low, medium := defaultConfig(t), defaultConfig(t)
	medium.AutoApproveMaxRisk = orchestrator.RiskMedium
	for _, tc := range []struct {
		risk        orchestrator.RiskLevel
		autoApprove bool
		cfg         coordination.Config
		want        bool
	}{
		{orchestrator.RiskLow, false, low, true}, // auto_approve false: nothing passes unseen
		{orchestrator.RiskLow, true, low, false},
		{orchestrator.RiskMedium, true, low, true},
		{orchestrator.RiskMedium, true, medium, false},
		{orchestrator.RiskHigh, true, medium, true},
		{orchestrator.RiskCritical, true, medium, true},
		{orchestrator.RiskMedium, false, medium, true},
		{"", true, medium, true},
	} {
		if got := coordination.NeedsApproval(tc.risk, tc.autoApprove, tc.cfg); got != tc.want {
			t.Errorf("NeedsApproval(%q, %v, max %s) = %v, want %v", tc.risk, tc.autoApprove, tc.cfg.AutoApproveMaxRisk, got, tc.want)
		}
	}
}

func TestNewApproval(t *testing.T) {
	cfg := defaultConfig(t)
	for risk, want := range map[orchestrator.RiskLevel]struct {
		ttl      time.Duration
		required int
	}{
		orchestrator.RiskLow: {168 * time.Hour, 1}, orchestrator.RiskMedium: {48 * time.Hour, 1},
		orchestrator.RiskHigh: {24 * time.Hour, 1}, orchestrator.RiskCritical: {4 * time.Hour, 2},
	} {
		r := rec("r", func(r *orchestrator.Recommendation) { r.RiskLevel, r.CustomerID = risk, "cust" })
		a := coordination.NewApproval(r, "agent-1", counter("ap"), now, cfg)
		if a.ID != "ap-1" || a.RecommendationID != "r" || a.CustomerID != "cust" || a.Status != orchestrator.ApprovalPending ||
			a.RequestedBy != "agent-1" || !a.RequestedAt.Equal(now) || !a.ExpiresAt.Equal(now.Add(want.ttl)) || a.RequiredApprovals != want.required {
			t.Errorf("%s: approval %+v; want expiry after %v, %d approvers", risk, a, want.ttl, want.required)
		}
	}
}

func TestDecide(t *testing.T) {
	cfg := defaultConfig(t)
	pending := func(risk orchestrator.RiskLevel) orchestrator.Approval {
		r := rec("r", func(r *orchestrator.Recommendation) { r.RiskLevel = risk })
		return coordination.NewApproval(r, "requester", counter("ap"), now.Add(-time.Hour), cfg)
	}
	later := now.Add(time.Minute)
	type step struct {
		by      string
		approve bool
		at      time.Time
		err     error // the error of this decision, nil if it succeeds
		status  orchestrator.ApprovalStatus
	}
	for _, tc := range []struct {
		name  string
		start orchestrator.Approval
		steps []step
	}{
		{"approve", pending(orchestrator.RiskHigh), []step{{"alice", true, now, nil, orchestrator.ApprovalApproved}}},
		{"reject", pending(orchestrator.RiskHigh), []step{{"alice", false, now, nil, orchestrator.ApprovalRejected}}},
		{"decide twice", pending(orchestrator.RiskLow), []step{
			{"alice", true, now, nil, orchestrator.ApprovalApproved},
			{"bob", false, later, coordination.ErrAlreadyDecided, orchestrator.ApprovalApproved},
		}},
		{"approve after rejection", pending(orchestrator.RiskLow), []step{
			{"alice", false, now, nil, orchestrator.ApprovalRejected},
			{"bob", true, later, coordination.ErrAlreadyDecided, orchestrator.ApprovalRejected},
		}},
		{"self approval", pending(orchestrator.RiskLow), []step{{"requester", true, now, coordination.ErrSelfApproval, orchestrator.ApprovalPending}}},
		{"self rejection", pending(orchestrator.RiskLow), []step{{" requester ", false, now, coordination.ErrSelfApproval, orchestrator.ApprovalPending}}},
		{"nobody", pending(orchestrator.RiskLow), []step{{"  ", true, now, coordination.ErrInvalid, orchestrator.ApprovalPending}}},
		{"at the deadline", pending(orchestrator.RiskCritical), []step{{"alice", true, now.Add(3 * time.Hour), coordination.ErrExpired, orchestrator.ApprovalPending}}},
		{"just before the deadline", pending(orchestrator.RiskCritical), []step{
			{"alice", false, now.Add(3*time.Hour - 1), nil, orchestrator.ApprovalRejected},
		}},
		{"swept", func() orchestrator.Approval {
			a := pending(orchestrator.RiskLow)
			a.Status = orchestrator.ApprovalExpired
			return a
		}(), []step{{"alice", true, now, coordination.ErrExpired, orchestrator.ApprovalExpired}}},
		{"critical needs two", pending(orchestrator.RiskCritical), []step{
			{"alice", true, now, nil, orchestrator.ApprovalPending},
			{"bob", true, later, nil, orchestrator.ApprovalApproved},
		}},
		// A stored approval that lost its count (zero) is still critical.
		{"critical without a count", func() orchestrator.Approval {
			a := pending(orchestrator.RiskCritical)
			a.RequiredApprovals = 0
			return a
		}(), []step{
			{"alice", true, now, nil, orchestrator.ApprovalPending},
			{"bob", true, later, nil, orchestrator.ApprovalApproved},
		}},
		{"critical: the same person twice", pending(orchestrator.RiskCritical), []step{
			{"alice", true, now, nil, orchestrator.ApprovalPending},
			{"alice", true, later, coordination.ErrAlreadyApproved, orchestrator.ApprovalPending},
		}},
		{"critical: a rejection after one approval ends it", pending(orchestrator.RiskCritical), []step{
			{"alice", true, now, nil, orchestrator.ApprovalPending},
			{"bob", false, later, nil, orchestrator.ApprovalRejected},
		}},
		{"critical: the first approver may reject", pending(orchestrator.RiskCritical), []step{
			{"alice", true, now, nil, orchestrator.ApprovalPending},
			{"alice", false, later, nil, orchestrator.ApprovalRejected},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := tc.start
			for i, s := range tc.steps {
				before := a
				got, err := coordination.Decide(a, coordination.Decision{By: s.by, Approve: s.approve, Reason: "why " + s.by}, s.at)
				if !errors.Is(err, s.err) || (s.err == nil) != (err == nil) {
					t.Fatalf("step %d: Decide = %v, want %v", i, err, s.err)
				}
				if got.Status != s.status {
					t.Fatalf("step %d: status %s, want %s", i, got.Status, s.status)
				}
				if err != nil {
					if len(got.Approvals) != len(before.Approvals) || got.Status != before.Status {
						t.Errorf("step %d: a refused decision changed the approval: %+v", i, got)
					}
					continue
				}
				switch got.Status {
				case orchestrator.ApprovalApproved:
					if got.ApprovedBy != s.by || got.ApprovedAt == nil || !got.ApprovedAt.Equal(s.at) {
						t.Errorf("step %d: approved by %q at %v, want %s at %v", i, got.ApprovedBy, got.ApprovedAt, s.by, s.at)
					}
				case orchestrator.ApprovalRejected:
					if got.RejectedBy != s.by || got.RejectedAt == nil || got.RejectionReason != "why "+s.by {
						t.Errorf("step %d: rejected %+v", i, got)
					}
				case orchestrator.ApprovalPending:
					if got.ApprovedBy != "" || got.ApprovedAt != nil {
						t.Errorf("step %d: pending but approved by %q", i, got.ApprovedBy)
					}
				}
				if s.approve && (len(got.Approvals) != len(before.Approvals)+1 || got.Approvals[len(got.Approvals)-1].UserID != s.by) {
					t.Errorf("step %d: approvals %v, want %s added", i, got.Approvals, s.by)
				}
				a = got
			}
		})
	}
}

// TestDecideLeavesItsInputAlone: two callers deciding from one read must
// not see each other's votes through a shared slice.
func TestDecideLeavesItsInputAlone(t *testing.T) {
	a := coordination.NewApproval(rec("r", func(r *orchestrator.Recommendation) { r.RiskLevel = orchestrator.RiskCritical }), "req", counter("ap"), now, defaultConfig(t))
	a.Approvals = make([]orchestrator.ApprovalVote, 0, 4) // room to append in place
	first, err := coordination.Decide(a, coordination.Decision{By: "alice", Approve: true}, now)
	if err != nil {
		t.Fatal(err)
	}
	second, err := coordination.Decide(a, coordination.Decision{By: "bob", Approve: true}, now)
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Approvals) != 0 || first.Approvals[0].UserID != "alice" || second.Approvals[0].UserID != "bob" {
		t.Errorf("input %v, first %v, second %v", a.Approvals, first.Approvals, second.Approvals)
	}
}

func TestExpire(t *testing.T) {
	a := coordination.NewApproval(rec("r"), "req", counter("ap"), now, defaultConfig(t))
	if _, ok := coordination.Expire(a, a.ExpiresAt.Add(-1)); ok {
		t.Error("expired before its deadline")
	}
	got, ok := coordination.Expire(a, a.ExpiresAt)
	if !ok || got.Status != orchestrator.ApprovalExpired {
		t.Errorf("at the deadline: %v, %s; want expired", ok, got.Status)
	}
	if _, ok := coordination.Expire(got, a.ExpiresAt.Add(time.Hour)); ok {
		t.Error("an expired approval expired again")
	}
	approved, err := coordination.Decide(a, coordination.Decision{By: "alice", Approve: true}, now)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := coordination.Expire(approved, a.ExpiresAt.Add(time.Hour)); ok {
		t.Error("an approved approval expired")
	}
}
