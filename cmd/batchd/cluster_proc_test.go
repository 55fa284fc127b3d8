package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/batchd/batchd/internal/backend/backendtest"
	"github.com/batchd/batchd/internal/store/postgres/pgtest"
)

// The tests of this file run a cluster as users do: several real `batchd
// serve` processes sharing one PostgreSQL schema (a fresh one per test),
// each with a data dir of its own and the cluster's webhook key. Without
// BATCHD_TEST_DATABASE_URL they skip, saying how to run them.

// clusterKeyB64 is the webhook key every process of a test cluster is
// given (BATCHD_WEBHOOK_KEY: 32 bytes in base64).
var clusterKeyB64 = base64.StdEncoding.EncodeToString([]byte("batchd-proc-cluster-webhook-key!"))

// procCluster is a set of `batchd serve` processes on one database.
type procCluster struct {
	t       *testing.T
	dbURL   string
	env     []string
	members []*member

	dbOnce sync.Once
	db     *pgx.Conn // the test's own connection to the schema, for what the API does not show
}

// member is one process of a cluster: its data dir and flags outlive the
// process, so that it can be started again as it was.
type member struct {
	dir   string
	flags []string
	*proc
}

func newProcCluster(t *testing.T) *procCluster {
	t.Helper()
	url := pgtest.URL(t)
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	return &procCluster{
		t:     t,
		dbURL: url + sep + "search_path=" + pgtest.Schema(t),
		// The upstream key of the tests' anthropic backends rides along.
		env: []string{"BATCHD_WEBHOOK_KEY=" + clusterKeyB64, "PROC_UPSTREAM_KEY=sk-proc-test"},
	}
}

// add starts a new process of the cluster with flags.
func (c *procCluster) add(flags ...string) *member {
	c.t.Helper()
	m := &member{dir: c.t.TempDir(), flags: flags}
	c.start(m)
	c.members = append(c.members, m)
	return m
}

// start starts m's process, again if it ran before.
func (c *procCluster) start(m *member) {
	c.t.Helper()
	m.proc = startServeEnv(c.t, m.dir, c.env, append([]string{"--database-url", c.dbURL}, m.flags...)...)
}

// conn is the test's connection to the cluster's schema.
func (c *procCluster) conn() *pgx.Conn {
	c.t.Helper()
	c.dbOnce.Do(func() {
		db, err := pgx.Connect(context.Background(), c.dbURL)
		if err != nil {
			c.t.Fatalf("connect to the cluster's schema: %v", err)
		}
		// Registered after the schema's drop: runs before it.
		c.t.Cleanup(func() { db.Close(context.Background()) })
		c.db = db
	})
	if c.db == nil {
		c.t.Fatal("no connection to the cluster's schema")
	}
	return c.db
}

// ownerOf is the member whose process an owner id (host:pid:suffix)
// names, nil if none.
func (c *procCluster) ownerOf(owner string) *member {
	for _, m := range c.members {
		if strings.Contains(owner, ":"+strconv.Itoa(m.cmd.Process.Pid)+":") {
			return m
		}
	}
	return nil
}

// heldBy counts the requests whose live lease the member's process holds.
func (c *procCluster) heldBy(m *member) int {
	c.t.Helper()
	var n int
	err := c.conn().QueryRow(context.Background(), `SELECT count(*) FROM tasks WHERE state = 1 AND lease_owner LIKE $1`,
		"%:"+strconv.Itoa(m.cmd.Process.Pid)+":%").Scan(&n)
	if err != nil {
		c.t.Fatalf("count leased requests: %v", err)
	}
	return n
}

// leaderLease is the row of the chores' leader lease.
type leaderLease struct {
	owner   string
	term    int64
	expires time.Time
}

func (c *procCluster) leaderLease() (leaderLease, bool) {
	c.t.Helper()
	var l leaderLease
	var expires int64
	err := c.conn().QueryRow(context.Background(), `SELECT owner, term, expires FROM leaders WHERE name = 'chores'`).Scan(&l.owner, &l.term, &expires)
	if err == pgx.ErrNoRows {
		return l, false
	}
	if err != nil {
		c.t.Fatalf("read the leader lease: %v", err)
	}
	l.expires = time.UnixMicro(expires)
	return l, true
}

// progress is how many of a batch's requests have a result.
func progress(b batchJSON) int64 {
	c := b.RequestCounts
	return c.Succeeded + c.Errored + c.Canceled + c.Expired
}

