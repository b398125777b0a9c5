package postgres

import (
	"context"
	"errors"
	"io"
	"net"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/puddle/v2"

	"github.com/optiinfra/orchestrator/internal/storeerr"
)

// unavailable returns err wrapped as storeerr.ErrUnavailable when it
// means the database cannot be reached now (down, restarting, failing
// over, out of connections), so that the API answers 503 and the client
// retries; other errors, and the caller's own cancellation, are returned
// as they are. ctx is the operation's context: a deadline or cancellation
// of the caller is not the database's fault.
func unavailable(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
		return err
	}
	if isConnectionError(err) {
		return storeerr.Unavailable(err)
	}
	return err
}

// isConnectionError reports whether err is about reaching the server
// rather than about the statement.
func isConnectionError(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case len(pgErr.Code) >= 2 && pgErr.Code[:2] == "08": // connection exception
			return true
		case pgErr.Code == "57P01", pgErr.Code == "57P02", pgErr.Code == "57P03": // shutdown, crash, starting up
			return true
		case pgErr.Code == "53300": // too many connections
			return true
		case pgErr.Code == "25006": // a read-only standby, during a failover
			return true
		case pgErr.Code == "40001", pgErr.Code == "40P01": // still conflicting after the retries: try again later
			return true
		}
		return false
	}
	var connectErr *pgconn.ConnectError
	var netErr net.Error
	switch {
	case errors.As(err, &connectErr), errors.As(err, &netErr):
		return true
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed), errors.Is(err, puddle.ErrClosedPool):
		return true
	case pgconn.SafeToRetry(err), pgconn.Timeout(err):
		return true
	}
	return false
}

// isRetryable reports whether a transaction failed only because another
// one ran at the same time (a deadlock or a serialization failure), so
// that running it again will do.
func isRetryable(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "40001" || pgErr.Code == "40P01")
}
