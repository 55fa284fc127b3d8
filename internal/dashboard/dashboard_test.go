package dashboard_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/batchd/batchd/internal/dashboard"
)

func TestServes(t *testing.T) {
	t.Parallel()
	mux := http.NewServeMux()
	dashboard.Mount(mux)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "api 404", http.StatusNotFound) })
	for _, tc := range []struct {
		method, path string
		status       int
		ctype, body  string
	}{
		{"GET", "/", 200, "text/html", "<script type=\"module\" src=\"/dashboard/app.js\">"},
		{"HEAD", "/", 200, "text/html", ""},
		{"GET", "/dashboard/app.js", 200, "text/javascript", "import"},
		{"GET", "/dashboard/app.css", 200, "text/css", ":root"},
		{"GET", "/dashboard/nope.js", 404, "", ""},
		{"POST", "/", 404, "", "api 404"},          // only GET and HEAD are the page's
		{"GET", "/v1/nothing", 404, "", "api 404"}, // the API's catch-all keeps the rest
	} {
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest(tc.method, tc.path, nil))
		if rec.Code != tc.status || !strings.HasPrefix(rec.Header().Get("Content-Type"), tc.ctype) || !strings.Contains(rec.Body.String(), tc.body) {
			t.Errorf("%s %s: %d %q %.80q", tc.method, tc.path, rec.Code, rec.Header().Get("Content-Type"), rec.Body.String())
		}
		if tc.status == 200 && !strings.Contains(rec.Header().Get("Content-Security-Policy"), "default-src 'none'") {
			t.Errorf("%s %s: no CSP", tc.method, tc.path)
		}
	}
	// A revalidation with the ETag is a 304.
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest("GET", "/dashboard/app.js", nil))
	req := httptest.NewRequest("GET", "/dashboard/app.js", nil)
	req.Header.Set("If-None-Match", rec.Header().Get("ETag"))
	rec2 := httptest.NewRecorder()
	mux.ServeHTTP(rec2, req)
	if rec2.Code != http.StatusNotModified || rec2.Body.Len() != 0 {
		t.Fatalf("revalidation: %d", rec2.Code)
	}
}
