package coordination

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/optiinfra/orchestrator/pkg/orchestrator"
)

// NeedsApproval reports whether a kept recommendation of risk must wait
// for a person. Without autoApprove every one does (the request asked for
// none to pass unseen); with it, those above cfg.AutoApproveMaxRisk do.
// An unknown risk always does.
func NeedsApproval(risk orchestrator.RiskLevel, autoApprove bool, cfg Config) bool {
	if !autoApprove || risk.Rank() < 0 {
		return true
	}
	return risk.Rank() > cfg.AutoApproveMaxRisk.Rank()
}

// ExpiresAt is when an approval of risk requested at now expires.
func ExpiresAt(risk orchestrator.RiskLevel, now time.Time, cfg Config) time.Time {
	return now.Add(cfg.ApprovalTTL(risk))
}

// RequiredApprovals is how many different people must approve a change of
// risk: two for critical, one otherwise.
func RequiredApprovals(risk orchestrator.RiskLevel) int {
	if risk == orchestrator.RiskCritical {
		return 2
	}
	return 1
}

// NewApproval returns the pending approval rec waits for, requested by
// requestedBy at now.
func NewApproval(rec orchestrator.Recommendation, requestedBy string, newID func() string, now time.Time, cfg Config) orchestrator.Approval {
	return orchestrator.Approval{
		ID:                newID(),
		RecommendationID:  rec.ID,
		CustomerID:        rec.CustomerID,
		RiskLevel:         rec.RiskLevel,
		Status:            orchestrator.ApprovalPending,
		RequestedBy:       requestedBy,
		RequestedAt:       now,
		ExpiresAt:         ExpiresAt(rec.RiskLevel, now, cfg),
		RequiredApprovals: RequiredApprovals(rec.RiskLevel),
	}
}

// Decision is a person's answer to an approval.
type Decision struct {
	// By is who decides: the authenticated operator's name, or the body's
	// user_id when authentication is off.
	By      string
	Approve bool
	// Reason says why a rejection was made.
	Reason string
}

// Decide applies d to a at now and returns the approval as it becomes.
// A rejection ends the approval at once. An approval adds d.By's vote;
// the approval is approved (approved_by and approved_at are the last
// voter's) once RequiredApprovals different people voted, and stays
// pending before. Errors: a FieldError when d.By is empty, ErrAlreadyDecided
// when a is no longer pending, ErrExpired when it is past its expiry (even
// if the sweep has not marked it yet: the sweep is what expires approvals,
// but no decision is taken after the deadline), ErrSelfApproval when the
// requester decides, ErrAlreadyApproved when the same person approves
// twice. On error a is returned unchanged.
func Decide(a orchestrator.Approval, d Decision, now time.Time) (orchestrator.Approval, error) {
	by := strings.TrimSpace(d.By)
	switch {
	case by == "":
		return a, &FieldError{Field: "user_id", Msg: "is required: who decides"}
	case a.Status == orchestrator.ApprovalExpired:
		return a, fmt.Errorf("%w: approval %s expired at %s", ErrExpired, a.ID, a.ExpiresAt.Format(time.RFC3339))
	case a.Status != orchestrator.ApprovalPending:
		return a, fmt.Errorf("%w: approval %s is %s", ErrAlreadyDecided, a.ID, a.Status)
	case !now.Before(a.ExpiresAt):
		return a, fmt.Errorf("%w: approval %s expired at %s", ErrExpired, a.ID, a.ExpiresAt.Format(time.RFC3339))
	case by == a.RequestedBy:
		return a, fmt.Errorf("%w: %s requested approval %s", ErrSelfApproval, by, a.ID)
	}
	if !d.Approve {
		a.Status = orchestrator.ApprovalRejected
		a.RejectedBy, a.RejectedAt, a.RejectionReason = by, &now, d.Reason
		return a, nil
	}
	if slices.ContainsFunc(a.Approvals, func(v orchestrator.ApprovalVote) bool { return v.UserID == by }) {
		return a, fmt.Errorf("%w: %s, approval %s", ErrAlreadyApproved, by, a.ID)
	}
	// Copy before appending: a's slice may share its array with the
	// caller's approval, which must stay as it was.
	a.Approvals = append(slices.Clip(a.Approvals), orchestrator.ApprovalVote{UserID: by, At: now})
	if len(a.Approvals) >= max(a.RequiredApprovals, RequiredApprovals(a.RiskLevel)) {
		a.Status = orchestrator.ApprovalApproved
		a.ApprovedBy, a.ApprovedAt = by, &now
	}
	return a, nil
}

// Expire returns a expired when it is pending and its deadline has
// passed at now, for the background sweep; ok is false, and a unchanged,
// otherwise.
func Expire(a orchestrator.Approval, now time.Time) (expired orchestrator.Approval, ok bool) {
	if a.Status != orchestrator.ApprovalPending || now.Before(a.ExpiresAt) {
		return a, false
	}
	a.Status = orchestrator.ApprovalExpired
	return a, true
}
