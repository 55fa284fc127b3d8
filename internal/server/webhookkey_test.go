package server_test

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/batchd/batchd/internal/server"
	"github.com/batchd/batchd/internal/store"
	"github.com/batchd/batchd/internal/webhook"
)

// TestWebhookKeyMustOpenStoredSecrets: a server whose webhook key cannot
// open the secrets already stored refuses to start, naming the flag; the
// right key starts. Before, a server sealed with whatever key it had, and a
// cluster process with another key could not sign the others' deliveries.
func TestWebhookKeyMustOpenStoredSecrets(t *testing.T) {
	t.Parallel()
	keyA, keyB := bytes.Repeat([]byte{'a'}, webhook.KeySize), bytes.Repeat([]byte{'b'}, webhook.KeySize)
	for _, tc := range []struct {
		name string
		url  func(t *testing.T) string
	}{
		{"sqlite", func(t *testing.T) string { return "sqlite:" + filepath.Join(t.TempDir(), "batchd.db") }},
		{"postgres", clusterURL},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			url := tc.url(t)
			ctx := context.Background()
			open := func(key []byte) (*server.Server, error) {
				return server.Open(ctx, server.Config{DataDir: t.TempDir(), DatabaseURL: url, Webhooks: server.WebhookConfig{Key: key}})
			}
			first, err := open(keyA)
			if err != nil {
				t.Fatalf("first start: %v", err)
			}
			sealer, _ := webhook.NewSealer(keyA)
			secret, _ := sealer.Seal("whsec_test")
			if err := first.Store.WebhookEndpointCreate(ctx, &store.WebhookEndpoint{ID: "whep_1", Workspace: "w", URL: "https://a.example/hook",
				Secret: secret, CreatedAt: time.Now()}); err != nil {
				t.Fatal(err)
			}
			first.Close(ctx)

			if srv, err := open(keyB); err == nil {
				srv.Close(ctx)
				t.Fatal("a server with another key started")
			} else if !strings.Contains(err.Error(), "--webhook-key-file") || !strings.Contains(err.Error(), "BATCHD_WEBHOOK_KEY") {
				t.Fatalf("the refusal does not name the flag: %v", err)
			}
			srv, err := open(keyA)
			if err != nil {
				t.Fatalf("the right key was refused: %v", err)
			}
			srv.Close(ctx)
		})
	}
}

// TestWebhookKeyMissingOnPostgres: with PostgreSQL and no key given, the
// server refuses to start instead of making a key of its own that the
// other processes of the cluster do not have.
func TestWebhookKeyMissingOnPostgres(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	srv, err := server.Open(context.Background(), server.Config{DataDir: dir, DatabaseURL: clusterURL(t)})
	if err == nil {
		srv.Close(context.Background())
		t.Fatal("started on PostgreSQL without a webhook key")
	}
	if !strings.Contains(err.Error(), "--webhook-key-file") {
		t.Fatalf("the refusal does not name the flag: %v", err)
	}
	if _, statErr := webhook.ReadKey(filepath.Join(dir, "webhook.key")); statErr == nil {
		t.Fatal("a per-process key was written to the data dir")
	}
}
