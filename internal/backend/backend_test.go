package backend

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
)

type named string

func (n named) Name() string { return string(n) }
func (n named) Do(context.Context, Call) (json.RawMessage, error) {
	return nil, nil
}

func TestRouterFirstMatchWins(t *testing.T) {
	t.Parallel()
	anthropic, local, fallback := named("anthropic"), named("local"), named("sim")
	r := NewRouter(Route{"claude-*", anthropic}, Route{"llama-*", local}, Route{"*", fallback}, Route{"claude-x", local})
	tests := map[string]Backend{"claude-sonnet-4-5": anthropic, "llama-3-8b": local, "gpt-4o": fallback, "claude-x": anthropic}
	for model, want := range tests {
		got, err := r.Lookup(model)
		if err != nil || got != want {
			t.Errorf("Lookup(%q) = %v, %v; want %v", model, got, err, want)
		}
	}
	if n := len(r.Backends()); n != 3 {
		t.Errorf("Backends() lists %d, want each of the 3 once", n)
	}
}

func TestRouterNoMatchNamesTheModel(t *testing.T) {
	t.Parallel()
	_, err := NewRouter(Route{"claude-*", named("a")}).Lookup("gpt-4o")
	var be *Error
	if !errors.As(err, &be) || be.Type != ErrInvalidRequest || be.Transient() || be.Message != `model: no backend serves "gpt-4o"` {
		t.Fatalf("got %v", err)
	}
}

func TestAsErrorClassifies(t *testing.T) {
	t.Parallel()
	tests := []struct {
		err       error
		typ       string
		transient bool
	}{
		{&Error{Type: ErrOverloaded}, ErrOverloaded, true},
		{fmt.Errorf("wrapped: %w", &Error{Type: ErrPermission}), ErrPermission, false},
		{context.DeadlineExceeded, ErrTimeout, true},
		{errors.New("connection reset by peer"), ErrAPI, true},
	}
	for _, tt := range tests {
		be := AsError(tt.err)
		if be.Type != tt.typ || be.Transient() != tt.transient {
			t.Errorf("AsError(%v) = %+v, want %s transient=%v", tt.err, be, tt.typ, tt.transient)
		}
	}
	for typ, status := range map[string]int{ErrInvalidRequest: 400, ErrRateLimit: 429, ErrOverloaded: 529, ErrAPI: 500, ErrTimeout: 504, ErrRequestTooLarge: 413} {
		if got := StatusForType(typ); got != status {
			t.Errorf("StatusForType(%s) = %d, want %d", typ, got, status)
		}
	}
}
