package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestReadmeQuickStart runs the shell commands of README.md's quick start
// against a real server, so that the README cannot rot: curl commands are
// sent with net/http, ./batchd commands run the binary, and a `| jq` stage
// runs jq when it is installed. The batch must end within seconds, with
// doc-2's error message where the README says it is.
func TestReadmeQuickStart(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	cmds := quickStartCommands(t, string(readme))
	p := startServe(t, t.TempDir())
	host := strings.TrimPrefix(p.URL, "http://")

	var id string
	var sawCreate, sawWait, sawMessage, sawText bool
	for _, words := range cmds {
		for i, w := range words {
			w = strings.ReplaceAll(w, "127.0.0.1:8080", host)
			if id != "" {
				w = strings.ReplaceAll(w, "$ID", id)
			}
			words[i] = w
		}
		stages := splitPipe(words)
		var out []byte
		switch stages[0][0] {
		case "go":
			continue // the build: the tests have built the binary
		case "./batchd":
			args := stages[0][1:]
			if len(args) > 0 && args[0] == "serve" {
				continue // running already
			}
			cmd := exec.Command(binPath, args...)
			cmd.Env = append(os.Environ(), "ANTHROPIC_BASE_URL="+p.URL, "BATCHD_STATE_DIR="+t.TempDir())
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			code := 0
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatalf("%q: %v", words, err)
			}
			switch args[0] {
			case "wait":
				sawWait = true
				if code != 2 || !strings.Contains(stderr.String(), "ended: 2 requests, succeeded 1, errored 1") {
					t.Errorf("%q: exit %d, stderr %q; the README says it exits 2", words, code, stderr.String())
				}
			case "results":
				if code != 0 {
					t.Fatalf("%q: exit %d: %s", words, code, stderr.String())
				}
				sawText = strings.Contains(stdout.String(), "doc-2\terrored\tinvalid_request_error: ")
			}
			out = stdout.Bytes()
		case "curl":
			out = readmeCurl(t, stages[0])
			if id == "" {
				var b struct {
					ID string `json:"id"`
				}
				if err := json.Unmarshal(out, &b); err != nil || b.ID == "" {
					t.Fatalf("first curl answered %q, want a batch", out)
				}
				id, sawCreate = b.ID, true
				// "ends within a second": a generous bound that a retried
				// error (about two minutes) would still miss.
				if ended := waitEnded(t, p.URL, id, 45*time.Second); ended.RequestCounts.Errored != 1 || ended.RequestCounts.Succeeded != 1 {
					t.Fatalf("quick start batch ended with %+v", ended.RequestCounts)
				}
			}
		default:
			if strings.HasPrefix(stages[0][0], "ID=") {
				continue
			}
			t.Fatalf("quick start command %q: the test does not know how to run it", words)
		}
		for _, stage := range stages[1:] {
			if stage[0] != "jq" {
				t.Fatalf("quick start pipes into %q", stage)
			}
			if _, err := exec.LookPath("jq"); err != nil {
				t.Logf("jq not installed: %q not checked", stage)
				sawMessage = true
				continue
			}
			cmd := exec.Command("jq", stage[1:]...)
			cmd.Stdin = bytes.NewReader(out)
			got, err := cmd.Output()
			if err != nil {
				t.Fatalf("%q: %v", stage, err)
			}
			out = got
			if line := strings.TrimSpace(string(got)); strings.HasPrefix(line, "doc-2: ") && len(line) > len("doc-2: ") {
				sawMessage = true
			}
		}
	}
	if !sawCreate || !sawWait || !sawMessage || !sawText {
		t.Errorf("quick start: create %v, wait %v, error message via jq %v, text results %v; want all", sawCreate, sawWait, sawMessage, sawText)
	}
}

// quickStartCommands returns the commands of the ```sh blocks in the quick
// start section, each as shell words: continuation lines joined, comments
// dropped, single quotes removed.
func quickStartCommands(t *testing.T, readme string) [][]string {
	t.Helper()
	start := strings.Index(readme, "\n## Quick start\n")
	if start < 0 {
		t.Fatal("README.md has no quick start section")
	}
	section := readme[start+1:]
	if end := strings.Index(section[1:], "\n## "); end >= 0 {
		section = section[:end+1]
	}
	var cmds [][]string
	for _, block := range strings.Split(section, "```sh\n")[1:] {
		block = block[:strings.Index(block, "```")]
		block = strings.ReplaceAll(block, "\\\n", " ")
		// Quotes may span lines (the -d body): split into words first.
		for _, line := range shellLines(t, block) {
			if len(line) > 0 {
				cmds = append(cmds, line)
			}
		}
	}
	if len(cmds) == 0 {
		t.Fatal("no commands in the quick start")
	}
	return cmds
}

// shellLines splits text into lines of words the way sh would for the
// README's simple commands: whitespace separates words, single quotes
// keep everything (newlines too), # starts a comment, | is its own word.
func shellLines(t *testing.T, text string) [][]string {
	t.Helper()
	var lines [][]string
	var line []string
	var word strings.Builder
	inWord := false
	flush := func() {
		if inWord {
			line = append(line, word.String())
			word.Reset()
			inWord = false
		}
	}
	for i := 0; i < len(text); i++ {
		c := text[i]
		switch {
		case c == '\'':
			end := strings.IndexByte(text[i+1:], '\'')
			if end < 0 {
				t.Fatalf("unbalanced quote in the quick start: %q", text[i:])
			}
			word.WriteString(text[i+1 : i+1+end])
			inWord = true
			i += end + 1
		case c == '#' && !inWord:
			for i < len(text) && text[i] != '\n' {
				i++
			}
			i--
		case c == '\n':
			flush()
			lines = append(lines, line)
			line = nil
		case c == ' ' || c == '\t':
			flush()
		case c == '|' && !inWord:
			line = append(line, "|")
		default:
			word.WriteByte(c)
			inWord = true
		}
	}
	flush()
	return append(lines, line)
}

func splitPipe(words []string) [][]string {
	stages := [][]string{nil}
	for _, w := range words {
		if w == "|" {
			stages = append(stages, nil)
			continue
		}
		stages[len(stages)-1] = append(stages[len(stages)-1], w)
	}
	return stages
}

// readmeCurl sends what a `curl -s URL -H … -d …` command sends and returns
// the body, failing on a status other than 200.
func readmeCurl(t *testing.T, words []string) []byte {
	t.Helper()
	var url, data string
	var hasData bool
	header := http.Header{}
	for i := 1; i < len(words); i++ {
		switch words[i] {
		case "-s":
		case "-H":
			i++
			k, v, _ := strings.Cut(words[i], ":")
			header.Add(k, strings.TrimSpace(v))
		case "-d":
			i++
			data, hasData = words[i], true
		default:
			if strings.HasPrefix(words[i], "-") {
				t.Fatalf("curl flag %s: the test does not know it", words[i])
			}
			url = words[i]
		}
	}
	method := http.MethodGet
	var body io.Reader
	if hasData {
		method, body = http.MethodPost, strings.NewReader(data)
	}
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header = header
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	out, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != http.StatusOK {
		t.Fatalf("%s %s: %d %s", method, url, res.StatusCode, out)
	}
	return out
}
