package sqlite

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/trustgate/trustgate/store"
	"github.com/trustgate/trustgate/store/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		db, err := Open(context.Background(), filepath.Join(t.TempDir(), "s.db"), Options{})
		if err != nil {
			t.Fatal(err)
		}
		return db
	})
}

func TestWALMode(t *testing.T) {
	db, err := Open(context.Background(), filepath.Join(t.TempDir(), "s.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var mode string
	if err := db.r.db.QueryRow(`PRAGMA journal_mode`).Scan(&mode); err != nil || mode != "wal" {
		t.Fatalf("journal_mode %q %v", mode, err)
	}
}

func TestOpenRejectsBadOptions(t *testing.T) {
	if _, err := Open(context.Background(), "", Options{}); err == nil {
		t.Fatal("empty path accepted")
	}
	if _, err := Open(context.Background(), filepath.Join(t.TempDir(), "s.db"), Options{Synchronous: "OFF"}); err == nil {
		t.Fatal("synchronous OFF accepted")
	}
}

// TestMigrateFromOldSchema builds a database at schema version 1 with data
// in it, then opens it with the current binary: the data must survive and
// the newer tables must work.
func TestMigrateFromOldSchema(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "old.db")
	old, err := open(ctx, path, Options{}, 1)
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := schemaVersion(ctx, old.w.db); v != 1 {
		t.Fatalf("old schema version %d", v)
	}
	if _, err := old.Entries().Create(ctx, store.Entry{ID: "e", SPIFFEID: "spiffe://td/a", ParentID: "spiffe://td/p",
		Selectors: []store.Selector{{Type: "t", Value: "v"}}}); err != nil {
		t.Fatal(err)
	}
	if err := old.Resources().Put(ctx, store.Resource{Path: "a/b/c", Sealed: []byte("x")}); err == nil {
		t.Fatal("version-1 schema already has resources: the test no longer tests a migration")
	}
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}

	db, err := Open(ctx, path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ms, _ := migrations()
	if v, _ := schemaVersion(ctx, db.w.db); v != len(ms) {
		t.Fatalf("schema version %d after migration, want %d", v, len(ms))
	}
	e, err := db.Entries().Get(ctx, "e")
	if err != nil || e.SPIFFEID != "spiffe://td/a" || len(e.Selectors) != 1 {
		t.Fatalf("entry lost in migration: %+v %v", e, err)
	}
	if err := db.Resources().Put(ctx, store.Resource{Path: "a/b/c", Sealed: []byte("x")}); err != nil {
		t.Fatalf("new table after migration: %v", err)
	}
}

func TestRefusesNewerSchema(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "new.db")
	db, err := Open(ctx, path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.w.db.Exec(`UPDATE schema_version SET version = 999`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if _, err := Open(ctx, path, Options{}); err == nil {
		t.Fatal("a database from a newer binary was opened")
	}
}

const crashEnv = "TRUSTGATE_SQLITE_CRASH_WRITER"

// TestMain lets the test binary act as the writer process that the crash
// test kills.
func TestMain(m *testing.M) {
	if path := os.Getenv(crashEnv); path != "" {
		crashWriter(path)
		return
	}
	os.Exit(m.Run())
}

const batchRows = 50

// crashWriter commits batches of rows forever, reporting each committed
// batch on stdout, and after a few batches leaves one transaction open
// half-written; the parent kills it at some point.
func crashWriter(path string) {
	ctx := context.Background()
	db, err := Open(ctx, path, Options{})
	if err != nil {
		fmt.Println("open:", err)
		os.Exit(1)
	}
	for batch := 0; ; batch++ {
		tx, err := db.w.BeginTx(ctx, nil)
		if err != nil {
			fmt.Println("begin:", err)
			os.Exit(1)
		}
		for i := range batchRows {
			if _, err := tx.Exec(`INSERT INTO resources (path, sealed, updated_at) VALUES (?,?,?)`,
				fmt.Sprintf("batch%06d/row%03d", batch, i), []byte("v"), batch); err != nil {
				fmt.Println("insert:", err)
				os.Exit(1)
			}
			if batch == 5 && i == batchRows/2 {
				fmt.Println("midway")
				select {} // hold the half-written transaction until killed
			}
		}
		if err := tx.Commit(); err != nil {
			fmt.Println("commit:", err)
			os.Exit(1)
		}
		fmt.Println("committed", batch)
	}
}

// TestCrashMidTransaction SIGKILLs a writer that holds an uncommitted
// transaction, then reopens the database: it must pass SQLite's integrity
// check, hold every committed batch whole, and hold nothing of the open one.
func TestCrashMidTransaction(t *testing.T) {
	path := filepath.Join(t.TempDir(), "crash.db")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashEnv+"="+path)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	committed := -1
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		line := sc.Text()
		if line == "midway" {
			break
		}
		var n int
		if _, err := fmt.Sscanf(line, "committed %d", &n); err != nil {
			_ = cmd.Process.Kill()
			t.Fatalf("writer: %s", line)
		}
		committed = n
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	if committed != 4 {
		t.Fatalf("writer committed up to batch %d, want 4", committed)
	}
	checkConsistent(t, path, committed)
}

// TestCrashAtRandomPoints kills a committing writer at several arbitrary
// moments; each time every batch must be all there or not there at all.
func TestCrashAtRandomPoints(t *testing.T) {
	for i, delay := range []time.Duration{5 * time.Millisecond, 40 * time.Millisecond, 120 * time.Millisecond} {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "crash.db")
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), crashEnv+"="+path)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(delay)
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
				t.Skip("writer was killed before it created the database")
			}
			checkConsistent(t, path, -1)
		})
	}
}

