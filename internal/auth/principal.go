package auth

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"strings"

	"go.uber.org/zap/zapcore"
)

// fingerprintBytes is how much of a token's SHA-256 a fingerprint shows:
// 12 hex digits tell the tokens of one deployment apart, and say nothing
// useful about the token itself.
const fingerprintBytes = 6

// Principal is who a request speaks for: the role it was let in as and,
// when it presented a token, which one. A role without tokens lets in
// requests without one: then the Principal has the role and no token.
//
// Tokens are identified by their fingerprint only. Named tokens (say
// "alice=TOKEN" in the token list) would add a name here, shown in logs
// beside the fingerprint; nothing that keys on the fingerprint changes.
type Principal struct {
	// Role is the role the request was let in as.
	Role Role
	// sum is the start of the token's SHA-256; token is false when the
	// request was let in without one.
	sum   [fingerprintBytes]byte
	token bool
}

// HasToken reports whether the request presented a valid token (false
// when its role has no tokens and it was let in without one).
func (p Principal) HasToken() bool { return p.token }

// Fingerprint identifies the token without revealing it: "sha256:" and
// the first 12 hex digits of the token's SHA-256. Empty without a token.
func (p Principal) Fingerprint() string {
	if !p.token {
		return ""
	}
	return "sha256:" + hex.EncodeToString(p.sum[:])
}

// MarshalLogObject shows the role and the fingerprint, never the token.
func (p Principal) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddString("role", p.Role.String())
	if p.token {
		enc.AddString("token", p.Fingerprint())
	}
	return nil
}

// Authenticate verifies an Authorization header value for role, also
// accepting the tokens of the roles in also, and returns who the request
// speaks for. A valid token of any of them wins. Otherwise the request is
// let in without a token only when role has no tokens (a role in also
// that has none opens nothing: it only adds its tokens when it has some).
// Else ErrNoToken when no bearer token was sent, ErrBadToken when one was
// and it is none of theirs.
//
// The token's digest is compared with every configured digest of a role,
// all of them every time, so the time taken does not tell which token
// came close.
func (a *Authenticator) Authenticate(authorization string, role Role, also ...Role) (Principal, error) {
	token, presented := bearerToken(authorization)
	if presented {
		digest := sha256.Sum256([]byte(token))
		for i := -1; i < len(also); i++ {
			r := role
			if i >= 0 {
				r = also[i]
			}
			if a.matches(r, &digest) {
				p := Principal{Role: r, token: true}
				copy(p.sum[:], digest[:fingerprintBytes])
				return p, nil
			}
		}
	}
	switch {
	case !a.Enabled(role):
		return Principal{Role: role}, nil
	case !presented:
		return Principal{}, ErrNoToken
	}
	return Principal{}, ErrBadToken
}

// bearerToken returns the token of an "Authorization: Bearer <token>"
// value (the scheme in any case, spaces around the token dropped).
func bearerToken(authorization string) (string, bool) {
	scheme, token, ok := strings.Cut(authorization, " ")
	token = strings.TrimSpace(token)
	if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
		return "", false
	}
	return token, true
}

// matches compares digest with every digest of role, in constant time.
func (a *Authenticator) matches(role Role, digest *[sha256.Size]byte) bool {
	match := 0
	for _, d := range a.digests[role] {
		match |= subtle.ConstantTimeCompare(digest[:], d[:])
	}
	return match == 1
}
