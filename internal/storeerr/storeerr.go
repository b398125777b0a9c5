// Package storeerr names the failure every store shares: the storage
// behind it cannot be reached now (PostgreSQL down, failing over, out of
// connections). The API answers it with 503 and Retry-After, never 500;
// the operation changed nothing, and the client may simply retry.
package storeerr

import "errors"

// ErrUnavailable is wrapped by every store error that means "the storage
// cannot be reached now, try again", as opposed to a bug or a refusal.
var ErrUnavailable = errors.New("storage unavailable")

// Unavailable wraps err so that errors.Is(err, ErrUnavailable) holds,
// keeping err's text.
func Unavailable(err error) error {
	if err == nil {
		return nil
	}
	return &unavailable{err}
}

type unavailable struct{ err error }

func (u *unavailable) Error() string   { return "storage unavailable: " + u.err.Error() }
func (u *unavailable) Unwrap() []error { return []error{ErrUnavailable, u.err} }
