package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestTokensNeverLeak runs the service with tokens of both roles, uses and
// misuses them, and looks for them in every log line, response body and
// the metrics.
func TestTokensNeverLeak(t *testing.T) {
	const operatorToken = "operator-secret-0123456789"
	const agentToken = "agent-secret-abcdefghijkl"
	file := filepath.Join(t.TempDir(), "agent-tokens")
	if err := os.WriteFile(file, []byte("# agents\n"+agentToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	svc := runInProcess(t, "AUTH_OPERATOR_TOKENS="+operatorToken, "AUTH_AGENT_TOKENS_FILE="+file, "LOG_LEVEL=debug")

	var bodies strings.Builder
	call := func(method, path, token, body string, want int) {
		t.Helper()
		req, err := http.NewRequestWithContext(context.Background(), method, svc.base+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		bodies.Write(data)
		for k, v := range resp.Header {
			bodies.WriteString(k + ": " + strings.Join(v, ",") + "\n")
		}
		if resp.StatusCode != want {
			t.Errorf("%s %s with token %q... = %d %s, want %d", method, path, token[:min(len(token), 5)], resp.StatusCode, data, want)
		}
	}
	register := `{"name":"a","type":"cost","host":"127.0.0.1","port":9,"capabilities":["analyze"]}`
	call(http.MethodPost, "/agents/register", "", register, http.StatusUnauthorized)
	call(http.MethodPost, "/agents/register", operatorToken, register, http.StatusUnauthorized)
	call(http.MethodPost, "/agents/register", agentToken+"x", register, http.StatusUnauthorized)
	call(http.MethodPost, "/agents/register", agentToken, register, http.StatusCreated)
	call(http.MethodGet, "/agents", agentToken, "", http.StatusUnauthorized)
	call(http.MethodGet, "/agents", operatorToken, "", http.StatusOK)
	call(http.MethodGet, "/tasks", operatorToken[:10], "", http.StatusUnauthorized)
	call(http.MethodGet, "/metrics", "", "", http.StatusOK)
	svc.cancel()
	if err := svc.wait(t); err != nil {
		t.Fatal(err)
	}

	svc.logs.mu.Lock()
	logged, err := json.Marshal(svc.logs.lines)
	svc.logs.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(logged), `"agent_tokens":"on (0 tokens from the environment, and the file `) {
		t.Errorf("the startup line does not say where the agent tokens come from: %s", logged)
	}
	for _, secret := range []string{operatorToken, agentToken, operatorToken[:10], agentToken[:10]} {
		if strings.Contains(string(logged), secret) {
			t.Errorf("a log line contains the token %q...", secret[:5])
		}
		if strings.Contains(bodies.String(), secret) {
			t.Errorf("a response contains the token %q...", secret[:5])
		}
	}
}

// TestBadTokensAreRefusedWithoutQuotingThem checks that a configuration
// error about a token names the variable, not the token.
func TestBadTokensAreRefusedWithoutQuotingThem(t *testing.T) {
	const short = "tooshort-9"
	err := run(context.Background(), nil, []string{"PORT=0", "AUTH_OPERATOR_TOKENS=" + short}, io.Discard, io.Discard)
	if err == nil || exitCode(err) != exitUsage {
		t.Fatalf("run = %v, want a configuration error (exit 2)", err)
	}
	if !strings.Contains(err.Error(), "AUTH_OPERATOR_TOKENS") || strings.Contains(err.Error(), short) {
		t.Fatalf("error %q must name AUTH_OPERATOR_TOKENS and not quote the token", err)
	}
}

// TestSetButEmptyTokensRefuseToStart checks that auth fails closed: a
// token variable that is present but yields no token (an empty value from
// a template or a Secret) stops the service with exit 2, where it used to
// leave the role open.
func TestSetButEmptyTokensRefuseToStart(t *testing.T) {
	for _, tc := range []struct{ env, variable string }{
		{"AUTH_OPERATOR_TOKENS=", "AUTH_OPERATOR_TOKENS"},
		{"AUTH_AGENT_TOKENS= , ,", "AUTH_AGENT_TOKENS"},
		{"AUTH_AGENT_TOKENS_FILE=", "AUTH_AGENT_TOKENS_FILE"},
	} {
		t.Run(tc.env, func(t *testing.T) {
			var stdout strings.Builder
			err := run(context.Background(), nil, []string{"PORT=0", "HTTP_HOST=127.0.0.1", tc.env}, &stdout, io.Discard)
			if err == nil || exitCode(err) != exitUsage {
				t.Fatalf("run = %v, want a configuration error (exit 2)", err)
			}
			if !strings.Contains(err.Error(), tc.variable+" is set but holds no token") {
				t.Fatalf("error %q does not say that %s holds no token", err, tc.variable)
			}
			if stdout.Len() != 0 {
				t.Errorf("run logged before refusing: %s", stdout.String())
			}
		})
	}
}

// TestTokenFileWithAByteOrderMark runs the service with an agent token file
// saved by a Windows editor: the agent holding the token gets in.
func TestTokenFileWithAByteOrderMark(t *testing.T) {
	const agentToken = "agent-secret-bom-0123456789"
	file := filepath.Join(t.TempDir(), "agent-tokens")
	if err := os.WriteFile(file, []byte("\uFEFF"+agentToken+"\r\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	svc := runInProcess(t, "AUTH_AGENT_TOKENS_FILE="+file)
	req, err := http.NewRequestWithContext(context.Background(), http.MethodPost, svc.base+"/agents/register",
		strings.NewReader(`{"name":"a","type":"cost","host":"127.0.0.1","port":9,"capabilities":["analyze"]}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+agentToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("register with the token of a file with a byte-order mark = %d, want 201", resp.StatusCode)
	}
}