// waitProgress polls the batch through url until at least n requests have
// a result, and returns it; it fails if the batch ended first.
func waitProgress(t *testing.T, url, id string, n int64) batchJSON {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		b := getBatch(t, url, id)
		if b.ProcessingStatus == "ended" {
			t.Fatalf("batch ended before %d requests had a result: the step meant to land mid-batch came too late: %+v", n, b.RequestCounts)
		}
		if progress(b) >= n {
			return b
		}
		if time.Now().After(deadline) {
			t.Fatalf("batch made no progress to %d: %+v", n, b.RequestCounts)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// checkExactlyOnce reads the ended batch b's results through url and
// checks that each of its n requests (req-0 … req-n-1) has exactly one,
// that no other custom_id has any, and that the counts are the results'
// tally, which it returns by type.
func checkExactlyOnce(t *testing.T, url string, b batchJSON, n int) map[string]int64 {
	t.Helper()
	res := results(t, url, b.ID)
	tally := map[string]int64{}
	dups, missing := 0, 0
	for id, types := range res {
		if len(types) != 1 {
			dups++
			if dups <= 5 {
				t.Errorf("%s has %d results: %v", id, len(types), types)
			}
		}
		for _, typ := range types {
			tally[typ]++
		}
	}
	for i := range n {
		if _, ok := res[fmt.Sprintf("req-%d", i)]; !ok {
			missing++
		}
	}
	if dups > 0 || missing > 0 || len(res) != n {
		t.Fatalf("results of %d requests: %d distinct custom_ids, %d with more than one result, %d with none", n, len(res), dups, missing)
	}
	c := b.RequestCounts
	if c.Processing != 0 || c.Succeeded != tally["succeeded"] || c.Errored != tally["errored"] ||
		c.Canceled != tally["canceled"] || c.Expired != tally["expired"] {
		t.Fatalf("counts %+v do not match the results %v", c, tally)
	}
	return tally
}

// TestClusterProcSigkillMidBatch: three processes share a 20,000-request
// batch; one is SIGKILLed while it holds requests; once their leases lapse
// the two others run them, and every request ends with exactly one result.
func TestClusterProcSigkillMidBatch(t *testing.T) {
	t.Parallel()
	const n = 20_000
	c := newProcCluster(t)
	for range 3 {
		c.add("--lease", "2s", "--sim-latency", "20ms", "--concurrency", "32", "--retry-backoff", "10ms")
	}
	b := createBatch(t, c.members[1].URL, bodyReader(n, func(i int) string {
		if i%100 == 0 {
			return "[[sim fail=1]] retried " + strconv.Itoa(i)
		}
		return "hello " + strconv.Itoa(i)
	}))
	victim := c.members[0]
	waitProgress(t, c.members[1].URL, b.ID, n/4)
	victim.kill(syscall.SIGKILL)
	// The kill landed mid-batch: the dead process still holds requests,
	// which only its lease lapsing gives back.
	held := c.heldBy(victim)
	at := getBatch(t, c.members[1].URL, b.ID)
	t.Logf("killed with %d of %d done; it held %d requests", progress(at), n, held)
	if held == 0 {
		t.Fatal("the killed process held no requests: the kill did not land mid-batch")
	}
	end := waitEnded(t, c.members[2].URL, b.ID, 2*time.Minute)
	if tally := checkExactlyOnce(t, c.members[1].URL, end, n); tally["succeeded"] != n {
		t.Fatalf("want every request succeeded, got %v", tally)
	}
	checkUsageRecount(t, c.members[2].URL, b.ID)
}

// TestClusterProcRollingRestart: each of three processes is stopped
// (SIGTERM) and started again in turn while they run a batch; nothing is
// lost or run twice.
func TestClusterProcRollingRestart(t *testing.T) {
	t.Parallel()
	const n = 6000 // at most 3·16 / 50 ms = 960 a second: over 6 s
	c := newProcCluster(t)
	for range 3 {
		c.add("--lease", "2s", "--sim-latency", "50ms", "--concurrency", "16")
	}
	b := createBatch(t, c.members[0].URL, bodyReader(n, func(i int) string { return "hello " + strconv.Itoa(i) }))
	done := int64(0)
	for i, m := range c.members {
		// Some progress between restarts, so that each stop finds
		// requests in flight and claimed ahead.
		other := c.members[(i+1)%len(c.members)]
		done = progress(waitProgress(t, other.URL, b.ID, done+400))
		m.kill(syscall.SIGTERM)
		if code := m.cmd.ProcessState.ExitCode(); code != 0 || !strings.Contains(m.Logs(), "stopped") {
			t.Fatalf("process %d did not stop cleanly (exit %d):\n%s", i, code, m.Logs())
		}
		c.start(m)
		t.Logf("restarted process %d at %d of %d done", i, done, n)
	}
	end := waitEnded(t, c.members[0].URL, b.ID, 2*time.Minute)
	if tally := checkExactlyOnce(t, c.members[1].URL, end, n); tally["succeeded"] != n {
		t.Fatalf("want every request succeeded, got %v", tally)
	}
}

// batchEndedLine matches the log line of the process that ends a batch.
func batchEndedLine(id string) *regexp.Regexp {
	return regexp.MustCompile(`msg="batch ended" .*batch=` + regexp.QuoteMeta(id) + `\b`)
}

// TestClusterProcLeaderKilledDuringExpiry: the leader is SIGKILLed a
// second before a batch expires; another process takes the lease over
// once it lapses (the dead leader's lease ends within --lease of the
// kill), expires the batch, and the batch ends exactly once: one process
// ends it, every request has exactly one result, the unsent ones expired.
func TestClusterProcLeaderKilledDuringExpiry(t *testing.T) {
	t.Parallel()
	const n = 300 // at most 3·4 / 400 ms = 30 a second: about half run before the expiry
	const lease, expireAfter = 3 * time.Second, 6 * time.Second
	c := newProcCluster(t)
	for range 3 {
		c.add("--lease", lease.String(), "--expire-after", expireAfter.String(), "--concurrency", "4", "--sim-latency", "400ms")
	}
	var old leaderLease
	waitFor(t, time.Minute, "a leader", func() bool {
		l, ok := c.leaderLease()
		old = l
		return ok && time.Now().Before(l.expires) && c.ownerOf(l.owner) != nil
	})
	leader := c.ownerOf(old.owner)
	var rest []*member
	for _, m := range c.members {
		if m != leader {
			rest = append(rest, m)
		}
	}
	b := createBatch(t, rest[0].URL, bodyReader(n, func(i int) string { return "hello " + strconv.Itoa(i) }))
	expires := b.CreatedAt.Add(expireAfter)
	time.Sleep(time.Until(expires.Add(-time.Second))) // the point is the clock: nothing to wait on
	if got := getBatch(t, rest[0].URL, b.ID); got.ProcessingStatus == "ended" {
		t.Fatalf("batch ended before its expiry: %+v", got.RequestCounts)
	}
	leader.kill(syscall.SIGKILL)
	killed := time.Now()
	dead, _ := c.leaderLease()
	if dead.owner != old.owner {
		t.Fatalf("the lease moved before the leader died: %+v, was %+v", dead, old)
	}
	// Its last renewal was before the kill: the lease lapses within
	// --lease of it.
	if lapse := dead.expires.Sub(killed); lapse > lease {
		t.Fatalf("the dead leader's lease lapses %v after the kill, more than --lease %v", lapse, lease)
	}
	var now leaderLease
	waitFor(t, time.Minute, "another process to lead", func() bool {
		now, _ = c.leaderLease()
		return now.owner != dead.owner
	})
	took := time.Now()
	heir := c.ownerOf(now.owner)
	if heir == nil || heir == leader || now.term <= dead.term {
		t.Fatalf("leader lease after the death: %+v (was %+v)", now, dead)
	}
	t.Logf("leader killed %v before the expiry; its lease lapsed %v after the kill; taken over %v after the kill (term %d → %d)",
		expires.Sub(killed).Round(time.Millisecond), dead.expires.Sub(killed).Round(time.Millisecond),
		took.Sub(killed).Round(time.Millisecond), dead.term, now.term)
	// The heir looks for the lease at each sweep (every second at most):
	// it takes it soon after it lapsed. The bound is loose for loaded
	// machines; the figure above is what it took.
	if late := took.Sub(dead.expires); late > 10*time.Second {
		t.Fatalf("the lease was taken over %v after it lapsed", late)
	}
	end := waitEnded(t, rest[1].URL, b.ID, time.Minute)
	if end.EndedAt.Before(expires) {
		t.Fatalf("batch ended at %v, before its expiry %v", end.EndedAt, expires)
	}
	tally := checkExactlyOnce(t, rest[0].URL, end, n)
	if tally["expired"] == 0 || tally["succeeded"] == 0 || tally["succeeded"]+tally["expired"] != n {
		t.Fatalf("want succeeded and expired results only, some of each: %v", tally)
	}
	if !strings.Contains(heir.Logs(), "leading the chores") {
		t.Errorf("the heir did not log its leadership:\n%s", heir.Logs())
	}
	ended := batchEndedLine(b.ID)
	lines := 0
	for _, m := range c.members {
		lines += len(ended.FindAllString(m.Logs(), -1))
	}
	if lines != 1 {
		t.Fatalf("%d processes' logs say they ended the batch, want 1", lines)
	}
}

// writeConfig writes a backends file with one backend, named name, that
// serves every model.
func writeConfig(t *testing.T, name, backendTOML string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "batchd.toml")
	body := fmt.Sprintf("[[backends]]\nname = %q\n%s\n[[routes]]\nmodel = \"*\"\nbackend = %q\n", name, backendTOML, name)
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// upstreamConfig is a backends file sending every model to u with
// max_concurrency c.
func upstreamConfig(t *testing.T, u *backendtest.Upstream, c int) string {
	return writeConfig(t, "up", fmt.Sprintf("kind = \"anthropic\"\nbase_url = %q\napi_key_env = \"PROC_UPSTREAM_KEY\"\nmax_concurrency = %d", u.URL, c))
}

// TestClusterProcCancelStopsOtherProcess: a batch runs on process B only
// (A has no backend for it); canceled through A, B sends nothing more
// once a second has passed. The figure is the server's view: no upstream
// call starts more than 1 s after the cancel returned.
func TestClusterProcCancelStopsOtherProcess(t *testing.T) {
	t.Parallel()
	const n = 2000 // 8 at a time, 100 ms each: 25 s uncanceled
	up := backendtest.NewUpstream(t, 0, 100*time.Millisecond)
	c := newProcCluster(t)
	// A starts first: a process that starts reroutes the pending requests
	// to its own backends.
	a := c.add("--lease", "2s", "--config", writeConfig(t, "a-sim", `kind = "sim"`))
	bp := c.add("--lease", "2s", "--config", upstreamConfig(t, up, 8))
	b := createBatch(t, bp.URL, bodyReader(n, func(i int) string { return "hello " + strconv.Itoa(i) }))
	waitFor(t, time.Minute, "B to send", func() bool { return up.Calls() >= 24 })
	res, err := http.Post(a.URL+"/v1/messages/batches/"+b.ID+"/cancel", "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(res.Body)
	res.Body.Close()
	canceled := time.Now()
	if res.StatusCode != 200 {
		t.Fatalf("cancel through A: %d %s", res.StatusCode, raw)
	}
	end := waitEnded(t, a.URL, b.ID, time.Minute)
	after, last := up.StartsAfter(canceled)
	late, _ := up.StartsAfter(canceled.Add(time.Second))
	t.Logf("%d calls in all, %d started after the cancel returned, the last %v after it", up.Calls(), after, last.Sub(canceled).Round(time.Millisecond))
	if late > 0 {
		t.Fatalf("%d upstream calls started more than 1 s after the cancel returned", late)
	}
	tally := checkExactlyOnce(t, bp.URL, end, n)
	if tally["canceled"] == 0 || tally["succeeded"] == 0 || tally["succeeded"] != int64(up.Calls()) {
		t.Fatalf("results %v after %d upstream calls", tally, up.Calls())
	}
}

// backendShare reads GET /v1/backends of url: the concurrency of the
// named backend's cluster_share (-1 without one).
func backendShare(t *testing.T, url, name string) int {
	t.Helper()
	res, err := http.Get(url + "/v1/backends")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var list struct {
		Data []struct {
			Name         string `json:"name"`
			ClusterShare *struct {
				Concurrency int `json:"concurrency"`
			} `json:"cluster_share"`
		} `json:"data"`
	}
	if err := json.NewDecoder(res.Body).Decode(&list); err != nil {
		t.Fatalf("GET /v1/backends: %v", err)
	}
	for _, d := range list.Data {
		if d.Name == name && d.ClusterShare != nil {
			return d.ClusterShare.Concurrency
		}
	}
	return -1
}

// TestClusterProcConcurrencyLimit: three processes, each configured with
// max_concurrency C, against an upstream that answers 429 above C calls at
// once: together they never send it more than C.
func TestClusterProcConcurrencyLimit(t *testing.T) {
	t.Parallel()
	const limit, n = 12, 1500
	up := backendtest.NewUpstream(t, limit, 30*time.Millisecond)
	c := newProcCluster(t)
	cfg := upstreamConfig(t, up, limit)
	for range 3 {
		c.add("--lease", "2s", "--config", cfg, "--retry-backoff", "50ms")
	}
	waitFor(t, time.Minute, "the limit to be shared between the three", func() bool {
		sum := 0
		for _, m := range c.members {
			s := backendShare(t, m.URL, "up")
			if s < limit/3 {
				return false
			}
			sum += s
		}
		return sum == limit
	})
	b := createBatch(t, c.members[0].URL, bodyReader(n, func(i int) string { return "hello " + strconv.Itoa(i) }))
	end := waitEnded(t, c.members[2].URL, b.ID, 2*time.Minute)
	t.Logf("peak %d calls at once (limit %d), %d answered 429, %d calls", up.Peak(), limit, up.Rejected(), up.Calls())
	if p := up.Peak(); p > limit {
		t.Fatalf("the upstream saw %d calls at once from the cluster, above the limit %d", p, limit)
	}
	if tally := checkExactlyOnce(t, c.members[1].URL, end, n); tally["succeeded"] != n {
		t.Fatalf("want every request succeeded, got %v", tally)
	}
}

// waitFor polls cond until it holds, failing after timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
