package postgres

// AsyncCommit exposes the options of the transactions that commit without
// waiting for the WAL flush.
var AsyncCommit = asyncCommit
