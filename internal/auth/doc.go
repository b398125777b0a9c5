// Package auth checks the optional bearer tokens of the two roles: agents
// (registration and heartbeats) and operators (tasks and reads). A role
// whose variables are unset is open, so existing agents, which send no
// token, keep working until agent tokens are set. A role whose variable is
// set but yields no token refuses to start: auth fails closed.
//
// Tokens are kept only as SHA-256 digests and compared in constant time;
// no token, and no part of one, is ever logged or put in an error.
//
// # Operator names
//
// An operator token may carry a name, written name=token in the list or
// on a line of the file, so that what an operator does (an approval, say)
// is recorded under that name: Principal.Name. An entry is named when,
// and only when, both hold:
//
//   - the text before its first '=' is a valid name: 1 to 64 characters
//     of A-Z a-z 0-9 . _ @ -, starting with a letter or a digit;
//   - the text after that '=' is itself a valid token (at least
//     MinTokenLength printable ASCII characters, no space).
//
// Anything else is one unnamed token, whole, exactly as before names
// existed. Tokens with '=' in them were valid before, and deployments that
// have them keep working:
//
//   - Base64 puts '=' only at the end, as padding, so a base64 token
//     ("c2VjcmV0c2VjcmV0c2VjcmV0==") has at most "=" after its first '=':
//     never a token, so never named.
//   - A token that does read as named (text, '=', then 16 or more
//     characters: "aaaaaaaaaaaaaaaa=bbbbbbbbbbbbbbbbbbbb") cannot be base64
//     padding, but could still be a token someone generated before names
//     existed. So a named entry is accepted whole too: its holders may
//     send the token after the '=' or, as they always did, the entire
//     entry; both speak for the same name. This adds nothing an attacker
//     could use: whoever knows the entire entry knows the token in it.
//   - A name followed by something too short to be a token
//     ("alice=short") is not a name: the whole entry is one unnamed token,
//     which must itself be a valid token or the service refuses to start.
//
// An unnamed operator token is named "operator-" and the first 12 hex
// digits of its SHA-256: the digits of its fingerprint, which the logs
// already show, so the name reveals nothing the logs did not. 48 bits of
// the digest of a token of 16 or more characters give no useful help in
// guessing it; the name only tells the tokens apart.
//
// Names are unique: two different tokens under one name, or one token
// under two names, refuse to start, naming the variables, the positions
// and the names, never a token. Listing one token twice under the same
// name (or twice unnamed) is harmless, as before. Names are not secrets:
// logs show them beside the fingerprint.
//
// Agent tokens have no names: an agent entry is always one whole token,
// '=' or not.
package auth
