package auth

import (
	"context"
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
// when it presented a token, which one, and for an operator token the
// operator's name. A role without tokens lets in requests without one:
// then the Principal has the role, no token and no name.
//
// Tokens are identified by their fingerprint only; names (see the package
// doc) are shown in logs beside it. Nothing that keys on the fingerprint
// changes with names.
type Principal struct {
	// Role is the role the request was let in as.
	Role Role
	// sum is the start of the token's SHA-256; token is false when the
	// request was let in without one.
	sum   [fingerprintBytes]byte
	token bool
	name  string
}

// Name is the name of the operator whose token the request presented: the
// name written before the token ("alice=TOKEN"), or "operator-" and the
// fingerprint's hex digits for a token written without one. Empty for an
// agent token and for a request let in without a token (auth off), when
// nobody is authenticated: a caller that records who acted must then take
// the name from elsewhere and say so.
func (p Principal) Name() string { return p.name }

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
	if p.name != "" {
		enc.AddString("name", p.name)
	}
	return nil
}

// principalKey is the context key of the Principal a request speaks for.
type principalKey struct{}

// WithPrincipal returns ctx carrying p, as the HTTP layer does for every
// request it authenticated.
func WithPrincipal(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// PrincipalFrom returns the Principal ctx carries, and false (with the
// zero Principal: no token, no name) when it carries none, as on a route
// that needs no token or without an Authenticator.
func PrincipalFrom(ctx context.Context) (Principal, bool) {
	p, ok := ctx.Value(principalKey{}).(Principal)
	return p, ok
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
			if name, ok := a.match(r, &digest); ok {
				p := Principal{Role: r, token: true, name: name}
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

// match compares digest with every digest of role, in constant time, and
// returns the name of the one it matches.
func (a *Authenticator) match(role Role, digest *[sha256.Size]byte) (string, bool) {
	found := -1
	for i, c := range a.tokens[role] {
		found = subtle.ConstantTimeSelect(subtle.ConstantTimeCompare(digest[:], c.digest[:]), i, found)
	}
	if found < 0 {
		return "", false
	}
	return a.tokens[role][found].name, true
}
