// Package dashboard serves batchd's web dashboard: a few static files
// (HTML, CSS, ES modules, no build step) embedded in the binary, so it
// works offline. The page signs in with an API key, kept in the browser's
// sessionStorage only, and does everything through the public API with
// x-api-key, as the SDKs do; this package serves no data of its own.
package dashboard

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strings"
)

//go:embed assets
var assets embed.FS

// Prefix is where the assets are served; the page itself is at "/".
const Prefix = "/dashboard/"

// file is one embedded asset, read once at start.
type file struct {
	body  []byte
	ctype string
	etag  string
}

// Handler serves the page at "/" and the assets under Prefix; any other
// path is not its business and gets a plain 404.
type Handler struct {
	files map[string]file
}

// New reads the embedded assets.
func New() *Handler {
	h := &Handler{files: map[string]file{}}
	err := fs.WalkDir(assets, "assets", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		body, err := assets.ReadFile(p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(body)
		ctype := mime.TypeByExtension(path.Ext(p))
		if strings.HasSuffix(p, ".js") {
			ctype = "text/javascript; charset=utf-8" // ES modules need a JavaScript type
		}
		h.files[strings.TrimPrefix(p, "assets/")] = file{body: body, ctype: ctype, etag: `"` + hex.EncodeToString(sum[:8]) + `"`}
		return nil
	})
	if err != nil {
		panic("dashboard: read embedded assets: " + err.Error()) // the build embedded them; cannot happen
	}
	return h
}

// Mount registers the page and its assets on mux: GET / (exactly) and
// GET /dashboard/…, leaving every other path to mux's other patterns.
func Mount(mux *http.ServeMux) {
	h := New()
	mux.Handle("GET /{$}", h)
	mux.Handle("GET "+Prefix, h)
}

// securityHeaders keep the page from loading anything but its own files,
// from being framed (its buttons cancel and delete), and from leaking the
// URL (which holds batch ids) to anyone.
var securityHeaders = map[string]string{
	"Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
		"form-action 'none'; frame-ancestors 'none'; base-uri 'none'",
	"X-Content-Type-Options": "nosniff",
	"X-Frame-Options":        "DENY",
	"Referrer-Policy":        "no-referrer",
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	name := "index.html"
	if r.URL.Path != "/" {
		name = strings.TrimPrefix(r.URL.Path, Prefix)
	}
	f, ok := h.files[name]
	if !ok {
		http.NotFound(w, r)
		return
	}
	for k, v := range securityHeaders {
		w.Header().Set(k, v)
	}
	w.Header().Set("Content-Type", f.ctype)
	// Revalidate every time (a new binary may serve new files under the
	// same names); the ETag makes that a 304.
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("ETag", f.etag)
	if r.Header.Get("If-None-Match") == f.etag {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	w.Write(f.body)
}