func checkConsistent(t *testing.T, path string, wantBatches int) {
	t.Helper()
	db, err := Open(context.Background(), path, Options{})
	if err != nil {
		t.Fatalf("reopen after crash: %v", err)
	}
	defer db.Close()
	var ok string
	if err := db.r.db.QueryRow(`PRAGMA integrity_check`).Scan(&ok); err != nil || ok != "ok" {
		t.Fatalf("integrity_check: %q %v", ok, err)
	}
	rows, err := db.r.db.Query(`SELECT updated_at, count(*) FROM resources GROUP BY updated_at ORDER BY updated_at`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	batches := 0
	for rows.Next() {
		var batch, n int
		if err := rows.Scan(&batch, &n); err != nil {
			t.Fatal(err)
		}
		if n != batchRows {
			t.Fatalf("batch %d has %d rows: a transaction was torn", batch, n)
		}
		if batch != batches {
			t.Fatalf("batch %d present but %d missing", batch, batches)
		}
		batches++
	}
	if wantBatches >= 0 && batches != wantBatches+1 {
		t.Fatalf("%d batches survived, want %d", batches, wantBatches+1)
	}
}

// TestTransactionBesideFirstPrepare arranges the interleaving that once
// deadlocked the statement cache: a transaction holds the writer's only
// connection while another goroutine prepares a new statement (waiting for
// that connection); the transaction must still be able to run its own
// statements and finish.
func TestTransactionBesideFirstPrepare(t *testing.T) {
	ctx := context.Background()
	db, err := Open(ctx, filepath.Join(t.TempDir(), "s.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	// Not deferred: after a deadlock, Close would block too and hide the
	// failure behind the test binary's timeout.
	inTx, proceed := make(chan struct{}), make(chan struct{})
	txDone := make(chan error, 1)
	go func() {
		txDone <- db.tx(ctx, func(tx *tx) error {
			close(inTx)
			<-proceed
			_, err := tx.ExecContext(ctx, `INSERT INTO policies (name, text, revision, updated_at) VALUES ('a', 'x', 1, 0)`)
			return err
		})
	}()
	<-inTx
	prepDone := make(chan error, 1)
	go func() {
		_, err := db.w.ExecContext(ctx, `INSERT INTO policies (name, text, revision, updated_at) VALUES ('b', 'y', 1, 0)`)
		prepDone <- err
	}()
	time.Sleep(50 * time.Millisecond) // let the second writer wait for the connection
	close(proceed)
	for _, c := range []chan error{txDone, prepDone} {
		select {
		case err := <-c:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("deadlock between a transaction and a statement being prepared")
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestFilesAre0600 opens a new database under umask 022, writes to it, and
// checks that the database, its WAL and its shared-memory file are all
// 0600; then it loosens them and checks that reopening tightens them again.
func TestFilesAre0600(t *testing.T) {
	old := syscall.Umask(0o022)
	defer syscall.Umask(old)
	path := filepath.Join(t.TempDir(), "s.db")
	check := func(when string) {
		t.Helper()
		db, err := Open(context.Background(), path, Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		if err := db.JoinTokens().Create(context.Background(), store.JoinToken{ID: "t-" + when, ExpiresAt: time.Now().Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{path, path + "-wal", path + "-shm"} {
			fi, err := os.Stat(f)
			if err != nil {
				t.Fatalf("%s: %v", when, err)
			}
			if m := fi.Mode().Perm(); m != 0o600 {
				t.Errorf("%s: %s has mode %#o, want 0600", when, filepath.Base(f), m)
			}
		}
	}
	check("created")
	for _, f := range []string{path, path + "-wal", path + "-shm"} {
		if err := os.Chmod(f, 0o644); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
	}
	check("reopened")
}

func TestReaderCacheSize(t *testing.T) {
	for _, tc := range []struct {
		opt  int64
		want int64
	}{{0, -32768}, {4 << 20, -4096}} {
		db, err := Open(context.Background(), filepath.Join(t.TempDir(), "s.db"), Options{ReaderCache: tc.opt})
		if err != nil {
			t.Fatal(err)
		}
		var kib int64
		if err := db.r.db.QueryRow(`PRAGMA cache_size`).Scan(&kib); err != nil || kib != tc.want {
			t.Errorf("ReaderCache %d: readers' cache_size %d (%v), want %d", tc.opt, kib, err, tc.want)
		}
		db.Close()
	}
}

// TestEntryTablesRebuilt migrates entries with selectors from schema 2
// through the WITHOUT ROWID rebuild (0003): entries, selectors and their
// order survive, and deleting an entry still deletes its selectors.
func TestEntryTablesRebuilt(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "v2.db")
	old, err := open(ctx, path, Options{}, 2)
	if err != nil {
		t.Fatal(err)
	}
	sel := []store.Selector{{Type: "k8s", Value: "ns:a"}, {Type: "k8s", Value: "sa:b"}, {Type: "unix", Value: "uid:0"}}
	for _, id := range []string{"e1", "e2"} {
		if _, err := old.Entries().Create(ctx, store.Entry{ID: id, SPIFFEID: "spiffe://td/" + id, ParentID: "spiffe://td/agent", Selectors: sel, DNSNames: []string{id + ".local"}}); err != nil {
			t.Fatal(err)
		}
	}
	old.Close()
	db, err := Open(ctx, path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	list, err := db.Entries().List(ctx, store.EntryFilter{ParentID: "spiffe://td/agent"})
	if err != nil || len(list) != 2 || !slices.Equal(list[1].Selectors, sel) || !slices.Equal(list[1].DNSNames, []string{"e2.local"}) {
		t.Fatalf("after the rebuild: %+v %v", list, err)
	}
	if err := db.Entries().Delete(ctx, "e1"); err != nil {
		t.Fatal(err)
	}
	var left int
	if err := db.r.db.QueryRow(`SELECT count(*) FROM entry_selectors WHERE entry_id = 'e1'`).Scan(&left); err != nil || left != 0 {
		t.Fatalf("%d selectors of a deleted entry left (%v): the cascade was lost", left, err)
	}
	var withoutRowid int
	if err := db.r.db.QueryRow(`SELECT count(*) FROM pragma_table_list WHERE name IN ('entries', 'entry_selectors') AND wr = 1`).Scan(&withoutRowid); err != nil || withoutRowid != 2 {
		t.Fatalf("%d of the entry tables are WITHOUT ROWID (%v), want 2", withoutRowid, err)
	}
}

func TestReplicas(t *testing.T) {
	storetest.RunReplicas(t, func(t *testing.T) (store.Store, store.Store) {
		db, err := Open(context.Background(), filepath.Join(t.TempDir(), "db"), Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = db.Close() })
		return db, db
	})
}
