package auth

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
)

// MaxNameLength bounds an operator's name: it lands in records and logs.
const MaxNameLength = 64

// unnamedPrefix starts the name given to an operator token written
// without one.
const unnamedPrefix = "operator-"

// parseEntry reads one trimmed entry of role's list or file. An operator
// entry is named by the rule of the package doc; anything else is one
// whole token, checked as it always was. The error says what is wrong
// without quoting the entry.
func parseEntry(role Role, text string) (entry, error) {
	if role == Operator {
		if name, token, ok := strings.Cut(text, "="); ok && validName(name) && checkToken(token) == nil {
			return entry{token: token, name: name, whole: text}, nil
		}
	}
	if err := checkToken(text); err != nil {
		return entry{}, err
	}
	e := entry{token: text}
	if role == Operator {
		e.name = unnamedName(text)
	}
	return e, nil
}

// validName reports whether name may name an operator: 1 to
// MaxNameLength characters of A-Z a-z 0-9 . _ @ -, starting with a letter
// or a digit (so an e-mail address or "ops.alice" fit, and nothing that
// needs quoting in a log line or a record).
func validName(name string) bool {
	if name == "" || len(name) > MaxNameLength {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		alnum := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
		switch {
		case alnum:
		case i == 0:
			return false
		case c == '.' || c == '_' || c == '@' || c == '-':
		default:
			return false
		}
	}
	return true
}

// unnamedName is the name of an operator token written without one:
// "operator-" and the hex digits of its fingerprint (see the package doc
// for why they reveal nothing).
func unnamedName(token string) string {
	sum := sha256.Sum256([]byte(token))
	return unnamedPrefix + hex.EncodeToString(sum[:fingerprintBytes])
}

// credentials turns a role's entries into the credentials to check
// requests against, refusing a name given to two tokens and a token given
// two names. Errors name where the entries are and the names, never a
// token.
func credentials(entries []entry) ([]credential, error) {
	type first struct {
		where  string
		name   string
		digest [sha256.Size]byte
	}
	byName := map[string]first{}
	byDigest := map[[sha256.Size]byte]first{}
	var out []credential
	// add accepts text as a token of e's name, unless it already has
	// another name.
	add := func(e entry, text string) error {
		d := sha256.Sum256([]byte(text))
		if prev, ok := byDigest[d]; ok {
			if prev.name != e.name {
				return fmt.Errorf("%s: the token is already listed under the name %q (%s): a token has one name", e.where, prev.name, prev.where)
			}
			return nil // the same token under the same name again: harmless, as before names
		}
		byDigest[d] = first{where: e.where, name: e.name}
		out = append(out, credential{digest: d, name: e.name})
		return nil
	}
	for _, e := range entries {
		if e.name != "" {
			d := sha256.Sum256([]byte(e.token))
			if prev, ok := byName[e.name]; !ok {
				byName[e.name] = first{where: e.where, digest: d}
			} else if prev.digest != d {
				return nil, fmt.Errorf("%s: the name %q is already given to another token (%s): names must be unique", e.where, e.name, prev.where)
			}
		}
		if err := add(e, e.token); err != nil {
			return nil, err
		}
		if e.whole != "" {
			if err := add(e, e.whole); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}
